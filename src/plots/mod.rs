//! Pictures of a finished job, as artifacts beside its weights: `curves.svg` (loss over steps
//! and validation accuracy over epochs, per phase), `report.svg` (the report's table, bars
//! and verdict) and, after a sweep, `sweep.svg` (each trial's score against its settings). Rendering is pure (data in, SVG text out) and needs no library.
//!
//! The SVGs are meant to be read by programs as well as people: each plotted series is one
//! `<polyline data-series="<phase> <total|soft|hard|accuracy>">`, each plotting area a
//! `<g data-panel=…>` whose `data-x0/x1/y0/y1` give its data domain and `data-left/top/width/
//! height` its pixel box (y grows downwards), so pixels turn back into data; each bar carries
//! its `data-value`. A series longer than [`curves::MAX_POINTS`] is thinned to that many points
//! (the first, the last, and each run's lowest and highest), so a long run's file stays small.

pub mod curves;
pub mod report;
pub mod svg;
pub mod sweep;

use std::path::Path;

pub use curves::History;

use crate::engine::files::write_atomic;
use crate::engine::job::report::Report;
use crate::layout::{CURVES_FILE, REPORT_PLOT_FILE, SWEEP_PLOT_FILE};

/// Writes the job's pictures into `job_dir`; returns their names.
pub fn write(job_dir: &Path, title: &str, history: &History, report: &Report) -> std::io::Result<Vec<String>> {
    write_curves(job_dir, title, history)?;
    write_atomic(&job_dir.join(REPORT_PLOT_FILE), report::render(title, report).as_bytes())?;
    let mut names = vec![CURVES_FILE.to_string(), REPORT_PLOT_FILE.to_string()];
    if let Some(trials) = &report.sweep {
        write_atomic(&job_dir.join(SWEEP_PLOT_FILE), sweep::render(title, trials).as_bytes())?;
        names.push(SWEEP_PLOT_FILE.into());
    }
    Ok(names)
}

pub fn write_curves(job_dir: &Path, title: &str, history: &History) -> std::io::Result<()> {
    write_atomic(&job_dir.join(CURVES_FILE), curves::render(title, history).as_bytes())
}

#[cfg(test)]
mod scan;
#[cfg(test)]
mod tests;
