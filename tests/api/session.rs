//! The dashboard's login (an API key exchanged for an HttpOnly cookie that then acts as the key)
//! and cross-origin access for an external dashboard (`--cors-origin`).

use reqwest::header::{self, HeaderMap};
use reqwest::Method;
use serde_json::{json, Value};

use crate::auth::{set_up_keys, submit};
use crate::helpers::{call, spawn_app, spawn_app_with, TestApp};

/// Sends a request that carries a cookie header instead of a key.
async fn with_cookie(app: &TestApp, cookie: &str, method: Method, path: &str) -> (u16, Value) {
    let response = app.client.request(method, app.url(path)).header(header::COOKIE, cookie).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn log_in(app: &TestApp, key: &str) -> (u16, HeaderMap, Value) {
    let response = app.client.post(app.url("/v1/session")).json(&json!({"key": key})).send().await.unwrap();
    (response.status().as_u16(), response.headers().clone(), response.json().await.unwrap_or(Value::Null))
}

/// `distillery_session=<token>` from a `Set-Cookie`, after checking the attributes that keep
/// it from scripts and from other sites.
fn session_cookie(headers: &HeaderMap) -> String {
    let set = headers.get(header::SET_COOKIE).expect("a Set-Cookie header").to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attribute), "{set} lacks {attribute}");
    }
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn a_key_logs_in_to_a_cookie_that_acts_as_the_key_until_logout() {
    let app = spawn_app().await;
    let (status, open) = call(&app, None, Method::GET, "/v1/session", None).await;
    assert_eq!((status, &open), (200, &json!({"keys_required": false, "user": null})));
    let (status, _, body) = log_in(&app, "dk_0000").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("no_keys")), "{body}");

    let keys = set_up_keys(&app).await;
    let alices = submit(&app, &keys.alice).await;
    submit(&app, &keys.bob).await;
    let (status, anonymous) = call(&app, None, Method::GET, "/v1/session", None).await;
    assert_eq!((status, &anonymous), (200, &json!({"keys_required": true, "user": null})));
    let (status, _, body) = log_in(&app, &keys.alice.replace("dk_", "dk_f")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");

    let (status, headers, body) = log_in(&app, &keys.alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["user"]["name"].as_str(), body["user"]["admin"].as_bool()), (Some("alice"), Some(false)));
    let cookie = session_cookie(&headers);
    let (_, session) = with_cookie(&app, &cookie, Method::GET, "/v1/session").await;
    assert_eq!(session["user"]["name"], "alice");
    let (status, jobs) = with_cookie(&app, &cookie, Method::GET, "/v1/jobs").await;
    let ids: Vec<&str> = jobs["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!((status, ids), (200, vec![alices.as_str()]), "the cookie must see alice's jobs only");
    let (status, _) = with_cookie(&app, &cookie, Method::GET, &format!("/v1/jobs/{alices}/events")).await;
    assert_eq!(status, 200);

    let response = app.client.delete(app.url("/v1/session")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let cleared = response.headers().get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cleared.starts_with("distillery_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    let (status, body) = with_cookie(&app, &cookie, Method::GET, "/v1/jobs").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "logged out: {body}");
}

#[tokio::test]
async fn revoking_a_key_ends_its_sessions() {
    let app = spawn_app().await;
    let keys = set_up_keys(&app).await;
    let (_, headers, _) = log_in(&app, &keys.bob).await;
    let cookie = session_cookie(&headers);
    assert_eq!(with_cookie(&app, &cookie, Method::GET, "/v1/jobs").await.0, 200);
    let (_, listed) = call(&app, Some(&keys.admin), Method::GET, "/v1/keys", None).await;
    let bob = listed["data"].as_array().unwrap().iter().find(|k| k["name"] == "bob").unwrap()["id"].clone();
    let (status, _) =
        call(&app, Some(&keys.admin), Method::DELETE, &format!("/v1/keys/{}", bob.as_str().unwrap()), None).await;
    assert_eq!(status, 200);
    assert_eq!(with_cookie(&app, &cookie, Method::GET, "/v1/jobs").await.0, 401);
    assert_eq!(with_cookie(&app, &cookie, Method::GET, "/v1/session").await.1["user"], Value::Null);
}

#[tokio::test]
async fn a_login_that_is_not_json_or_not_a_key_is_refused() {
    let app = spawn_app().await;
    set_up_keys(&app).await;
    let response = app.client.post(app.url("/v1/session")).body("key=dk_x").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let (status, _, body) = log_in(&app, "not a key").await;
    assert_eq!(status, 401, "{body}");
    let response = app.client.post(app.url("/v1/session")).json(&json!({"key": 7})).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["field"].as_str()),
        (Some("malformed_json"), Some("key"))
    );
}

/// A request from a page on `origin`, with the answer's headers.
async fn from_origin(app: &TestApp, method: Method, path: &str, origin: &str, preflight: bool) -> (u16, HeaderMap) {
    let mut request = app.client.request(method, app.url(path)).header(header::ORIGIN, origin);
    if preflight {
        request = request
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type, authorization");
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.headers().clone())
}

fn header_of(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_named_origin_may_call_the_api_with_cookies_and_others_may_not() {
    let dashboard = "http://dash.example:3000";
    let app = spawn_app_with(|c| c.cors_origins = vec![dashboard.into()]).await;
    let (status, headers) = from_origin(&app, Method::OPTIONS, "/v1/jobs", dashboard, true).await;
    assert_eq!(status, 204);
    assert_eq!(header_of(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(dashboard));
    assert_eq!(header_of(&headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
    let allowed = header_of(&headers, header::ACCESS_CONTROL_ALLOW_HEADERS).unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"), "{allowed}");

    let (status, headers) = from_origin(&app, Method::GET, "/v1/jobs", dashboard, false).await;
    assert_eq!((status, header_of(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN)), (200, Some(dashboard)));
    let (status, headers) = from_origin(&app, Method::GET, "/v1/jobs/nope", dashboard, false).await;
    assert_eq!((status, header_of(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN)), (404, Some(dashboard)));

    let stranger = "http://evil.example";
    let (status, headers) = from_origin(&app, Method::OPTIONS, "/v1/jobs", stranger, true).await;
    assert_eq!((status, header_of(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN)), (405, None));
    let (_, headers) = from_origin(&app, Method::GET, "/v1/jobs", stranger, false).await;
    assert_eq!(header_of(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
}

#[tokio::test]
async fn any_origin_may_call_the_api_but_never_with_cookies() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["*".into()]).await;
    let (status, headers) = from_origin(&app, Method::GET, "/healthz", "https://elsewhere.example", false).await;
    assert_eq!(status, 200);
    assert_eq!(header_of(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), Some("https://elsewhere.example"));
    assert_eq!(header_of(&headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
}

#[test]
fn origins_are_checked_when_the_server_starts() {
    use distillery::config::parse_origin;
    assert_eq!(parse_origin("HTTP://Dash.Example:3000").as_deref(), Ok("http://dash.example:3000"));
    assert!(parse_origin("*").is_ok());
    for bad in ["dash.example", "http://dash.example/", "http://", "ftp://x", "http://a b"] {
        assert!(parse_origin(bad).is_err(), "{bad} was taken as an origin");
    }
}

#[tokio::test]
async fn a_write_with_the_cookie_from_another_page_is_refused() {
    let dashboard = "http://127.0.0.1:3000";
    let app = spawn_app_with(|c| c.cors_origins = vec![dashboard.into()]).await;
    let keys = set_up_keys(&app).await;
    let job = submit(&app, &keys.alice).await;
    let (_, headers, _) = log_in(&app, &keys.alice).await;
    let cookie = session_cookie(&headers);
    let cancel = async |origin: Option<&str>| {
        let mut request = app.client.post(app.url(&format!("/v1/jobs/{job}/cancel"))).header(header::COOKIE, &cookie);
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
    };
    // Another port of this host is the same site, so the browser would send the cookie.
    let (status, body) = cancel(Some("http://127.0.0.1:9")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (_, job_now) = call(&app, Some(&keys.alice), Method::GET, &format!("/v1/jobs/{job}"), None).await;
    assert_ne!(job_now["status"], "cancelled", "the refused write changed the job");
    let (status, _) = with_cookie(&app, &cookie, Method::GET, "/v1/jobs").await;
    assert_eq!(status, 200, "reads with the cookie stay allowed from anywhere: CORS guards what a page sees");
    let own = app.base.clone();
    for origin in [Some(own.as_str()), Some(dashboard), None] {
        let (status, body) = cancel(origin).await;
        assert!([200, 202, 409].contains(&status), "{origin:?}: {status} {body}");
    }
}
