//! Per-key quotas (active and running jobs, storage), job size limits and the write rate limit.

use std::time::Duration;

use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{call, slow_spec, small_spec, spawn_app_with, tiny_bert_job, TestApp};

/// A job that outlasts its test: it is cancelled at the end.
fn long_spec() -> Value {
    let mut spec = slow_spec();
    spec["training"]["epochs"] = json!(1000);
    spec
}

/// Two users' keys, made by an administrator's key created in the open mode.
async fn two_users(app: &TestApp) -> (String, String) {
    let (status, admin) = call(app, None, Method::POST, "/v1/keys", Some(json!({"name": "lead", "admin": true}))).await;
    assert_eq!(status, 201, "{admin}");
    let admin = admin["key"].as_str().unwrap().to_string();
    let mut keys = Vec::new();
    for name in ["alice", "bob"] {
        let (status, key) = call(app, Some(&admin), Method::POST, "/v1/keys", Some(json!({"name": name}))).await;
        assert_eq!(status, 201, "{key}");
        keys.push(key["key"].as_str().unwrap().to_string());
    }
    (keys[0].clone(), keys[1].clone())
}

async fn submit(app: &TestApp, key: &str, spec: Value) -> (u16, Value) {
    call(app, Some(key), Method::POST, "/v1/jobs", Some(spec)).await
}

async fn status_of(app: &TestApp, key: &str, id: &str) -> String {
    let (_, job) = call(app, Some(key), Method::GET, &format!("/v1/jobs/{id}"), None).await;
    job["status"].as_str().unwrap().to_string()
}

async fn cancel_all(app: &TestApp, key: &str, ids: &[String]) {
    for id in ids {
        call(app, Some(key), Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await;
    }
}

#[tokio::test]
async fn a_key_at_its_active_jobs_quota_is_refused_and_others_are_not() {
    let app = spawn_app_with(|c| c.max_active_jobs = 2).await;
    let (alice, bob) = two_users(&app).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, job) = submit(&app, &alice, slow_spec()).await;
        assert_eq!(status, 201, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let (status, body) = submit(&app, &alice, slow_spec()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_active_jobs") && message.contains("2 of 2"), "{message}");

    let (status, job) = submit(&app, &bob, small_spec(1)).await;
    assert_eq!(status, 201, "another key has its own quota: {job}");
    cancel_all(&app, &alice, &ids[1..]).await;
    let (status, job) = submit(&app, &alice, small_spec(1)).await;
    assert_eq!(status, 201, "a cancelled job frees its place: {job}");
    cancel_all(&app, &alice, &ids).await;
}

#[tokio::test]
async fn a_key_at_its_running_limit_waits_while_another_key_runs() {
    let app = spawn_app_with(|c| {
        c.workers = 2;
        c.max_running_jobs = Some(1);
    })
    .await;
    let (alice, bob) = two_users(&app).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, job) = submit(&app, &alice, long_spec()).await;
        assert_eq!(status, 201, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for _ in 0..200 {
        if status_of(&app, &alice, &ids[0]).await == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&app, &alice, &ids[0]).await, "running");
    // An idle worker polls the queue every second: give it two chances.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&app, &alice, &ids[1]).await, "queued", "alice's second job waits");
    let (_, job) = submit(&app, &bob, long_spec()).await;
    let bobs = job["id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    for _ in 0..200 {
        seen = status_of(&app, &bob, &bobs).await;
        if seen != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "running", "the free worker takes bob's job");
    assert_eq!(status_of(&app, &alice, &ids[1]).await, "queued");
    cancel_all(&app, &alice, &ids).await;
    cancel_all(&app, &bob, &[bobs]).await;
}

async fn upload(app: &TestApp, bytes: usize) -> (u16, Value) {
    let form = Form::new().part("file", Part::bytes(vec![b'x'; bytes]).file_name("blob.bin"));
    let response = app.client.post(app.url("/v1/files")).multipart(form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn uploads_past_the_storage_quota_are_refused_and_not_kept() {
    let app = spawn_app_with(|c| c.max_storage_bytes = 1000).await;
    assert_eq!(upload(&app, 600).await.0, 201);
    let (status, body) = upload(&app, 600).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(body["error"]["message"].as_str().unwrap().contains("max_storage_bytes"), "{body}");
    assert_eq!(upload(&app, 400).await.0, 201, "the refused upload was not kept");
    assert_eq!(upload(&app, 1).await.0, 429);
    assert_eq!(app.get_json("/v1/files").await["data"].as_array().unwrap().len(), 2);
    let (status, body) = call(&app, None, Method::POST, "/v1/jobs", Some(small_spec(1))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{body}");
}

#[tokio::test]
async fn specs_past_the_size_limits_are_refused_naming_the_field_and_the_limit() {
    let app = spawn_app_with(|c| {
        c.max_parameters = 10_000;
        c.max_epoch_samples = 10_000;
        c.max_batch_size = 32;
    })
    .await;
    let refusal = async |spec: Value| {
        let (status, body) = call(&app, None, Method::POST, "/v1/jobs", Some(spec)).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_spec");
        body["error"].clone()
    };
    let mut wide = small_spec(1);
    wide["teacher"]["arch"]["hidden"] = json!([256]);
    let error = refusal(wide).await;
    assert_eq!(error["field"], "teacher.arch", "{error}");
    assert!(error["message"].as_str().unwrap().contains("10000 (--max-parameters)"), "{error}");

    let long = small_spec(20);
    let error = refusal(long).await;
    assert_eq!(error["field"], "training.epochs", "{error}");
    assert!(error["message"].as_str().unwrap().contains("10000 (--max-epoch-samples)"), "{error}");

    let mut long_teacher = small_spec(1);
    long_teacher["teacher"]["train"]["epochs"] = json!(20);
    assert_eq!(refusal(long_teacher).await["field"], "teacher.train.epochs");

    // One epoch fits, but ten runs of it do not: the repeats are the student's phase k times.
    let mut repeated = small_spec(1);
    repeated["training"]["repeats"] = json!(10);
    let error = refusal(repeated).await;
    assert_eq!(error["field"], "training.repeats", "{error}");
    assert!(error["message"].as_str().unwrap().contains("× runs for repeated seeds"), "{error}");

    let error = refusal(small_spec(1)).await;
    assert_eq!(error["field"], "training.batch_size", "{error}");
    assert!(error["message"].as_str().unwrap().contains("32 (--max-batch-size)"), "{error}");
    let mut fits = small_spec(1);
    fits["training"]["batch_size"] = json!(32);

    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["limits"]["max_parameters"], 10_000, "{ready}");
    assert_eq!(app.get_json("/v1/jobs").await["data"], json!([]));
    assert_eq!(call(&app, None, Method::POST, "/v1/jobs", Some(fits)).await.0, 201);
}

#[tokio::test]
async fn texts_longer_than_the_limit_are_refused_on_max_length() {
    let app = spawn_app_with(|c| c.max_sequence_length = 6).await;
    let refusal = async |spec: Value| {
        let (status, body) = call(&app, None, Method::POST, "/v1/jobs", Some(spec)).await;
        assert_eq!(status, 422, "{body}");
        body["error"].clone()
    };
    let rows: String =
        (0..30).map(|i| format!("{} movie,{}\n", ["a good", "an okay", "a bad"][i % 3], i % 3)).collect();
    std::fs::write(app.data_dir.path().join("datasets/reviews.csv"), format!("text,label\n{rows}")).unwrap();
    let mut text = tiny_bert_job(&app);
    text["training"]["batch_size"] = json!(8);
    let error = refusal(text.clone()).await;
    assert_eq!(error["field"], "dataset.max_length", "{error}");
    assert!(error["message"].as_str().unwrap().contains("6 (--max-sequence-length)"), "{error}");
    text["dataset"]["max_length"] = json!(6);
    let (status, body) = call(&app, None, Method::POST, "/v1/jobs", Some(text)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn writes_past_the_rate_limit_get_429_with_retry_after() {
    let app = spawn_app_with(|c| c.rate_limit = 3).await;
    let path = "/v1/files/0190b7b4-0000-7000-8000-000000000000";
    for _ in 0..3 {
        assert_eq!(app.client.delete(app.url(path)).send().await.unwrap().status(), 404);
    }
    let refused = app.client.delete(app.url(path)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(app.get("/v1/jobs").await.status(), 200, "reads are not limited");
}
