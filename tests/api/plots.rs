//! The pictures a finished job leaves, read back as a program would: the curves in
//! `curves.svg` are those `/metrics` serves, and the bars of `report.svg` those of `/report`.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{small_spec, spawn_app, TestApp};

/// The library's own reader of its pictures, which its unit tests use too.
#[path = "../../src/plots/scan.rs"]
mod scan;

use scan::{elements, series, Mapping};

fn assert_drawn(svg: &str, panel: &str, name: &str, expected: &[(f64, f64)]) {
    let drawn = series(svg, panel, name);
    let (dx, dy) = Mapping::of(svg, panel).resolution();
    let (dx, dy) = (dx / 2.0, dy / 2.0);
    assert!(!expected.is_empty(), "{name}: nothing to compare");
    assert_eq!(drawn.len(), expected.len(), "{name}");
    for (d, e) in drawn.iter().zip(expected) {
        assert!((d.0 - e.0).abs() <= dx && (d.1 - e.1).abs() <= dy, "{name}: drawn {d:?}, served {e:?}");
    }
}

/// Downloads an artifact, checking it against its listing; returns its text.
async fn download(app: &TestApp, listed: &[Value], name: &str) -> String {
    let listed = listed.iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("{name} is not listed"));
    assert_eq!(listed["content_type"], "image/svg+xml");
    let response = app.get(listed["url"].as_str().unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, listed["size_bytes"].as_u64().unwrap());
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), listed["sha256"].as_str().unwrap());
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn curves_and_report_pictures_show_what_the_api_serves() {
    let app = spawn_app().await;
    let id = app.submit(&small_spec(3)).await;
    app.wait_for_status(&id, &["succeeded", "failed"]).await;
    let listed = app.get_json(&format!("/v1/jobs/{id}/artifacts")).await["data"].as_array().unwrap().clone();
    let curves = download(&app, &listed, "curves.svg").await;
    let report_svg = download(&app, &listed, "report.svg").await;

    let metrics = app.get_json(&format!("/v1/jobs/{id}/metrics")).await;
    let of = |list: &str, phase: &str, x: &str, y: &str| -> Vec<(f64, f64)> {
        let samples = metrics[list].as_array().unwrap().iter().filter(|s| s["phase"] == phase);
        samples.map(|s| (s[x].as_f64().unwrap(), s[y].as_f64().unwrap())).collect()
    };
    assert_drawn(&curves, "loss", "student total", &of("steps", "student", "step", "loss"));
    assert_drawn(&curves, "loss", "student soft", &of("steps", "student", "step", "soft"));
    assert_drawn(&curves, "loss", "baseline total", &of("steps", "baseline", "step", "loss"));
    for phase in ["teacher", "student", "baseline"] {
        let epochs = of("epochs", phase, "epoch", "val_accuracy");
        assert_eq!(epochs.len(), 3);
        assert_drawn(&curves, "accuracy", &format!("{phase} accuracy"), &epochs);
    }
    assert!(curves.contains(">small: training curves</text>"), "the title names the job");

    let report = app.get_json(&format!("/v1/jobs/{id}/report")).await;
    let bars = elements(&report_svg, "rect");
    let bar = |model: &str, metric: &str| -> f64 {
        let found = bars.iter().find(|b| b.get("data-model").is_some_and(|m| m == model) && b["data-metric"] == metric);
        found.unwrap_or_else(|| panic!("no bar {model} {metric}"))["data-value"].parse().unwrap()
    };
    let f = |model: &str, path: &[&str]| path.iter().fold(&report[model], |v, key| &v[*key]).as_f64().unwrap();
    // serde_json's float parsing may miss the last bit: equal to 1e-12, relatively.
    let same = |drawn: f64, served: f64| (drawn - served).abs() <= 1e-12 * served.abs();
    for (model, name) in
        [("teacher", "teacher"), ("student", "student (distilled)"), ("baseline", "student (baseline)")]
    {
        let ratio = |path: &[&str]| f(model, path) / f("teacher", path);
        assert!(same(bar(name, "accuracy"), f(model, &["accuracy"])), "{model} accuracy");
        assert!(same(bar(name, "size"), ratio(&["size_bytes"])), "{model} size");
        assert!(same(bar(name, "latency_batch_1"), ratio(&["latency", "batch_1_ms"])), "{model} latency");
        assert!(same(bar(name, "latency_batch_n"), ratio(&["latency", "batch_n_ms"])), "{model} latency");
    }
    let verdict = report["verdict"].as_str().unwrap().replace('\'', "&apos;");
    let lines: Vec<&str> = report_svg.lines().filter(|l| l.contains("class=\"verdict\"")).collect();
    let text: Vec<&str> = lines.iter().map(|l| &l[l.find('>').unwrap() + 1..l.rfind('<').unwrap()]).collect();
    assert_eq!(text.join(" "), verdict);
}

#[tokio::test]
async fn a_swept_job_serves_its_trials_in_the_report_the_metrics_and_sweep_svg() {
    let app = spawn_app().await;
    let mut spec = small_spec(2);
    spec["sweep"] = serde_json::json!({"temperature": [2.0, 4.0], "alpha": [0.5, 0.9]});
    let id = app.submit(&spec).await;
    let job = app.wait_for_status(&id, &["succeeded", "failed"]).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let report = app.get_json(&format!("/v1/jobs/{id}/report")).await;
    let trials = report["sweep"]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    let best = &trials[report["sweep"]["best_trial"].as_u64().unwrap() as usize - 1];
    assert_eq!(report["distillation"]["temperature"], best["temperature"]);
    assert_eq!(report["distillation"]["alpha"], best["alpha"]);

    let metrics = app.get_json(&format!("/v1/jobs/{id}/metrics")).await;
    for trial in 1..=4 {
        let phase = format!("trial_{trial}");
        let epochs: Vec<&Value> =
            metrics["epochs"].as_array().unwrap().iter().filter(|e| e["phase"] == *phase).collect();
        assert_eq!(epochs.len(), 2, "{phase}");
        let served = trials[trial - 1]["validation_accuracy"].as_f64().unwrap();
        assert_eq!(epochs[1]["val_accuracy"].as_f64().unwrap(), served, "the last epoch is the trial's score");
    }

    let listed = app.get_json(&format!("/v1/jobs/{id}/artifacts")).await["data"].as_array().unwrap().clone();
    let svg = download(&app, &listed, "sweep.svg").await;
    let mapping = Mapping::of(&svg, "temperature");
    let (_, dy) = mapping.resolution();
    for (circle, trial) in elements(&svg, "circle").iter().take(4).zip(trials) {
        let (x, y) = mapping.data(circle["cx"].parse().unwrap(), circle["cy"].parse().unwrap());
        assert!((x - trial["temperature"].as_f64().unwrap()).abs() < 0.05, "{x}");
        assert!((y - 100.0 * trial["validation_accuracy"].as_f64().unwrap()).abs() <= dy, "{y}");
    }
    let curves = download(&app, &listed, "curves.svg").await;
    assert!(!curves.contains("trial_"), "the trials are drawn in sweep.svg, not in the curves");
    assert!(!listed.iter().any(|a| a["name"].as_str().unwrap().contains("trial")), "no trial files stay");
}
