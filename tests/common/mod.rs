//! What the engine's integration tests (engine, methods, text) share: building specs, running
//! jobs to the end or interrupting them, and finding the data the tests read from outside the
//! repository.

// Each test binary compiles its own copy of this module and uses a different subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use distillery::engine::job::report::Report;
use distillery::engine::{self, Control, DataRoot, EngineError, EngineEvent, EpochMetrics, Phase, Progress};
use distillery::spec::{self, JobSpec};
use serde_json::Value;

/// Parses and validates a spec written as JSON.
pub fn spec(value: Value) -> JobSpec {
    let spec = spec::parse(value.to_string().as_bytes()).unwrap();
    spec.validate().unwrap();
    spec
}

/// Runs a job on the CPU with its data under `root` and its files in `job`.
pub fn run_with(
    spec: &JobSpec,
    root: &Path,
    job: &Path,
    control: &Control,
    sink: &mut dyn FnMut(EngineEvent),
) -> Result<Report, EngineError> {
    engine::run(spec, "cpu", &DataRoot::new(root), job, control, sink).map(|o| o.report)
}

/// A job run to the end: its report and what it sent on the way.
pub struct Ran {
    pub report: Report,
    pub logs: Vec<String>,
    pub epochs: Vec<EpochMetrics>,
    pub progress: Vec<Progress>,
}

/// Runs a job to the end without preflighting it first.
pub fn run_to_end(spec: &JobSpec, root: &Path, job: &Path) -> Ran {
    let (mut logs, mut epochs, mut progress) = (Vec::new(), Vec::new(), Vec::new());
    let report = run_with(spec, root, job, &Control::default(), &mut |e| match e {
        EngineEvent::Log(line) => logs.push(line),
        EngineEvent::Epoch(m) => epochs.push(m),
        EngineEvent::Progress(p) => progress.push(p),
        _ => {}
    })
    .unwrap();
    Ran { report, logs, epochs, progress }
}

/// Preflights a job, as the service does before accepting it, then runs it to the end.
pub fn run(spec: &JobSpec, root: &Path, job: &Path) -> Ran {
    engine::preflight(spec, &DataRoot::new(root)).unwrap();
    run_to_end(spec, root, job)
}

/// Runs until `phase` reaches `step`, interrupts there as a shutdown would, and returns the
/// log messages of that run.
pub fn interrupted_at(spec: &JobSpec, root: &Path, job: &Path, phase: Phase, step: u64) -> Vec<String> {
    let control = Control::default();
    let mut logs = Vec::new();
    let mut sink = |event: EngineEvent| match event {
        EngineEvent::Progress(p) if p.phase == phase && p.step == step => control.interrupt(),
        EngineEvent::Log(message) => logs.push(message),
        _ => {}
    };
    let outcome = run_with(spec, root, job, &control, &mut sink);
    assert!(matches!(outcome, Err(EngineError::Interrupted)), "{phase:?} {step}");
    logs
}

/// Fashion-MNIST's IDX files: Debian's `dataset-fashion-mnist`, or `FASHION_MNIST_DIR`.
pub fn fashion_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("FASHION_MNIST_DIR").unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into()),
    );
    assert!(
        dir.join("train-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST is not at {}: install Debian's `dataset-fashion-mnist` (.ci/run does) or set FASHION_MNIST_DIR",
        dir.display()
    );
    dir
}

/// The real all-MiniLM-L6-v2 (22.7M parameters), which `scripts/fetch-minilm.sh` (run by
/// `.ci/run`) puts under `distillery-data/datasets/models/`, or `MINILM_DIR`.
pub fn minilm_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("MINILM_DIR").unwrap_or_else(|_| "distillery-data/datasets/models/all-minilm-l6-v2".into()),
    );
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 is not at {}: run scripts/fetch-minilm.sh (.ci/run does) or set MINILM_DIR",
        dir.display()
    );
    dir
}

/// The real SmolLM2-135M-Instruct as a Q4_1 GGUF file, which `scripts/fetch-smollm2.sh` (run by
/// `scripts/test.sh`) puts under `distillery-data/datasets/models/`, or `SMOLLM2_GGUF`.
pub fn smollm2_gguf() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("SMOLLM2_GGUF")
            .unwrap_or_else(|_| "distillery-data/datasets/models/smollm2-135m-instruct-q4_1.gguf".into()),
    );
    assert!(
        path.exists(),
        "SmolLM2 is not at {}: run scripts/fetch-smollm2.sh (scripts/test.sh does) or set SMOLLM2_GGUF",
        path.display()
    );
    path
}
