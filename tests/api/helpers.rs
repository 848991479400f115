//! A fresh service per test: its own data directory, database and random port.

use std::path::PathBuf;
use std::time::Duration;

use distillery::config::ServeConfig;
use distillery::server::{self, ServerHandle};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    /// Keeps the service running for the test's duration.
    _server: ServerHandle,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A service with some settings changed from `config`'s.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = config(data_dir.path().to_path_buf());
    adjust(&mut config);
    let server = server::start(config).await.unwrap();
    TestApp { base: format!("http://{}", server.addr), client: reqwest::Client::new(), data_dir, _server: server }
}

pub fn config(data_dir: PathBuf) -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        database_url: None,
        workers: 1,
        device: "cpu".into(),
        lease_secs: 30,
        max_job_memory: None,
        min_free_disk: 64 << 20,
        max_crashes: 3,
        threads_per_job: None,
        max_upload_bytes: 2 << 30,
        max_connections: 512,
        header_timeout_secs: 10,
        request_timeout_secs: 60,
        // Generous, so that only the tests of quotas meet them.
        max_active_jobs: 1000,
        max_running_jobs: None,
        max_storage_bytes: 1 << 40,
        max_parameters: 1_000_000_000,
        max_epoch_samples: 1_000_000_000,
        max_batch_size: 65536,
        max_sequence_length: 512,
        rate_limit: 100_000,
        no_auth: false,
        create_admin_key: false,
        cors_origins: Vec::new(),
        log_format: "text".into(),
    }
}

/// A job small enough for tests: a few epochs of tiny MLPs on the digits set.
pub fn small_spec(epochs: u32) -> Value {
    json!({
        "name": "small",
        "dataset": {"source": "builtin:digits"},
        "teacher": {"arch": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 3}},
        "student": {"arch": {"kind": "mlp", "hidden": [16]}},
        "distill": {"temperature": 4.0, "alpha": 0.7},
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": {"kind": "adamw", "lr": 0.003}, "seed": 7},
        "baseline": true
    })
}

/// A job that runs for a few seconds, for tests that act while it trains.
pub fn slow_spec() -> Value {
    let mut spec = small_spec(60);
    spec["student"]["arch"]["hidden"] = json!([256, 256]);
    spec["training"]["batch_size"] = json!(16);
    spec
}

/// A text job on the tiny BERT fixture, which it copies to `models/tiny-bert` under the data
/// root; the caller writes `reviews.csv` (a `text` and a `label` column).
pub fn tiny_bert_job(app: &TestApp) -> Value {
    let teacher = app.data_dir.path().join("datasets/models/tiny-bert");
    std::fs::create_dir_all(&teacher).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(format!("tests/fixtures/tiny-bert/{file}"), teacher.join(file)).unwrap();
    }
    json!({
        "dataset": {"source": "text", "path": "reviews.csv", "label_column": "label", "max_length": 8},
        "teacher": {"arch": {"kind": "transformer", "path": "models/tiny-bert"}},
        "student": {"arch": {"kind": "transformer", "layers": [2]}},
        "distill": {"temperature": 2, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 16, "optimizer": {"kind": "adamw", "lr": 0.001}}
    })
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub kind: String,
    pub data: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    pub async fn submit(&self, spec: &Value) -> String {
        let response = self.post_json("/v1/jobs", spec).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_for_status(&self, id: &str, wanted: &[&str]) -> Value {
        for _ in 0..1200 {
            let job = self.get_json(&format!("/v1/jobs/{id}")).await;
            if wanted.contains(&job["status"].as_str().unwrap()) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} never reached {wanted:?}");
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let page = self.get_json(&format!("/v1/jobs/{id}/events?limit=1000")).await;
        page["data"].as_array().unwrap().clone()
    }

    /// Follows the SSE stream until it ends, or until `stop_after` events have arrived.
    pub async fn follow(&self, id: &str, last_event_id: Option<i64>, stop_after: Option<usize>) -> Vec<SseEvent> {
        let mut request =
            self.client.get(self.url(&format!("/v1/jobs/{id}/events"))).header("accept", "text/event-stream");
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
            buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(event) = parse_frame(&frame) {
                    events.push(event);
                    if stop_after == Some(events.len()) {
                        return events;
                    }
                }
            }
        }
        events
    }
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    if data.is_empty() {
        return None; // a keep-alive comment
    }
    Some(SseEvent { id, kind, data: serde_json::from_str(&data).unwrap() })
}

/// A request with `key` as its bearer token (none: no `Authorization`); the status and the body
/// as JSON (null when it is not JSON).
pub async fn call(app: &TestApp, key: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
