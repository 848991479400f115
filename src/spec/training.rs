//! `training`: epochs, batches, the optimiser and its schedule, augmentation, early stopping.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub epochs: u32,
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up steps before the schedule (cosine) takes over.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub checkpoint_every: CheckpointEvery,
    /// Random shifts of image inputs, the same for teachers and student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Train the student and the baseline this many times, with seeds `seed`, `seed + 1`, …;
    /// the teacher trains once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<u32>,
    /// The seeds of the repeated runs, given outright (instead of `repeats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
}

/// The most runs `repeats` or `seeds` may ask for.
pub const MAX_REPEATS: usize = 20;

impl TrainingSpec {
    /// The seed of each run of the student and the baseline: one run with `seed` unless the
    /// spec repeats them.
    pub fn run_seeds(&self) -> Vec<u64> {
        match (&self.seeds, self.repeats) {
            (Some(seeds), _) => seeds.clone(),
            (None, Some(k)) => (0..u64::from(k)).map(|i| self.seed.wrapping_add(i)).collect(),
            (None, None) => vec![self.seed],
        }
    }

    /// Whether the student and the baseline train more than once.
    pub fn repeated(&self) -> bool {
        self.run_seeds().len() > 1
    }

    pub(super) fn validate_repeats(&self) -> Result<(), SpecError> {
        let in_range = |n: usize| (1..=MAX_REPEATS).contains(&n);
        match (&self.seeds, self.repeats) {
            (Some(_), Some(_)) => Err(SpecError::new("training.seeds", "give `repeats` or `seeds`, not both")),
            (None, Some(k)) if !in_range(k as usize) => {
                Err(SpecError::new("training.repeats", format!("must be within [1, {MAX_REPEATS}], got {k}")))
            }
            (Some(seeds), None) if !in_range(seeds.len()) => {
                Err(SpecError::new("training.seeds", format!("give 1 to {MAX_REPEATS} seeds, got {}", seeds.len())))
            }
            (Some(seeds), None) => match seeds.iter().enumerate().find(|(i, s)| seeds[..*i].contains(s)) {
                Some((i, s)) => Err(SpecError::new(format!("training.seeds[{i}]"), format!("seed {s} is given twice"))),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSpec {
    /// Largest shift in pixels, along each axis; the uncovered border is background (raw 0).
    pub shift: usize,
}

/// Stop a phase when the validation loss has not improved by `min_delta` for `patience`
/// epochs; the best epoch's weights are the phase's result. The validation samples are then
/// held out of the training split, so the reported held-out set stays unseen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub patience: u32,
    #[serde(default)]
    pub min_delta: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum OptimizerSpec {
    Adamw {
        lr: f64,
        #[serde(default = "default_weight_decay")]
        weight_decay: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Sgd {
        lr: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

impl OptimizerSpec {
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerSpec::Adamw { lr, .. } | OptimizerSpec::Sgd { lr, .. } => lr,
        }
    }

    /// The same optimiser with another learning rate.
    pub fn with_lr(mut self, value: f64) -> Self {
        match &mut self {
            OptimizerSpec::Adamw { lr, .. } | OptimizerSpec::Sgd { lr, .. } => *lr = value,
        }
        self
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointEvery {
    #[default]
    Epoch,
}

pub(super) fn default_weight_decay() -> f64 {
    0.01
}
pub(super) fn default_beta1() -> f64 {
    0.9
}
pub(super) fn default_beta2() -> f64 {
    0.999
}
pub(super) fn default_eps() -> f64 {
    1e-8
}
pub(super) fn default_momentum() -> f64 {
    0.9
}

pub(super) fn validate_epochs(epochs: u32, field: &str) -> Result<(), SpecError> {
    if epochs == 0 || epochs > MAX_EPOCHS {
        return Err(SpecError::new(field, format!("must be within [1, {MAX_EPOCHS}], got {epochs}")));
    }
    Ok(())
}

pub(super) fn validate_batch(batch: usize, field: &str) -> Result<(), SpecError> {
    if batch == 0 || batch > MAX_BATCH_SIZE {
        return Err(SpecError::new(field, format!("must be within [1, {MAX_BATCH_SIZE}], got {batch}")));
    }
    Ok(())
}

pub(super) fn validate_optimizer(opt: &OptimizerSpec, field: &str) -> Result<(), SpecError> {
    let lr = opt.lr();
    if !(lr.is_finite() && lr > 0.0 && lr <= 10.0) {
        return Err(SpecError::new(format!("{field}.lr"), format!("must be within (0, 10], got {lr}")));
    }
    let in_unit = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
    match *opt {
        OptimizerSpec::Adamw { weight_decay, beta1, beta2, eps, .. } => {
            if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                return Err(SpecError::new(format!("{field}.weight_decay"), "must be ≥ 0"));
            }
            if !in_unit(beta1) {
                return Err(SpecError::new(format!("{field}.beta1"), "must be within [0, 1)"));
            }
            if !in_unit(beta2) {
                return Err(SpecError::new(format!("{field}.beta2"), "must be within [0, 1)"));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return Err(SpecError::new(format!("{field}.eps"), "must be > 0"));
            }
        }
        OptimizerSpec::Sgd { momentum, weight_decay, .. } => {
            if !in_unit(momentum) {
                return Err(SpecError::new(format!("{field}.momentum"), "must be within [0, 1)"));
            }
            if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                return Err(SpecError::new(format!("{field}.weight_decay"), "must be ≥ 0"));
            }
        }
    }
    Ok(())
}
