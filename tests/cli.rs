//! The CLI client (`distillery jobs …`, `distillery files …`) as a user runs it: the real binary
//! against a real service on a free port, each test with a data directory of its own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use distillery::engine::job::report::Report;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[path = "common/service.rs"]
mod service;

use service::{Service, ANY_PORT};

const BIN: &str = env!("CARGO_BIN_EXE_distillery");

/// `GET` on the service, as a test checks what the client did.
async fn get(service: &Service, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", service.base)).await.unwrap()
}

/// What one run of the client left: its exit status, stdout and stderr.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Ran {
        Ran {
            ok: output.status.success(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

/// The client, told where the service is by `DISTILLERY_URL` and sending `key` if any.
fn client(base: &str, key: Option<&str>) -> Command {
    let mut command = Command::new(BIN);
    command.env("DISTILLERY_URL", base).env_remove("DISTILLERY_API_KEY");
    if let Some(key) = key {
        command.env("DISTILLERY_API_KEY", key);
    }
    command
}

fn cli(service: &Service, args: &[&str]) -> Ran {
    client(&service.base, None).args(args).output().unwrap().into()
}

/// `cli` that must succeed.
fn ok(service: &Service, args: &[&str]) -> String {
    let ran = cli(service, args);
    assert!(ran.ok, "{args:?} failed:\n{}\n{}", ran.stdout, ran.stderr);
    ran.stdout
}

/// `examples/digits.json`, shortened to a few epochs and changed by `edit`, written to `dir`.
fn digits_spec(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut spec: Value = serde_json::from_str(include_str!("../examples/digits.json")).unwrap();
    spec["teacher"]["train"]["epochs"] = json!(3);
    spec["training"]["epochs"] = json!(3);
    edit(&mut spec);
    let path = dir.join(name);
    std::fs::write(&path, spec.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

/// A job that trains for several seconds: a wide student, small batches.
fn slow(spec: &mut Value) {
    spec["student"]["arch"]["hidden"] = json!([256, 256]);
    spec["training"]["batch_size"] = json!(16);
    spec["training"]["epochs"] = json!(12);
    spec["baseline"] = json!(false);
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

async fn status(service: &Service, id: &str) -> String {
    let job: Value = get(service, &format!("/v1/jobs/{id}")).await.json().await.unwrap();
    job["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn submit_watch_report_download_and_delete() {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), ANY_PORT, &[]);
    let spec = digits_spec(data.path(), "digits.json", |_| {});
    let submitted = cli(&service, &["jobs", "submit", &spec, "--watch"]);
    assert!(submitted.ok, "{}\n{}", submitted.stdout, submitted.stderr);
    // The digits student has 4.1% of its teacher's parameters: the 201 says so, on stderr.
    assert!(
        submitted.stderr.contains("warning: the student has 4.1% of the teacher's parameters"),
        "{}",
        submitted.stderr
    );
    let watched = submitted.stdout;
    let id = watched.lines().next().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "the first line is the id: {watched}");
    for line in ["student epoch   3/3", "baseline epoch   3/3", "accuracy", "agreement with teacher", "retention"] {
        assert!(watched.contains(line), "no `{line}` in:\n{watched}");
    }
    assert!(watched.trim_end().lines().last().unwrap().starts_with("distillation "), "no verdict:\n{watched}");

    // The report as the API gives it reads back into the engine's type whole, and the table
    // the client prints is the one `distillery run` prints from it.
    let raw: Value = get(&service, &format!("/v1/jobs/{id}/report")).await.json().await.unwrap();
    let report: Report = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(serde_json::to_value(&report).unwrap(), raw, "the report changed in a round trip");
    let table = distillery::cli::table(&report);
    assert_eq!(ok(&service, &["jobs", "report", &id]).trim_end(), table);
    assert!(watched.contains(&table), "watch printed another report:\n{watched}");

    let listed = ok(&service, &["jobs", "list"]);
    let row = listed.lines().find(|row| row.starts_with(&id)).unwrap_or_else(|| panic!("{listed}"));
    assert!(listed.starts_with("ID") && row.split_whitespace().nth(1) == Some("succeeded"), "{listed}");

    let artifacts: Value = get(&service, &format!("/v1/jobs/{id}/artifacts")).await.json().await.unwrap();
    let artifacts = artifacts["data"].as_array().unwrap();
    let out = data.path().join("downloads");
    let written = ok(&service, &["jobs", "download", &id, "-o", out.to_str().unwrap()]);
    assert_eq!(written.lines().count(), artifacts.len(), "{written}");
    for artifact in artifacts {
        let bytes = std::fs::read(out.join(artifact["name"].as_str().unwrap())).unwrap();
        assert_eq!(sha256(&bytes), artifact["sha256"].as_str().unwrap(), "{artifact}");
    }
    let one = data.path().join("one");
    ok(&service, &["jobs", "download", &id, "config.json", "-o", one.to_str().unwrap()]);
    let names: Vec<_> = std::fs::read_dir(&one).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["config.json"]);
    let missing = cli(&service, &["jobs", "download", &id, "nope.bin", "-o", one.to_str().unwrap()]);
    assert!(!missing.ok && missing.stderr.contains("no artifact `nope.bin`"), "{}", missing.stderr);

    assert_eq!(ok(&service, &["jobs", "rm", &id]).trim(), format!("{id} deleted"));
    assert_eq!(get(&service, &format!("/v1/jobs/{id}")).await.status(), 404);
    let gone = cli(&service, &["jobs", "report", &id]);
    assert!(!gone.ok && gone.stderr.starts_with("error: not_found: "), "{}", gone.stderr);
}

#[tokio::test]
async fn cancel_a_queued_and_a_running_job() {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), ANY_PORT, &[]);
    let spec = digits_spec(data.path(), "slow.json", slow);
    let running = ok(&service, &["jobs", "submit", &spec]).trim().to_string();
    let queued = ok(&service, &["jobs", "submit", &spec]).trim().to_string();
    let started = Instant::now();
    while status(&service, &running).await != "running" {
        assert!(started.elapsed() < Duration::from_secs(60), "the first job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = cli(&service, &["jobs", "rm", &running]);
    assert!(!busy.ok && busy.stderr.contains("job_not_finished") && busy.stderr.contains("cancel it first"));

    assert_eq!(ok(&service, &["jobs", "cancel", &queued]).trim(), format!("{queued} cancelled"));
    assert_eq!(status(&service, &queued).await, "cancelled");
    assert!(ok(&service, &["jobs", "cancel", &running]).contains("cancel requested"));
    let watched = cli(&service, &["jobs", "watch", &running]);
    assert!(!watched.ok && watched.stderr.contains(&format!("job {running} cancelled")), "{}", watched.stderr);
    let again = cli(&service, &["jobs", "cancel", &running]);
    assert!(!again.ok && again.stderr.contains("job_finished"), "{}", again.stderr);
    ok(&service, &["jobs", "rm", &queued]);
    let cancelled = ok(&service, &["jobs", "list", "--status", "cancelled"]);
    assert_eq!(cancelled.lines().count(), 2, "the header and the running job's row:\n{cancelled}");
}

#[tokio::test]
async fn errors_name_the_field_the_key_or_the_server() {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), ANY_PORT, &[]);
    let spec = digits_spec(data.path(), "cold.json", |spec| spec["distill"]["temperature"] = json!(0));
    let refused = cli(&service, &["jobs", "submit", &spec]);
    assert!(!refused.ok && refused.stdout.is_empty(), "{}", refused.stdout);
    assert!(refused.stderr.starts_with("error: invalid_spec: distill.temperature: must be"), "{}", refused.stderr);
    assert_eq!(ok(&service, &["jobs", "list"]).lines().count(), 1, "a refused spec stores nothing");

    // A port nothing listens on: the one a stopped service had.
    let gone = Service::start(data.path().join("gone").as_path(), ANY_PORT, &[]);
    let base = gone.base.clone();
    drop(gone);
    let unreachable: Ran = client(&base, None).args(["jobs", "list"]).output().unwrap().into();
    assert!(!unreachable.ok && unreachable.stderr.contains(&format!("cannot connect to the server at {base}/")));

    let key = Command::new(BIN).args(["keys", "create", "--name", "lead", "--data-dir"]).arg(data.path()).output();
    let key = String::from_utf8(key.unwrap().stdout).unwrap().trim().to_string();
    assert!(key.starts_with("dk_"), "{key}");
    for (sent, says) in [(None, "this service needs an API key"), (Some("dk_0000000000000000_x"), "is not valid")] {
        let denied: Ran = client(&service.base, sent).args(["jobs", "list"]).output().unwrap().into();
        assert!(!denied.ok && denied.stderr.starts_with("error: unauthorized: "), "{}", denied.stderr);
        assert!(denied.stderr.contains(says), "{}", denied.stderr);
    }
    let allowed: Ran = client(&service.base, Some(&key)).args(["jobs", "list"]).output().unwrap().into();
    assert!(allowed.ok, "{}", allowed.stderr);
}

#[tokio::test]
async fn an_uploaded_csv_trains_a_job() {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), ANY_PORT, &[]);
    // Four numeric features; the label is the index of the largest of the first three.
    let mut csv = String::from("a,b,c,d,label\n");
    for i in 0..120u32 {
        let v = [i * 7 % 11, i * 5 % 13, i * 3 % 7, i % 4];
        let label = (0..3).max_by_key(|&x| v[x]).unwrap();
        csv += &format!("{},{},{},{},{label}\n", v[0], v[1], v[2], v[3]);
    }
    let path = data.path().join("train.csv");
    std::fs::write(&path, &csv).unwrap();
    let id = ok(&service, &["files", "upload", path.to_str().unwrap(), "--purpose", "dataset"]).trim().to_string();
    let stored: Value = get(&service, &format!("/v1/files/{id}")).await.json().await.unwrap();
    assert_eq!((&stored["filename"], &stored["purpose"]), (&json!("train.csv"), &json!("dataset")));
    assert_eq!(stored["sha256"], sha256(csv.as_bytes()));

    let spec = digits_spec(data.path(), "csv.json", |spec| {
        spec["dataset"] = json!({"source": "csv", "path": format!("file:{id}")});
        // 90 training rows make a few steps an epoch: fewer than the digits' warm-up.
        spec["training"].as_object_mut().unwrap().remove("warmup_steps");
    });
    let watched = ok(&service, &["jobs", "submit", &spec, "--watch"]);
    assert!(watched.contains("student (distilled)") && watched.contains("retention"), "{watched}");
}

/// The service restarts while a client watches: the client reconnects with `Last-Event-ID` and
/// shows every epoch once, none twice, through to the report.
#[tokio::test]
async fn watch_follows_a_job_across_a_restart_of_the_service() {
    let data = tempfile::tempdir().unwrap();
    let first = Service::start(data.path(), ANY_PORT, &[]);
    let address = first.base.trim_start_matches("http://").to_string();
    let spec = digits_spec(data.path(), "slow.json", slow);
    let id = ok(&first, &["jobs", "submit", &spec]).trim().to_string();
    let mut watch = client(&first.base, None)
        .args(["jobs", "watch", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("student epoch   2/")) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = watch.kill();
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
                panic!("no second student epoch ({e}):\n{}\n{stderr}", lines.join("\n"));
            }
        }
    }
    first.stop();
    let second = Service::start(data.path(), &address, &[]);
    let exit = watch.wait().unwrap();
    lines.extend(rx.iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(exit.success(), "{stderr}\n{}", lines.join("\n"));
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("resumed from checkpoint: phase student")), "{}", lines.join("\n"));
    let epochs: Vec<&String> = lines.iter().filter(|l| l.trim_start().starts_with("student epoch")).collect();
    let expected: Vec<String> = (1..=12).map(|e| format!("  student epoch {e:>3}/12")).collect();
    assert_eq!(epochs.iter().map(|l| &l[..expected[0].len()]).collect::<Vec<_>>(), expected, "{}", lines.join("\n"));
    assert_eq!(status(&second, &id).await, "succeeded");
}
