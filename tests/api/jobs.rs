use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{slow_spec, small_spec, spawn_app, tiny_bert_job};

#[tokio::test]
async fn a_job_runs_to_a_report_and_downloadable_artifacts() {
    let app = spawn_app().await;
    let id = app.submit(&small_spec(3)).await;
    let events = app.follow(&id, None, None).await;

    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(events.first().unwrap().data["payload"]["status"], "queued");
    assert_eq!(events.last().unwrap().data["payload"]["status"], "succeeded", "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 2], "report");
    let ids: Vec<i64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "seq has gaps or repeats");
    for phase in ["teacher", "student", "baseline"] {
        let of_phase =
            |kind: &str| events.iter().filter(|e| e.kind == kind && e.data["payload"]["phase"] == phase).count();
        assert!(of_phase("progress") >= 1, "{phase}: no progress");
        assert_eq!(of_phase("metrics"), 3, "{phase}: one metrics event per epoch");
        assert_eq!(of_phase("checkpoint"), 3, "{phase}: one checkpoint per epoch");
    }
    let student_progress =
        events.iter().find(|e| e.kind == "progress" && e.data["payload"]["phase"] == "student").unwrap();
    let p = &student_progress.data["payload"];
    for key in ["epoch", "epochs", "step", "total_steps", "loss", "soft", "hard", "lr"] {
        assert!(p[key].is_number(), "progress lacks {key}: {p}");
    }
    let baseline_progress =
        events.iter().find(|e| e.kind == "progress" && e.data["payload"]["phase"] == "baseline").unwrap();
    assert!(baseline_progress.data["payload"]["soft"].is_null(), "the baseline has no teacher term");

    let report = app.get_json(&format!("/v1/jobs/{id}/report")).await;
    for model in ["teacher", "student", "baseline"] {
        let m = &report[model];
        assert!(m["accuracy"].as_f64().unwrap() > 0.5, "{model} learned little: {m}");
        assert!(m["parameters"].as_u64().unwrap() > 0);
        assert!(m["size_bytes"].as_u64().unwrap() > 0);
        assert!(m["latency"]["batch_1_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(report["student"]["parameters"].as_u64() < report["teacher"]["parameters"].as_u64());
    let retention = report["retention"].as_f64().unwrap();
    let expected = report["student"]["accuracy"].as_f64().unwrap() / report["teacher"]["accuracy"].as_f64().unwrap();
    assert!((retention - expected).abs() < 1e-12);
    assert!(report["gain"].is_number());
    assert!(report["verdict"].as_str().unwrap().contains("distillation"));

    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"]["student_accuracy"], report["student"]["accuracy"]);
    assert!(job["progress"]["step"].is_number());
    assert!(job["finished_at"].is_string());

    let artifacts = app.get_json(&format!("/v1/jobs/{id}/artifacts")).await;
    let names: Vec<&str> = artifacts["data"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    for name in [
        "student.safetensors",
        "config.json",
        "report.json",
        "teacher.safetensors",
        "baseline.safetensors",
        "checkpoint-student.safetensors",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let listed =
        artifacts["data"].as_array().unwrap().iter().find(|a| a["name"] == "student.safetensors").unwrap().clone();
    let download = app.get(listed["url"].as_str().unwrap()).await;
    assert_eq!(download.status(), 200);
    let bytes = download.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, listed["size_bytes"].as_u64().unwrap());
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), listed["sha256"].as_str().unwrap());
    let config: Value = app.get(&format!("/v1/jobs/{id}/artifacts/config.json")).await.json().await.unwrap();
    assert_eq!(config["input_features"], 64);
    assert_eq!(config["num_classes"], 10);
    assert_eq!(config["arch"]["hidden"], json!([16]));

    let curves = app.get_json(&format!("/v1/jobs/{id}/metrics")).await;
    assert_eq!(curves["epochs"].as_array().unwrap().len(), 9);
    assert!(!curves["steps"].as_array().unwrap().is_empty());

    let prometheus = app.get("/metrics").await.text().await.unwrap();
    assert!(prometheus.contains("distillery_jobs{status=\"succeeded\"} 1"), "{prometheus}");

    let missing = app.get(&format!("/v1/jobs/{id}/artifacts/..%2Fstate.json")).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn cancelling_a_queued_and_a_running_job() {
    let app = spawn_app().await;
    let running = app.submit(&slow_spec()).await;
    let queued = app.submit(&small_spec(2)).await;
    app.wait_for_status(&running, &["running"]).await;

    let response = app.client.post(app.url(&format!("/v1/jobs/{queued}/cancel"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "cancelled");

    // Let it take some steps, then cancel: it must stop well before its last step.
    for _ in 0..400 {
        let job = app.get_json(&format!("/v1/jobs/{running}")).await;
        if job["progress"]["phase"] == "student" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let response = app.client.post(app.url(&format!("/v1/jobs/{running}/cancel"))).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let job = app.wait_for_status(&running, &["cancelled", "succeeded", "failed"]).await;
    assert_eq!(job["status"], "cancelled");
    let progress = &job["progress"];
    assert!(progress["step"].as_u64() < progress["total_steps"].as_u64(), "{progress}");

    let again = app.client.post(app.url(&format!("/v1/jobs/{running}/cancel"))).send().await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.json::<Value>().await.unwrap()["error"]["code"], "job_finished");
    let events = app.events(&running).await;
    assert_eq!(events.last().unwrap()["payload"]["status"], "cancelled");
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job() {
    let app = spawn_app().await;
    let send =
        |spec: Value| app.client.post(app.url("/v1/jobs")).header("idempotency-key", "retry-1").json(&spec).send();
    let first = send(small_spec(1)).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = send(small_spec(1)).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.json::<Value>().await.unwrap()["id"], first["id"]);
    let conflict = send(small_spec(2)).await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_reused");
    let list = app.get_json("/v1/jobs").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn listing_is_newest_first_filtered_and_paged() {
    let app = spawn_app().await;
    let blocker = app.submit(&slow_spec()).await;
    app.wait_for_status(&blocker, &["running"]).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(app.submit(&small_spec(1)).await);
    }
    let page = app.get_json("/v1/jobs?status=queued&limit=2").await;
    let ids: Vec<&str> = page["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![queued[2].as_str(), queued[1].as_str()]);
    assert_eq!(page["has_more"], true);
    let rest = app.get_json(&format!("/v1/jobs?status=queued&limit=2&after={}", ids[1])).await;
    assert_eq!(rest["data"][0]["id"], queued[0].as_str());
    assert_eq!(rest["has_more"], false);
    let all = app.get_json("/v1/jobs").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
    let bad = app.get("/v1/jobs?status=done").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"]["field"], "status");
    let bad = app.get("/v1/jobs?limit=1000").await;
    assert_eq!(bad.json::<Value>().await.unwrap()["error"]["field"], "limit");
}

#[tokio::test]
async fn deleting_refuses_running_jobs_and_removes_finished_ones() {
    let app = spawn_app().await;
    let running = app.submit(&slow_spec()).await;
    app.wait_for_status(&running, &["running"]).await;
    let refused = app.client.delete(app.url(&format!("/v1/jobs/{running}"))).send().await.unwrap();
    assert_eq!(refused.status(), 409);
    app.client.post(app.url(&format!("/v1/jobs/{running}/cancel"))).send().await.unwrap();
    app.wait_for_status(&running, &["cancelled"]).await;
    let job_dir = app.data_dir.path().join("jobs").join(&running);
    assert!(job_dir.exists());
    let deleted = app.client.delete(app.url(&format!("/v1/jobs/{running}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(!job_dir.exists());
    assert_eq!(app.get(&format!("/v1/jobs/{running}")).await.status(), 404);
    assert_eq!(app.get(&format!("/v1/jobs/{running}/events")).await.status(), 404);
}

#[tokio::test]
async fn a_dataset_that_breaks_after_submission_fails_the_job_not_the_service() {
    let app = spawn_app().await;
    let datasets = app.data_dir.path().join("datasets");
    let rows: String = (0..40).map(|i| format!("{},{},{}\n", i as f32 * 0.1, (i % 7) as f32, i % 2)).collect();
    std::fs::write(datasets.join("table.csv"), format!("a,b,label\n{rows}")).unwrap();
    let blocker = app.submit(&slow_spec()).await;
    app.wait_for_status(&blocker, &["running"]).await;
    let mut spec = small_spec(1);
    spec["dataset"] = json!({"source": "csv", "path": "table.csv"});
    let id = app.submit(&spec).await;
    std::fs::write(datasets.join("table.csv"), "a,b,label\n1,oops,0\n").unwrap();
    app.client.post(app.url(&format!("/v1/jobs/{blocker}/cancel"))).send().await.unwrap();
    let job = app.wait_for_status(&id, &["failed", "succeeded"]).await;
    assert_eq!(job["status"], "failed");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("dataset.path") && error.contains("`oops` is not a finite number"), "{error}");
    assert_eq!(app.get("/healthz").await.status(), 200);
    let report = app.get(&format!("/v1/jobs/{id}/report")).await;
    assert_eq!(report.status(), 409);
}

#[tokio::test]
async fn a_text_job_hands_back_a_hugging_face_folder_as_a_tar() {
    let app = spawn_app().await;
    let spec = tiny_bert_job(&app);
    let datasets = app.data_dir.path().join("datasets");
    // Three classes, as many as the tiny BERT's head has: it is used as found.
    let rows: String = (0..60)
        .map(|i| format!("{} movie,{}\n", ["a good", "an okay", "a bad"][i % 3], ["pos", "neu", "neg"][i % 3]))
        .collect();
    std::fs::write(datasets.join("reviews.csv"), format!("text,label\n{rows}")).unwrap();
    let id = app.submit(&spec).await;
    let events = app.follow(&id, None, None).await;
    assert_eq!(events.last().unwrap().data["payload"]["status"], "succeeded");
    let report = app.get_json(&format!("/v1/jobs/{id}/report")).await;
    assert_eq!(report["task"], "classification");
    assert_eq!(report["student"]["latency"]["batch_n"], 12, "12 held-out texts, fewer than 32");
    let download = app.get(&format!("/v1/jobs/{id}/artifacts/student-hf.tar")).await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "application/x-tar");
    let tar = download.bytes().await.unwrap();
    assert_eq!(&tar[..22], b"student-hf/config.json");
    assert!(tar.windows(28).any(|w| w == b"student-hf/model.safetensors"));
    assert!(tar.windows(25).any(|w| w == b"student-hf/tokenizer.json"));
}

#[tokio::test]
async fn a_submission_is_warned_of_a_tiny_student_and_t_1_before_it_runs() {
    let app = spawn_app().await;
    let plain: Value =
        app.client.post(app.url("/v1/jobs")).json(&small_spec(1)).send().await.unwrap().json().await.unwrap();
    assert!(plain.get("warnings").is_none(), "a student of 25% at T = 4 is fine: {plain}");
    let mut risky = small_spec(1);
    risky["teacher"]["arch"]["hidden"] = json!([512]);
    risky["student"]["arch"]["hidden"] = json!([4]);
    risky["distill"]["temperature"] = json!(1.0);
    let response = app.client.post(app.url("/v1/jobs")).json(&risky).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    let warnings: Vec<&str> = job["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("of the teacher's parameters") && warnings[1].starts_with("T = 1"), "{warnings:?}");
    assert!(job["id"].is_string() && job["status"] == "queued", "the job itself is still the answer: {job}");
}
