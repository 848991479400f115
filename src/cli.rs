//! `distillery run`: one job in-process, without a server, with a progress bar and the report
//! printed as a table.

pub mod client;
pub mod files;
pub mod jobs;
pub mod keys;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::job::report::{ModelReport, Repeats, Report, Spread, SweepReport};
use crate::engine::{self, Control, DataRoot, EngineEvent, EpochMetrics};
use crate::layout::{CURVES_FILE, REPORT_PLOT_FILE, SWEEP_PLOT_FILE};
use crate::spec::{self, Scheduled};

/// Runs the job `spec_path` describes, reading its files from `data_dir`'s data root, and lets
/// it use at most `max_job_memory` bytes (as estimated from the spec).
pub fn run(
    spec_path: &Path,
    data_dir: &Path,
    out: Option<PathBuf>,
    device: &str,
    max_job_memory: u64,
) -> anyhow::Result<Report> {
    let body = std::fs::read(spec_path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", spec_path.display()))?;
    let spec = spec::parse(&body).map_err(|e| anyhow::anyhow!("invalid spec: {e}"))?;
    let data_root = DataRoot::of_data_dir(data_dir).with_max_file_bytes(max_job_memory);
    let admission = engine::preflight(&spec, &data_root).map_err(|e| anyhow::anyhow!("invalid spec: {e}"))?;
    admission.memory.check(max_job_memory).map_err(|e| anyhow::anyhow!("invalid spec: {e}"))?;
    let out = out.unwrap_or_else(|| {
        let stem = spec_path.file_stem().and_then(|s| s.to_str()).unwrap_or("job");
        PathBuf::from("runs").join(format!("{stem}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")))
    });
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} steps {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Without a terminal the bar hides itself; the epoch lines and logs still belong on stdout.
    let say = |line: String| if bar.is_hidden() { println!("{line}") } else { bar.println(line) };
    let mut sink = |event: EngineEvent| match event {
        EngineEvent::Progress(p) => {
            if bar.length() != Some(p.total_steps) || bar.prefix() != p.phase.as_str() {
                bar.reset();
                bar.set_length(p.total_steps);
                bar.set_prefix(p.phase.as_str());
            }
            bar.set_position(p.step);
            let soft = p.soft.map(|s| format!(" soft {s:.4}")).unwrap_or_default();
            let features = p.features.map(|f| format!(" layers {f:.4}")).unwrap_or_default();
            bar.set_message(format!(
                "epoch {}/{} loss {:.4}{soft} hard {:.4}{features} α {:.2} T {:.2}",
                p.epoch, p.epochs, p.loss, p.hard, p.alpha, p.temperature
            ));
        }
        EngineEvent::Epoch(m) => say(epoch_line(&m)),
        EngineEvent::Log(message) => say(message),
        EngineEvent::Checkpoint(_) => {}
    };
    let output = engine::run(&spec, device, &data_root, &out, &Control::default(), &mut sink)?;
    bar.finish_and_clear();
    println!("{}", table(&output.report));
    println!("artifacts in {}: {}", out.display(), output.artifacts.join(", "));
    let plots: Vec<String> = [CURVES_FILE, REPORT_PLOT_FILE, SWEEP_PLOT_FILE]
        .into_iter()
        .filter(|name| output.artifacts.iter().any(|a| a == name))
        .map(|name| out.join(name).display().to_string())
        .collect();
    println!("plots: {}", plots.join(", "));
    Ok(output.report)
}

/// A causal LM's held-out prompts and each model's continuation.
fn continuations(lm: &crate::engine::job::report::LanguageModelReport) -> String {
    let one_line = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    for sample in &lm.samples {
        out += &format!("\n\nprompt: {}", one_line(&sample.prompt));
        out += &format!("\n  teacher:  {}", one_line(&sample.teacher));
        out += &format!("\n  student:  {}", one_line(&sample.student));
        if let Some(baseline) = &sample.baseline {
            out += &format!("\n  baseline: {}", one_line(baseline));
        }
    }
    out
}

/// One epoch's line, as `run` and `jobs watch` print it.
pub fn epoch_line(m: &EpochMetrics) -> String {
    format!(
        "{:>9} epoch {:>3}/{}: train loss {:.4}, validation loss {:.4}, accuracy {:.2}%",
        m.phase.as_str(),
        m.epoch,
        m.epochs,
        m.train_loss,
        m.val_loss,
        m.val_accuracy * 100.0
    )
}

/// Labelled and transfer samples each trained model saw per epoch, in one line.
fn samples_seen(report: &Report) -> String {
    let mut models: Vec<(String, &ModelReport)> = match &report.teachers {
        Some(members) => {
            members.iter().enumerate().map(|(i, m)| (engine::Phase::Teacher(i).as_str().into_owned(), m)).collect()
        }
        None => vec![("teacher".into(), &report.teacher)],
    };
    models.push(("student".into(), &report.student));
    models.extend(report.baseline.iter().map(|b| ("baseline".to_string(), b)));
    let seen: Vec<String> = models
        .into_iter()
        .filter_map(|(name, model)| model.training.as_ref().map(|t| (name, t)))
        .map(|(name, t)| format!("{name} {} labelled + {} transfer", t.labelled_samples, t.transfer_samples))
        .collect();
    format!("samples per epoch: {}", seen.join(", "))
}

/// The report as the seed table of the field: teacher, distilled student, baseline.
pub fn table(report: &Report) -> String {
    let (labels, columns) = engine::job::table::table_columns(report);
    let mut out = format!("{:<24}", "");
    for (name, _) in &columns {
        out += &format!("{name:>22}");
    }
    for (row, label) in labels.iter().enumerate() {
        out += &format!("\n{label:<24}");
        for (_, cells) in &columns {
            out += &format!("{:>22}", cells[row]);
        }
    }
    out += &format!(
        "\n\nretention {:.1}%  size ratio {:.1}%  speed-up {:.2}× (batch 1), {:.2}× (batch {})",
        report.retention * 100.0,
        report.size_ratio * 100.0,
        report.speedup.batch_1,
        report.speedup.batch_n,
        report.teacher.latency.batch_n
    );
    if let Some(gain) = report.gain {
        let mean = if report.repeats.is_some() { "mean " } else { "" };
        out += &format!("  {mean}gain over baseline {:+.2} points", gain * 100.0);
    }
    out += &format!(
        "\nwall time {:.1} s, {:.0} training samples/s (distillation)",
        report.wall_time_s, report.train_samples_per_s
    );
    if let Some(cache) = &report.distillation.teacher_cache {
        out += &match cache.used {
            true => format!(
                "; teacher cache used ({:.0} KiB, filled in {:.1} s)",
                cache.bytes as f64 / 1024.0,
                cache.fill_s
            ),
            false => format!("; teacher cache not used: {}", cache.reason),
        };
    }
    if let Some(best) = report.student.training.as_ref().and_then(|t| t.best_epoch) {
        out += &format!("; early stopping kept the student's epoch {best}");
    }
    if report.dataset.transfer_samples > 0 {
        out += &format!("\n{}", samples_seen(report));
    }
    if let Some(repeats) = &report.repeats {
        out += &runs_table(repeats);
    }
    if let Some(sweep) = &report.sweep {
        out += &trials_table(sweep);
    }
    if let Some(lm) = &report.language_model {
        out += &continuations(lm);
    }
    // The verdict stays the last line, where scripts look for it.
    for warning in &report.warnings {
        out += &format!("\nwarning: {warning}");
    }
    out += &format!("\n{}", report.verdict);
    out
}

/// Each trial of a sweep: what it tried and its validation score, the best one marked.
fn trials_table(sweep: &SweepReport) -> String {
    let scheduled = |s: &Scheduled| match s {
        Scheduled::Constant(v) => format!("{v}"),
        Scheduled::Linear { start, end } => format!("{start}→{end}"),
    };
    let mut out = format!(
        "\n\nsweep: the columns above are trial {}'s setting, trained again; trials judged on {} validation samples\n{:>6} {:>8} {:>8} {:>10} {:>24} {:>10} {:>9} {:>12} {:>8}",
        sweep.best_trial, sweep.validation_samples, "trial", "T", "alpha", "lr", "student", "params", "epochs", "validation", "time"
    );
    for t in &sweep.trials {
        let mark = if t.trial == sweep.best_trial { "*" } else { " " };
        out += &format!(
            "\n{:>5}{mark} {:>8} {:>8} {:>10.2e} {:>24} {:>10} {:>9} {:>12} {:>7.1}s",
            t.trial,
            scheduled(&t.temperature),
            scheduled(&t.alpha),
            t.lr,
            t.student,
            t.student_parameters,
            format!("{}{}", t.epochs, if t.stopped_early { " (cut)" } else { "" }),
            format!("{:.2}%", t.validation_accuracy * 100.0),
            t.wall_s
        );
    }
    out
}

/// Each seed's run, their mean ± standard deviation, and the gain's interval and paired test.
fn runs_table(repeats: &Repeats) -> String {
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0));
    let mut out = format!(
        "\n\nthe student (distilled) and baseline columns are run {} (seed {}), the best on validation data\n{:>4} {:>20} {:>10} {:>10} {:>10} {:>12}",
        repeats.exported_run, repeats.exported_seed, "run", "seed", "student", "baseline", "gain", "validation"
    );
    for r in &repeats.runs {
        let gain = r.gain.map_or("-".to_string(), |g| format!("{:+.2}", g * 100.0));
        out += &format!(
            "\n{:>4} {:>20} {:>10} {:>10} {gain:>10} {:>12}",
            r.run,
            r.seed,
            percent(Some(r.student_accuracy)),
            percent(r.baseline_accuracy),
            percent(Some(r.validation_accuracy))
        );
    }
    let spread = |s: &Spread| format!("{:.2} ± {:.2}", s.mean * 100.0, s.sd * 100.0);
    out += &format!("\nmean ± sd: student {}%", spread(&repeats.student_accuracy));
    if let Some(b) = &repeats.baseline_accuracy {
        out += &format!(", baseline {}%", spread(b));
    }
    if let Some(g) = &repeats.gain {
        out += &format!(
            ", gain {:+.2} ± {:.2} points (95% CI {:+.2} to {:+.2}, paired t-test p = {:.3})",
            g.mean * 100.0,
            g.sd * 100.0,
            g.ci95_low * 100.0,
            g.ci95_high * 100.0,
            g.p_value
        );
    }
    out
}
