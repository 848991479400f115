//! `sweep`: settings tried before the final training, each judged on validation data held out
//! of training: temperatures, α, learning rates and whole student architectures, as a grid or
//! drawn at random, with weak trials stopped early by successive halving.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    #[serde(default)]
    pub strategy: SweepStrategy,
    /// `random`: how many settings to draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<SweepValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<SweepValues>,
    /// The learning rate of `training.optimizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<SweepValues>,
    /// Whole student architectures, in place of `student.arch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub students: Vec<ArchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halving: Option<Halving>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepStrategy {
    /// Every combination of the listed values.
    #[default]
    Grid,
    /// `trials` settings drawn from the lists and ranges (seeded by `training.seed`).
    Random,
}

/// A list of values, or (random search only) a range to draw from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SweepValues {
    List(Vec<f64>),
    Range(ValueRange),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRange {
    pub min: f64,
    pub max: f64,
    /// Draw uniformly in log space (for learning rates).
    #[serde(default)]
    pub log: bool,
}

/// Successive halving: every trial trains `min_epochs`, the best 1/`eta` go on for `eta` times
/// as many, and so on, until one is left or the epochs run out; the last rung trains the
/// survivors to `training.epochs`. Learning-rate schedules always span the full epochs, so a
/// trial carried on from its checkpoint trains exactly as one trained straight through.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Halving {
    #[serde(default = "default_eta")]
    pub eta: usize,
    #[serde(default = "default_min_epochs")]
    pub min_epochs: u32,
}

fn default_eta() -> usize {
    3
}

fn default_min_epochs() -> u32 {
    1
}

/// One rung of a sweep: how many trials train, and to which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    pub epochs: u32,
    pub trials: usize,
}

/// One trial's choices; `None` keeps the spec's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Index into `sweep.students`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<usize>,
}

/// The most trials a sweep may run.
pub const MAX_TRIALS: usize = 64;

/// The swept dimensions: name, values, the spec field a value replaces.
type Dimension<'a> = (&'static str, &'a SweepValues, &'static str);

impl SweepSpec {
    fn dimensions(&self) -> Vec<Dimension<'_>> {
        let named = [
            ("temperature", &self.temperature, "distill.temperature"),
            ("alpha", &self.alpha, "distill.alpha"),
            ("lr", &self.lr, "training.optimizer.lr"),
        ];
        named.into_iter().filter_map(|(name, values, target)| Some((name, values.as_ref()?, target))).collect()
    }

    /// How many trials the sweep runs: the grid's size, or `trials`.
    pub fn trial_count(&self) -> usize {
        match self.strategy {
            SweepStrategy::Random => self.trials.unwrap_or(0),
            SweepStrategy::Grid => {
                let lengths = self.dimensions().into_iter().map(|(_, values, _)| match values {
                    SweepValues::List(list) => list.len(),
                    SweepValues::Range(_) => 0,
                });
                lengths.chain((!self.students.is_empty()).then_some(self.students.len())).product()
            }
        }
    }

    /// The rungs the trials climb, for a student trained `epochs` epochs: one rung of every
    /// trial at full length without halving.
    pub fn rungs(&self, epochs: u32) -> Vec<Rung> {
        let n = self.trial_count();
        let Some(halving) = self.halving else {
            return vec![Rung { epochs, trials: n }];
        };
        let mut rungs = Vec::new();
        let (mut budget, mut survivors) = (u64::from(halving.min_epochs), n);
        loop {
            if survivors <= 1 || budget >= u64::from(epochs) {
                rungs.push(Rung { epochs, trials: survivors.max(1) });
                return rungs;
            }
            rungs.push(Rung { epochs: budget as u32, trials: survivors });
            budget = budget.saturating_mul(halving.eta as u64);
            survivors = survivors.div_ceil(halving.eta);
        }
    }

    /// Student epochs the trials train in all, summed over rungs (each rung carries its trials
    /// on from the last one's epoch).
    pub fn trial_epochs(&self, epochs: u32) -> u64 {
        let mut done = 0;
        let mut total = 0u64;
        for rung in self.rungs(epochs) {
            total = total.saturating_add(u64::from(rung.epochs - done).saturating_mul(rung.trials as u64));
            done = rung.epochs;
        }
        total
    }

    pub(super) fn validate(&self, spec: &JobSpec) -> Result<(), SpecError> {
        let dimensions = self.dimensions();
        if spec.dataset.source == DatasetSource::Text && spec.dataset.label_column.is_none() {
            return Err(SpecError::new(
                "sweep",
                "a sweep ranks trials by accuracy on labelled validation data; name `dataset.label_column`",
            ));
        }
        if dimensions.is_empty() && self.students.is_empty() {
            return Err(SpecError::new("sweep", "name what to try: `temperature`, `alpha`, `lr` or `students`"));
        }
        self.validate_strategy(&dimensions)?;
        for (name, values, target) in &dimensions {
            validate_values(spec, name, values, target)?;
        }
        if self.students.len() > MAX_TRIALS {
            return Err(SpecError::new("sweep.students", format!("at most {MAX_TRIALS} students")));
        }
        for (i, student) in self.students.iter().enumerate() {
            validate_arch(student, &format!("sweep.students[{i}]"))?;
        }
        if let Some(halving) = self.halving {
            if !(2..=10).contains(&halving.eta) {
                return Err(SpecError::new(
                    "sweep.halving.eta",
                    format!("must be within [2, 10], got {}", halving.eta),
                ));
            }
            if halving.min_epochs == 0 || halving.min_epochs >= spec.training.epochs {
                return Err(SpecError::new(
                    "sweep.halving.min_epochs",
                    format!(
                        "must be at least 1 and below training.epochs ({}), got {}",
                        spec.training.epochs, halving.min_epochs
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_strategy(&self, dimensions: &[Dimension]) -> Result<(), SpecError> {
        match self.strategy {
            SweepStrategy::Grid => {
                if self.trials.is_some() {
                    return Err(SpecError::new(
                        "sweep.trials",
                        "a grid tries every combination; `trials` is for `strategy: random`",
                    ));
                }
                if let Some((name, _, _)) = dimensions.iter().find(|(_, v, _)| matches!(v, SweepValues::Range(_))) {
                    return Err(SpecError::new(
                        format!("sweep.{name}"),
                        "a grid takes a list of values; ranges are for `strategy: random`",
                    ));
                }
            }
            SweepStrategy::Random if self.trials.is_none() => {
                return Err(SpecError::new("sweep.trials", "random search needs `trials`, the settings to draw"));
            }
            SweepStrategy::Random => {}
        }
        let n = self.trial_count();
        if !(2..=MAX_TRIALS).contains(&n) {
            let field = if self.strategy == SweepStrategy::Random { "sweep.trials" } else { "sweep" };
            return Err(SpecError::new(field, format!("a sweep runs 2 to {MAX_TRIALS} trials; this one has {n}")));
        }
        Ok(())
    }
}

/// Each listed value, and a range's ends, must be what the field it replaces accepts.
fn validate_values(spec: &JobSpec, name: &str, values: &SweepValues, target: &str) -> Result<(), SpecError> {
    let field = format!("sweep.{name}");
    if name == "temperature" && spec.distill.loss == LogitLossKind::Mse {
        return Err(SpecError::new(field, "`loss: mse` compares raw logits; the temperature does not apply"));
    }
    let check = |value: f64, field: String| {
        let setting = match name {
            "temperature" => Setting { temperature: Some(value), ..Setting::default() },
            "alpha" => Setting { alpha: Some(value), ..Setting::default() },
            _ => Setting { lr: Some(value), ..Setting::default() },
        };
        match spec.with_setting(&setting).validate() {
            Err(e) if e.field == target => Err(SpecError::new(field, e.message)),
            other => other,
        }
    };
    match values {
        SweepValues::List(list) => {
            if list.is_empty() || list.len() > MAX_TRIALS {
                return Err(SpecError::new(field, format!("give 1 to {MAX_TRIALS} values")));
            }
            for (i, &value) in list.iter().enumerate() {
                if list[..i].contains(&value) {
                    return Err(SpecError::new(format!("{field}[{i}]"), format!("{value} is given twice")));
                }
                check(value, format!("{field}[{i}]"))?;
            }
        }
        SweepValues::Range(range) => {
            check(range.min, format!("{field}.min"))?;
            check(range.max, format!("{field}.max"))?;
            if range.min >= range.max {
                return Err(SpecError::new(field, format!("min ({}) must be below max ({})", range.min, range.max)));
            }
            if range.log && range.min <= 0.0 {
                return Err(SpecError::new(format!("{field}.min"), "a log range needs min > 0"));
            }
        }
    }
    Ok(())
}

impl JobSpec {
    /// The spec one trial trains: the setting's values in place of the spec's, without the sweep.
    pub fn with_setting(&self, setting: &Setting) -> JobSpec {
        let mut spec = self.clone();
        if let Some(t) = setting.temperature {
            spec.distill.temperature = Scheduled::Constant(t);
        }
        if let Some(a) = setting.alpha {
            spec.distill.alpha = Scheduled::Constant(a);
        }
        if let Some(lr) = setting.lr {
            spec.training.optimizer = spec.training.optimizer.with_lr(lr);
        }
        if let (Some(i), Some(sweep)) = (setting.student, &self.sweep) {
            spec.student.arch = sweep.students[i].clone();
        }
        spec.sweep = None;
        spec
    }
}
