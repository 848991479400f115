//! Distillery: a service that runs knowledge-distillation training jobs.

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod keys;
pub mod layout;
pub mod plots;
pub mod server;
pub mod spec;
pub mod store;
pub mod uploads;
pub mod worker;
