//! One job from spec to report, as a pipeline that goes down once: resolve the spec against its
//! data → teachers → distilled student → baseline → evaluation and report → export. Every
//! finished phase is saved, so a restarted job skips it; an unfinished phase resumes from its
//! checkpoint.

pub mod budget;
mod evaluate;
mod export;
mod guidance;
mod phases;
pub mod report;
mod resolve;
mod small_student;
mod stats;
mod sweep;
pub mod table;
pub mod text;

use std::cell::OnceCell;

use candle_core::Device;

use crate::engine::data::root::DataRoot;
use crate::engine::data::Dataset;
use crate::engine::job::budget::{JobSize, MemoryEstimate};
use crate::engine::job::report::Report;
use crate::engine::rng::Rng;
use crate::engine::train::PhaseContext;
use crate::engine::{EngineError, EngineEvent};
use crate::spec::{JobSpec, SpecError};
use evaluate::Trained;
pub use phases::file_of;
use phases::{Target, Trainer};
use text::TextSetup;

pub struct RunOutput {
    pub report: Report,
    /// Files in the job folder that are the job's results.
    pub artifacts: Vec<String>,
}

/// What [`preflight`] measured, for the caller to hold against its limits.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The job's estimated peak memory.
    pub memory: MemoryEstimate,
    pub size: JobSize,
    /// What the spec alone tells of the ways users lose (see `guidance`), for the submitter.
    pub warnings: Vec<String>,
}

/// The checks a spec must pass before it is accepted: ranges, then the dataset and the teacher
/// files, read for real, and the architectures against the data; returns the job's estimated
/// peak memory and its size. A job that passes can still fail later if its files change.
pub fn preflight(spec: &JobSpec, data_root: &DataRoot) -> Result<Admission, SpecError> {
    spec.validate()?;
    let (data, text) = resolve::load_data(spec, data_root, &Device::Cpu)?;
    let resolved = resolve::resolve(spec, &data, text.as_ref())?;
    resolve::check_warmup(spec, &data)?;
    if let Some(setup) = &text {
        text::teacher_net(spec, setup, &data, &mut Rng::new(0), &Device::Cpu)?;
    } else {
        for (i, teacher) in spec.teacher_specs().iter().enumerate() {
            if let Some(weights) = &teacher.weights {
                resolve::load_teacher(spec, i, weights, data_root, &data, &Device::Cpu)?;
            }
        }
    }
    let mut admission = Admission {
        memory: resolve::estimate_memory(spec, &data, &resolved),
        size: resolve::job_size(spec, &data, &resolved, text.as_ref()),
        warnings: spec_warnings(spec, &resolved),
    };
    for (field, trial) in sweep::student_specs(spec) {
        let resolved = resolve::resolve(&trial, &data, text.as_ref()).map_err(|e| sweep::about_student(e, &field))?;
        admission.hold_student(&field, resolve::estimate_memory(&trial, &data, &resolved), &resolved);
    }
    Ok(admission)
}

impl Admission {
    /// A swept student trains alone: the job needs as much memory as its largest student needs.
    fn hold_student(&mut self, field: &str, mut memory: MemoryEstimate, resolved: &resolve::Resolved) {
        if memory.total() > self.memory.total() {
            for term in memory.terms.iter_mut().filter(|t| t.field == "student.arch") {
                term.field = field.to_string();
            }
            self.memory = memory;
        }
        let parameters = budget::parameters(&resolved.student);
        if parameters > self.size.parameters.1 {
            self.size.parameters = (field.to_string(), parameters);
        }
    }
}

/// Trains a classifier or encoder job on `device` (named `device_name` in the report) and writes
/// its report and exports.
pub fn run(
    spec: &JobSpec,
    (device_name, device): (&str, &Device),
    data_root: &DataRoot,
    ctx: PhaseContext,
) -> Result<RunOutput, EngineError> {
    let PhaseContext { job_dir, control, sink, .. } = ctx;
    let (data, text) = resolve::load_data(spec, data_root, device)?;
    log_inputs(sink, &data, text.as_ref());
    let resolved = resolve::resolve(spec, &data, text.as_ref())?;
    let warnings = spec_warnings(spec, &resolved);
    for warning in &warnings {
        sink(EngineEvent::Log(format!("warning: {warning}")));
    }
    let logged = warnings.len();
    let teacher_logits = OnceCell::new();
    let ctx = PhaseContext { device, job_dir, control, sink: &mut *sink };
    let mut trainer = Trainer::new(Target { spec, resolved: &resolved }, &data, text.as_ref(), &teacher_logits, ctx)?;
    let teachers = trainer.teachers(data_root)?;
    let tuned = spec.sweep.as_ref().map(|s| sweep::run(&mut trainer, s, &teachers)).transpose()?;
    let artifacts = std::mem::take(&mut trainer.artifacts);
    // After a sweep the job trains its best setting: that trial's spec, resolved anew, by a
    // trainer of its own (the state file and the teachers' logits carry over).
    let (tuned_spec, sweep_report) = tuned.map(|t| (t.spec, t.report)).unzip();
    let tuned_resolved = tuned_spec.as_ref().map(|s| resolve::resolve(s, &data, text.as_ref())).transpose()?;
    let spec = tuned_spec.as_ref().unwrap_or(spec);
    let resolved = tuned_resolved.as_ref().unwrap_or(&resolved);
    let ctx = PhaseContext { device, job_dir, control, sink: &mut *sink };
    let mut trainer = Trainer::new(Target { spec, resolved }, &data, text.as_ref(), &teacher_logits, ctx)?;
    trainer.artifacts = artifacts;
    let runs = trainer.runs(&teachers)?;

    trainer.log("evaluating on the held-out split and measuring latency".into());
    let trained = Trained { teachers: &teachers, runs: &runs };
    let mut report = evaluate::report(spec, &data, resolved, &trained, (device_name, device), job_dir, warnings)?;
    if let Some(sweep) = &sweep_report {
        report.wall_time_s += sweep.trials.iter().map(|t| t.wall_s).sum::<f64>();
    }
    report.sweep = sweep_report;
    for warning in &report.warnings[logged..] {
        trainer.log(format!("warning: {warning}"));
    }
    let mut artifacts = trainer.artifacts;
    let exported = match &report.repeats {
        Some(repeats) => {
            let run = runs.iter().find(|r| r.number == repeats.exported_run).expect("the exported run exists");
            artifacts.push(export::best_run(run, job_dir, trainer.ctx.sink)?);
            run
        }
        None => &runs[0],
    };
    if let Some(setup) = &text {
        artifacts.push(export::hugging_face(&exported.student.net, &data, setup, job_dir, trainer.ctx.sink)?);
    }
    artifacts.extend(export::write_results(&spec.student.arch, &data, &resolved.student, &report, job_dir)?);
    Ok(RunOutput { report, artifacts })
}

/// What the spec alone warns of, counting the parameters of the resolved models.
fn spec_warnings(spec: &JobSpec, resolved: &resolve::Resolved) -> Vec<String> {
    let teacher_parameters = resolved.teachers.iter().map(budget::parameters).sum();
    guidance::spec_warnings(spec, budget::parameters(&resolved.student), teacher_parameters)
}

/// What the job found: the teacher folder (for text) and the dataset's shape.
fn log_inputs(sink: &mut dyn FnMut(EngineEvent), data: &Dataset, text: Option<&TextSetup>) {
    if let Some(setup) = text {
        let c = &setup.teacher.config;
        let head = match setup.teacher.has_head {
            true => format!(", a {}-class head", c.num_labels),
            false => ", no classification head".into(),
        };
        sink(EngineEvent::Log(format!(
            "teacher {}: {} layers, hidden {}, {} heads{head}; texts cut to {} tokens ({} were longer)",
            c.family.model_type(),
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            setup.max_length,
            setup.truncated
        )));
    }
    let monitor = data.monitor.as_ref().map(|m| {
        format!(" ({} more held out of training as validation data: early stopping, the choice among runs)", m.len())
    });
    let image = data.image.map(|i| format!(" ({}×{}×{} images)", i.channels, i.height, i.width));
    let transfer = (data.transfer() > 0).then(|| format!(" (and {} transfer samples without labels)", data.transfer()));
    sink(EngineEvent::Log(format!(
        "dataset {}: {} training{} and {} held-out samples{}, {} features{}, {} classes",
        data.name,
        data.labelled,
        transfer.unwrap_or_default(),
        data.validation.len(),
        monitor.unwrap_or_default(),
        data.features,
        image.unwrap_or_default(),
        data.classes
    )));
}
