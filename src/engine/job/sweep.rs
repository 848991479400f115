//! A sweep: the spec's settings tried one trial at a time after the teachers, each trial judged
//! on the validation split held out of training (never the held-out test samples), the weak
//! ones stopped early by successive halving; the best setting becomes the spec the job then
//! trains as usual. Trials share the teachers and their cached logits, train from the same
//! initialisation and data order (paired), and keep their scores across restarts.

use super::budget;
use super::phases::{Model, Target, Trainer, TrialScore};
use super::report::{SweepReport, TrialReport};
use super::resolve::{self, Resolved};
use crate::engine::rng::{streams, Rng};
use crate::engine::{EngineError, Phase};
use crate::layout;
use crate::spec::{ArchSpec, JobSpec, Rung, Setting, SpecError, SweepSpec, SweepStrategy, SweepValues};

/// The sweep's outcome: the spec of its best setting, and what every trial scored.
pub(super) struct Tuned {
    pub spec: JobSpec,
    pub report: SweepReport,
}

/// One trial: its setting, the spec it trains (checked against the data), and its latest score.
struct Trial {
    setting: Setting,
    spec: JobSpec,
    resolved: Resolved,
    score: Option<TrialScore>,
}

/// The settings a sweep tries, in order: a grid's combinations (temperature outermost, students
/// innermost), or `trials` draws seeded by `seed`.
pub fn settings(sweep: &SweepSpec, seed: u64) -> Vec<Setting> {
    match sweep.strategy {
        SweepStrategy::Grid => grid(sweep),
        SweepStrategy::Random => {
            let mut rng = Rng::stream(seed, &[streams::SWEEP]);
            (0..sweep.trials.unwrap_or(0)).map(|_| draw(sweep, &mut rng)).collect()
        }
    }
}

fn grid(sweep: &SweepSpec) -> Vec<Setting> {
    let list = |values: &Option<SweepValues>| -> Vec<Option<f64>> {
        match values {
            Some(SweepValues::List(list)) => list.iter().copied().map(Some).collect(),
            _ => vec![None],
        }
    };
    let students: Vec<Option<usize>> = match sweep.students.len() {
        0 => vec![None],
        n => (0..n).map(Some).collect(),
    };
    let mut settings = Vec::new();
    for &temperature in &list(&sweep.temperature) {
        for &alpha in &list(&sweep.alpha) {
            for &lr in &list(&sweep.lr) {
                for &student in &students {
                    settings.push(Setting { temperature, alpha, lr, student });
                }
            }
        }
    }
    settings
}

fn draw(sweep: &SweepSpec, rng: &mut Rng) -> Setting {
    let mut value = |values: &Option<SweepValues>| -> Option<f64> {
        Some(match values.as_ref()? {
            SweepValues::List(list) => list[rng.below(list.len())],
            SweepValues::Range(range) => {
                let unit = rng.next_f64();
                match range.log {
                    true => (range.min.ln() + unit * (range.max.ln() - range.min.ln())).exp(),
                    false => range.min + unit * (range.max - range.min),
                }
            }
        })
    };
    let (temperature, alpha, lr) = (value(&sweep.temperature), value(&sweep.alpha), value(&sweep.lr));
    let student = (!sweep.students.is_empty()).then(|| rng.below(sweep.students.len()));
    Setting { temperature, alpha, lr, student }
}

/// A short name for an architecture, for logs and tables.
pub fn arch_label(arch: &ArchSpec) -> String {
    match arch {
        ArchSpec::Mlp { hidden, .. } => format!("mlp {hidden:?}"),
        ArchSpec::Conv { blocks, hidden, .. } => format!("conv {} blocks, hidden {hidden:?}", blocks.len()),
        ArchSpec::Transformer(t) | ArchSpec::Llama(t) => {
            let kind = if matches!(arch, ArchSpec::Llama(_)) { "llama" } else { "transformer" };
            match (&t.layers, t.num_layers, t.hidden_size) {
                (Some(layers), _, hidden) => format!("{kind} layers {layers:?}{}", width(hidden)),
                (None, Some(n), hidden) => format!("{kind} {n} layers{}", width(hidden)),
                (None, None, hidden) => format!("{kind}{}", width(hidden)),
            }
        }
    }
}

fn width(hidden: Option<usize>) -> String {
    hidden.map(|h| format!(", hidden {h}")).unwrap_or_default()
}

/// What a setting changes, in words: `T = 4, α = 0.5, student mlp [32]`.
fn describe(setting: &Setting, spec: &JobSpec) -> String {
    let mut parts = Vec::new();
    parts.extend(setting.temperature.map(|t| format!("T = {t}")));
    parts.extend(setting.alpha.map(|a| format!("α = {a}")));
    parts.extend(setting.lr.map(|lr| format!("lr = {lr:.3e}")));
    parts.extend(setting.student.map(|_| format!("student {}", arch_label(&spec.student.arch))));
    parts.join(", ")
}

/// Runs the sweep's trials rung by rung and returns the spec of the best.
pub(super) fn run(trainer: &mut Trainer, sweep: &SweepSpec, teachers: &[Model]) -> Result<Tuned, EngineError> {
    let spec = trainer.spec;
    let mut trials = prepare(trainer, sweep)?;
    let rungs = sweep.rungs(spec.training.epochs);
    trainer.log(format!(
        "sweep: {} trials ({}), each judged on {} validation samples held out of training{}",
        trials.len(),
        match sweep.strategy {
            SweepStrategy::Grid => "a grid",
            SweepStrategy::Random => "drawn at random",
        },
        trainer.data.monitor.as_ref().map_or(0, |m| m.len()),
        match rungs.len() {
            1 => String::new(),
            _ => format!("; successive halving over epochs {:?}", rungs.iter().map(|r| r.epochs).collect::<Vec<_>>()),
        }
    ));
    let mut alive: Vec<usize> = (0..trials.len()).collect();
    for (r, rung) in rungs.iter().enumerate() {
        alive = best_of(&trials, &alive, rung.trials);
        for &t in &alive {
            let trial = &trials[t];
            trainer.log(format!(
                "trial {} of {} (rung {} of {}, to epoch {}): {}",
                t + 1,
                trials.len(),
                r + 1,
                rungs.len(),
                rung.epochs,
                describe(&trial.setting, &trial.spec)
            ));
            let target = Target { spec: &trial.spec, resolved: &trial.resolved };
            let score = trainer.trial(target, t + 1, rung.epochs, teachers)?;
            trials[t].score = Some(score);
        }
    }
    let best = best_of(&trials, &alive, 1)[0];
    discard_checkpoints(trainer, trials.len())?;
    let report = sweep_report(sweep, &trials, &rungs, best, trainer.data.monitor.as_ref().map_or(0, |m| m.len()));
    trainer.log(format!(
        "sweep: trial {} is best ({:.2}% on validation data): {}; training it as the job's student",
        best + 1,
        100.0 * trials[best].score.as_ref().map_or(0.0, |s| s.validation_accuracy),
        describe(&trials[best].setting, &trials[best].spec)
    ));
    Ok(Tuned { spec: trials.swap_remove(best).spec, report })
}

/// The trials' checkpoints, once every rung is judged: the scores in the job's state are all a
/// restart needs.
fn discard_checkpoints(trainer: &Trainer, trials: usize) -> Result<(), EngineError> {
    for number in 1..=trials {
        let phase = Phase::Trial(number).as_str();
        for file in [layout::checkpoint_file(&phase), layout::best_file(&phase)] {
            match std::fs::remove_file(trainer.ctx.job_dir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Every trial's spec, checked against the data.
fn prepare(trainer: &Trainer, sweep: &SweepSpec) -> Result<Vec<Trial>, EngineError> {
    let spec = trainer.spec;
    settings(sweep, spec.training.seed)
        .into_iter()
        .map(|setting| {
            let trial = spec.with_setting(&setting);
            let resolved = resolve::resolve(&trial, trainer.data, trainer.text)?;
            Ok(Trial { setting, spec: trial, resolved, score: None })
        })
        .collect()
}

/// The `keep` best of `alive` by their latest score (validation accuracy, then loss, then the
/// earlier trial), in trial order; every one of them before any has a score.
fn best_of(trials: &[Trial], alive: &[usize], keep: usize) -> Vec<usize> {
    let mut ranked = alive.to_vec();
    let key = |t: usize| trials[t].score.as_ref().map(|s| (s.validation_accuracy, -s.validation_loss));
    ranked.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    ranked.truncate(keep);
    ranked.sort_unstable();
    ranked
}

fn sweep_report(sweep: &SweepSpec, trials: &[Trial], rungs: &[Rung], best: usize, samples: usize) -> SweepReport {
    let last = rungs.last().map_or(0, |r| r.epochs);
    SweepReport {
        strategy: sweep.strategy,
        validation_samples: samples,
        rungs: rungs.to_vec(),
        best_trial: best + 1,
        trials: trials
            .iter()
            .enumerate()
            .map(|(i, trial)| {
                let score = trial.score.clone().expect("every trial trains on the first rung");
                TrialReport {
                    trial: i + 1,
                    setting: trial.setting.clone(),
                    temperature: trial.spec.distill.temperature,
                    alpha: trial.spec.distill.alpha,
                    lr: trial.spec.training.optimizer.lr(),
                    student: arch_label(&trial.spec.student.arch),
                    student_parameters: budget::parameters(&trial.resolved.student),
                    stopped_early: score.epochs < last,
                    epochs: score.epochs,
                    validation_accuracy: score.validation_accuracy,
                    validation_loss: score.validation_loss,
                    wall_s: score.wall_s,
                }
            })
            .collect(),
    }
}

/// `sweep.students[i]` resolved against the data, for the checks before a job is accepted: a
/// refusal names the student it is about.
pub(super) fn student_specs(spec: &JobSpec) -> Vec<(String, JobSpec)> {
    let Some(sweep) = &spec.sweep else { return Vec::new() };
    (0..sweep.students.len())
        .map(|i| {
            let setting = Setting { student: Some(i), ..Setting::default() };
            (format!("sweep.students[{i}]"), spec.with_setting(&setting))
        })
        .collect()
}

/// A refusal about `student.arch` or `distill.intermediate` of a swept student, renamed to
/// the student's field.
pub(super) fn about_student(error: SpecError, field: &str) -> SpecError {
    match error.field.starts_with("student.arch") {
        true => SpecError::new(format!("{field}{}", &error.field["student.arch".len()..]), error.message),
        false => SpecError::new(field, format!("{}: {}", error.field, error.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(value: serde_json::Value) -> SweepSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn random_draws_stay_in_their_ranges_and_repeat_with_the_seed() {
        let random = sweep(serde_json::json!({
            "strategy": "random", "trials": 40, "lr": {"min": 0.0001, "max": 0.1, "log": true},
            "alpha": {"min": 0.2, "max": 0.9}, "temperature": [2.0, 4.0], "students": [{"kind": "mlp", "hidden": [8]}, {"kind": "mlp", "hidden": [16]}]
        }));
        let drawn = settings(&random, 7);
        assert_eq!(drawn.len(), 40);
        for s in &drawn {
            assert!((0.0001..0.1).contains(&s.lr.unwrap()) && (0.2..0.9).contains(&s.alpha.unwrap()), "{s:?}");
            assert!([Some(2.0), Some(4.0)].contains(&s.temperature) && s.student.unwrap() < 2, "{s:?}");
        }
        // Log-uniform: about as many draws below 0.00316 (the log midpoint) as above.
        let low = drawn.iter().filter(|s| s.lr.unwrap() < 0.00316).count();
        assert!((10..=30).contains(&low), "{low} of 40 below the log midpoint");
        assert_eq!(drawn, settings(&random, 7));
        assert_ne!(drawn, settings(&random, 8));
    }

    #[test]
    fn a_grid_orders_temperature_outermost_and_students_innermost() {
        let grid = sweep(
            serde_json::json!({"temperature": [2.0, 4.0], "students": [{"kind": "mlp", "hidden": [8]}, {"kind": "mlp", "hidden": [16]}]}),
        );
        let order: Vec<(Option<f64>, Option<usize>)> =
            settings(&grid, 0).iter().map(|s| (s.temperature, s.student)).collect();
        assert_eq!(order, [(Some(2.0), Some(0)), (Some(2.0), Some(1)), (Some(4.0), Some(0)), (Some(4.0), Some(1))]);
    }
}
