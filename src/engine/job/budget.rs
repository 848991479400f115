//! A job's peak memory, estimated from its spec and its data before it is accepted: a job that
//! cannot fit is refused at submission, naming what makes it large, instead of aborting the
//! service when it allocates (and again at every restart). The estimate errs on the large side.

use crate::engine::models::Blueprint;
use crate::spec::SpecError;

const F32: u64 = 4;
/// A trained model holds its weights, their gradients, two optimiser moments, and a serialised
/// copy while its checkpoint is written.
const TRAINED_COPIES: u64 = 5;
/// A loaded model: its weights, and the file's bytes while they are parsed; later, in
/// inference, at most one more copy of its linear weights (`Net::frozen`, dropped after).
const LOADED_COPIES: u64 = 2;
/// Per element of a layer's output while training: the activation kept for the backward pass,
/// its gradient, and a temporary.
const TRAINING_COPIES: u64 = 3;
/// A transformer layer computes far more than its output: q, k, v, the context, the attention
/// output and the four-times-wider feed-forward.
const TRANSFORMER_LAYER_FACTOR: u64 = 8;
/// Evaluation and the teacher cache run the forward pass in chunks of this many samples.
const INFERENCE_CHUNK: u64 = 512;
/// The runtime, tokenizer, thread stacks and allocator slack.
const BASELINE_OVERHEAD: u64 = 64 << 20;

/// One part of the estimate: the spec field that decides its size.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryTerm {
    pub field: String,
    pub what: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryEstimate {
    pub terms: Vec<MemoryTerm>,
}

impl MemoryEstimate {
    pub fn add(&mut self, field: impl Into<String>, what: impl Into<String>, bytes: u64) {
        self.terms.push(MemoryTerm { field: field.into(), what: what.into(), bytes });
    }

    pub fn total(&self) -> u64 {
        BASELINE_OVERHEAD.saturating_add(self.terms.iter().fold(0u64, |sum, t| sum.saturating_add(t.bytes)))
    }

    /// Refuses an estimate over `limit`, naming the field of its largest part.
    pub fn check(&self, limit: u64) -> Result<(), SpecError> {
        let total = self.total();
        if total <= limit {
            return Ok(());
        }
        let largest =
            self.terms.iter().max_by_key(|t| t.bytes).map(|t| t.field.clone()).unwrap_or_else(|| "training".into());
        let mut parts: Vec<&MemoryTerm> = self.terms.iter().filter(|t| t.bytes > 0).collect();
        parts.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        let parts: Vec<String> = parts.iter().map(|t| format!("{} {}", t.what, human(t.bytes))).collect();
        Err(SpecError::new(
            largest,
            format!(
                "this job would need about {} of memory ({}); the service allows a job {} (--max-job-memory); make it smaller",
                human(total),
                parts.join(", "),
                human(limit)
            ),
        ))
    }
}

/// How large a job is in the terms its size limits count, each with the spec field that
/// decides it: its largest model's parameters, its longest phase's epochs × training samples,
/// its largest batch, and (text jobs) the tokens per text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSize {
    pub parameters: (String, u64),
    pub epoch_samples: (String, u64),
    pub batch_size: (String, u64),
    pub sequence_length: Option<(String, u64)>,
}

/// The largest [`JobSize`] the service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    pub parameters: u64,
    pub epoch_samples: u64,
    pub batch_size: u64,
    pub sequence_length: u64,
}

impl JobSize {
    /// Refuses a job past any limit, naming the field and the limit.
    pub fn check(&self, limits: &SizeLimits) -> Result<(), SpecError> {
        let measures = [
            (Some(&self.parameters), limits.parameters, "parameters in this model", "--max-parameters"),
            (
                Some(&self.epoch_samples),
                limits.epoch_samples,
                "samples trained on in this phase (epochs × training samples; × runs for repeated seeds; a sweep's trials together)",
                "--max-epoch-samples",
            ),
            (Some(&self.batch_size), limits.batch_size, "samples in a batch", "--max-batch-size"),
            (self.sequence_length.as_ref(), limits.sequence_length, "tokens per text", "--max-sequence-length"),
        ];
        for (measure, limit, what, flag) in measures {
            if let Some((field, value)) = measure.filter(|(_, value)| *value > limit) {
                return Err(SpecError::new(
                    field,
                    format!("{value} {what}; the service allows at most {limit} ({flag}); make the job smaller"),
                ));
            }
        }
        Ok(())
    }
}

/// A model's trainable parameters.
pub fn parameters(blueprint: &Blueprint) -> u64 {
    blueprint.params.iter().map(|(_, s)| elements(s)).fold(0u64, u64::saturating_add)
}

/// Bytes a model's parameters take while it trains, or while it is only loaded.
pub fn model_bytes(blueprint: &Blueprint, trained: bool) -> u64 {
    let parameters =
        blueprint.params.iter().chain(&blueprint.buffers).map(|(_, s)| elements(s)).fold(0u64, u64::saturating_add);
    let copies = if trained { TRAINED_COPIES } else { LOADED_COPIES };
    parameters.saturating_mul(F32 * copies)
}

/// Bytes of activations for `batch` samples through `blueprint`, training or not.
pub fn activation_bytes(blueprint: &Blueprint, input_features: usize, batch: usize, training: bool) -> u64 {
    let per_sample = blueprint
        .outputs
        .iter()
        .map(|(name, shape)| {
            let transformer_layer = name.starts_with("layers.") && shape.len() == 2;
            elements(shape).saturating_mul(if transformer_layer { TRANSFORMER_LAYER_FACTOR } else { 1 })
        })
        .fold(input_features as u64, u64::saturating_add);
    let copies = if training { TRAINING_COPIES } else { 1 };
    per_sample.saturating_mul(batch as u64).saturating_mul(F32 * copies)
}

/// Bytes of an inference pass in chunks (evaluation, the teacher cache).
pub fn inference_bytes(blueprint: &Blueprint, input_features: usize) -> u64 {
    activation_bytes(blueprint, input_features, INFERENCE_CHUNK as usize, false)
}

pub fn f32_bytes(count: u64) -> u64 {
    count.saturating_mul(F32)
}

fn elements(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_largest_part_and_both_sizes() {
        let mut estimate = MemoryEstimate::default();
        estimate.add("dataset", "the dataset", 10 << 20);
        estimate.add("teacher.arch", "the teacher", 17 << 30);
        assert!(estimate.check(u64::MAX).is_ok());
        let error = estimate.check(8 << 30).unwrap_err();
        assert_eq!(error.field, "teacher.arch");
        assert!(error.message.contains("about 17.1 GiB"), "{}", error.message);
        assert!(error.message.contains("allows a job 8.0 GiB (--max-job-memory)"), "{}", error.message);
        assert!(error.message.find("the teacher").unwrap() < error.message.find("the dataset").unwrap());
    }

    #[test]
    fn the_reported_crash_loop_teacher_counts_as_tens_of_gigabytes() {
        let arch = crate::spec::ArchSpec::Mlp { hidden: vec![65536, 65536], dropout: 0.0 };
        let blueprint = Blueprint::new(&arch, crate::engine::models::Input { features: 64, image: None }, 10).unwrap();
        assert!(model_bytes(&blueprint, true) > 64 << 30, "{}", human(model_bytes(&blueprint, true)));
        assert!(activation_bytes(&blueprint, 64, 64, true) > 64 * 65536 * 2 * 4);
    }
}
