use super::*;

pub fn example() -> serde_json::Value {
    serde_json::json!({
        "dataset": {"source": "builtin:digits"},
        "teacher": {"arch": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 2}},
        "student": {"arch": {"kind": "mlp", "hidden": [16]}},
        "distill": {"temperature": 4.0, "alpha": 0.7},
        "training": {"epochs": 2, "batch_size": 64, "optimizer": {"kind": "adamw", "lr": 0.001}}
    })
}

fn check(value: serde_json::Value) -> Result<JobSpec, SpecError> {
    let spec = parse(value.to_string().as_bytes())?;
    spec.validate()?;
    Ok(spec)
}

#[test]
fn example_is_accepted_with_defaults() {
    let spec = check(example()).unwrap();
    assert!(spec.baseline);
    assert_eq!(spec.device, None);
    assert_eq!(spec.training.schedule, Schedule::Constant);
}

#[test]
fn unknown_and_missing_fields_are_named() {
    let mut v = example();
    v["distill"]["temprature"] = 4.0.into();
    assert_eq!(check(v).unwrap_err().field, "distill.temprature");
    let mut v = example();
    v["training"].as_object_mut().unwrap().remove("epochs");
    assert_eq!(check(v).unwrap_err().field, "training.epochs");
    let mut v = example();
    v["training"]["batch_size"] = "many".into();
    assert_eq!(check(v).unwrap_err().field, "training.batch_size");
}

#[test]
fn out_of_range_values_are_refused() {
    let cases: &[(&str, &str, serde_json::Value)] = &[
        ("distill", "temperature", 0.0.into()),
        ("distill", "alpha", 1.5.into()),
        ("training", "epochs", 0.into()),
        ("training", "batch_size", 0.into()),
    ];
    for (section, key, value) in cases {
        let mut v = example();
        v[section][key] = value.clone();
        assert_eq!(check(v).unwrap_err().field, format!("{section}.{key}"));
    }
    let mut v = example();
    v["student"]["arch"]["hidden"] = serde_json::json!([]);
    assert_eq!(check(v).unwrap_err().field, "student.arch.hidden");
}

#[test]
fn schedules_are_numbers_or_start_and_end() {
    let mut v = example();
    v["distill"]["alpha"] = serde_json::json!({"start": 0.9, "end": 0.1});
    let spec = check(v).unwrap();
    assert_eq!(spec.distill.alpha.at(0.0), 0.9);
    assert!((spec.distill.alpha.at(0.5) - 0.5).abs() < 1e-12);
    assert!((spec.distill.alpha.at(1.0) - 0.1).abs() < 1e-12);
    let mut v = example();
    v["distill"]["alpha"] = serde_json::json!({"start": 0.9, "end": 0.1, "steps": 3});
    assert_eq!(check(v).unwrap_err().field, "distill.alpha");
    let mut v = example();
    v["distill"]["temperature"] = serde_json::json!({"start": 4, "end": 0});
    assert_eq!(check(v).unwrap_err().field, "distill.temperature");
}

#[test]
fn paths_may_not_leave_the_data_root() {
    for path in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
        let mut v = example();
        v["dataset"] = serde_json::json!({"source": "csv", "path": path});
        assert_eq!(check(v).unwrap_err().field, "dataset.path", "{path}");
    }
}

#[test]
fn uploads_are_named_by_id_and_a_path_inside_them() {
    let id = "0190b7b4-0000-7000-8000-00000000000a";
    for path in [format!("file:{id}"), format!("file:{}/data/train.csv", id.to_uppercase())] {
        let mut v = example();
        v["dataset"] = serde_json::json!({"source": "csv", "path": path});
        assert!(check(v).is_ok(), "{path}");
    }
    let simple = id.replace('-', "");
    for path in [
        "file:".to_string(),
        "file:x".into(),
        format!("file:{simple}"),
        format!("file:{id}/../x"),
        format!("file:{id}/"),
        format!("file:{id}//etc/passwd"),
    ] {
        let mut v = example();
        v["dataset"] = serde_json::json!({"source": "csv", "path": path});
        let error = check(v).unwrap_err();
        assert_eq!((error.field.as_str(), error.message.contains("file:<id>")), ("dataset.path", true), "{path}");
    }
}

#[test]
fn devices_parse() {
    assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
    assert!(parse_device("tpu").is_err());
    assert_eq!(parse_device("cuda:1").is_ok(), cfg!(feature = "cuda"));
}

#[test]
fn repeats_and_seeds_are_checked_and_named() {
    let cases: &[(serde_json::Value, &str)] = &[
        (serde_json::json!({"repeats": 0}), "training.repeats"),
        (serde_json::json!({"repeats": 21}), "training.repeats"),
        (serde_json::json!({"repeats": 2, "seeds": [1, 2]}), "training.seeds"),
        (serde_json::json!({"seeds": []}), "training.seeds"),
        (serde_json::json!({"seeds": [3, 4, 3]}), "training.seeds[2]"),
    ];
    for (fields, field) in cases {
        let mut v = example();
        for (key, value) in fields.as_object().unwrap() {
            v["training"][key] = value.clone();
        }
        assert_eq!(check(v).unwrap_err().field, *field, "{fields}");
    }
    let mut v = example();
    v["training"]["seed"] = 7.into();
    assert_eq!(check(v.clone()).unwrap().training.run_seeds(), vec![7]);
    v["training"]["repeats"] = 3.into();
    assert_eq!(check(v.clone()).unwrap().training.run_seeds(), vec![7, 8, 9]);
    v["training"].as_object_mut().unwrap().remove("repeats");
    v["training"]["seeds"] = serde_json::json!([5, 1]);
    assert_eq!(check(v).unwrap().training.run_seeds(), vec![5, 1]);
}

#[test]
fn a_sweep_is_checked_and_each_refusal_names_its_field() {
    let cases: &[(serde_json::Value, &str)] = &[
        (serde_json::json!({}), "sweep"),
        (serde_json::json!({"temperature": [2.0]}), "sweep"),
        (serde_json::json!({"temperature": [2.0, 0.0]}), "sweep.temperature[1]"),
        (serde_json::json!({"alpha": [0.5, 0.5]}), "sweep.alpha[1]"),
        (serde_json::json!({"alpha": [0.5, 1.5]}), "sweep.alpha[1]"),
        (serde_json::json!({"lr": {"min": 0.001, "max": 0.1}}), "sweep.lr"),
        (serde_json::json!({"strategy": "random", "lr": [0.1, 0.01]}), "sweep.trials"),
        (serde_json::json!({"strategy": "random", "trials": 65, "lr": [0.1, 0.01]}), "sweep.trials"),
        (serde_json::json!({"strategy": "random", "trials": 4, "lr": {"min": 0.1, "max": 0.01}}), "sweep.lr"),
        (
            serde_json::json!({"strategy": "random", "trials": 4, "lr": {"min": 0.0, "max": 0.1, "log": true}}),
            "sweep.lr.min",
        ),
        (serde_json::json!({"strategy": "random", "trials": 4, "alpha": {"min": 0.2, "max": 1.2}}), "sweep.alpha.max"),
        (serde_json::json!({"trials": 4, "lr": [0.1, 0.01]}), "sweep.trials"),
        (
            serde_json::json!({"temperature": [1, 2, 3, 4, 5], "alpha": [0.1, 0.2, 0.3, 0.4], "lr": [0.1, 0.2, 0.3, 0.4]}),
            "sweep",
        ),
        (
            serde_json::json!({"students": [{"kind": "mlp", "hidden": [8]}, {"kind": "mlp", "hidden": [0]}]}),
            "sweep.students[1].hidden[0]",
        ),
        (serde_json::json!({"alpha": [0.5, 0.9], "halving": {"min_epochs": 2}}), "sweep.halving.min_epochs"),
        (serde_json::json!({"alpha": [0.5, 0.9], "halving": {"eta": 1}}), "sweep.halving.eta"),
        (serde_json::json!({"alpha": [0.5, 0.9], "beta": [0.5]}), "sweep.beta"),
    ];
    for (sweep, field) in cases {
        let mut v = example();
        v["sweep"] = sweep.clone();
        assert_eq!(check(v).unwrap_err().field, *field, "{sweep}");
    }
    let mut v = example();
    v["distill"]["loss"] = "mse".into();
    v["sweep"] = serde_json::json!({"temperature": [2.0, 4.0]});
    assert_eq!(check(v).unwrap_err().field, "sweep.temperature");
}

#[test]
fn a_grid_counts_its_trials_and_halving_its_rungs() {
    let mut v = example();
    v["training"]["epochs"] = 8.into();
    v["sweep"] = serde_json::json!({"temperature": [2, 4], "alpha": [0.5, 0.7, 0.9], "students": [{"kind": "mlp", "hidden": [8]}]});
    let spec = check(v.clone()).unwrap();
    let sweep = spec.sweep.as_ref().unwrap();
    assert_eq!(sweep.trial_count(), 6);
    assert_eq!(sweep.rungs(8), [Rung { epochs: 8, trials: 6 }]);
    assert_eq!(sweep.trial_epochs(8), 48);

    v["sweep"] = serde_json::json!({"temperature": [1, 2, 3, 4, 5, 6, 7, 8], "halving": {"eta": 2, "min_epochs": 1}});
    let sweep = check(v).unwrap().sweep.unwrap();
    let rungs: Vec<(u32, usize)> = sweep.rungs(8).iter().map(|r| (r.epochs, r.trials)).collect();
    assert_eq!(rungs, [(1, 8), (2, 4), (4, 2), (8, 1)]);
    // Each rung carries its trials on: 8 × 1 + 4 × 1 + 2 × 2 + 1 × 4 epochs.
    assert_eq!(sweep.trial_epochs(8), 20);
    // One survivor early: it trains to the end at once.
    let three = SweepSpec { halving: Some(Halving { eta: 3, min_epochs: 1 }), ..sweep.clone() };
    let rungs: Vec<(u32, usize)> = three.rungs(20).iter().map(|r| (r.epochs, r.trials)).collect();
    assert_eq!(rungs, [(1, 8), (3, 3), (20, 1)]);
}

#[test]
fn a_trial_spec_takes_the_setting_and_drops_the_sweep() {
    let mut v = example();
    v["sweep"] = serde_json::json!({"lr": [0.01, 0.1], "students": [{"kind": "mlp", "hidden": [8]}, {"kind": "mlp", "hidden": [4, 4]}]});
    let spec = check(v).unwrap();
    let setting = Setting { temperature: Some(3.0), alpha: Some(0.25), lr: Some(0.1), student: Some(1) };
    let trial = spec.with_setting(&setting);
    assert_eq!(trial.distill.temperature, Scheduled::Constant(3.0));
    assert_eq!(trial.distill.alpha, Scheduled::Constant(0.25));
    assert_eq!(trial.training.optimizer.lr(), 0.1);
    assert_eq!(trial.student.arch, ArchSpec::Mlp { hidden: vec![4, 4], dropout: 0.0 });
    assert!(trial.sweep.is_none());
    assert_eq!(spec.with_setting(&Setting::default()), JobSpec { sweep: None, ..spec.clone() });
}

#[test]
fn only_a_transformer_student_trims_its_vocabulary() {
    let mut v = example();
    v["student"]["vocabulary"] = "trim".into();
    assert_eq!(check(v.clone()).unwrap_err().field, "student.vocabulary");
    v["student"]["vocabulary"] = "half".into();
    assert_eq!(check(v).unwrap_err().field, "student.vocabulary");
}
