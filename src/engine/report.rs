//! The job's report: what distillation bought, measured on the held-out split.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::Mlp;
use super::train::PhaseSummary;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub dataset: DatasetSummary,
    pub distillation: DistillationSummary,
    pub device: String,
    pub teacher: ModelReport,
    /// The distilled student.
    pub student: ModelReport,
    /// The same student trained without the teacher, when the spec asked for it.
    pub baseline: Option<ModelReport>,
    /// Student accuracy ÷ teacher accuracy.
    pub retention: f64,
    /// Distilled − baseline accuracy (fraction, 0.01 = one point); absent without a baseline.
    pub gain: Option<f64>,
    /// Student parameters ÷ teacher parameters.
    pub size_ratio: f64,
    /// Teacher latency ÷ student latency, at batch 1 and batch N.
    pub speedup: Speedup,
    /// Training wall time of all phases, resumes included.
    pub wall_time_s: f64,
    /// Training throughput of the distillation phase.
    pub train_samples_per_s: f64,
    /// One plain sentence: did distillation help?
    pub verdict: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub name: String,
    pub features: usize,
    pub classes: usize,
    pub train_samples: usize,
    pub validation_samples: usize,
    /// `split` (held out from the training data) or `test_file`.
    pub validation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillationSummary {
    pub temperature: f64,
    pub alpha: f64,
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

/// Mean time of a forward pass at batch size `batch`, on inputs cycled from `x`. Repeats until
/// about `budget` has passed so that tiny models are not measured by timer resolution.
pub fn latency_ms(model: &Mlp, x: &[f32], features: usize, batch: usize, device: &Device, budget: Duration) -> candle_core::Result<f64> {
    let rows = x.len() / features;
    let input: Vec<f32> = (0..batch).flat_map(|i| x[(i % rows) * features..(i % rows + 1) * features].iter().copied()).collect();
    let input = Tensor::from_vec(input, (batch, features), device)?;
    for _ in 0..3 {
        model.forward(&input, None)?;
    }
    device.synchronize()?;
    let started = Instant::now();
    let mut runs = 0u32;
    while runs < 5 || (started.elapsed() < budget && runs < 100_000) {
        model.forward(&input, None)?;
        runs += 1;
    }
    device.synchronize()?;
    Ok(started.elapsed().as_secs_f64() * 1000.0 / runs as f64)
}

/// Differences smaller than this are within noise for the held-out sets we see.
const NOISE: f64 = 0.005;

pub fn verdict(retention: f64, gain: Option<f64>) -> String {
    let kept = format!("the student keeps {:.1}% of the teacher's accuracy", retention * 100.0);
    match gain {
        None => format!("{kept}; no baseline was trained, so the gain from distillation is unknown"),
        Some(g) if g > NOISE => format!(
            "distillation helped: {kept} and is {:.1} points more accurate than the same student trained without the teacher",
            g * 100.0
        ),
        Some(g) if g < -NOISE => format!(
            "distillation did not help: the student trained without the teacher is {:.1} points more accurate ({kept}); try another temperature or alpha, more epochs, or a larger student",
            -g * 100.0
        ),
        Some(g) => format!(
            "distillation made no clear difference: {:+.1} points against the same student trained without the teacher ({kept})",
            g * 100.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_plainly_when_distillation_loses() {
        assert!(verdict(0.97, Some(0.02)).starts_with("distillation helped"));
        assert!(verdict(0.90, Some(-0.03)).starts_with("distillation did not help"));
        assert!(verdict(0.95, Some(0.001)).starts_with("distillation made no clear difference"));
        assert!(verdict(0.95, None).contains("no baseline"));
    }
}
