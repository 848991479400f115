//! The engine without the service: reproducibility, exact resumption, the baseline's fairness,
//! loaded teachers and the exported student.

mod common;

use std::path::Path;

use candle_core::Device;
use common::{interrupted_at, run, run_to_end, spec, Ran};
use distillery::engine::data;
use distillery::engine::files::read_safetensors;
use distillery::engine::job::report::Report;
use distillery::engine::models::{Input, Net};
use distillery::engine::train::evaluate;
use distillery::engine::{DataRoot, Phase};
use distillery::spec::{ArchSpec, JobSpec};
use serde_json::{json, Value};

fn small(alpha: f64) -> Value {
    json!({
        "dataset": {"source": "builtin:digits"},
        "teacher": {"arch": {"kind": "mlp", "hidden": [64], "dropout": 0.1}, "train": {"epochs": 3}},
        "student": {"arch": {"kind": "mlp", "hidden": [16], "dropout": 0.1}},
        "distill": {"temperature": 4.0, "alpha": alpha},
        "training": {"epochs": 4, "batch_size": 32, "optimizer": {"kind": "sgd", "lr": 0.05}, "schedule": "cosine", "warmup_steps": 10, "seed": 11}
    })
}

/// Runs a job to the end with its data root and its files in `dir`.
fn quiet(spec: &JobSpec, dir: &Path) -> Report {
    run_to_end(spec, dir, dir).report
}

/// The numbers that must be reproducible (latencies are measurements, not results).
fn results(r: &Report) -> Vec<f64> {
    let mut v = vec![r.teacher.accuracy, r.teacher.loss, r.student.accuracy, r.student.loss, r.student.agreement];
    if let Some(b) = &r.baseline {
        v.extend([b.accuracy, b.loss]);
    }
    v
}

#[test]
fn same_spec_and_seed_give_the_same_report() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = spec(small(0.7));
    let first = quiet(&s, a.path());
    assert_eq!(results(&first), results(&quiet(&s, b.path())));
    let mut other_seed = s.clone();
    other_seed.training.seed = 12;
    let c = tempfile::tempdir().unwrap();
    assert_ne!(results(&first), results(&quiet(&other_seed, c.path())));
}

#[test]
fn an_interrupted_job_resumes_to_exactly_the_uninterrupted_result() {
    let s = spec(small(0.7));
    let straight = tempfile::tempdir().unwrap();
    let expected = quiet(&s, straight.path());

    // 45 steps an epoch: both stops fall in the middle of the second epoch.
    let dir = tempfile::tempdir().unwrap();
    interrupted_at(&s, dir.path(), dir.path(), Phase::Student, 50);
    let logs = interrupted_at(&s, dir.path(), dir.path(), Phase::Baseline, 70);
    assert!(logs.iter().any(|m| m == "resumed from checkpoint: phase student, epoch 1, step 50"), "{logs:?}");
    let Ran { report: resumed, logs, .. } = run_to_end(&s, dir.path(), dir.path());
    assert!(logs.iter().any(|m| m == "resumed from checkpoint: phase baseline, epoch 1, step 70"), "{logs:?}");
    assert!(logs.iter().any(|m| m.starts_with("phase student was finished")), "{logs:?}");
    assert_eq!(results(&resumed), results(&expected));
}

#[test]
fn with_alpha_zero_the_distilled_student_is_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let report = quiet(&spec(small(0.0)), dir.path());
    let baseline = report.baseline.as_ref().unwrap();
    assert_eq!(report.student.accuracy, baseline.accuracy);
    assert_eq!(report.student.loss, baseline.loss);
    assert_eq!(report.gain, Some(0.0));
    assert!(report.verdict.starts_with("distillation made no clear difference"), "{}", report.verdict);
}

#[test]
fn the_exported_student_rebuilds_from_its_config_and_a_teacher_loads_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(small(0.7));
    let report = quiet(&s, dir.path());

    let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let arch: ArchSpec = serde_json::from_value(config["arch"].clone()).unwrap();
    let (features, classes) =
        (config["input_features"].as_u64().unwrap() as usize, config["num_classes"].as_u64().unwrap() as usize);
    let (tensors, _) = read_safetensors(&dir.path().join("student.safetensors"), &Device::Cpu).unwrap();
    let input = Input { features, image: serde_json::from_value(config["image"].clone()).unwrap() };
    let student = Net::from_named(&arch, input, classes, tensors, &Device::Cpu).unwrap();
    let data = data::load(&s.dataset, &DataRoot::new(dir.path()), s.training.seed, false).unwrap();
    let evaluation = evaluate(&student, &data.validation, &Device::Cpu).unwrap();
    assert_eq!((evaluation.loss, evaluation.accuracy), (report.student.loss, report.student.accuracy));
    let mean: Vec<f32> = serde_json::from_value(config["normalization"]["mean"].clone()).unwrap();
    assert_eq!(mean, data.normalization.mean);

    // The trained teacher, loaded by a second job, is the same teacher.
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("teacher.safetensors"), root.path().join("t.safetensors")).unwrap();
    let mut loaded = small(0.7);
    loaded["teacher"] = json!({"arch": {"kind": "mlp", "hidden": [64], "dropout": 0.1}, "weights": "t.safetensors"});
    let loaded = spec(loaded);
    let out = tempfile::tempdir().unwrap();
    let second = run(&loaded, root.path(), out.path()).report;
    assert_eq!(second.teacher.accuracy, report.teacher.accuracy);
    assert!(second.teacher.training.is_none());
    assert_eq!(second.student.accuracy, report.student.accuracy);
}

#[test]
fn transfer_samples_reach_the_student_through_the_teacher_alone_and_resume_exactly() {
    let mut value = small(0.7);
    value["dataset"]["labelled"] = json!(40);
    value["training"]["batch_size"] = json!(8);
    let s = spec(value);
    let dir = tempfile::tempdir().unwrap();
    let Ran { report, progress, .. } = run(&s, dir.path(), dir.path());
    let (labelled, transfer) = (report.dataset.train_samples, report.dataset.transfer_samples);
    assert_eq!((labelled, labelled + transfer), (40, 1797 - 359));
    let seen = |m: &distillery::engine::job::report::ModelReport| {
        let t = m.training.as_ref().unwrap();
        (t.labelled_samples, t.transfer_samples)
    };
    assert_eq!(seen(&report.teacher), (40, 0));
    assert_eq!(seen(report.baseline.as_ref().unwrap()), (40, 0), "the baseline has no teacher to learn from");
    assert_eq!(seen(&report.student), (40, transfer));
    let line = format!(
        "samples per epoch: teacher 40 labelled + 0 transfer, student 40 labelled + {transfer} transfer, baseline 40 labelled + 0 transfer"
    );
    assert!(distillery::cli::table(&report).contains(&line), "{}", distillery::cli::table(&report));
    let cache = report.distillation.teacher_cache.as_ref().unwrap();
    assert_eq!(
        (cache.used, cache.bytes),
        (true, ((labelled + transfer) * 10 * 4) as u64),
        "the cache covers the transfer set"
    );

    let admission = distillery::engine::preflight(&s, &DataRoot::new(dir.path())).unwrap();
    assert_eq!(admission.size.epoch_samples, ("training.epochs".into(), 4 * (labelled + transfer) as u64));
    let dataset_bytes = admission.memory.terms.iter().find(|t| t.field == "dataset").unwrap().bytes;
    assert_eq!(dataset_bytes, 4 * 65 * 1797, "the memory estimate counts the transfer samples");

    let steps = |phase: Phase| progress.iter().filter(|p| p.phase == phase).collect::<Vec<_>>();
    for phase in [Phase::Teacher(0), Phase::Baseline] {
        assert!(steps(phase).iter().all(|p| p.hard > 0.0 && p.total_steps == steps(phase).len() as u64), "{phase:?}");
    }
    let student = steps(Phase::Student);
    assert_eq!(student.len(), 4 * (labelled + transfer).div_ceil(8));
    assert_eq!(steps(Phase::Teacher(0)).len(), 3 * 5);
    assert_eq!(steps(Phase::Baseline).len(), student.len(), "the baseline cycles its labels for the student's steps");
    let only_transfer = student.iter().filter(|p| p.hard == 0.0).collect::<Vec<_>>();
    assert!(only_transfer.len() > student.len() / 2 && only_transfer.len() < student.len());
    assert!(only_transfer
        .iter()
        .all(|p| p.soft.unwrap() > 0.0 && (p.loss - 0.7 * p.soft.unwrap()).abs() < 1e-6 * p.loss));

    let resumed = tempfile::tempdir().unwrap();
    interrupted_at(&s, resumed.path(), resumed.path(), Phase::Student, 250);
    interrupted_at(&s, resumed.path(), resumed.path(), Phase::Baseline, 300);
    assert_eq!(results(&run_to_end(&s, resumed.path(), resumed.path()).report), results(&report));
}
