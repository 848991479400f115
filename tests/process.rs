//! The real binary as an operator runs it: killed with SIGKILL mid-job, or stopped with SIGTERM,
//! then started again on the same data directory. No accepted job is lost, and the job resumes
//! from its checkpoint instead of starting over.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common/service.rs"]
mod service;

use service::{Service, ANY_PORT};

/// A short lease, so that a killed service's job is requeued quickly.
const LEASE: &[&str] = &["--lease-secs", "2"];

fn spec() -> Value {
    json!({
        "name": "resumable",
        "dataset": {"source": "builtin:digits"},
        "teacher": {"arch": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 2}},
        "student": {"arch": {"kind": "mlp", "hidden": [256, 256]}},
        "distill": {"temperature": 4.0, "alpha": 0.7},
        "training": {"epochs": 25, "batch_size": 16, "optimizer": {"kind": "adamw", "lr": 0.001}, "seed": 3},
        "baseline": false
    })
}

async fn events(client: &reqwest::Client, base: &str, id: &str) -> Vec<Value> {
    let page: Value =
        client.get(format!("{base}/v1/jobs/{id}/events?limit=1000")).send().await.unwrap().json().await.unwrap();
    page["data"].as_array().unwrap().clone()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(180), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(client: &reqwest::Client, base: &str) -> String {
    let job: Value = client.post(format!("{base}/v1/jobs")).json(&spec()).send().await.unwrap().json().await.unwrap();
    job["id"].as_str().unwrap().to_string()
}

async fn wait_for_success(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let mut job = Value::Null;
    wait_until("the job to finish", async || {
        job = client.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        matches!(job["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
    })
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// The step the job resumed from, and the step of its first progress event afterwards.
fn resumption(events: &[Value]) -> (u64, u64) {
    let at = events
        .iter()
        .position(|e| {
            e["type"] == "log"
                && e["payload"]["message"].as_str().unwrap().starts_with("resumed from checkpoint: phase student")
        })
        .expect("no 'resumed from checkpoint' event");
    let message = events[at]["payload"]["message"].as_str().unwrap();
    let resumed: u64 = message.rsplit("step ").next().unwrap().parse().unwrap();
    let next = events[at..].iter().find(|e| e["type"] == "progress").expect("no progress after resuming");
    (resumed, next["payload"]["step"].as_u64().unwrap())
}

/// How many points the polyline of `series` has.
fn drawn_points(svg: &str, series: &str) -> usize {
    let line =
        svg.lines().find(|l| l.contains(&format!("data-series=\"{series}\""))).unwrap_or_else(|| panic!("no {series}"));
    line.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split(' ').count()
}

#[tokio::test]
async fn sigkill_mid_job_then_restart_resumes_from_the_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let first = Service::start(data.path(), ANY_PORT, LEASE);
    let id = submit(&client, &first.base).await;
    let mut checkpoint_step = 0;
    wait_until("a student checkpoint", async || {
        let events = events(&client, &first.base, &id).await;
        let found =
            events.iter().rev().find(|e| e["type"] == "checkpoint" && e["payload"]["phase"] == "student").cloned();
        found.map(|e| checkpoint_step = e["payload"]["step"].as_u64().unwrap()).is_some()
    })
    .await;
    drop(first); // SIGKILL: no checkpoint, no goodbye.

    let second = Service::start(data.path(), ANY_PORT, LEASE);
    let job = wait_for_success(&client, &second.base, &id).await;
    assert_eq!(job["attempts"], 2);
    let events = events(&client, &second.base, &id).await;
    let (resumed, next) = resumption(&events);
    assert!(resumed >= checkpoint_step && resumed > 0, "resumed at {resumed}, checkpoint was at {checkpoint_step}");
    assert_eq!(next, resumed + 1, "the step counter must continue from the checkpoint");
    assert!(events
        .iter()
        .any(|e| e["payload"]["message"] == "phase teacher was finished before the restart; its weights are reused"));
    // The new process holds the data-dir lock, so it takes the dead one's job back at start-up
    // instead of waiting for its lease to run out.
    assert!(events.iter().any(|e| e["type"] == "status"
        && e["payload"]["status"] == "queued"
        && e["payload"]["reason"].as_str().unwrap_or("").contains("restarted while it ran")));
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let report: Value =
        client.get(format!("{}/v1/jobs/{id}/report", second.base)).send().await.unwrap().json().await.unwrap();
    assert!(report["student"]["accuracy"].as_f64().unwrap() > 0.8, "{report}");

    // The second process trained only the rest of the student; the curves show every attempt.
    let curves = client.get(format!("{}/v1/jobs/{id}/artifacts/curves.svg", second.base)).send().await.unwrap();
    let curves = curves.text().await.unwrap();
    assert!(drawn_points(&curves, "teacher total") > 0 && drawn_points(&curves, "teacher accuracy") == 2);
    let at =
        events.iter().position(|e| e["payload"]["message"].as_str().is_some_and(|m| m.starts_with("resumed"))).unwrap();
    let second_attempt = events[at..].iter().filter(|e| e["type"] == "progress").count();
    assert!(drawn_points(&curves, "student total") > second_attempt, "the student's first attempt is drawn too");
}

#[tokio::test]
async fn sigterm_checkpoints_the_running_job_and_the_next_start_finishes_it() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut first = Service::start(data.path(), ANY_PORT, LEASE);
    let id = submit(&client, &first.base).await;
    wait_until("student training", async || {
        events(&client, &first.base, &id)
            .await
            .iter()
            .any(|e| e["type"] == "progress" && e["payload"]["phase"] == "student")
    })
    .await;
    first.signal(libc::SIGTERM);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "SIGTERM did not stop the service");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    let second = Service::start(data.path(), ANY_PORT, LEASE);
    wait_for_success(&client, &second.base, &id).await;
    let events = events(&client, &second.base, &id).await;
    let requeued = events
        .iter()
        .position(|e| {
            e["type"] == "status"
                && e["payload"]["status"] == "queued"
                && e["payload"]["reason"].as_str().unwrap_or("").contains("shut down")
        })
        .expect("the job went back to the queue at shutdown");
    let checkpoint =
        events[..requeued].iter().rev().find(|e| e["type"] == "checkpoint").expect("a checkpoint at shutdown");
    assert_eq!(checkpoint["payload"]["phase"], "student");
    let shutdown_checkpoint = checkpoint["payload"]["step"].as_u64().unwrap();
    let (resumed, next) = resumption(&events);
    assert_eq!(resumed, shutdown_checkpoint, "resumes from the checkpoint written at shutdown");
    assert_eq!(next, resumed + 1);
}

/// A small file system, mounted for the test (as root; CI runs as root).
struct Mount(tempfile::TempDir);

impl Mount {
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match mounted {
            Ok(status) if status.success() => Some(Mount(dir)),
            _ => None,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_a_job_once_frees_its_files_and_the_service_keeps_serving() {
    let Some(mount) = Mount::tmpfs("24m") else {
        eprintln!("SKIPPED: mounting a 24 MB tmpfs needs root (CI runs as root)");
        return;
    };
    let data = mount.0.path().join("data");
    let client = reqwest::Client::new();
    {
        // Below the free-space floor, submissions are refused up front and /readyz says why.
        let service = Service::start(&data, ANY_PORT, &[LEASE, &["--min-free-disk", "1GiB"]].concat());
        let response = client.post(format!("{}/v1/jobs", service.base)).json(&spec()).send().await.unwrap();
        assert_eq!(response.status(), 507);
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "insufficient_storage");
        let ready = client.get(format!("{}/readyz", service.base)).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        assert_eq!(ready.json::<Value>().await.unwrap()["status"], "low_disk");
    }
    let service = Service::start(&data, ANY_PORT, &[LEASE, &["--min-free-disk", "1MiB"]].concat());
    let mut heavy = spec();
    heavy["teacher"] = json!({"arch": {"kind": "mlp", "hidden": [1024, 1024]}, "train": {"epochs": 3}});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = client.post(format!("{}/v1/jobs", service.base)).json(&heavy).send().await.unwrap();
        assert_eq!(response.status(), 201);
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let mut jobs = Vec::new();
    for id in &ids {
        let mut job = Value::Null;
        wait_until("the job to end", async || {
            job = client.get(format!("{}/v1/jobs/{id}", service.base)).send().await.unwrap().json().await.unwrap();
            matches!(job["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
        jobs.push(job);
    }
    let full: Vec<&Value> =
        jobs.iter().filter(|j| j["error"].as_str().unwrap_or("").contains("the disk is full")).collect();
    assert!(!full.is_empty(), "no job hit the full disk: {jobs:?}");
    for job in &jobs {
        assert_eq!(job["attempts"], 1, "a job ran twice: {job}");
    }
    for job in &full {
        assert_eq!(job["status"], "failed");
        assert!(
            !data.join("jobs").join(job["id"].as_str().unwrap()).exists(),
            "the failed job's files are still there"
        );
    }
    // The pool was not left inside a transaction: the service still accepts and answers.
    let response = client.post(format!("{}/v1/jobs", service.base)).json(&spec()).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    client.post(format!("{}/v1/jobs/{id}/cancel", service.base)).send().await.unwrap();
    drop(service);

    // A restart runs none of them again.
    let again = Service::start(&data, ANY_PORT, &[LEASE, &["--min-free-disk", "1MiB"]].concat());
    for old in &jobs {
        let id = old["id"].as_str().unwrap();
        let job: Value = client.get(format!("{}/v1/jobs/{id}", again.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!((&job["status"], &job["attempts"]), (&old["status"], &json!(1)), "{job}");
    }
}

/// `distillery keys …` on `data_dir`: its stdout, after asserting it succeeded.
fn keys(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "keys {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn keys_created_and_revoked_from_the_command_line_while_the_server_runs() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let service = Service::start(data.path(), ANY_PORT, LEASE);
    let jobs = format!("{}/v1/jobs", service.base);
    assert_eq!(client.get(&jobs).send().await.unwrap().status(), 200, "open without keys");

    let lead = keys(data.path(), &["create", "--name", "lead", "--admin"]).trim().to_string();
    let alice = keys(data.path(), &["create", "--name", "alice", "--share", "2"]).trim().to_string();
    assert!(lead.starts_with("dk_") && alice.starts_with("dk_"), "{lead} {alice}");
    let listed = keys(data.path(), &["list"]);
    for (key, line) in [(&lead, "yes"), (&alice, "no")] {
        let (prefix, secret) = key.rsplit_once('_').unwrap();
        let row = listed.lines().find(|row| row.starts_with(prefix)).unwrap_or_else(|| panic!("{listed}"));
        assert!(row.split_whitespace().nth(2) == Some(line) && !listed.contains(secret), "{listed}");
    }

    assert_eq!(client.get(&jobs).send().await.unwrap().status(), 401, "a key exists now");
    assert_eq!(client.get(&jobs).bearer_auth(&alice).send().await.unwrap().status(), 200);
    let revoked = keys(data.path(), &["revoke", &alice[..19]]);
    assert!(revoked.starts_with(&format!("revoked {} (alice)", &alice[..19])), "{revoked}");
    assert_eq!(client.get(&jobs).bearer_auth(&alice).send().await.unwrap().status(), 401);
    assert_eq!(client.get(&jobs).bearer_auth(&lead).send().await.unwrap().status(), 200);
}

#[test]
fn run_writes_the_pictures_beside_the_other_artifacts_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec();
    spec["training"]["epochs"] = json!(2);
    spec["student"]["arch"]["hidden"] = json!([16]);
    let spec_path = dir.path().join("tiny.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .arg("run")
        .arg(&spec_path)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let artifacts = stdout.lines().find(|l| l.starts_with("artifacts in ")).unwrap();
    assert!(artifacts.ends_with("config.json, report.json, curves.svg, report.svg"), "{artifacts}");
    let (curves, report) = (out.join("curves.svg"), out.join("report.svg"));
    assert!(stdout.contains(&format!("plots: {}, {}", curves.display(), report.display())), "{stdout}");
    let curves = std::fs::read_to_string(curves).unwrap();
    assert_eq!(drawn_points(&curves, "teacher accuracy"), 2);
    assert_eq!(drawn_points(&curves, "student accuracy"), 2);
    assert!(drawn_points(&curves, "student soft") > 1);
    assert!(std::fs::read_to_string(report).unwrap().contains(">resumable: distillation report</text>"));
}
