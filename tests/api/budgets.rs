//! Jobs side by side split the machine: each trains in a pool of its own, of
//! `--threads-per-job` threads (by default the cores shared among the workers).

use std::time::Duration;

use distillery::server;
use serde_json::Value;

use crate::helpers::{config, slow_spec};

#[tokio::test]
async fn two_workers_train_two_jobs_at_once_each_on_its_share_of_the_cores() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path().to_path_buf());
    settings.workers = 2;
    let expected = settings.job_threads();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(expected, (cores / 2).max(1));
    let service = server::start(settings).await.unwrap();
    let (base, client) = (format!("http://{}", service.addr), reqwest::Client::new());
    let mut spec = slow_spec();
    spec["training"]["epochs"] = 3.into();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job: Value = client.post(format!("{base}/v1/jobs")).json(&spec).send().await.unwrap().json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let status = async |id: &str| -> String {
        let job: Value = client.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        job["status"].as_str().unwrap().to_string()
    };
    let mut both_ran = false;
    for _ in 0..2400 {
        let (a, b) = (status(&ids[0]).await, status(&ids[1]).await);
        both_ran |= a == "running" && b == "running";
        if a == "succeeded" && b == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(both_ran, "the two jobs never trained at the same time");
    for id in &ids {
        let report: Value =
            client.get(format!("{base}/v1/jobs/{id}/report")).send().await.unwrap().json().await.unwrap();
        assert_eq!(report["threads"].as_u64(), Some(expected as u64), "{report}");
    }
}

#[tokio::test]
async fn threads_per_job_is_what_a_job_trains_with() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path().to_path_buf());
    settings.threads_per_job = Some(1);
    let service = server::start(settings).await.unwrap();
    let (base, client) = (format!("http://{}", service.addr), reqwest::Client::new());
    let job: Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&crate::helpers::small_spec(1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    for _ in 0..1200 {
        let job: Value = client.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if job["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report: Value = client.get(format!("{base}/v1/jobs/{id}/report")).send().await.unwrap().json().await.unwrap();
    assert_eq!(report["threads"], 1, "{report}");
}
