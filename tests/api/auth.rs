//! Keys and owners: open until the first key, then a valid key on every `/v1` route, and each
//! user sees only their own jobs while administrators see everyone's.

use std::time::Duration;

use distillery::server;
use distillery::store::{EventHub, SqliteStore};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{call, config, small_spec, spawn_app, TestApp};

const UNAUTHORIZED: &str = "unauthorized";

/// An administrator's key and two users' keys, the first created over REST in the open mode.
pub struct Keys {
    pub admin: String,
    pub alice: String,
    pub bob: String,
}

async fn create_key(app: &TestApp, by: Option<&str>, body: Value) -> (u16, Value) {
    call(app, by, Method::POST, "/v1/keys", Some(body)).await
}

pub async fn set_up_keys(app: &TestApp) -> Keys {
    let (status, admin) = create_key(app, None, json!({"name": "lead", "admin": true})).await;
    assert_eq!(status, 201, "{admin}");
    let admin = admin["key"].as_str().unwrap().to_string();
    let user = async |name: &str| {
        let (status, body) = create_key(app, Some(&admin), json!({"name": name})).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!((body["admin"].as_bool(), body["share"].as_u64()), (Some(false), Some(1)));
        body["key"].as_str().unwrap().to_string()
    };
    let (alice, bob) = (user("alice").await, user("bob").await);
    Keys { admin, alice, bob }
}

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    call(app, Some(key), Method::GET, path, None).await
}

pub async fn submit(app: &TestApp, key: &str) -> String {
    let (status, job) = call(app, Some(key), Method::POST, "/v1/jobs", Some(small_spec(2))).await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_string()
}

async fn wait_until_finished(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..1200 {
        let (_, job) = get(app, key, &format!("/v1/jobs/{id}")).await;
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never finished");
}

fn ids(page: &Value) -> Vec<&str> {
    page["data"].as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn without_keys_the_service_is_open_as_before() {
    let app = spawn_app().await;
    let id = app.submit(&small_spec(1)).await;
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["owner"], Value::Null);
    assert_eq!(ids(&app.get_json("/v1/jobs").await), [id.as_str()]);
    // A key that does not exist is refused even here: it is a mistake worth saying.
    let (status, body) = get(&app, "dk_0011223344556677_00", "/v1/jobs").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some(UNAUTHORIZED)));
}

#[tokio::test]
async fn every_v1_route_needs_a_valid_key_once_one_exists() {
    let app = spawn_app().await;
    let keys = set_up_keys(&app).await;
    let (status, revoked) = create_key(&app, Some(&keys.admin), json!({"name": "carol"})).await;
    assert_eq!(status, 201);
    let (status, _) =
        call(&app, Some(&keys.admin), Method::DELETE, &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()), None)
            .await;
    assert_eq!(status, 200);
    let revoked = revoked["key"].as_str().unwrap();
    let forged =
        format!("{}{}", &keys.alice[..keys.alice.len() - 1], if keys.alice.ends_with('0') { '1' } else { '0' });
    let job = "0190b7b4-0000-7000-8000-000000000000";
    for (method, path) in distillery::api::routes().table {
        let uri = path.replace("{id}", job).replace("{name}", "report.json").replace("{file}", "app.js");
        if path == "/v1/session" {
            continue; // The login itself, open by design: session.rs tests it.
        }
        if !path.starts_with("/v1/") {
            let response = app.client.request(method.clone(), app.url(&uri)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{method} {path} stays open");
            continue;
        }
        for key in [None, Some("dk_nope"), Some(revoked), Some(forged.as_str())] {
            let mut request = app.client.request(method.clone(), app.url(&uri)).json(&json!({}));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {key:?}");
            assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], UNAUTHORIZED, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn another_users_job_is_not_found_on_every_route() {
    let app = spawn_app().await;
    let keys = set_up_keys(&app).await;
    let theirs = submit(&app, &keys.alice).await;
    let job = wait_until_finished(&app, &keys.alice, &theirs).await;
    assert_eq!((job["status"].as_str(), job["owner"].as_str()), (Some("succeeded"), Some("alice")));
    let mine = submit(&app, &keys.bob).await;
    let routes = [
        (Method::GET, format!("/v1/jobs/{theirs}")),
        (Method::GET, format!("/v1/jobs/{theirs}/events")),
        (Method::GET, format!("/v1/jobs/{theirs}/metrics")),
        (Method::GET, format!("/v1/jobs/{theirs}/report")),
        (Method::GET, format!("/v1/jobs/{theirs}/artifacts")),
        (Method::GET, format!("/v1/jobs/{theirs}/artifacts/report.json")),
        (Method::POST, format!("/v1/jobs/{theirs}/cancel")),
        (Method::DELETE, format!("/v1/jobs/{theirs}")),
    ];
    for (method, path) in &routes {
        let (status, body) = call(&app, Some(&keys.bob), method.clone(), path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{method} {path}");
    }
    let stream = app
        .client
        .get(app.url(&format!("/v1/jobs/{theirs}/events")))
        .bearer_auth(&keys.bob)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 404, "the SSE stream");
    // Bob's idempotency key does not find Alice's job either.
    let retry = |key: &str| {
        app.client.post(app.url("/v1/jobs")).bearer_auth(key).header("idempotency-key", "k1").json(&small_spec(2))
    };
    let first = retry(&keys.alice).send().await.unwrap().json::<Value>().await.unwrap();
    let other = retry(&keys.bob).send().await.unwrap();
    assert_eq!(other.status(), 201, "a new job for bob");
    assert_ne!(other.json::<Value>().await.unwrap()["id"], first["id"]);

    let (_, listed) = get(&app, &keys.bob, "/v1/jobs?limit=100").await;
    assert!(!ids(&listed).contains(&theirs.as_str()) && ids(&listed).contains(&mine.as_str()), "{listed}");
    let (_, listed) = get(&app, &keys.admin, "/v1/jobs?limit=100").await;
    assert!(ids(&listed).contains(&theirs.as_str()) && ids(&listed).contains(&mine.as_str()));
    let (_, listed) = get(&app, &keys.admin, "/v1/jobs?owner=alice").await;
    assert!(listed["data"].as_array().unwrap().iter().all(|job| job["owner"] == "alice"), "{listed}");
    assert!(ids(&listed).contains(&theirs.as_str()) && !ids(&listed).contains(&mine.as_str()));
    for (key, path, message) in [
        (&keys.admin, "/v1/jobs?owner=nobody", "no key is named `nobody`"),
        (&keys.bob, "/v1/jobs?owner=alice", "only an administrator may filter by owner"),
    ] {
        let (status, body) = get(&app, key, path).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], json!({"code": "invalid_query", "field": "owner", "message": message}));
    }
    // The owner and administrators still reach it all; Bob's attempts changed nothing.
    for key in [&keys.alice, &keys.admin] {
        for (method, path) in &routes[..6] {
            let response = app.client.request(method.clone(), app.url(path)).bearer_auth(key).send().await.unwrap();
            assert_eq!(response.status(), 200, "{method} {path}");
        }
    }
    let (status, _) = call(&app, Some(&keys.alice), Method::DELETE, &format!("/v1/jobs/{theirs}"), None).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn keys_are_for_administrators_and_never_show_their_secret() {
    let app = spawn_app().await;
    let keys = set_up_keys(&app).await;
    for (method, path) in [(Method::GET, "/v1/keys"), (Method::POST, "/v1/keys"), (Method::DELETE, "/v1/keys/x")] {
        let (status, body) = call(&app, Some(&keys.bob), method.clone(), path, Some(json!({"name": "eve"}))).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{method} {path}");
    }
    let listed = app.client.get(app.url("/v1/keys")).bearer_auth(&keys.admin).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let text = listed.text().await.unwrap();
    for key in [&keys.admin, &keys.alice, &keys.bob] {
        let (prefix, secret) = key.rsplit_once('_').unwrap();
        assert!(!text.contains(secret), "a secret is listed");
        assert!(text.contains(prefix), "{prefix} is not listed");
    }
    let listed: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<_> = listed["data"].as_array().unwrap().iter().map(|key| key["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lead", "alice", "bob"]);

    let (status, body) = create_key(&app, Some(&keys.admin), json!({"name": "two words"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str(), body["error"]["field"].as_str()),
        (400, Some("invalid_key"), Some("name"))
    );
    let (status, body) = create_key(&app, Some(&keys.admin), json!({"name": "eve", "share": 0})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("share")));
    let (status, _) = call(&app, Some(&keys.admin), Method::DELETE, "/v1/keys/0011223344556677", None).await;
    assert_eq!(status, 404);

    let bob_id = &keys.bob[3..19];
    let (status, revoked) = call(&app, Some(&keys.admin), Method::DELETE, &format!("/v1/keys/{bob_id}"), None).await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(get(&app, &keys.bob, "/v1/jobs").await.0, 401);
    assert_eq!(get(&app, &keys.alice, "/v1/jobs").await.0, 200);
}

#[tokio::test]
async fn a_public_address_needs_keys_or_no_auth() {
    let data_dir = tempfile::tempdir().unwrap();
    let public = |adjust: fn(&mut distillery::config::ServeConfig)| {
        let mut config = config(data_dir.path().to_path_buf());
        config.bind = "0.0.0.0:0".parse().unwrap();
        adjust(&mut config);
        config
    };
    let refused = server::start(public(|_| {})).await.err().expect("an open service on 0.0.0.0").to_string();
    assert!(refused.contains("refusing to listen on 0.0.0.0:0 without API keys"), "{refused}");
    assert!(refused.contains("distillery keys create") && refused.contains("--no-auth"), "{refused}");

    let open = server::start(public(|config| config.no_auth = true)).await.unwrap();
    open.shutdown();
    open.wait().await.unwrap();

    // The Docker image's way: the first start creates an administrator's key.
    let first = server::start(public(|config| config.create_admin_key = true)).await.unwrap();
    let base = format!("http://127.0.0.1:{}", first.addr.port());
    let response = reqwest::get(format!("{base}/v1/jobs")).await.unwrap();
    assert_eq!(response.status(), 401, "the first start made a key, so keys are required");
    first.shutdown();
    first.wait().await.unwrap();

    // With a key in the database, a public address needs no flag.
    let url = format!("sqlite://{}", data_dir.path().join("distillery.db").display());
    let store = SqliteStore::connect(&url, EventHub::new()).await.unwrap();
    let keys = distillery::store::Store::list_keys(&store).await.unwrap();
    assert_eq!(keys.iter().map(|key| (key.name.as_str(), key.admin)).collect::<Vec<_>>(), [("admin", true)]);
    let again = server::start(public(|_| {})).await.unwrap();
    again.shutdown();
    again.wait().await.unwrap();
}

/// Uploads belong to their key as jobs do: another user neither sees one nor names it in a spec.
#[tokio::test]
async fn uploads_are_their_owners_alone() {
    let app = spawn_app().await;
    let keys = set_up_keys(&app).await;
    let rows: String = (0..60).map(|i| format!("{},{},{}\n", i as f32 * 0.1, (i % 7) as f32, i % 2)).collect();
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(format!("a,b,label\n{rows}").into_bytes()).file_name("t.csv"));
    let response = app.client.post(app.url("/v1/files")).bearer_auth(&keys.alice).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        assert_eq!(get(&app, &keys.bob, &path).await.0, 404, "{path}");
        assert_eq!(get(&app, &keys.alice, &path).await.0, 200, "{path}");
    }
    assert_eq!(get(&app, &keys.bob, "/v1/files").await.1["data"], json!([]));
    assert_eq!(get(&app, &keys.admin, "/v1/files").await.1["data"][0]["id"], id.as_str());
    assert_eq!(call(&app, Some(&keys.bob), Method::DELETE, &format!("/v1/files/{id}"), None).await.0, 404);

    let mut spec = small_spec(1);
    spec["dataset"] = json!({"source": "csv", "path": format!("file:{id}")});
    let (status, body) = call(&app, Some(&keys.bob), Method::POST, "/v1/jobs", Some(spec.clone())).await;
    assert_eq!((status, &body["error"]["field"]), (422, &json!("dataset.path")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist"), "{body}");
    let (status, body) = call(&app, Some(&keys.alice), Method::POST, "/v1/jobs", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
}
