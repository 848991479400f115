//! Training code, with no HTTP and no SQL: progress goes out through a callback, and a
//! [`Control`] carries cancellation and shutdown requests in. Its rooms, from the bottom up:
//! - `kernels`: CPU custom ops (fused linear, conv, norms, attention, GELU) and their helpers;
//! - `models`: the networks (MLP, conv net, BERT-family encoder) and their blueprints;
//! - `data`: datasets (tabular, images, text), splits, and the data root specs read from;
//! - `train`: the training of one phase (plan, step, teacher targets, checkpoints, losses,
//!   optimisers);
//! - `lm`: causal language-model jobs (corpus, teacher cache, generation, their phases and report);
//! - `job`: one job from spec to report (resolve, teachers, student, baseline, evaluation,
//!   report, export), and the memory estimate that admits it;
//! - `files` and `rng`: atomic file writes and the seeded generator everything draws from.

pub mod data;
mod dispatch;
pub mod files;
#[cfg(test)]
mod fuzz;
pub mod job;
pub mod kernels;
pub mod lm;
pub mod models;
pub mod rng;
pub mod train;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

pub use data::root::DataRoot;
pub use dispatch::{preflight, run};
pub use job::{Admission, RunOutput};

/// The trainings a job may run, in this order: each teacher to train, the trials of a sweep,
/// then the distilled student and the baseline (once, or once per seed of `training.repeats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Teacher `i` of the spec; the first is `teacher`, the others `teacher_1`, `teacher_2`, …
    Teacher(usize),
    /// Trial 1, 2, … of `sweep`: `trial_1`, `trial_2`, …
    Trial(usize),
    /// Run 0 is a job's only run, `student`; repeated runs are 1, 2, …: `student_1`, `student_2`, …
    Student(usize),
    /// Numbered as the student's runs: `baseline`, or `baseline_1`, `baseline_2`, …
    Baseline(usize),
}

impl Phase {
    pub fn as_str(self) -> std::borrow::Cow<'static, str> {
        match self {
            Phase::Teacher(0) => "teacher".into(),
            Phase::Teacher(i) => format!("teacher_{i}").into(),
            Phase::Trial(t) => format!("trial_{t}").into(),
            Phase::Student(0) => "student".into(),
            Phase::Student(r) => format!("student_{r}").into(),
            Phase::Baseline(0) => "baseline".into(),
            Phase::Baseline(r) => format!("baseline_{r}").into(),
        }
    }
}

impl Phase {
    /// Whether the phase's files outlast the training: a sweep's trials leave only their scores,
    /// so their checkpoints are never artifacts.
    pub fn keeps_files(self) -> bool {
        !matches!(self, Phase::Trial(_))
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let numbered = |prefix: &str| s.strip_prefix(prefix)?.parse::<usize>().ok().filter(|&i| i > 0);
        match s {
            "teacher" => Ok(Phase::Teacher(0)),
            "student" => Ok(Phase::Student(0)),
            "baseline" => Ok(Phase::Baseline(0)),
            _ => numbered("teacher_")
                .map(Phase::Teacher)
                .or_else(|| numbered("trial_").map(Phase::Trial))
                .or_else(|| numbered("student_").map(Phase::Student))
                .or_else(|| numbered("baseline_").map(Phase::Baseline))
                .ok_or_else(|| format!("unknown phase `{s}`")),
        }
    }
}

impl Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub epoch: u32,
    pub epochs: u32,
    /// Optimiser steps taken in this phase, counting those before a resume.
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    /// The soft-target part (e.g. KL·T²), before weighting by α; absent without a teacher.
    pub soft: Option<f64>,
    /// The cross-entropy part, before weighting by 1 − α.
    pub hard: f64,
    /// The intermediate-layer part, already weighted; absent without layer pairs.
    pub features: Option<f64>,
    pub lr: f64,
    /// α and T at this step (they may follow a schedule).
    pub alpha: f64,
    pub temperature: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub phase: Phase,
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// With early stopping: whether this epoch is the best so far (its weights are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub phase: Phase,
    /// Epochs completed when the checkpoint was written.
    pub epoch: u32,
    pub step: u64,
    /// The file's name in the job's folder (and its artifact name).
    pub file: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Log(String),
    Progress(Progress),
    Epoch(EpochMetrics),
    Checkpoint(CheckpointInfo),
}

/// Requests from outside, checked between training steps.
#[derive(Debug, Default)]
pub struct Control {
    cancel: AtomicBool,
    interrupt: AtomicBool,
}

impl Control {
    /// Stop for good; what was written stays.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Stop for now (shutdown): write a checkpoint first so the job can resume.
    pub fn interrupt(&self) {
        self.interrupt.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Option<Stop> {
        if self.cancel.load(Ordering::SeqCst) {
            Some(Stop::Cancelled)
        } else if self.interrupt.load(Ordering::SeqCst) {
            Some(Stop::Interrupted)
        } else {
            None
        }
    }
}

enum Stop {
    Cancelled,
    Interrupted,
}

impl From<Stop> for EngineError {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Cancelled => EngineError::Cancelled,
            Stop::Interrupted => EngineError::Interrupted,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cancelled")]
    Cancelled,
    #[error("interrupted; resumes from its checkpoint")]
    Interrupted,
    /// A problem with the job's inputs (dataset, teacher file), naming the spec field.
    #[error("{0}")]
    Input(#[from] crate::spec::SpecError),
    /// A network that cannot be built, or tensors that do not fit it.
    #[error("{0}")]
    Model(#[from] crate::engine::models::ModelError),
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    /// A file this job wrote before (its state, a checkpoint, a phase's weights) is unusable.
    #[error("{0}")]
    Corrupt(String),
    /// The loss stopped being a finite number.
    #[error("the loss became {loss} in phase {phase} at step {step}; lower the learning rate")]
    Diverged { phase: String, step: u64, loss: f64 },
    /// A device this build cannot use.
    #[error("{0}")]
    Device(String),
    /// A fault of the engine itself, not of the job.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the job failed because a file system it wrote to was full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            EngineError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// Spins of candle's element-wise thread pool before an idle worker sleeps (candle's default is
/// 25,000, about half a millisecond). Its workers are pinned to cores, and gemm runs on rayon's
/// threads: after every element-wise op a spinning worker took a core from the matmul that
/// followed (13.6% of a Llama step's samples were that spin). Shorter, a worker still catches
/// back-to-back element-wise ops without a wake-up.
const CANDLE_POOL_SPIN_LIMIT: &str = "2000";

/// Fixes the CPU threading for the process: the thread count, which candle asks for on every
/// parallel operation and, unless `RAYON_NUM_THREADS` is set, answers by opening and parsing
/// `/proc/cpuinfo` (tens of times a training step, most of a small model's batch-1 forward);
/// and how long candle's idle workers spin ([`CANDLE_POOL_SPIN_LIMIT`]); benches/RESULTS.md has
/// the measurements. Either variable set by the user wins. Call at the start of `main`, before
/// any thread exists.
pub fn set_up_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_POOL_SPIN_LIMIT);
    }
}

/// mimalloc's purge delay: −1, freed memory stays in the process for reuse. By default mimalloc
/// hands memory unused for 1 s back to the OS, about one transformer training step, so each step
/// faulted in (and the kernel zeroed) the pages the last one freed; benches/RESULTS.md has the
/// profiles. The price: the process keeps the peak memory of its largest job for the next one,
/// as PyTorch's CUDA caching allocator does.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = -1;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, mimalloc.h v3); the Rust
/// bindings name no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator's options for training; call at the start of `main` in binaries that use
/// mimalloc as their global allocator.
pub fn tune_allocator() {
    // SAFETY: mi_option_set only stores the option's value; mimalloc reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) }
}

pub fn device(spec: &str) -> Result<candle_core::Device, EngineError> {
    match crate::spec::parse_device(spec).map_err(EngineError::Device)? {
        crate::spec::DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
        crate::spec::DeviceSpec::Cuda(n) => Ok(candle_core::Device::new_cuda(n)?),
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn phase_names_number_the_repeated_runs_and_read_back() {
        let phases = [
            Phase::Teacher(0),
            Phase::Teacher(2),
            Phase::Trial(4),
            Phase::Student(0),
            Phase::Student(3),
            Phase::Baseline(12),
        ];
        let names: Vec<String> = phases.iter().map(|p| p.as_str().into_owned()).collect();
        assert_eq!(names, ["teacher", "teacher_2", "trial_4", "student", "student_3", "baseline_12"]);
        for (phase, name) in phases.iter().zip(&names) {
            assert_eq!(name.parse::<Phase>().as_ref(), Ok(phase));
        }
        // Run 0 has one name only.
        for bad in ["student_0", "baseline_", "student_x", "teacher_0", "trial", "trial_0"] {
            assert!(bad.parse::<Phase>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_purge_delay_option_is_the_one_tune_allocator_sets() {
        // Position 15 of mimalloc's options must be the purge delay: its default is 1,000 ms
        // (unless the environment overrides it).
        let before = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert!(before == 1000 || before == super::ALLOCATOR_PURGE_DELAY_MS, "option 15 reads {before}");
        }
        super::tune_allocator();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) },
            super::ALLOCATOR_PURGE_DELAY_MS
        );
    }
}
