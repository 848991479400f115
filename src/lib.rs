//! Distillery: a service that runs knowledge-distillation training jobs.

pub mod engine;
pub mod spec;
