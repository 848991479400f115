//! The report: every model judged on the held-out split (for unlabelled texts, by how closely
//! its embeddings follow the teacher's), its size and latency measured, and the comparison the
//! user asked for: retention, gain over the baseline, speed-up, and the verdict.

use std::time::Duration;

use candle_core::{Device, Tensor};

use super::guidance;
use super::phases::{file_of, teacher_weights, Model, Run};
use super::resolve::Resolved;
use crate::engine::data::{Dataset, Split};
use crate::engine::job::report::{
    self, DatasetSummary, DistillationSummary, Latency, ModelReport, PairedTest, Repeats, Report, RunReport, Speedup,
    Task,
};
use crate::engine::models::{predictions, Net};
use crate::engine::train::{evaluate, EmbeddingReference, Evaluation};
use crate::engine::{EngineError, Phase};
use crate::spec::JobSpec;

/// How long each latency measurement runs.
const LATENCY_BUDGET: Duration = Duration::from_millis(150);

/// The models of a finished job.
pub(super) struct Trained<'a> {
    pub teachers: &'a [Model],
    /// One run per seed of the student and the baseline.
    pub runs: &'a [Run],
}

impl Trained<'_> {
    fn wall_time_s(&self) -> f64 {
        let runs = self.runs.iter().flat_map(|r| [Some(&r.student), r.baseline.as_ref()]).flatten();
        self.teachers.iter().chain(runs).filter_map(|m| m.training.as_ref()).map(|t| t.wall_s).sum()
    }
}

/// Judges and measures models on the held-out split, against the teachers' predictions.
struct Judge<'a> {
    data: &'a Dataset,
    device: &'a Device,
    job_dir: &'a std::path::Path,
    /// Unlabelled texts: each model is judged by how closely its embeddings follow the teacher's.
    reference: Option<EmbeddingReference>,
    batch_n: usize,
}

impl Judge<'_> {
    fn judge(&self, model: &Net) -> candle_core::Result<Evaluation> {
        match &self.reference {
            Some(reference) => reference.evaluate(model, &self.data.validation, self.device),
            None => evaluate(model, &self.data.validation, self.device),
        }
    }

    /// The report row of one model; `file` is its weights in the job folder, if it has one.
    fn measure(
        &self,
        model: &Model,
        evaluation: &Evaluation,
        file: Option<String>,
        teacher_predictions: &[u32],
    ) -> Result<ModelReport, EngineError> {
        let net = &model.net;
        let size_bytes = match file {
            Some(f) => std::fs::metadata(self.job_dir.join(f))?.len(),
            None => safetensors_size(net)?,
        };
        let agree = evaluation.predictions.iter().zip(teacher_predictions).filter(|(a, b)| a == b).count();
        let x = &self.data.validation.x;
        // Frozen once for both latency runs (each would otherwise transpose the weights again).
        let inference = net.frozen()?;
        Ok(ModelReport {
            parameters: net.parameter_count(),
            size_bytes,
            accuracy: evaluation.accuracy,
            loss: evaluation.loss,
            agreement: agree as f64 / evaluation.predictions.len().max(1) as f64,
            latency: Latency {
                batch_1_ms: report::latency_ms(&inference, x, 1, self.device, LATENCY_BUDGET)?,
                batch_n_ms: report::latency_ms(&inference, x, self.batch_n, self.device, LATENCY_BUDGET)?,
                batch_n: self.batch_n,
            },
            training: model.training.clone(),
        })
    }
}

/// The rows of the report's table, and the paired test of student against baseline.
struct Rows {
    teacher: ModelReport,
    members: Option<Vec<ModelReport>>,
    student: ModelReport,
    baseline: Option<ModelReport>,
    gain_test: Option<PairedTest>,
    repeats: Option<Repeats>,
    /// Index in `Trained::runs` of the exported run.
    exported: usize,
    /// Whether the teacher is not clearly better than the student trained alone.
    teacher_margin_warning: Option<String>,
}

/// One run's evaluations on the held-out split, and its accuracy on the validation split held
/// out of training (the held-out split itself when the job runs once).
struct JudgedRun {
    student: Evaluation,
    baseline: Option<Evaluation>,
    validation_accuracy: f64,
}

/// Judges every model and writes the report, with the spec's `warnings` and any the results add.
pub(super) fn report(
    spec: &JobSpec,
    data: &Dataset,
    resolved: &Resolved,
    trained: &Trained,
    device: (&str, &Device),
    job_dir: &std::path::Path,
    mut warnings: Vec<String>,
) -> Result<Report, EngineError> {
    let unlabelled = data.classes == 0;
    let reference = match unlabelled {
        true => Some(EmbeddingReference::new(&trained.teachers[0].net, &data.validation, device.1)?),
        false => None,
    };
    // Text latency is per sequence at the dataset's length, at batch 1 and 32.
    let batch_n = if resolved.transformer.is_some() { 32 } else { 256 }.min(data.validation.len().max(1));
    let judge = Judge { data, device: device.1, job_dir, reference, batch_n };
    let mut rows = rows(spec, &judge, trained)?;
    warnings.extend(rows.teacher_margin_warning.take());
    let exported = &trained.runs[rows.exported].student;
    let mut report = assemble(spec, data, resolved, device.0, rows, exported, trained.wall_time_s());
    report.warnings = warnings;
    Ok(report)
}

/// The teacher against the student trained alone (over every seed's run), on the validation
/// split held out of training when there is one, for labelled data with a baseline. Without
/// that split the held-out split decides, whose evaluations `held_out` already has: the
/// teacher's accuracy and each run's baseline's.
fn teacher_margin_warning(
    spec: &JobSpec,
    judge: &Judge,
    trained: &Trained,
    held_out: (f64, &[f64]),
) -> Result<Option<String>, EngineError> {
    let (data, device) = (judge.data, judge.device);
    if data.classes == 0 || held_out.1.is_empty() {
        return Ok(None);
    }
    let mean = |accuracies: &[f64]| accuracies.iter().sum::<f64>() / accuracies.len() as f64;
    let (teacher, baseline, on) = match &data.monitor {
        Some(split) => {
            let teacher = match trained.teachers {
                [one] => evaluate(&one.net, split, device)?.accuracy,
                many => ensemble(many, &teacher_weights(spec), split, device)?.accuracy,
            };
            let baselines = trained.runs.iter().filter_map(|r| r.baseline.as_ref());
            let accuracies = baselines.map(|b| Ok(evaluate(&b.net, split, device)?.accuracy));
            (
                teacher,
                mean(&accuracies.collect::<Result<Vec<_>, EngineError>>()?),
                "the validation split held out of training",
            )
        }
        None => (held_out.0, mean(held_out.1), "the held-out split"),
    };
    Ok(guidance::teacher_margin_warning(teacher, baseline, on))
}

fn rows(spec: &JobSpec, judge: &Judge, trained: &Trained) -> Result<Rows, EngineError> {
    let data = judge.data;
    let teacher_evaluations: Vec<Evaluation> = match &judge.reference {
        Some(reference) => vec![reference.teacher()],
        None => trained.teachers.iter().map(|t| judge.judge(&t.net)).collect::<candle_core::Result<_>>()?,
    };
    let ensemble_evaluation = match trained.teachers.len() > 1 {
        true => Some(ensemble(trained.teachers, &teacher_weights(spec), &data.validation, judge.device)?),
        false => None,
    };
    let teacher_predictions = ensemble_evaluation.as_ref().unwrap_or(&teacher_evaluations[0]).predictions.clone();
    let judged = trained.runs.iter().map(|run| judge_run(judge, run)).collect::<Result<Vec<_>, _>>()?;
    // The first of equals wins, so a tie never depends on anything but the seeds' order.
    let best = |(i, r): (usize, &JudgedRun)| (r.validation_accuracy, std::cmp::Reverse(i));
    let exported = judged.iter().enumerate().max_by(|a, b| best(*a).partial_cmp(&best(*b)).unwrap()).unwrap().0;
    let repeats = (trained.runs.len() > 1).then(|| repeats(trained.runs, &judged, exported));
    let held_out_baselines: Vec<f64> = judged.iter().filter_map(|j| Some(j.baseline.as_ref()?.accuracy)).collect();
    let held_out_teacher = ensemble_evaluation.as_ref().unwrap_or(&teacher_evaluations[0]).accuracy;
    let teacher_margin_warning = teacher_margin_warning(spec, judge, trained, (held_out_teacher, &held_out_baselines))?;
    let (run, JudgedRun { student: student_evaluation, baseline: baseline_evaluation, .. }) =
        (&trained.runs[exported], judged.into_iter().nth(exported).expect("the exported run was judged"));
    let mut members = Vec::new();
    for (i, (model, evaluation)) in trained.teachers.iter().zip(&teacher_evaluations).enumerate() {
        let file = model.training.as_ref().map(|_| file_of(Phase::Teacher(i)));
        members.push(judge.measure(model, evaluation, file, &teacher_predictions)?);
    }
    let (teacher, members) = match &ensemble_evaluation {
        None => (members.remove(0), None),
        Some(e) => (ensemble_row(&members, e, judge.batch_n), Some(members)),
    };
    let student_file = Some(file_of(Phase::Student(run.number)));
    let student = judge.measure(&run.student, &student_evaluation, student_file, &teacher_predictions)?;
    let (baseline, gain_test) = match (run.baseline.as_ref(), &baseline_evaluation) {
        (Some(model), Some(evaluation)) => {
            let file = model.training.as_ref().map(|_| file_of(Phase::Baseline(run.number)));
            // Without labels, "right" means the teacher's nearest neighbour.
            let truth = if data.classes == 0 { &teacher_predictions } else { &data.validation.y };
            let test = PairedTest::new(truth, &student_evaluation.predictions, &evaluation.predictions);
            (Some(judge.measure(model, evaluation, file, &teacher_predictions)?), Some(test))
        }
        _ => (None, None),
    };
    Ok(Rows { teacher, members, student, baseline, gain_test, repeats, exported, teacher_margin_warning })
}

fn judge_run(judge: &Judge, run: &Run) -> Result<JudgedRun, EngineError> {
    let student = judge.judge(&run.student.net)?;
    let baseline = run.baseline.as_ref().map(|b| judge.judge(&b.net)).transpose()?;
    let validation_accuracy = match &judge.data.monitor {
        Some(validation) => match &judge.reference {
            Some(reference) => reference.evaluate(&run.student.net, validation, judge.device)?.accuracy,
            None => evaluate(&run.student.net, validation, judge.device)?.accuracy,
        },
        None => student.accuracy,
    };
    Ok(JudgedRun { student, baseline, validation_accuracy })
}

fn repeats(runs: &[Run], judged: &[JudgedRun], exported: usize) -> Repeats {
    let reports = runs
        .iter()
        .zip(judged)
        .map(|(run, j)| {
            let baseline_accuracy = j.baseline.as_ref().map(|b| b.accuracy);
            RunReport {
                run: run.number,
                seed: run.seed,
                student_accuracy: j.student.accuracy,
                validation_accuracy: j.validation_accuracy,
                baseline_accuracy,
                gain: baseline_accuracy.map(|b| j.student.accuracy - b),
            }
        })
        .collect();
    Repeats::new(reports, exported)
}

/// An ensemble as one model: its members' sizes and latencies added up.
fn ensemble_row(members: &[ModelReport], evaluation: &Evaluation, batch_n: usize) -> ModelReport {
    let sum = |f: &dyn Fn(&ModelReport) -> f64| members.iter().map(f).sum::<f64>();
    ModelReport {
        parameters: members.iter().map(|m| m.parameters).sum(),
        size_bytes: members.iter().map(|m| m.size_bytes).sum(),
        accuracy: evaluation.accuracy,
        loss: evaluation.loss,
        agreement: 1.0,
        latency: Latency {
            batch_1_ms: sum(&|m| m.latency.batch_1_ms),
            batch_n_ms: sum(&|m| m.latency.batch_n_ms),
            batch_n,
        },
        training: None,
    }
}

fn assemble(
    spec: &JobSpec,
    data: &Dataset,
    resolved: &Resolved,
    device_name: &str,
    rows: Rows,
    student: &Model,
    wall_time_s: f64,
) -> Report {
    let Rows { teacher, members, student: student_row, baseline, gain_test, repeats, .. } = rows;
    let unlabelled = data.classes == 0;
    let retention = student_row.accuracy / teacher.accuracy.max(f64::MIN_POSITIVE);
    let gain = match repeats.as_ref().map(|r| r.gain) {
        Some(over_seeds) => over_seeds.map(|g| g.mean),
        None => baseline.as_ref().map(|b| student_row.accuracy - b.accuracy),
    };
    let projection_parameters =
        resolved.pairs.iter().filter_map(|p| p.projection).map(|(from, to)| from * to + to).sum();
    Report {
        task: if unlabelled { Task::Embedding } else { Task::Classification },
        dataset: DatasetSummary {
            name: data.name.clone(),
            features: data.features,
            classes: data.classes,
            train_samples: data.labelled,
            transfer_samples: data.transfer(),
            validation_samples: data.validation.len(),
            validation: if spec.dataset.has_test_file() { "test_file" } else { "split" }.into(),
        },
        distillation: DistillationSummary {
            temperature: spec.distill.temperature,
            alpha: spec.distill.alpha,
            loss: spec.distill.loss,
            beta: spec.distill.beta,
            intermediate: spec.distill.intermediate.clone(),
            student_init: spec.student.init_from_teacher.clone(),
            projection_parameters,
            teacher_cache: student.training.as_ref().and_then(|t| t.teacher_cache.clone()),
            teacher_weights: teacher_weights(spec),
        },
        device: device_name.to_string(),
        retention,
        gain,
        verdict: match (unlabelled, &repeats) {
            (true, _) => report::embedding_verdict(&student_row, baseline.as_ref(), gain_test.as_ref()),
            (false, Some(repeats)) => report::repeats_verdict(retention, repeats),
            (false, None) => report::verdict(retention, gain, gain_test.as_ref()),
        },
        gain_test,
        repeats,
        // Filled in by the job when it swept.
        sweep: None,
        language_model: None,
        // Filled in by `report`, which knows the spec's.
        warnings: Vec::new(),
        size_ratio: student_row.parameters as f64 / teacher.parameters as f64,
        speedup: Speedup {
            batch_1: teacher.latency.batch_1_ms / student_row.latency.batch_1_ms,
            batch_n: teacher.latency.batch_n_ms / student_row.latency.batch_n_ms,
        },
        wall_time_s,
        train_samples_per_s: student_row.training.as_ref().map(|t| t.samples_per_s).unwrap_or_default(),
        // The pool the job runs in (the worker installs one of `--threads-per-job` threads).
        threads: rayon::current_num_threads(),
        teacher,
        teachers: members,
        student: student_row,
        baseline,
    }
}

/// The ensemble on `split`: the weighted average of the members' probabilities.
fn ensemble(teachers: &[Model], weights: &[f64], split: &Split, device: &Device) -> candle_core::Result<Evaluation> {
    let mut mixture: Option<Tensor> = None;
    for (model, &w) in teachers.iter().zip(weights) {
        let p = (candle_nn::ops::softmax_last_dim(&model.net.logits(&split.x, device)?)? * w)?;
        mixture = Some(match mixture {
            None => p,
            Some(m) => (m + p)?,
        });
    }
    let mixture = mixture.expect("an ensemble has members");
    let labels = Tensor::from_slice(&split.y, split.len(), device)?;
    let loss = candle_nn::loss::nll(&mixture.clamp(1e-12f32, 1f32)?.log()?, &labels)?.to_scalar::<f32>()? as f64;
    let predictions = predictions(&mixture)?;
    let correct = predictions.iter().zip(&split.y).filter(|(p, y)| p == y).count();
    Ok(Evaluation { loss, accuracy: correct as f64 / split.len().max(1) as f64, predictions })
}

fn safetensors_size(model: &Net) -> Result<u64, EngineError> {
    let named = model.named();
    let views: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Ok(safetensors::serialize(views, None).map_err(|e| EngineError::Internal(e.to_string()))?.len() as u64)
}
