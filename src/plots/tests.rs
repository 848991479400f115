use serde_json::json;

use super::curves::{downsample, MAX_POINTS};
use super::scan::{elements, series, Mapping};
use super::*;
use crate::engine::{EpochMetrics, Phase, Progress};
use crate::store::TrainingLog;

fn progress(phase: Phase, step: u64, loss: f64, soft: Option<f64>) -> Progress {
    let (epoch, epochs, total_steps, lr, alpha, temperature) = (1, 3, 300, 0.01, 0.7, 4.0);
    Progress {
        phase,
        epoch,
        epochs,
        step,
        total_steps,
        loss,
        soft,
        hard: loss / 2.0,
        features: None,
        lr,
        alpha,
        temperature,
    }
}

fn epoch(phase: Phase, epoch: u32, val_accuracy: f64) -> EpochMetrics {
    let (epochs, step, train_loss, val_loss, best) = (3, 100 * epoch as u64, 0.5, 0.6, None);
    EpochMetrics { phase, epoch, epochs, step, train_loss, val_loss, val_accuracy, best }
}

/// Teacher and student curves: the student with a soft term, both with epochs.
fn history() -> (History, Vec<Progress>, Vec<EpochMetrics>) {
    let mut steps = Vec::new();
    for step in 1..=300 {
        let decay = (-(step as f64) / 80.0).exp();
        steps.push(progress(Phase::Teacher(0), step, 2.3 * decay + 0.1, None));
    }
    for step in (1..=300).step_by(7) {
        let decay = (-(step as f64) / 60.0).exp();
        steps.push(progress(Phase::Student(0), step, 1.9 * decay + 0.2, Some(4.0 * decay + 0.3)));
    }
    let epochs: Vec<_> = (1..=3)
        .flat_map(|e| {
            [epoch(Phase::Teacher(0), e, 0.8 + 0.05 * e as f64), epoch(Phase::Student(0), e, 0.7 + 0.06 * e as f64)]
        })
        .collect();
    let mut history = History::default();
    steps.iter().for_each(|p| history.progress(p));
    epochs.iter().for_each(|m| history.epoch(m));
    (history, steps, epochs)
}

fn assert_close(drawn: &[(f64, f64)], expected: &[(f64, f64)], (dx, dy): (f64, f64)) {
    assert_eq!(drawn.len(), expected.len());
    for (d, e) in drawn.iter().zip(expected) {
        assert!((d.0 - e.0).abs() <= dx / 2.0 && (d.1 - e.1).abs() <= dy / 2.0, "drawn {d:?}, data {e:?}");
    }
}

#[test]
fn each_series_read_back_through_its_panel_gives_the_data() {
    let (history, steps, epochs) = history();
    let svg = curves::render("digits", &history);
    let loss = Mapping::of(&svg, "loss").resolution();
    let of = |phase: Phase, value: &dyn Fn(&Progress) -> Option<f64>| -> Vec<(f64, f64)> {
        steps.iter().filter(|p| p.phase == phase).filter_map(|p| Some((p.step as f64, value(p)?))).collect()
    };
    assert_close(&series(&svg, "loss", "teacher total"), &of(Phase::Teacher(0), &|p| Some(p.loss)), loss);
    assert_close(&series(&svg, "loss", "student total"), &of(Phase::Student(0), &|p| Some(p.loss)), loss);
    assert_close(&series(&svg, "loss", "student soft"), &of(Phase::Student(0), &|p| p.soft), loss);
    assert_close(&series(&svg, "loss", "student hard"), &of(Phase::Student(0), &|p| Some(p.hard)), loss);
    let names: Vec<String> = elements(&svg, "polyline").into_iter().map(|l| l["data-series"].clone()).collect();
    assert_eq!(names.len(), 6, "no soft or hard series for the teacher: {names:?}");

    let accuracy = Mapping::of(&svg, "accuracy").resolution();
    let student: Vec<_> =
        epochs.iter().filter(|m| m.phase == Phase::Student(0)).map(|m| (m.epoch as f64, m.val_accuracy)).collect();
    assert_close(&series(&svg, "accuracy", "student accuracy"), &student, accuracy);
    assert!(svg.contains(">digits: training curves</text>"), "the title names the job");
}

#[test]
fn the_stored_events_give_the_curves_the_engine_saw() {
    let (history, steps, epochs) = history();
    let log = TrainingLog {
        steps: steps.iter().map(|p| serde_json::to_value(p).unwrap()).collect(),
        epochs: epochs.iter().map(|m| serde_json::to_value(m).unwrap()).collect(),
    };
    assert_eq!(History::from_log(&log), history);
}

#[test]
fn a_resumed_attempt_replaces_the_steps_and_epochs_it_repeats() {
    let mut history = History::default();
    for step in 1..=50 {
        history.progress(&progress(Phase::Student(0), step, 9.0, None));
    }
    history.epoch(&epoch(Phase::Student(0), 1, 0.1));
    history.epoch(&epoch(Phase::Student(0), 2, 0.1));
    // The checkpoint was at step 40, after epoch 1.
    for step in 41..=60 {
        history.progress(&progress(Phase::Student(0), step, 1.0, None));
    }
    history.epoch(&epoch(Phase::Student(0), 2, 0.5));
    let svg = curves::render("resumed", &history);
    let drawn = series(&svg, "loss", "student total");
    let expected: Vec<_> = (1..=60).map(|s| (s as f64, if s <= 40 { 9.0 } else { 1.0 })).collect();
    assert_close(&drawn, &expected, Mapping::of(&svg, "loss").resolution());
    let accuracy = series(&svg, "accuracy", "student accuracy");
    assert_close(&accuracy, &[(1.0, 0.1), (2.0, 0.5)], Mapping::of(&svg, "accuracy").resolution());
}

#[test]
fn repeated_runs_get_a_series_each() {
    let mut history = History::default();
    for run in 1..=3 {
        for step in 1..=10 {
            history.progress(&progress(Phase::Student(run), step, run as f64, Some(0.5)));
        }
        history.epoch(&epoch(Phase::Baseline(run), 1, 0.1 * run as f64));
    }
    let svg = curves::render("repeats", &history);
    for run in 1..=3 {
        let loss = series(&svg, "loss", &format!("student_{run} total"));
        let expected: Vec<_> = (1..=10).map(|s| (s as f64, run as f64)).collect();
        assert_close(&loss, &expected, Mapping::of(&svg, "loss").resolution());
        // The parts of the first run only: a legend of every run's would overflow its panel.
        assert_eq!(svg.contains(&format!("\"student_{run} soft\"")), run == 1);
        let accuracy = series(&svg, "accuracy", &format!("baseline_{run} accuracy"));
        assert_close(&accuracy, &[(1.0, 0.1 * run as f64)], Mapping::of(&svg, "accuracy").resolution());
    }
}

#[test]
fn long_series_are_thinned_keeping_the_ends_and_the_extremes() {
    let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 1.0 + (i as f64 / 50.0).sin())).collect();
    points[31_337].1 = 40.0;
    points[77_777].1 = -3.0;
    let kept = downsample(&points, MAX_POINTS);
    assert!(kept.len() <= MAX_POINTS && kept.len() > MAX_POINTS - 10, "{} points", kept.len());
    assert_eq!((kept[0], kept[kept.len() - 1]), (points[0], points[99_999]));
    assert!(kept.contains(&points[31_337]) && kept.contains(&points[77_777]));
    assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "in order");

    let mut history = History::default();
    for step in 1..=20_000 {
        history.progress(&progress(Phase::Baseline(0), step, 1.0 / step as f64, None));
    }
    let svg = curves::render("long", &history);
    assert_eq!(series(&svg, "loss", "baseline total").len(), MAX_POINTS);
    assert!(svg.len() < 100_000, "{} bytes", svg.len());
}

#[test]
fn without_data_the_panels_still_draw() {
    let svg = curves::render("empty", &History::default());
    assert_eq!(svg.matches("no data").count(), 2);
    Mapping::of(&svg, "loss").resolution();
}

fn report() -> Report {
    let model = |parameters: u64, size: u64, accuracy: f64, ms: f64| {
        json!({"parameters": parameters, "size_bytes": size, "accuracy": accuracy, "loss": 0.3, "agreement": 0.9,
               "latency": {"batch_1_ms": ms, "batch_n_ms": ms * 20.0, "batch_n": 256},
               "training": {"epochs": 3, "steps": 100, "wall_s": 1.5, "samples_per_s": 900.0, "final_train_loss": 0.2}})
    };
    serde_json::from_value(json!({
        "dataset": {"name": "digits", "features": 64, "classes": 10, "train_samples": 1437, "validation_samples": 360, "validation": "split"},
        "distillation": {"temperature": 4.0, "alpha": 0.7, "loss": "kl", "intermediate": [], "student_init": [],
                         "projection_parameters": 0, "teacher_weights": [1.0]},
        "device": "cpu",
        "teacher": model(20_000, 80_000, 0.97, 0.05),
        "student": model(1_200, 4_800, 0.95, 0.01),
        "baseline": model(1_200, 4_800, 0.93, 0.012),
        "retention": 0.98, "gain": 0.02, "gain_test": null, "size_ratio": 0.06,
        "speedup": {"batch_1": 5.0, "batch_n": 5.0}, "wall_time_s": 4.5, "train_samples_per_s": 900.0,
        "verdict": "distillation helped: <+2 points> & \"the student\" keeps 98% of the teacher's accuracy, which is a long sentence that must wrap over more than one line of the picture to stay readable"
    }))
    .unwrap()
}

#[test]
fn the_bars_carry_the_reports_values_and_are_drawn_to_scale() {
    let report = report();
    let svg = report::render("digits", &report);
    let mapping = Mapping::of(&svg, "bars");
    let bars: Vec<_> = elements(&svg, "rect").into_iter().filter(|r| r.contains_key("data-value")).collect();
    assert_eq!(bars.len(), 12, "4 metrics × 3 models");
    let bar = |model: &str, metric: &str| {
        let found = bars.iter().find(|b| b["data-model"] == model && b["data-metric"] == metric);
        let found = found.unwrap_or_else(|| panic!("no bar {model} {metric}"));
        let value: f64 = found["data-value"].parse().unwrap();
        let top: f64 = found["y"].parse().unwrap();
        let (_, drawn) = mapping.data(0.0, top);
        assert!((drawn - value).abs() <= mapping.resolution().1 / 2.0, "{model} {metric}: {drawn} drawn for {value}");
        value
    };
    assert_eq!(bar("teacher", "accuracy"), report.teacher.accuracy);
    assert_eq!(bar("student (distilled)", "accuracy"), report.student.accuracy);
    assert_eq!(bar("student (baseline)", "accuracy"), report.baseline.as_ref().unwrap().accuracy);
    assert_eq!(bar("teacher", "size"), 1.0);
    assert_eq!(bar("student (distilled)", "size"), 4_800.0 / 80_000.0);
    assert_eq!(bar("student (baseline)", "latency_batch_1"), 0.012 / 0.05);
    assert_eq!(bar("student (distilled)", "latency_batch_n"), 0.2 / 1.0);
}

#[test]
fn the_report_shows_the_table_and_the_whole_verdict_escaped() {
    let report = report();
    let svg = report::render("<job> & \"co\"", &report);
    assert!(svg.contains("&lt;job&gt; &amp; &quot;co&quot;: distillation report"), "the title is escaped");
    let lines: Vec<&str> = svg.lines().filter(|l| l.contains("class=\"verdict\"")).collect();
    assert!(lines.len() > 1, "the verdict wraps");
    let text: Vec<&str> = lines.iter().map(|l| &l[l.find('>').unwrap() + 1..l.rfind("</text>").unwrap()]).collect();
    let escaped = svg::escape(&report.verdict);
    assert_eq!(text.join(" "), escaped);
    for cell in ["20000", "78.1 KiB", "95.00%", "0.0120 ms", "latency, batch 256", "student (baseline)"] {
        assert!(svg.contains(&format!(">{cell}</text>")), "{cell} missing from the table");
    }
}

fn swept() -> crate::engine::job::report::SweepReport {
    let trial = |trial: usize, temperature: f64, alpha: f64, epochs: u32, accuracy: f64| {
        json!({"trial": trial, "setting": {"temperature": temperature, "alpha": alpha}, "temperature": temperature,
               "alpha": alpha, "lr": 0.003, "student": "mlp [32]", "student_parameters": 2410, "epochs": epochs,
               "stopped_early": epochs < 8, "validation_accuracy": accuracy, "validation_loss": 0.3, "wall_s": 0.5})
    };
    serde_json::from_value(json!({
        "strategy": "grid", "validation_samples": 288, "best_trial": 3,
        "rungs": [{"epochs": 4, "trials": 4}, {"epochs": 8, "trials": 2}],
        "trials": [trial(1, 2.0, 0.5, 4, 0.91), trial(2, 2.0, 0.9, 8, 0.93), trial(3, 4.0, 0.5, 8, 0.955), trial(4, 4.0, 0.9, 4, 0.9)]
    }))
    .unwrap()
}

#[test]
fn the_sweep_picture_places_each_trial_at_its_setting_and_score() {
    let sweep = swept();
    let svg = sweep::render("digits", &sweep);
    for (panel, x_of) in [("temperature", 0), ("alpha", 1)] {
        let mapping = Mapping::of(&svg, panel);
        let circles: Vec<_> = elements(&svg, "circle").into_iter().skip(4 * x_of).take(4).collect();
        for (circle, trial) in circles.iter().zip(&sweep.trials) {
            assert_eq!(circle["data-trial"], trial.trial.to_string());
            let (x, y) = mapping.data(circle["cx"].parse().unwrap(), circle["cy"].parse().unwrap());
            let expected = if x_of == 0 { trial.temperature.at(0.0) } else { trial.alpha.at(0.0) };
            let (dx, dy) = mapping.resolution();
            assert!(
                (x - expected).abs() <= dx && (y - trial.validation_accuracy * 100.0).abs() <= dy,
                "{panel} {x} {y}"
            );
            assert_eq!(circle["fill"] == "none", trial.stopped_early, "halving's cut trials are hollow");
        }
        assert_eq!(circles[2]["stroke"], "#d62728", "the best trial is red");
    }
    assert!(!svg.contains("data-panel=\"lr\""), "one learning rate: no panel");
}
