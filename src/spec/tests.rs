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
