//! Every class of bad input is refused with a 4xx, a JSON error naming the field, and nothing
//! stored.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::helpers::{small_spec, spawn_app, TestApp};

async fn refused(app: &TestApp, spec: &Value, status: u16, code: &str, field: &str) {
    let response = app.post_json("/v1/jobs", spec).await;
    assert_eq!(response.status().as_u16(), status, "{spec}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
}

fn with(path: &[&str], value: Value) -> Value {
    let mut spec = small_spec(1);
    let mut slot = &mut spec;
    for key in path {
        slot = &mut slot[*key];
    }
    *slot = value;
    spec
}

async fn assert_nothing_stored(app: &TestApp) {
    let list = app.get_json("/v1/jobs").await;
    assert_eq!(list["data"], json!([]), "a refused spec was stored");
}

#[tokio::test]
async fn malformed_json_and_wrong_media_types() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    assert_eq!(body["error"]["field"], "body");

    let response =
        app.client.post(app.url("/v1/jobs")).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(response.status(), 415);

    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let response = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "payload_too_large");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_missing_and_mistyped_fields() {
    let app = spawn_app().await;
    refused(&app, &with(&["distill", "temprature"], json!(4.0)), 422, "invalid_spec", "distill.temprature").await;
    refused(&app, &with(&["surprise"], json!(true)), 422, "invalid_spec", "surprise").await;
    let mut missing = small_spec(1);
    missing["training"].as_object_mut().unwrap().remove("batch_size");
    refused(&app, &missing, 422, "invalid_spec", "training.batch_size").await;
    let mut no_student = small_spec(1);
    no_student.as_object_mut().unwrap().remove("student");
    refused(&app, &no_student, 422, "invalid_spec", "student").await;
    refused(&app, &with(&["training", "epochs"], json!("ten")), 422, "invalid_spec", "training.epochs").await;
    refused(&app, &with(&["student", "arch", "kind"], json!("lstm")), 422, "invalid_spec", "student.arch.kind").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn out_of_range_hyper_parameters() {
    let app = spawn_app().await;
    refused(&app, &with(&["distill", "temperature"], json!(0.0)), 422, "invalid_spec", "distill.temperature").await;
    refused(&app, &with(&["distill", "temperature"], json!(-2.0)), 422, "invalid_spec", "distill.temperature").await;
    refused(&app, &with(&["distill", "alpha"], json!(1.2)), 422, "invalid_spec", "distill.alpha").await;
    refused(&app, &with(&["distill", "alpha"], json!(-0.1)), 422, "invalid_spec", "distill.alpha").await;
    refused(&app, &with(&["training", "epochs"], json!(0)), 422, "invalid_spec", "training.epochs").await;
    refused(&app, &with(&["teacher", "train", "epochs"], json!(0)), 422, "invalid_spec", "teacher.train.epochs").await;
    refused(&app, &with(&["training", "batch_size"], json!(0)), 422, "invalid_spec", "training.batch_size").await;
    refused(&app, &with(&["student", "arch", "hidden"], json!([])), 422, "invalid_spec", "student.arch.hidden").await;
    refused(&app, &with(&["teacher", "arch", "hidden"], json!([64, 0])), 422, "invalid_spec", "teacher.arch.hidden[1]")
        .await;
    refused(&app, &with(&["training", "optimizer", "lr"], json!(0.0)), 422, "invalid_spec", "training.optimizer.lr")
        .await;
    refused(&app, &with(&["device"], json!("tpu:0")), 422, "invalid_spec", "device").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn sweeps_with_bad_values_or_students_that_do_not_fit() {
    let app = spawn_app().await;
    refused(&app, &with(&["sweep"], json!({"temperature": [4.0, 0.0]})), 422, "invalid_spec", "sweep.temperature[1]")
        .await;
    let range = json!({"lr": {"min": 0.001, "max": 0.1}});
    refused(&app, &with(&["sweep"], range), 422, "invalid_spec", "sweep.lr").await;
    refused(
        &app,
        &with(&["sweep"], json!({"alpha": [0.5, 0.9], "halving": {"min_epochs": 1}})),
        422,
        "invalid_spec",
        "sweep.halving.min_epochs",
    )
    .await;
    // The second student has no `layers.2` (its logits are `layers.1`) for the layer pair to read.
    let mut pairs =
        with(&["distill", "intermediate"], json!([{"teacher_layer": "layers.0", "student_layer": "layers.2"}]));
    pairs["student"]["arch"]["hidden"] = json!([16, 16]);
    pairs["sweep"] = json!({"students": [{"kind": "mlp", "hidden": [32, 16]}, {"kind": "mlp", "hidden": [16]}]});
    refused(&app, &pairs, 422, "invalid_spec", "sweep.students[1]").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn repeats_out_of_range_both_given_or_seeds_twice() {
    let app = spawn_app().await;
    refused(&app, &with(&["training", "repeats"], json!(0)), 422, "invalid_spec", "training.repeats").await;
    refused(&app, &with(&["training", "repeats"], json!(21)), 422, "invalid_spec", "training.repeats").await;
    let mut both = with(&["training", "repeats"], json!(2));
    both["training"]["seeds"] = json!([1, 2]);
    refused(&app, &both, 422, "invalid_spec", "training.seeds").await;
    refused(&app, &with(&["training", "seeds"], json!([4, 9, 4])), 422, "invalid_spec", "training.seeds[2]").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn datasets_that_are_missing_unparseable_out_of_range_or_outside_the_root() {
    let app = spawn_app().await;
    let datasets = app.data_dir.path().join("datasets");
    std::fs::write(datasets.join("text.csv"), "a,label\n1,0\nnot-a-number,1\n").unwrap();
    std::fs::write(datasets.join("labels.csv"), "a,label\n1,0\n2,5\n3,1\n").unwrap();
    std::fs::write(app.data_dir.path().join("secret.csv"), "a,label\n1,0\n2,1\n").unwrap();
    let csv = |path: &str| with(&["dataset"], json!({"source": "csv", "path": path}));

    refused(&app, &csv("nowhere.csv"), 422, "invalid_spec", "dataset.path").await;
    refused(&app, &csv("text.csv"), 422, "invalid_spec", "dataset.path").await;
    refused(&app, &csv("../secret.csv"), 422, "invalid_spec", "dataset.path").await;
    let mut out_of_range = csv("labels.csv");
    out_of_range["dataset"]["num_classes"] = json!(3);
    refused(&app, &out_of_range, 422, "invalid_spec", "dataset.num_classes").await;
    let mut no_label = csv("labels.csv");
    no_label["dataset"]["label_column"] = json!("class");
    refused(&app, &no_label, 422, "invalid_spec", "dataset.label_column").await;
    refused(
        &app,
        &with(&["dataset"], json!({"source": "idx", "images": "img.gz"})),
        422,
        "invalid_spec",
        "dataset.labels",
    )
    .await;
    refused(&app, &with(&["dataset"], json!({"source": "parquet"})), 422, "invalid_spec", "dataset.source").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn transfer_sets_of_the_wrong_shape_missing_or_outside_the_root() {
    let app = spawn_app().await;
    let datasets = app.data_dir.path().join("datasets");
    std::fs::write(datasets.join("train.csv"), "a,b,label\n1,2,0\n3,4,1\n5,6,1\n2,2,0\n").unwrap();
    std::fs::write(datasets.join("wide.csv"), "a,b,c\n1,2,3\n").unwrap();
    std::fs::write(app.data_dir.path().join("secret.csv"), "a,b\n1,2\n").unwrap();
    let transfer =
        |transfer: Value| with(&["dataset"], json!({"source": "csv", "path": "train.csv", "transfer": transfer}));
    let field = "dataset.transfer.path";
    refused(&app, &transfer(json!({"path": "wide.csv"})), 422, "invalid_spec", field).await;
    refused(&app, &transfer(json!({"path": "nowhere.csv"})), 422, "invalid_spec", field).await;
    refused(&app, &transfer(json!({"path": "../secret.csv"})), 422, "invalid_spec", field).await;
    refused(&app, &transfer(json!({"images": "x.idx"})), 422, "invalid_spec", "dataset.transfer.images").await;
    refused(
        &app,
        &transfer(json!({"path": "wide.csv", "labels": "y"})),
        422,
        "invalid_spec",
        "dataset.transfer.labels",
    )
    .await;
    let digits = with(&["dataset"], json!({"source": "builtin:digits", "transfer": {"path": "wide.csv"}}));
    refused(&app, &digits, 422, "invalid_spec", "dataset.transfer").await;
    refused(&app, &with(&["dataset", "labelled"], json!(0)), 422, "invalid_spec", "dataset.labelled").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_teacher_whose_input_width_does_not_match_the_data() {
    let app = spawn_app().await;
    let datasets = app.data_dir.path().join("datasets");
    // A [32]-hidden teacher for 20 features; the digits have 64.
    let tensors: HashMap<String, Tensor> = [("layers.0.weight", (32, 20)), ("layers.1.weight", (10, 32))]
        .into_iter()
        .flat_map(|(name, shape)| {
            let bias = name.replace("weight", "bias");
            [
                (name.to_string(), Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap()),
                (bias, Tensor::zeros(shape.0, candle_core::DType::F32, &Device::Cpu).unwrap()),
            ]
        })
        .collect();
    candle_core::safetensors::save(&tensors, datasets.join("teacher.safetensors")).unwrap();
    let mut spec = small_spec(1);
    spec["teacher"] = json!({"arch": {"kind": "mlp", "hidden": [32]}, "weights": "teacher.safetensors"});
    let response = app.post_json("/v1/jobs", &spec).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "teacher.weights");
    assert!(body["error"]["message"].as_str().unwrap().contains("64 features"), "{body}");

    spec["teacher"]["train"] = json!({"epochs": 1});
    refused(&app, &spec, 422, "invalid_spec", "teacher").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_jobs_and_routes() {
    let app = spawn_app().await;
    for path in ["/v1/jobs/0190b7b4-0000-7000-8000-000000000000", "/v1/jobs/not-a-uuid/report", "/v2/nothing"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "not_found");
    }
    let response = app.client.put(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "method_not_allowed");
    let response = app.get("/v1/jobs/0190b7b4-0000-7000-8000-000000000000/events?from=3").await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["field"], "from");
}
