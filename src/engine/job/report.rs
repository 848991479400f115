//! The job's report: what distillation bought, measured on the held-out split.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::engine::models::Net;
use crate::engine::train::{CacheReport, PhaseSummary};
use crate::spec::{IntermediateSpec, LayerCopy, LogitLossKind, Scheduled};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `classification`, or `embedding` for unlabelled texts, where a model's `accuracy` is the
    /// share of held-out texts whose nearest neighbour (cosine, among the held-out texts) is the
    /// teacher's, and its `loss` is 1 − the mean cosine between its and the teacher's embeddings.
    #[serde(default)]
    pub task: Task,
    pub dataset: DatasetSummary,
    pub distillation: DistillationSummary,
    pub device: String,
    /// The teacher the student learned from; for an ensemble, the ensemble as a whole (its
    /// averaged prediction; parameters, size and latency summed over its members).
    pub teacher: ModelReport,
    /// Each member of an ensemble; absent with a single teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teachers: Option<Vec<ModelReport>>,
    /// The distilled student.
    pub student: ModelReport,
    /// The same student trained without the teacher, when the spec asked for it.
    pub baseline: Option<ModelReport>,
    /// Student accuracy ÷ teacher accuracy.
    pub retention: f64,
    /// Distilled − baseline accuracy (fraction, 0.01 = one point); absent without a baseline.
    pub gain: Option<f64>,
    /// Whether the gain stands out from the noise of the held-out set.
    pub gain_test: Option<PairedTest>,
    /// Student parameters ÷ teacher parameters.
    pub size_ratio: f64,
    /// Teacher latency ÷ student latency, at batch 1 and batch N.
    pub speedup: Speedup,
    /// Training wall time of all phases, resumes included.
    pub wall_time_s: f64,
    /// Training throughput of the distillation phase.
    pub train_samples_per_s: f64,
    /// CPU threads the job trained with (its share of the machine under `--threads-per-job`).
    #[serde(default)]
    pub threads: usize,
    /// One plain sentence: did distillation help?
    pub verdict: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Classification,
    Embedding,
}

/// McNemar's exact test on the held-out samples where exactly one of the two students is right:
/// if distillation made no difference, each such sample is a fair coin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    pub distilled_only_correct: usize,
    pub baseline_only_correct: usize,
    /// Two-sided binomial p-value of the split between the two counts.
    pub p_value: f64,
}

impl PairedTest {
    pub fn new(labels: &[u32], distilled: &[u32], baseline: &[u32]) -> Self {
        let (mut d, mut b) = (0, 0);
        for ((y, s), t) in labels.iter().zip(distilled).zip(baseline) {
            match (s == y, t == y) {
                (true, false) => d += 1,
                (false, true) => b += 1,
                _ => {}
            }
        }
        Self { distilled_only_correct: d, baseline_only_correct: b, p_value: binomial_two_sided(d.min(b), d + b) }
    }
}

/// P(X ≤ k or X ≥ n − k) for X ~ Binomial(n, ½), computed in log space so large n is fine.
fn binomial_two_sided(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let ln_choose = |i: usize| -> f64 { (1..=i).map(|j| ((n - i + j) as f64 / j as f64).ln()).sum() };
    let tail: f64 = (0..=k).map(|i| (ln_choose(i) - n as f64 * std::f64::consts::LN_2).exp()).sum();
    (2.0 * tail).min(1.0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub name: String,
    pub features: usize,
    pub classes: usize,
    /// Training samples with labels.
    pub train_samples: usize,
    /// Training samples without labels (`dataset.labelled`, `dataset.transfer`).
    #[serde(default)]
    pub transfer_samples: usize,
    pub validation_samples: usize,
    /// `split` (held out from the training data) or `test_file`.
    pub validation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillationSummary {
    pub temperature: Scheduled,
    pub alpha: Scheduled,
    pub loss: LogitLossKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    pub intermediate: Vec<IntermediateSpec>,
    /// Layers the distilled student copied from the teacher before training (the baseline
    /// starts from the random initialisation).
    pub student_init: Vec<LayerCopy>,
    /// Trainable parameters of the projections; used in training, not part of the student.
    pub projection_parameters: usize,
    /// Whether the teachers' logits were computed once and reused (distillation phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache: Option<CacheReport>,
    /// Weight of each teacher in the ensemble's averaged soft targets.
    pub teacher_weights: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub parameters: usize,
    pub size_bytes: u64,
    pub accuracy: f64,
    pub loss: f64,
    /// Share of held-out samples where the model's top-1 class equals the teacher's.
    pub agreement: f64,
    pub latency: Latency,
    /// How it was trained; absent for a teacher loaded from a file.
    pub training: Option<PhaseSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Milliseconds per forward pass of one sample.
    pub batch_1_ms: f64,
    /// Milliseconds per forward pass of `batch_n` samples.
    pub batch_n_ms: f64,
    pub batch_n: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speedup {
    pub batch_1: f64,
    pub batch_n: f64,
}

/// Time of a forward pass at batch size `batch`, on inputs cycled from `x`: the median of
/// several timed blocks (robust to a busy machine), each long enough that timer resolution and
/// a tiny model's per-call overhead are measured as they are, not rounded away.
pub fn latency_ms(model: &Net, x: &[f32], batch: usize, device: &Device, budget: Duration) -> candle_core::Result<f64> {
    const BLOCKS: u32 = 7;
    let features = model.input().features;
    let rows = x.len() / features;
    let input: Vec<f32> =
        (0..batch).flat_map(|i| x[(i % rows) * features..(i % rows + 1) * features].iter().copied()).collect();
    let input = Tensor::from_vec(input, (batch, features), device)?;
    for _ in 0..3 {
        model.forward(&input, None, &[])?;
    }
    device.synchronize()?;
    let mut per_run = Vec::new();
    for _ in 0..BLOCKS {
        let started = Instant::now();
        let mut runs = 0u32;
        while runs < 3 || (started.elapsed() < budget / BLOCKS && runs < 100_000) {
            model.forward(&input, None, &[])?;
            runs += 1;
        }
        device.synchronize()?;
        per_run.push(started.elapsed().as_secs_f64() * 1000.0 / runs as f64);
    }
    per_run.sort_by(f64::total_cmp);
    Ok(per_run[per_run.len() / 2])
}

/// The p-value below which the two students are called different.
const SIGNIFICANCE: f64 = 0.05;

/// The verdict of an embedding job, where "accuracy" is nearest-neighbour agreement with the
/// teacher and "loss" 1 − the mean cosine to its embeddings.
pub fn embedding_verdict(student: &ModelReport, baseline: Option<&ModelReport>, test: Option<&PairedTest>) -> String {
    let ours = format!(
        "the student's embeddings have a mean cosine of {:.3} with the teacher's, and its nearest neighbour of a held-out text is the teacher's for {:.1}% of them",
        1.0 - student.loss,
        student.accuracy * 100.0
    );
    match (baseline, test) {
        (Some(b), Some(t)) => format!(
            "{ours}; the untrained student (its copied teacher layers): {:.3} and {:.1}% (neighbours only one of them matches: distilled {}, untrained {}, p = {:.3})",
            1.0 - b.loss,
            b.accuracy * 100.0,
            t.distilled_only_correct,
            t.baseline_only_correct,
            t.p_value
        ),
        _ => ours,
    }
}

pub fn verdict(retention: f64, gain: Option<f64>, test: Option<&PairedTest>) -> String {
    let kept = format!("the student keeps {:.1}% of the teacher's accuracy", retention * 100.0);
    let (Some(g), Some(t)) = (gain, test) else {
        return format!("{kept}; no baseline was trained, so the gain from distillation is unknown");
    };
    let evidence = format!(
        "on the held-out samples where only one of them is right, the distilled student wins {} and the baseline {}",
        t.distilled_only_correct, t.baseline_only_correct
    );
    let clear = t.p_value < SIGNIFICANCE;
    if clear && g > 0.0 {
        format!(
            "distillation helped: {kept} and is {:.1} points more accurate than the same student trained without the teacher ({evidence}, p = {:.3})",
            g * 100.0,
            t.p_value
        )
    } else if clear && g < 0.0 {
        format!(
            "distillation did not help: the same student trained without the teacher is {:.1} points more accurate ({evidence}, p = {:.3}); {kept}; try another temperature or alpha, more epochs, or a larger student",
            -g * 100.0,
            t.p_value
        )
    } else {
        format!(
            "distillation made no clear difference: {:+.1} points against the same student trained without the teacher, within the noise of this held-out set ({evidence}, p = {:.2}); {kept}; compare several seeds before concluding",
            g * 100.0,
            t.p_value
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(d: usize, b: usize) -> PairedTest {
        let labels = vec![1u32; d + b];
        let distilled: Vec<u32> = (0..d + b).map(|i| if i < d { 1 } else { 0 }).collect();
        let baseline: Vec<u32> = distilled.iter().map(|p| 1 - p).collect();
        PairedTest::new(&labels, &distilled, &baseline)
    }

    #[test]
    fn mcnemar_counts_only_the_disagreements() {
        let t = PairedTest::new(&[0, 1, 2, 3], &[0, 1, 9, 9], &[0, 9, 2, 9]);
        assert_eq!((t.distilled_only_correct, t.baseline_only_correct, t.p_value), (1, 1, 1.0));
        // scipy.stats.binomtest(4, 4).pvalue = 0.125; binomtest(1, 8) = 0.0703125;
        // binomtest(3, 16) = 0.021270751953125.
        assert!((test(4, 0).p_value - 0.125).abs() < 1e-12);
        assert!((test(7, 1).p_value - 0.0703125).abs() < 1e-12);
        assert!((test(13, 3).p_value - 0.021270751953125).abs() < 1e-12);
        assert_eq!(test(0, 0).p_value, 1.0);
    }

    #[test]
    fn verdicts_say_plainly_when_distillation_loses() {
        assert!(verdict(0.97, Some(0.02), Some(&test(13, 3))).starts_with("distillation helped"));
        assert!(verdict(0.90, Some(-0.03), Some(&test(3, 13))).starts_with("distillation did not help"));
        assert!(verdict(0.95, Some(0.01), Some(&test(6, 3))).starts_with("distillation made no clear difference"));
        assert!(verdict(0.95, Some(0.009), Some(&test(4, 0))).starts_with("distillation made no clear difference"));
        assert!(verdict(0.95, None, None).contains("no baseline"));
    }
}
