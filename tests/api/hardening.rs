//! What a careless or hostile user of a shared box tried, and what the service now answers.

use serde_json::{json, Value};

use crate::helpers::{config, small_spec, spawn_app, tiny_bert_job, TestApp};

async fn refusal(app: &TestApp, spec: &Value) -> Value {
    let response = app.post_json("/v1/jobs", spec).await;
    assert_eq!(response.status(), 422, "{spec}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_spec");
    body["error"].clone()
}

#[tokio::test]
async fn a_job_too_large_for_the_memory_budget_is_refused_naming_its_field() {
    let app = spawn_app().await;
    let mut spec = small_spec(1);
    // 4.3 billion parameters: this teacher took the service down in a crash loop.
    spec["teacher"]["arch"]["hidden"] = json!([65536, 65536]);
    let error = refusal(&app, &spec).await;
    assert_eq!(error["field"], "teacher.arch", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("--max-job-memory") && message.contains("GiB"), "{message}");

    let mut wide_batch = small_spec(1);
    wide_batch["student"]["arch"]["hidden"] = json!([65536]);
    wide_batch["training"]["batch_size"] = json!(65536);
    assert_eq!(refusal(&app, &wide_batch).await["field"], "training.batch_size");

    let ready = app.get_json("/readyz").await;
    let limit = ready["limits"]["max_job_memory_bytes"].as_u64().unwrap();
    assert!(limit > 0 && message.contains(&distillery::engine::job::budget::human(limit)), "{ready} {message}");
    assert_eq!(app.get_json("/v1/jobs").await["data"], json!([]));
}

#[tokio::test]
async fn a_budget_set_by_flag_is_what_submissions_are_held_to() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path().to_path_buf());
    settings.max_job_memory = Some(32 << 20);
    let server = distillery::server::start(settings).await.unwrap();
    let base = format!("http://{}", server.addr);
    let response = reqwest::Client::new().post(format!("{base}/v1/jobs")).json(&small_spec(1)).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("allows a job 32.0 MiB"), "{body}");
}

#[tokio::test]
async fn warmup_longer_than_training_media_types_and_bodies_that_are_not_text() {
    let app = spawn_app().await;
    let mut spec = small_spec(1);
    spec["training"]["warmup_steps"] = json!(u64::MAX);
    let error = refusal(&app, &spec).await;
    assert_eq!(error["field"], "training.warmup_steps");
    assert!(error["message"].as_str().unwrap().contains("use at most"), "{error}");

    let post = |content_type: &'static str, body: Vec<u8>| {
        app.client.post(app.url("/v1/jobs")).header("content-type", content_type).body(body).send()
    };
    let spec_bytes = small_spec(1).to_string().into_bytes();
    assert_eq!(post("application/jsonx", spec_bytes.clone()).await.unwrap().status(), 415);
    assert_eq!(post("APPLICATION/JSON; charset=utf-8", spec_bytes).await.unwrap().status(), 201);
    let response = post("application/json", vec![b'{', 0xff, 0xfe, b'}']).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "malformed_json");
}

#[tokio::test]
async fn messages_name_paths_relative_to_the_data_root() {
    let app = spawn_app().await;
    let spec = json!({"source": "csv", "path": "missing/train.csv"});
    let mut job = small_spec(1);
    job["dataset"] = spec;
    let message = refusal(&app, &job).await["message"].as_str().unwrap().to_string();
    assert!(message.contains("`missing/train.csv`"), "{message}");
    assert!(
        !message.contains(&app.data_dir.path().display().to_string()),
        "the message shows where the data root is: {message}"
    );
}

/// A teacher folder whose companion files are symlinks: one to a file elsewhere on the box, one
/// to the service's own database. Before, their bytes were copied into the downloadable
/// export, and opening the database through the link dropped the server's SQLite locks.
#[tokio::test]
async fn symlinks_in_a_teacher_folder_cannot_reach_the_database_which_survives() {
    let app = spawn_app().await;
    let finished = app.submit(&small_spec(1)).await;
    app.wait_for_status(&finished, &["succeeded"]).await;

    let spec = tiny_bert_job(&app);
    let datasets = app.data_dir.path().join("datasets");
    let teacher = datasets.join("models/tiny-bert");
    let rows: String =
        (0..30).map(|i| format!("{} movie,{}\n", ["a good", "an okay", "a bad"][i % 3], i % 3)).collect();
    std::fs::write(datasets.join("reviews.csv"), format!("text,label\n{rows}")).unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "a secret").unwrap();
    for (name, target) in [
        ("special_tokens_map.json", secret.path().to_path_buf()),
        ("vocab.txt", app.data_dir.path().join("distillery.db")),
    ] {
        std::os::unix::fs::symlink(&target, teacher.join(name)).unwrap();
        let error = refusal(&app, &spec).await;
        assert_eq!(error["field"], "teacher.arch.path");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`models/tiny-bert/{name}` leads outside the data root")),
            "{error}"
        );
        std::fs::remove_file(teacher.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(app.data_dir.path().join("distillery.db"), teacher.join("tokenizer.json.db")).unwrap();
    std::fs::remove_file(teacher.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink("tokenizer.json.db", teacher.join("tokenizer.json")).unwrap();
    assert_eq!(refusal(&app, &spec).await["field"], "teacher.arch.path");

    // The database is whole: the finished job and its report are still there, and new jobs run.
    assert_eq!(app.get_json(&format!("/v1/jobs/{finished}")).await["status"], "succeeded");
    assert_eq!(app.get(&format!("/v1/jobs/{finished}/report")).await.status(), 200);
    let next = app.submit(&small_spec(1)).await;
    app.wait_for_status(&next, &["succeeded"]).await;
    assert_eq!(app.get_json("/v1/jobs").await["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let app = spawn_app().await;
    let second = distillery::server::start(config(app.data_dir.path().to_path_buf())).await;
    let error = second.err().expect("two servers on one SQLite database").to_string();
    assert!(error.contains("another distillery server is using the data directory"), "{error}");
    assert_eq!(app.get("/healthz").await.status(), 200);
}
