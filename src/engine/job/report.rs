//! The job's report: what distillation bought, measured on the held-out split.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::stats;
use crate::engine::models::Net;
use crate::engine::train::{CacheReport, PhaseSummary};
use crate::spec::{IntermediateSpec, LayerCopy, LogitLossKind, Rung, Scheduled, Setting, SweepStrategy};

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
    /// With repeated seeds, the mean gain over the runs.
    pub gain: Option<f64>,
    /// Whether the gain stands out from the noise of the held-out set (with repeated seeds,
    /// between the exported student and its seed's baseline).
    pub gain_test: Option<PairedTest>,
    /// With `training.repeats` or `training.seeds`: every run and what they say together.
    /// `student` and `baseline` above are then the exported run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Repeats>,
    /// With `sweep`: every trial and its score on validation data. The rest of the report is the
    /// best trial's setting, trained again as the job's student and judged once on the held-out
    /// split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepReport>,
    /// Causal language models: perplexities, agreement, continuations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_model: Option<LanguageModelReport>,
    /// Student parameters ÷ teacher parameters.
    pub size_ratio: f64,
    /// Teacher latency ÷ student latency, at batch 1 and batch N.
    pub speedup: Speedup,
    /// Training wall time of all phases, resumes and a sweep's trials included.
    pub wall_time_s: f64,
    /// Training throughput of the distillation phase.
    pub train_samples_per_s: f64,
    /// CPU threads the job trained with (its share of the machine under `--threads-per-job`).
    #[serde(default)]
    pub threads: usize,
    /// One plain sentence: did distillation help?
    pub verdict: String,
    /// The ways this job may lose (a tiny student, T = 1, a teacher with little to teach), each
    /// also a `log` event.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Classification,
    Embedding,
    /// A causal LM: a model's `accuracy` is its next-token accuracy on the held-out blocks, its
    /// `loss` the next-token cross-entropy there (nats per token), `agreement` the share of
    /// positions where its top token is the teacher's; latency is per generated token at batch 1
    /// and per forward pass over N blocks.
    LanguageModel,
}

/// What a causal LM kept of its teacher, on the held-out documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageModelReport {
    pub mode: crate::spec::DistillMode,
    pub block_length: usize,
    pub vocabulary: usize,
    /// Tokens the loss covered per epoch, and on the held-out blocks.
    pub train_tokens: usize,
    pub held_out_tokens: usize,
    pub teacher: LanguageModelScores,
    pub student: LanguageModelScores,
    pub baseline: Option<LanguageModelScores>,
    /// Tokens per second through the distillation phase's training steps.
    pub train_tokens_per_s: f64,
    /// Sequence-level distillation: the teacher's continuations the student trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generations: Option<GenerationsReport>,
    /// Tokens each continuation adds, unless it ends at the end-of-sequence token first.
    pub max_new_tokens: usize,
    /// A few held-out prompts and each model's greedy continuation, side by side.
    pub samples: Vec<SampleContinuation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageModelScores {
    /// exp(mean next-token cross-entropy) on the held-out blocks.
    pub perplexity: f64,
    /// Mean KL(teacher ‖ model) per token at T = 1 (0 for the teacher).
    pub kl_to_teacher: f64,
    /// Mean ROUGE-L F1 of its greedy continuations of the held-out prompts against the
    /// teacher's (1 for the teacher).
    pub rouge_l: f64,
    /// Tokens per second generating at batch 1.
    pub generation_tokens_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationsReport {
    pub prompts: usize,
    pub tokens: usize,
    pub wall_s: f64,
    /// The artifact that holds them, one JSON object per line.
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleContinuation {
    pub prompt: String,
    pub teacher: String,
    pub student: String,
    pub baseline: Option<String>,
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

/// The student and the baseline trained once per seed, the teacher once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repeats {
    pub runs: Vec<RunReport>,
    /// The run exported as `student.safetensors`: the best on the validation split held out of
    /// the training data (never the held-out test samples).
    pub exported_run: usize,
    pub exported_seed: u64,
    pub student_accuracy: Spread,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_accuracy: Option<Spread>,
    /// The gain across seeds; absent without a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gain: Option<GainAcrossSeeds>,
}

/// One seed's run, judged on the held-out split (`validation_accuracy`: on the validation split
/// held out of training, which picks the exported run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub run: usize,
    pub seed: u64,
    pub student_accuracy: f64,
    pub validation_accuracy: f64,
    pub baseline_accuracy: Option<f64>,
    pub gain: Option<f64>,
}

/// Mean and sample standard deviation over the runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
}

/// The per-seed gains taken together: a 95% confidence interval of their mean (Student's t,
/// k − 1 degrees of freedom) and the paired t-test of "distillation changes nothing".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GainAcrossSeeds {
    pub mean: f64,
    pub sd: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
    /// Absent when every seed gained exactly as much (no spread, so no t).
    pub t: Option<f64>,
    /// Two-sided p-value of the paired t-test on the per-seed gains; 1 without spread (no test).
    pub p_value: f64,
}

impl GainAcrossSeeds {
    /// From two or more per-seed gains.
    pub fn new(gains: &[f64]) -> Self {
        let (mean, sd) = stats::mean_sd(gains);
        let df = (gains.len() - 1) as f64;
        let standard_error = sd / (gains.len() as f64).sqrt();
        let half_width = stats::t_quantile(0.95, df) * standard_error;
        // Identical gains on every seed (accuracies move in whole held-out samples, so a few
        // seeds may well agree): with no spread the t-test cannot judge, and p = 1 says so.
        let t = (standard_error > 0.0).then(|| mean / standard_error);
        let p_value = t.map_or(1.0, |t| stats::t_two_sided_p(t, df));
        Self { mean, sd, ci95_low: mean - half_width, ci95_high: mean + half_width, t, p_value }
    }
}

impl Repeats {
    /// The runs' summary; `exported` indexes `runs`.
    pub fn new(runs: Vec<RunReport>, exported: usize) -> Self {
        let spread = |values: Vec<f64>| {
            let (mean, sd) = stats::mean_sd(&values);
            Spread { mean, sd }
        };
        let student_accuracy = spread(runs.iter().map(|r| r.student_accuracy).collect());
        let baselines: Option<Vec<f64>> = runs.iter().map(|r| r.baseline_accuracy).collect();
        let gains: Option<Vec<f64>> = runs.iter().map(|r| r.gain).collect();
        Self {
            exported_run: runs[exported].run,
            exported_seed: runs[exported].seed,
            student_accuracy,
            baseline_accuracy: baselines.map(spread),
            gain: gains.map(|g| GainAcrossSeeds::new(&g)),
            runs,
        }
    }
}

/// The trials of a sweep, judged on the validation split held out of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub strategy: SweepStrategy,
    /// Samples of the validation split every trial was judged on.
    pub validation_samples: usize,
    /// Successive halving's rungs (one rung of every trial without it).
    pub rungs: Vec<Rung>,
    /// The trial whose setting the job's student trained with.
    pub best_trial: usize,
    pub trials: Vec<TrialReport>,
}

/// One trial: what it tried, and how it scored on the last rung it reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialReport {
    pub trial: usize,
    /// The swept values alone (`student` indexes `sweep.students`).
    pub setting: Setting,
    /// The values it trained with, swept or the spec's own.
    pub temperature: Scheduled,
    pub alpha: Scheduled,
    pub lr: f64,
    pub student: String,
    pub student_parameters: u64,
    /// Epochs trained; fewer than the last rung's when halving stopped it.
    pub epochs: u32,
    pub stopped_early: bool,
    pub validation_accuracy: f64,
    pub validation_loss: f64,
    pub wall_s: f64,
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
/// The model runs frozen (`Net::frozen`, free for a net frozen already), as inference serves it.
pub fn latency_ms(model: &Net, x: &[f32], batch: usize, device: &Device, budget: Duration) -> candle_core::Result<f64> {
    const BLOCKS: u32 = 7;
    let model = &model.frozen()?;
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

/// The verdict over repeated seeds: from the confidence interval of the mean gain and the
/// paired t-test, never from a single run.
pub fn repeats_verdict(retention: f64, repeats: &Repeats) -> String {
    let k = repeats.runs.len();
    let kept = format!(
        "the exported student (run {}, seed {}, the best on validation data) keeps {:.1}% of the teacher's accuracy",
        repeats.exported_run,
        repeats.exported_seed,
        retention * 100.0
    );
    let Some(g) = &repeats.gain else {
        let s = &repeats.student_accuracy;
        return format!(
            "over {k} seeds the student reaches {:.1}% ± {:.1} accuracy; {kept}; no baseline was trained, so the gain from distillation is unknown",
            s.mean * 100.0,
            s.sd * 100.0
        );
    };
    if g.t.is_none() {
        return format!(
            "distillation made no clear difference: every one of the {k} seeds gained exactly {:+.1} points, and with no spread across seeds the paired t-test cannot judge it; {kept}; try more seeds",
            g.mean * 100.0
        );
    }
    let evidence = format!(
        "(95% CI {:+.1} to {:+.1}) over {k} seeds, paired t-test p = {:.3}",
        g.ci95_low * 100.0,
        g.ci95_high * 100.0,
        g.p_value
    );
    if g.ci95_low > 0.0 {
        format!("distillation helped: {:+.1} points {evidence}; {kept}", g.mean * 100.0)
    } else if g.ci95_high < 0.0 {
        format!(
            "distillation hurt: {:+.1} points {evidence}; {kept}; try another temperature or alpha, more epochs, or a larger student",
            g.mean * 100.0
        )
    } else {
        format!(
            "distillation made no clear difference: {:+.1} points {evidence}; the interval spans 0; {kept}",
            g.mean * 100.0
        )
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

    fn runs(gains: &[f64]) -> Vec<RunReport> {
        let run = |(i, g): (usize, &f64)| RunReport {
            run: i + 1,
            seed: 42 + i as u64,
            student_accuracy: 0.9 + g,
            validation_accuracy: 0.8 + i as f64 / 100.0,
            baseline_accuracy: Some(0.9),
            gain: Some(*g),
        };
        gains.iter().enumerate().map(run).collect()
    }

    /// By hand (reference values from mpmath): gains 1, 2, 3, 4, 5 points have mean 3, sd
    /// √(10/4) = 1.5811; standard error 1.5811/√5 = 0.70711; t(0.975, 4) = 2.776445, so the
    /// interval is 3 ± 1.96324 = [1.03676, 4.96324] points; t = 3/0.70711 = 4.24264, p = 0.0132356.
    #[test]
    fn interval_and_paired_test_over_seeds_match_a_hand_computation() {
        let repeats = Repeats::new(runs(&[0.01, 0.02, 0.03, 0.04, 0.05]), 4);
        let g = repeats.gain.unwrap();
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        close(g.mean, 0.03);
        close(g.sd, 0.015_811_388_300_841_9);
        close(g.ci95_low, 0.010_367_568_385_224_4);
        close(g.ci95_high, 0.049_632_431_614_775_6);
        close(g.t.unwrap(), 4.242_640_687_119_285);
        close(g.p_value, 0.013_235_599_563_682_7);
        assert_eq!((repeats.exported_run, repeats.exported_seed), (5, 46));
        let v = repeats_verdict(0.97, &repeats);
        assert!(
            v.starts_with(
                "distillation helped: +3.0 points (95% CI +1.0 to +5.0) over 5 seeds, paired t-test p = 0.013"
            ),
            "{v}"
        );
        assert!(v.contains("run 5, seed 46"), "{v}");

        // Gains 12, −4, 7, −9, 3, 5 tenths of a point: mean 0.2333, sd 0.76333, t(0.975, 5) =
        // 2.570582; interval [−0.56773, +1.03439] points, t = 0.74876, p = 0.487709.
        let repeats = Repeats::new(runs(&[0.012, -0.004, 0.007, -0.009, 0.003, 0.005]), 0);
        let g = repeats.gain.unwrap();
        close(g.ci95_low, -0.005_677_282_339_368_835);
        close(g.ci95_high, 0.010_343_949_006_035_5);
        close(g.p_value, 0.487_708_619_118_944_1);
        assert!(repeats_verdict(0.97, &repeats).starts_with("distillation made no clear difference"));
        let repeats = Repeats::new(runs(&[-0.02, -0.03, -0.025]), 0);
        assert!(repeats_verdict(0.9, &repeats).starts_with("distillation hurt"));
        let same = GainAcrossSeeds::new(&[0.01, 0.01]);
        assert_eq!((same.t, same.p_value, same.ci95_low, same.ci95_high), (None, 1.0, 0.01, 0.01));
        let agreeing = Repeats::new(runs(&[0.01, 0.01, 0.01]), 0);
        assert!(repeats_verdict(0.97, &agreeing).contains("no spread across seeds"), "three equal gains are not proof");
        assert_eq!((GainAcrossSeeds::new(&[0.0, 0.0]).p_value), 1.0);
    }
}
