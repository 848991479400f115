//! One job from spec to report: data → teacher → distilled student → baseline → evaluation →
//! export. Every finished phase is saved, so a restarted job skips it; an unfinished phase
//! resumes from its checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{self, Dataset};
use super::files::{read_safetensors, write_json, write_safetensors};
use super::model::{self, Mlp};
use super::report::{self, DatasetSummary, DistillationSummary, Latency, ModelReport, PairedTest, Report, Speedup};
use super::rng::{streams, Rng};
use super::train::{evaluate, train_phase, Evaluation, PhaseContext, PhasePlan, PhaseSummary};
use super::{Control, EngineError, EngineEvent, Phase};
use crate::spec::{ArchSpec, JobSpec, SpecError};

pub const STUDENT_FILE: &str = "student.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const REPORT_FILE: &str = "report.json";
const STATE_FILE: &str = "state.json";

pub struct RunOutput {
    pub report: Report,
    /// Files in the job folder that are the job's results.
    pub artifacts: Vec<String>,
}

/// Phases already finished, kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JobState {
    finished: BTreeMap<String, PhaseSummary>,
}

/// The checks a spec must pass before it is accepted: ranges, then the dataset and the teacher
/// file, read for real. A job that passes can still fail later if its files change.
pub fn preflight(spec: &JobSpec, data_root: &Path) -> Result<(), SpecError> {
    spec.validate()?;
    let data = data::load(&spec.dataset, data_root, spec.training.seed)?;
    if let Some(weights) = &spec.teacher.weights {
        load_teacher(spec, weights, data_root, &data, &Device::Cpu)?;
    }
    Ok(())
}

fn load_teacher(spec: &JobSpec, weights: &str, data_root: &Path, data: &Dataset, device: &Device) -> Result<Mlp, SpecError> {
    let path = data::resolve(data_root, weights, "teacher.weights")?;
    let (tensors, _) = read_safetensors(&path, device).map_err(|m| SpecError::new("teacher.weights", m))?;
    Mlp::from_named(&spec.teacher.arch, data.features, data.classes, tensors, device)
        .map_err(|m| SpecError::new("teacher.weights", format!("does not fit teacher.arch and the dataset: {m}")))
}

/// Runs the job on `spec.device`, or on `default_device` when the spec names none.
pub fn run(
    spec: &JobSpec,
    default_device: &str,
    data_root: &Path,
    job_dir: &Path,
    control: &Control,
    sink: &mut dyn FnMut(EngineEvent),
) -> Result<RunOutput, EngineError> {
    let device_name = spec.device.as_deref().unwrap_or(default_device);
    let device = super::device(device_name)?;
    std::fs::create_dir_all(job_dir)?;
    let data = data::load(&spec.dataset, data_root, spec.training.seed)?;
    sink(EngineEvent::Log(format!(
        "dataset {}: {} training and {} validation samples, {} features, {} classes",
        data.name,
        data.train.len(),
        data.validation.len(),
        data.features,
        data.classes
    )));
    let state_path = job_dir.join(STATE_FILE);
    let mut state: JobState = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EngineError::Other(format!("state.json is unreadable: {e}")))?,
        Err(_) => JobState::default(),
    };
    let mut ctx = PhaseContext { device: &device, job_dir, control, sink };
    let mut artifacts = Vec::new();

    let training = &spec.training;
    let student_plan = PhasePlan {
        phase: Phase::Student,
        epochs: training.epochs,
        batch_size: training.batch_size,
        optimizer: training.optimizer,
        schedule: training.schedule,
        warmup_steps: training.warmup_steps,
        seed: training.seed,
        temperature: spec.distill.temperature,
        alpha: spec.distill.alpha,
    };

    let (teacher, teacher_training) = match (&spec.teacher.weights, &spec.teacher.train) {
        (Some(weights), _) => {
            let teacher = load_teacher(spec, weights, data_root, &data, &device)?;
            (ctx.sink)(EngineEvent::Log(format!("teacher loaded from {weights}")));
            (teacher, None)
        }
        (None, Some(train)) => {
            let plan = PhasePlan {
                phase: Phase::Teacher,
                epochs: train.epochs,
                batch_size: train.batch_size.unwrap_or(training.batch_size),
                optimizer: train.optimizer.unwrap_or(training.optimizer),
                schedule: train.schedule.unwrap_or(training.schedule),
                alpha: 0.0,
                ..student_plan.clone()
            };
            let init = Mlp::init(&spec.teacher.arch, data.features, data.classes, &mut Rng::stream(training.seed, &[streams::TEACHER_INIT]), &device)?;
            let (teacher, summary) = phase(&mut ctx, &mut state, &state_path, &plan, &spec.teacher.arch, &init, &data, None)?;
            artifacts.push(file_of(Phase::Teacher));
            (teacher, Some(summary))
        }
        (None, None) => return Err(EngineError::Other("the spec names no teacher".into())),
    };

    let student_init = Mlp::init(&spec.student.arch, data.features, data.classes, &mut Rng::stream(training.seed, &[streams::STUDENT_INIT]), &device)?;
    let (student, student_training) =
        phase(&mut ctx, &mut state, &state_path, &student_plan, &spec.student.arch, &student_init, &data, Some(&teacher))?;
    artifacts.push(file_of(Phase::Student));

    let baseline = if spec.baseline {
        // Same initialisation, same data order, same dropout masks; only the teacher is gone.
        let plan = PhasePlan { phase: Phase::Baseline, alpha: 0.0, ..student_plan.clone() };
        let trained = phase(&mut ctx, &mut state, &state_path, &plan, &spec.student.arch, &student_init, &data, None)?;
        artifacts.push(file_of(Phase::Baseline));
        Some(trained)
    } else {
        None
    };

    (ctx.sink)(EngineEvent::Log("evaluating on the held-out split and measuring latency".into()));
    let batch_n = data.validation.len().clamp(1, 256);
    // Agreement needs the teacher's predictions, so every model is evaluated before any report.
    let evaluations: Vec<Evaluation> = [Some(&teacher), Some(&student), baseline.as_ref().map(|(m, _)| m)]
        .into_iter()
        .flatten()
        .map(|m| evaluate(m, &data.validation, data.features, &device))
        .collect::<candle_core::Result<_>>()?;
    let teacher_predictions = &evaluations[0].predictions;
    let measure = |model: &Mlp, evaluation: &Evaluation, file: Option<String>, training: Option<PhaseSummary>| -> Result<ModelReport, EngineError> {
        let agreed = evaluation.predictions.iter().zip(teacher_predictions).filter(|(a, b)| a == b).count();
        let budget = Duration::from_millis(150);
        let size_bytes = match file {
            Some(f) => std::fs::metadata(job_dir.join(f))?.len(),
            None => safetensors_size(model)?,
        };
        Ok(ModelReport {
            parameters: model.parameter_count(),
            size_bytes,
            accuracy: evaluation.accuracy,
            loss: evaluation.loss,
            agreement: agreed as f64 / evaluation.predictions.len().max(1) as f64,
            latency: Latency {
                batch_1_ms: report::latency_ms(model, &data.validation.x, data.features, 1, &device, budget)?,
                batch_n_ms: report::latency_ms(model, &data.validation.x, data.features, batch_n, &device, budget)?,
                batch_n,
            },
            training,
        })
    };
    let teacher_file = teacher_training.as_ref().map(|_| file_of(Phase::Teacher));
    let teacher_report = measure(&teacher, &evaluations[0], teacher_file, teacher_training)?;
    let student_report = measure(&student, &evaluations[1], Some(file_of(Phase::Student)), Some(student_training))?;
    let (baseline_report, gain_test) = match &baseline {
        Some((model, summary)) => (
            Some(measure(model, &evaluations[2], Some(file_of(Phase::Baseline)), Some(summary.clone()))?),
            Some(PairedTest::new(&data.validation.y, &evaluations[1].predictions, &evaluations[2].predictions)),
        ),
        None => (None, None),
    };

    let retention = student_report.accuracy / teacher_report.accuracy.max(f64::MIN_POSITIVE);
    let gain = baseline_report.as_ref().map(|b| student_report.accuracy - b.accuracy);
    let wall_time_s = [&teacher_report, &student_report].into_iter().chain(baseline_report.as_ref()).filter_map(|m| m.training.as_ref()).map(|t| t.wall_s).sum();
    let report = Report {
        dataset: DatasetSummary {
            name: data.name.clone(),
            features: data.features,
            classes: data.classes,
            train_samples: data.train.len(),
            validation_samples: data.validation.len(),
            validation: if spec.dataset.has_test_file() { "test_file" } else { "split" }.into(),
        },
        distillation: DistillationSummary { temperature: spec.distill.temperature, alpha: spec.distill.alpha },
        device: device_name.to_string(),
        retention,
        gain,
        verdict: report::verdict(retention, gain, gain_test.as_ref()),
        gain_test,
        size_ratio: student_report.parameters as f64 / teacher_report.parameters as f64,
        speedup: Speedup {
            batch_1: teacher_report.latency.batch_1_ms / student_report.latency.batch_1_ms,
            batch_n: teacher_report.latency.batch_n_ms / student_report.latency.batch_n_ms,
        },
        wall_time_s,
        train_samples_per_s: student_report.training.as_ref().map(|t| t.samples_per_s).unwrap_or_default(),
        teacher: teacher_report,
        student: student_report,
        baseline: baseline_report,
    };
    write_json(&job_dir.join(CONFIG_FILE), &export_config(&spec.student.arch, &data))?;
    write_json(&job_dir.join(REPORT_FILE), &report)?;
    artifacts.push(CONFIG_FILE.into());
    artifacts.push(REPORT_FILE.into());
    Ok(RunOutput { report, artifacts })
}

pub fn file_of(phase: Phase) -> String {
    format!("{}.safetensors", phase.as_str())
}

/// Runs a phase, or loads its result if an earlier run of this job finished it.
#[allow(clippy::too_many_arguments)]
fn phase(
    ctx: &mut PhaseContext,
    state: &mut JobState,
    state_path: &Path,
    plan: &PhasePlan,
    arch: &ArchSpec,
    init: &Mlp,
    data: &Dataset,
    teacher: Option<&Mlp>,
) -> Result<(Mlp, PhaseSummary), EngineError> {
    let name = plan.phase.as_str();
    let path = ctx.job_dir.join(file_of(plan.phase));
    if let (Some(summary), true) = (state.finished.get(name), path.exists()) {
        let (tensors, _) = read_safetensors(&path, ctx.device).map_err(EngineError::Other)?;
        let model = Mlp::from_named(arch, data.features, data.classes, tensors, ctx.device).map_err(EngineError::Other)?;
        (ctx.sink)(EngineEvent::Log(format!("phase {name} was finished before the restart; its weights are reused")));
        return Ok((model, summary.clone()));
    }
    (ctx.sink)(EngineEvent::Log(format!("phase {name}: {} epochs of {} steps", plan.epochs, plan.steps_per_epoch(data.train.len()))));
    let (model, summary) = train_phase(ctx, plan, init, data, teacher)?;
    let meta = serde_json::json!({"arch": arch, "input_features": data.features, "num_classes": data.classes});
    write_safetensors(&path, &model.named(), Some(&meta))?;
    state.finished.insert(name.to_string(), summary.clone());
    write_json(state_path, state)?;
    Ok((model, summary))
}

fn safetensors_size(model: &Mlp) -> Result<u64, EngineError> {
    let named = model.named();
    let views: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Ok(safetensors::serialize(views, None).map_err(|e| EngineError::Other(e.to_string()))?.len() as u64)
}

/// `config.json`: everything needed to rebuild the student and feed it inputs.
fn export_config(arch: &ArchSpec, data: &Dataset) -> serde_json::Value {
    let widths = model::widths(arch, data.features, data.classes);
    serde_json::json!({
        "format": "distillery.mlp",
        "version": 1,
        "arch": arch,
        "input_features": data.features,
        "num_classes": data.classes,
        "label_names": data.label_names,
        "layer_widths": widths,
        "activation": "relu",
        "tensors": model::tensor_names(widths.len() - 1),
        "layout": "layers.{i}.weight is out×in, y = x·Wᵀ + b, ReLU between layers, no activation after the last",
        "dtype": "f32",
        "normalization": data.normalization,
        "input_preparation": "x = (raw − normalization.mean) / normalization.std, per feature",
    })
}
