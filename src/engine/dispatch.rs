//! Which pipeline a spec goes down: causal language models (`lm`) or every other job (`job`),
//! the two side by side, neither calling the other; and what both end with, the job's plots.

use std::path::Path;

use super::job::{self, Admission, RunOutput};
use super::train::PhaseContext;
use super::{lm, Control, DataRoot, EngineError, EngineEvent};
use crate::plots::{self, History};
use crate::spec::{JobSpec, SpecError};

/// The checks a spec must pass before it is accepted: a causal LM's (`lm::preflight`) or any
/// other job's (`job::preflight`).
pub fn preflight(spec: &JobSpec, data_root: &DataRoot) -> Result<Admission, SpecError> {
    match spec.is_language_model() {
        true => spec.validate().and_then(|()| lm::preflight(spec, data_root)),
        false => job::preflight(spec, data_root),
    }
}

/// Runs the job on `spec.device`, or on `default_device` when the spec names none, and draws
/// its curves (as this run saw them: phases a restart skipped are missing) and its report.
pub fn run(
    spec: &JobSpec,
    default_device: &str,
    data_root: &DataRoot,
    job_dir: &Path,
    control: &Control,
    sink: &mut dyn FnMut(EngineEvent),
) -> Result<RunOutput, EngineError> {
    let device_name = spec.device.as_deref().unwrap_or(default_device);
    let device = super::device(device_name)?;
    std::fs::create_dir_all(job_dir)?;
    let mut history = History::default();
    let mut observe = |event: EngineEvent| {
        history.observe(&event);
        sink(event)
    };
    let ctx = PhaseContext { device: &device, job_dir, control, sink: &mut observe };
    let mut output = match spec.is_language_model() {
        true => lm::run(spec, (device_name, &device), data_root, ctx),
        false => job::run(spec, (device_name, &device), data_root, ctx),
    }?;
    output.artifacts.extend(plots::write(job_dir, &spec.display_name(), &history, &output.report)?);
    Ok(output)
}
