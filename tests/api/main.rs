//! The service as a user meets it: start it, submit jobs, watch them, read the results.

mod auth;
mod budgets;
mod contract;
mod files;
mod hardening;
mod helpers;
mod inputs;
mod jobs;
mod limits;
mod plots;
mod quotas;
mod session;
mod sse;
mod ui;
mod validation;
