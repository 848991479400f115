//! Training code: datasets, models, the distillation loss, the training loop, evaluation,
//! checkpoints and export. No HTTP and no SQL: progress goes out through a callback, and a
//! [`Control`] carries cancellation and shutdown requests in.

pub mod data;
pub mod files;
pub mod linear;
pub mod loss;
pub mod model;
pub mod optim;
pub mod report;
pub mod rng;
pub mod run;
pub mod train;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

pub use run::{preflight, run, RunOutput};

/// The three trainings a job may run, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Teacher,
    Student,
    Baseline,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Teacher => "teacher",
            Phase::Student => "student",
            Phase::Baseline => "baseline",
        }
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
    /// The distillation (KL·T²) part of the loss; absent without a teacher.
    pub soft: Option<f64>,
    /// The cross-entropy part.
    pub hard: f64,
    pub lr: f64,
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

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cancelled")]
    Cancelled,
    #[error("interrupted; resumes from its checkpoint")]
    Interrupted,
    /// A problem with the job's inputs (dataset, teacher file), naming the spec field.
    #[error("{0}")]
    Input(#[from] crate::spec::SpecError),
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Fixes the CPU thread count for the process. candle asks for it on every parallel operation
/// and, unless `RAYON_NUM_THREADS` is set, answers by opening and parsing `/proc/cpuinfo`: tens
/// of times a training step, and most of the time of a small model's batch-1 forward (0.16 →
/// 0.06 ms for the bench's student). Call at the start of `main`, before any thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

pub fn device(spec: &str) -> Result<candle_core::Device, EngineError> {
    match crate::spec::parse_device(spec).map_err(EngineError::Other)? {
        crate::spec::DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
        crate::spec::DeviceSpec::Cuda(n) => Ok(candle_core::Device::new_cuda(n)?),
    }
}
