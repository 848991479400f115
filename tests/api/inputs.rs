//! Ids in paths and query parameters that are wrong: each answer, word for word.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

const UNKNOWN: &str = "0190b7b4-0000-7000-8000-000000000000";

async fn answer(app: &TestApp, method: Method, path: &str, stream: bool) -> (u16, String) {
    let mut request = app.client.request(method, app.url(path));
    if stream {
        request = request.header("accept", "text/event-stream");
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn refused(app: &TestApp, path: &str, stream: bool) -> (u16, Value) {
    let (status, body) = answer(app, Method::GET, path, stream).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}")))
}

fn invalid_query(field: &str, message: &str) -> (u16, Value) {
    (400, json!({"error": {"code": "invalid_query", "field": field, "message": message}}))
}

fn not_found(what: &str) -> (u16, Value) {
    (404, json!({"error": {"code": "not_found", "message": format!("{what} not found")}}))
}

#[tokio::test]
async fn a_job_id_that_is_not_one_is_a_job_not_found() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/v1/jobs/nope"),
        (Method::DELETE, "/v1/jobs/nope"),
        (Method::POST, "/v1/jobs/nope/cancel"),
        (Method::GET, "/v1/jobs/nope/events"),
        (Method::GET, "/v1/jobs/nope/events?from=1&after=x"),
        (Method::GET, "/v1/jobs/nope/metrics"),
        (Method::GET, "/v1/jobs/nope/report"),
        (Method::GET, "/v1/jobs/nope/artifacts"),
        (Method::GET, "/v1/jobs/nope/artifacts/student.safetensors"),
        (Method::GET, "/v1/jobs/n%20pe/report"),
    ] {
        let (status, body) = answer(&app, method.clone(), path, false).await;
        let what = if path.contains("%20") { "job `n pe`" } else { "job `nope`" };
        assert_eq!((status, serde_json::from_str(&body).unwrap()), not_found(what), "{method} {path}");
    }
    assert_eq!(refused(&app, "/v1/jobs/nope/events", true).await, not_found("job `nope`"));
    assert_eq!(refused(&app, &format!("/v1/jobs/{UNKNOWN}"), false).await, not_found(&format!("job {UNKNOWN}")));
    assert_eq!(
        refused(&app, &format!("/v1/jobs/{UNKNOWN}/artifacts/x"), false).await,
        not_found(&format!("artifact `x` of job {UNKNOWN}"))
    );
    // A path that is not UTF-8 is refused before its id is read.
    for (path, key) in [
        ("/v1/jobs/%FF".to_string(), "id"),
        ("/v1/jobs/nope/artifacts/%FF".to_string(), "name"),
        (format!("/v1/jobs/{UNKNOWN}/artifacts/%FF"), "name"),
    ] {
        let answered = answer(&app, Method::GET, &path, false).await;
        assert_eq!(answered, (400, format!("Invalid URL: Invalid UTF-8 in `{key}`")), "{path}");
    }
}

#[tokio::test]
async fn listing_jobs_with_wrong_parameters() {
    let app = spawn_app().await;
    let expected = "unknown query parameter; expected status, limit or after";
    assert_eq!(refused(&app, "/v1/jobs?from=1", false).await, invalid_query("from", expected));
    let statuses = "expected one of queued, running, succeeded, failed, cancelled";
    assert_eq!(
        refused(&app, "/v1/jobs?status=done", false).await,
        invalid_query("status", &format!("unknown status `done`; {statuses}"))
    );
    assert_eq!(
        refused(&app, "/v1/jobs?status=", false).await,
        invalid_query("status", &format!("unknown status ``; {statuses}"))
    );
    // A repeated parameter counts with its last value.
    assert_eq!(
        refused(&app, "/v1/jobs?status=queued&status=Queued", false).await,
        invalid_query("status", &format!("unknown status `Queued`; {statuses}"))
    );
    for limit in ["0", "101", "x", "-1", ""] {
        assert_eq!(
            refused(&app, &format!("/v1/jobs?limit={limit}"), false).await,
            invalid_query("limit", "must be an integer within [1, 100]"),
            "limit={limit}"
        );
    }
    assert_eq!(refused(&app, "/v1/jobs?after=7", false).await, invalid_query("after", "must be a job id"));
    // Checked in order: unknown names, then status, limit and after.
    assert_eq!(refused(&app, "/v1/jobs?after=7&limit=0&status=done&x=1", false).await.1["error"]["field"], "x");
    assert_eq!(refused(&app, "/v1/jobs?after=7&limit=0&status=done", false).await.1["error"]["field"], "status");
    assert_eq!(refused(&app, "/v1/jobs?after=7&limit=0", false).await.1["error"]["field"], "limit");
    assert_eq!(refused(&app, "/v1/jobs?status=queued&limit=100&after=7", false).await.1["error"]["field"], "after");
    let (status, _) = answer(&app, Method::GET, "/v1/jobs?status=queued&limit=100", false).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn reading_events_with_wrong_parameters() {
    let app = spawn_app().await;
    let events = format!("/v1/jobs/{UNKNOWN}/events");
    for stream in [false, true] {
        assert_eq!(
            refused(&app, &format!("{events}?from=3"), stream).await,
            invalid_query("from", "unknown query parameter; expected after or limit")
        );
        for after in ["-1", "x", ""] {
            assert_eq!(
                refused(&app, &format!("{events}?after={after}&limit=0"), stream).await,
                invalid_query("after", "must be an event seq (integer ≥ 0)")
            );
        }
    }
    for limit in ["0", "1001", "x"] {
        assert_eq!(
            refused(&app, &format!("{events}?limit={limit}"), false).await,
            invalid_query("limit", "must be within [1, 1000]")
        );
        // A stream has no pages: it ignores the limit.
        assert_eq!(refused(&app, &format!("{events}?limit={limit}"), true).await, not_found(&format!("job {UNKNOWN}")));
    }
    assert_eq!(
        refused(&app, &format!("{events}?after=3&limit=1000"), false).await,
        not_found(&format!("job {UNKNOWN}"))
    );
    assert_eq!(
        refused(&app, &format!("/v1/jobs/{UNKNOWN}/metrics?anything=1"), false).await,
        not_found(&format!("job {UNKNOWN}"))
    );
}
