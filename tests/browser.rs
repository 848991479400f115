//! The dashboard in real headless Chromium against the real binary: submit from the page, watch
//! the curves grow while the job trains, read the report's numbers (the API's, formatted as the
//! page formats them), compare two jobs, cancel one, and see a refused spec's field. Screenshots
//! go to the test's temporary folder and, with `DISTILLERY_SCREENSHOTS=<dir>`, there too.

#[path = "browser/cdp.rs"]
mod cdp;
#[path = "common/service.rs"]
mod service;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cdp::Browser;
use serde_json::Value;
use service::{Service, ANY_PORT};

const WAIT: Duration = Duration::from_secs(120);
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

/// A GET on the service, its JSON body.
async fn get(service: &Service, path: &str) -> Value {
    reqwest::get(format!("{}{path}", service.base)).await.unwrap().json().await.unwrap()
}

/// Where screenshots go: the test's folder, and for the README's pictures (`dashboard-*.png`)
/// `DISTILLERY_SCREENSHOTS` too, when set.
struct Shots {
    temp: PathBuf,
    docs: Option<PathBuf>,
}

impl Shots {
    fn new(temp: &Path) -> Shots {
        Shots { temp: temp.to_path_buf(), docs: std::env::var_os("DISTILLERY_SCREENSHOTS").map(PathBuf::from) }
    }

    fn take(&self, browser: &mut Browser, name: &str) {
        let docs = self.docs.as_ref().filter(|_| name.starts_with("dashboard-"));
        for dir in std::iter::once(&self.temp).chain(docs) {
            std::fs::create_dir_all(dir).unwrap();
            browser.screenshot(&dir.join(name));
        }
    }
}

/// A Rust string as a JavaScript string literal.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)).unwrap()
}

/// Picks an example on the submit page, submits it, and returns the new job's id.
fn submit_example(browser: &mut Browser, name: &str) -> String {
    browser.eval("location.hash = '#/submit'");
    let option = format!("[...document.querySelectorAll('#example option')].find(o => o.textContent === {})", js(name));
    browser.wait_for("the example to be offered", &option, WAIT);
    browser.eval(&format!(
        "{{ const s = document.querySelector('#example'); s.value = ({option}).value; s.dispatchEvent(new Event('change')); }}"
    ));
    assert_eq!(browser.eval("document.querySelector('#spec').value"), Value::String(example(name)));
    browser.eval("document.querySelector('#submit-spec').click()");
    browser.wait_for("the job page", "/^#\\/jobs\\/[0-9a-f-]{36}$/.test(location.hash)", WAIT);
    browser.eval("location.hash.slice(7)").as_str().unwrap().to_string()
}

/// Points drawn on the loss charts' `total` lines.
const LOSS_POINTS: &str =
    "[...document.querySelectorAll('.loss-chart polyline[data-series=total]')].reduce((n, p) => n + p.points.numberOfItems, 0)";

fn loss_points(browser: &mut Browser) -> u64 {
    browser.eval(LOSS_POINTS).as_u64().unwrap()
}

fn status_is(status: &str) -> String {
    format!("document.querySelector('h1 .job-status').dataset.status === {}", js(status))
}

/// The chart gains points while the job runs, and ends with exactly the stored ones.
async fn watch_the_job_train(browser: &mut Browser, service: &Service, id: &str) {
    let running = status_is("running");
    browser.wait_for("the first points while running", &format!("{running} && {LOSS_POINTS} > 0"), WAIT);
    let first = loss_points(browser);
    browser.wait_for("more points while still running", &format!("{running} && {LOSS_POINTS} > {first}"), WAIT);
    browser.wait_for("the verdict", "document.querySelector('#verdict')", WAIT);
    let metrics = get(service, &format!("/v1/jobs/{id}/metrics")).await;
    assert_eq!(
        loss_points(browser),
        metrics["steps"].as_array().unwrap().len() as u64,
        "each progress event drawn once"
    );
}

/// The report table shows the API's numbers as the page formats them.
async fn check_the_report(browser: &mut Browser, service: &Service, id: &str) {
    let report = get(service, &format!("/v1/jobs/{id}/report")).await;
    let cell = |model: &str, row: &str| {
        format!("document.querySelector('#report-table td[data-model={model}][data-row={row}]').textContent")
    };
    for model in ["teacher", "student", "baseline"] {
        let accuracy = format!("{:.2}%", report[model]["accuracy"].as_f64().unwrap() * 100.0);
        assert_eq!(browser.eval(&cell(model, "accuracy")), Value::String(accuracy), "{model} accuracy");
        let loss = format!("{:.4}", report[model]["loss"].as_f64().unwrap());
        assert_eq!(browser.eval(&cell(model, "loss")), Value::String(loss), "{model} loss");
        let parameters = report[model]["parameters"].as_u64().unwrap();
        let grouped = format!("{},{:03}", parameters / 1000, parameters % 1000);
        assert_eq!(browser.eval(&cell(model, "parameters")), Value::String(grouped), "{model} parameters");
    }
    assert_eq!(browser.eval("document.querySelector('#verdict').textContent"), report["verdict"]);
    let artifacts = browser.eval("[...document.querySelectorAll('#artifact-table a')].map(a => a.textContent)");
    assert!(artifacts.as_array().unwrap().contains(&Value::from("student.safetensors")), "{artifacts}");
}

/// A running job cancelled from its page, through the confirm step, ends cancelled.
async fn cancel_from_the_page(browser: &mut Browser, service: &Service) -> String {
    let id = submit_example(browser, "digits.json");
    browser.wait_for("the second job to run", &status_is("running"), WAIT);
    browser.eval("document.querySelector('#cancel-job').click()");
    browser.eval("document.querySelector('.confirm-yes').click()");
    browser.wait_for("the job to end cancelled", &status_is("cancelled"), WAIT);
    assert_eq!(get(service, &format!("/v1/jobs/{id}")).await["status"], "cancelled");
    browser.wait_for("the delete button", "document.querySelector('#delete-job')", WAIT);
    id
}

/// A finished job deleted from its page, through the confirm step, is gone from the API.
async fn delete_from_the_page(browser: &mut Browser, service: &Service, id: &str) {
    browser.eval(&format!("location.hash = '#/jobs/{id}'"));
    // The page of this job, not the one before it still on screen.
    let ready = format!("document.querySelector('#delete-job') && document.body.textContent.includes('{id}')");
    browser.wait_for("the delete button", &ready, WAIT);
    // A refresh of the page can redraw its actions between the two clicks and close the
    // confirmation: ask again until it is there, and answer it in the same turn.
    let delete = "(() => { const yes = document.querySelector('.confirm-yes'); if (yes) { yes.click(); return true; } \
        const button = document.querySelector('#delete-job'); if (button) button.click(); return false; })()";
    browser.wait_for("the confirmed delete", delete, WAIT);
    browser.wait_for("the job list", "location.hash === '#/jobs'", WAIT);
    let status = reqwest::get(format!("{}/v1/jobs/{id}", service.base)).await.unwrap().status();
    assert_eq!(status, 404);
}

/// The list's status filter asks the API for that status only.
fn filter_by_status(browser: &mut Browser, status: &str, id: &str) {
    browser.eval(&format!(
        "{{ const s = document.querySelector('#status-filter'); s.value = {}; s.dispatchEvent(new Event('change')); }}",
        js(status)
    ));
    let only =
        format!("[...document.querySelectorAll('#jobs-table tbody tr')].map(r => r.dataset.id).join() === '{id}'");
    browser.wait_for("the filtered list", &only, WAIT);
    browser.eval(
        "{ const s = document.querySelector('#status-filter'); s.value = ''; s.dispatchEvent(new Event('change')); }",
    );
}

/// A data file uploaded from the submit page comes back as the `file:<id>` a spec names.
async fn upload_a_file(browser: &mut Browser, service: &Service) {
    browser.eval("location.hash = '#/submit'");
    browser.wait_for("the upload form", "document.querySelector('#data-file')", WAIT);
    browser.eval(
        "{ const t = new DataTransfer(); t.items.add(new File(['label,x\\n1,0.5\\n0,0.25\\n'], 'tiny.csv')); \
         document.querySelector('#data-file').files = t.files; document.querySelector('#upload').click(); }",
    );
    browser.wait_for("the file's reference", "document.querySelector('#upload-result .file-ref')", WAIT);
    let reference = browser.eval("document.querySelector('#upload-result .file-ref').textContent");
    let id = reference.as_str().unwrap().strip_prefix("file:").unwrap();
    let file = get(service, &format!("/v1/files/{id}")).await;
    assert_eq!((file["filename"].as_str(), file["bytes"].as_u64()), (Some("tiny.csv"), Some(21)), "{file}");
}

/// A refused spec: the API's message beside the field it names, with that field's line.
async fn refused_spec_names_its_field(browser: &mut Browser, service: &Service, shots: &Shots) {
    let mut spec: Value = serde_json::from_str(&example("digits.json")).unwrap();
    spec["distill"]["temperature"] = Value::from(-1.0);
    let text = serde_json::to_string_pretty(&spec).unwrap();
    let refused: Value = reqwest::Client::new()
        .post(format!("{}/v1/jobs", service.base))
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = refused["error"]["message"].as_str().unwrap();
    browser.eval("location.hash = '#/submit'");
    browser.wait_for("the submit page", "document.querySelector('#spec')", WAIT);
    browser.eval(&format!("document.querySelector('#spec').value = {}", js(&text)));
    browser.eval("document.querySelector('#submit-spec').click()");
    let error = "document.querySelector('.field-error[data-field=\"distill.temperature\"]')";
    browser.wait_for("the field's error", error, WAIT);
    let shown = browser.eval(&format!("{error}.textContent"));
    let line = text.lines().position(|l| l.contains("\"temperature\"")).unwrap() + 1;
    assert_eq!(shown, Value::String(format!("distill.temperature{message} · line {line}")));
    assert!(browser.eval("location.hash") == "#/submit", "a refused spec stays on the page");
    shots.take(browser, "refused.png");
    browser.eval("document.querySelector('#spec').value = '{\\n  \"name\": \"x\",\\n  oops\\n}'");
    browser.eval("document.querySelector('#submit-spec').click()");
    let body = "document.querySelector('.field-error[data-field=\"body\"]')";
    browser.wait_for("the malformed body's error", body, WAIT);
    let shown = browser.eval(&format!("{body}.textContent"));
    assert!(shown.as_str().unwrap().ends_with(" · line 3"), "{shown}");
}

#[tokio::test]
async fn the_dashboard_submits_watches_reports_compares_and_cancels() {
    let temp = tempfile::tempdir().unwrap();
    let shots = Shots::new(temp.path());
    let service = Service::start(&temp.path().join("data"), ANY_PORT, &[]);
    let mut browser = Browser::start(WIDTH, HEIGHT);
    browser.navigate(&format!("{}/", service.base));
    browser.wait_for("the job list", "document.querySelector('#jobs-table')", WAIT);

    let first = submit_example(&mut browser, "digits.json");
    watch_the_job_train(&mut browser, &service, &first).await;
    check_the_report(&mut browser, &service, &first).await;
    shots.take(&mut browser, "dashboard-job.png");

    let cancelled = cancel_from_the_page(&mut browser, &service).await;
    refused_spec_names_its_field(&mut browser, &service, &shots).await;
    upload_a_file(&mut browser, &service).await;

    let second = submit_example(&mut browser, "digits-small-data.json");
    browser.eval("location.hash = '#/jobs'");
    browser.wait_for("three jobs listed", "document.querySelectorAll('#jobs-table tbody tr').length === 3", WAIT);
    shots.take(&mut browser, "dashboard-jobs.png");
    filter_by_status(&mut browser, "cancelled", &cancelled);
    browser.wait_for(
        "the second job to succeed",
        &format!("document.querySelector('tr[data-id=\"{second}\"] .job-status').dataset.status === 'succeeded'"),
        WAIT,
    );
    browser.eval(&format!("location.hash = '#/compare/{first},{second}'"));
    browser.wait_for("the comparison", "document.querySelectorAll('#compare-table thead th').length === 3", WAIT);
    shots.take(&mut browser, "dashboard-compare.png");
    let table = browser.eval("document.querySelector('#compare-table').textContent");
    for id in [&first, &second] {
        let accuracy = get(&service, &format!("/v1/jobs/{id}/report")).await["student"]["accuracy"].as_f64().unwrap();
        assert!(table.as_str().unwrap().contains(&format!("{:.2}%", accuracy * 100.0)), "{table}");
    }
    delete_from_the_page(&mut browser, &service, &cancelled).await;
}

/// `distillery keys create …` on `data_dir`: the new key.
fn create_key(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["keys", "create"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "keys create {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Submits `spec` over the API, with `key` if given; the job's id.
async fn submit_spec(service: &Service, key: Option<&str>, spec: &Value) -> String {
    let mut request = reqwest::Client::new().post(format!("{}/v1/jobs", service.base)).json(spec);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let job: Value = request.send().await.unwrap().json().await.unwrap();
    job["id"].as_str().unwrap_or_else(|| panic!("{job}")).to_string()
}

/// examples/digits.json named `name`, with one epoch per phase.
fn one_epoch(name: &str) -> Value {
    let mut spec: Value = serde_json::from_str(&example("digits.json")).unwrap();
    spec["name"] = Value::from(name);
    spec["teacher"]["train"]["epochs"] = Value::from(1);
    spec["training"]["epochs"] = Value::from(1);
    spec
}

/// With 21 jobs, the list shows the API's first page of 20 and the oldest on the next one.
async fn pages_as_the_api_pages(browser: &mut Browser, service: &Service, key: &str, oldest: &str) {
    let client = reqwest::Client::new();
    for i in 0..20 {
        let id = submit_spec(service, Some(key), &one_epoch(&format!("page-filler-{i}"))).await;
        let cancel =
            client.post(format!("{}/v1/jobs/{id}/cancel", service.base)).bearer_auth(key).send().await.unwrap();
        assert!(cancel.status().is_success(), "{}", cancel.status());
    }
    let rows = "document.querySelectorAll('#jobs-table tbody tr')";
    browser.wait_for(
        "a full first page",
        &format!("{rows}.length === 20 && !document.querySelector('#older').disabled"),
        WAIT,
    );
    browser.eval("document.querySelector('#older').click()");
    browser.wait_for(
        "the second page",
        &format!("{rows}.length === 1 && document.querySelector('#older').disabled"),
        WAIT,
    );
    assert_eq!(browser.eval(&format!("{rows}[0].dataset.id")), Value::from(oldest));
    browser.eval("document.querySelector('#newer').click()");
    browser.wait_for(
        "the first page again",
        &format!("{rows}.length === 20 && document.querySelector('#newer').disabled"),
        WAIT,
    );
}

fn log_in(browser: &mut Browser, key: &str) {
    browser.wait_for("the login form", "document.querySelector('#login-form')", WAIT);
    browser.eval(&format!("document.querySelector('#api-key').value = {}", js(key)));
    browser.eval("document.querySelector('#login').click()");
}

#[tokio::test]
async fn the_dashboard_logs_in_with_a_key_and_out_again() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let lead = create_key(&data, &["--name", "lead", "--admin"]);
    let alice = create_key(&data, &["--name", "alice"]);
    let service = Service::start(&data, ANY_PORT, &[]);
    submit_spec(&service, Some(&lead), &one_epoch("leads-job")).await;
    let alices = submit_spec(&service, Some(&alice), &one_epoch("alices-job")).await;
    let mut browser = Browser::start(WIDTH, HEIGHT);
    browser.navigate(&format!("{}/ui", service.base));

    let wrong = format!("{}_{}", &alice[..19], "0".repeat(alice.len() - 20));
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/session", service.base))
        .json(&serde_json::json!({"key": wrong}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let message = refused.json::<Value>().await.unwrap()["error"]["message"].clone();
    log_in(&mut browser, &wrong);
    browser.wait_for("the refusal", "document.querySelector('#login-error').textContent !== ''", WAIT);
    assert_eq!(browser.eval("document.querySelector('#login-error').textContent"), message);
    Shots::new(temp.path()).take(&mut browser, "login.png");

    log_in(&mut browser, &alice);
    browser.wait_for("alice's name", "document.querySelector('#user-name').textContent === 'alice'", WAIT);
    browser.wait_for("alice's job only", "document.querySelectorAll('#jobs-table tbody tr').length === 1", WAIT);
    let shown = browser.eval("document.querySelector('#jobs-table tbody tr').dataset.id");
    assert_eq!(shown, Value::from(alices.as_str()), "a user sees her own jobs only");

    pages_as_the_api_pages(&mut browser, &service, &alice, &alices).await;

    browser.eval("document.querySelector('#logout').click()");
    browser.wait_for("the login form again", "document.querySelector('#login-form')", WAIT);
    assert_eq!(browser.eval("fetch('/v1/jobs').then(r => r.status)"), 401, "the cookie is gone");
}

/// The job page loses its stream when the server stops mid-job and picks it up again from the
/// last event it has once the server is back: the log holds every event once, in order, and the
/// charts hold what the stored events give.
#[tokio::test]
async fn the_job_page_resumes_its_stream_after_the_server_restarts() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let service = Service::start(&data, ANY_PORT, &[]);
    let id = submit_spec(&service, None, &serde_json::from_str(&example("digits.json")).unwrap()).await;
    let mut browser = Browser::start(WIDTH, HEIGHT);
    browser.navigate(&format!("{}/ui#/jobs/{id}", service.base));
    browser.wait_for("points while running", &format!("{} && {LOSS_POINTS} > 0", status_is("running")), WAIT);
    let address = service.base.trim_start_matches("http://").to_string();
    service.stop();
    let service = Service::start(&data, &address, &[]);
    browser.wait_for("the verdict", "document.querySelector('#verdict')", WAIT);

    let events = get(&service, &format!("/v1/jobs/{id}/events?limit=1000")).await;
    let logged: Vec<Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] != "progress")
        .map(|e| e["seq"].clone())
        .collect();
    let shown = browser.eval("[...document.querySelectorAll('#event-log tr')].map(r => Number(r.dataset.seq))");
    assert_eq!(shown, Value::Array(logged), "every event once, in order");
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["payload"]["message"].as_str().is_some_and(|m| m.starts_with("resumed"))),
        "the job resumed after the restart"
    );
    let expected = format!(
        "import('/ui/curves.js').then(async (c) => {{ const m = await (await fetch('/v1/jobs/{id}/metrics')).json(); \
         return [...c.Curves.fromMetrics(m).phases.values()].reduce((n, p) => n + p.steps.length, 0); }})"
    );
    assert_eq!(browser.eval(LOSS_POINTS), browser.eval(&expected), "the charts hold the stored curves");
}
