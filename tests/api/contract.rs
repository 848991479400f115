//! The router and `openapi.yaml` describe the same API, and the operational endpoints answer.

use std::collections::BTreeSet;

use crate::helpers::spawn_app;

/// (METHOD, path) pairs under `paths:` of the committed document.
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let mut pairs = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.starts_with("paths:");
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':').trim_matches(|c| c == '\'' || c == '"' || c == ':')));
        } else if let (Some(p), Some(method)) = (&path, line.strip_prefix("    ")) {
            let method = method.trim_end_matches(':');
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                pairs.insert((method.to_uppercase(), p.clone()));
            }
        }
    }
    pairs
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let routed: BTreeSet<(String, String)> =
        distillery::api::routes().table.into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let documented = documented();
    assert!(routed.len() >= 14);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.yaml: {undocumented:?}");
    assert!(unrouted.is_empty(), "openapi.yaml documents routes the router lacks: {unrouted:?}");
}

#[tokio::test]
async fn documented_routes_reach_a_handler() {
    let app = spawn_app().await;
    for (method, path) in documented() {
        let uri = path.replace("{id}", "0190b7b4-0000-7000-8000-000000000000").replace("{name}", "report.json");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response =
            app.client.request(method.clone(), app.url(&uri)).json(&serde_json::json!({})).send().await.unwrap();
        assert_ne!(response.status(), 405, "{method} {path}");
        if response.status() == 404 {
            let body: serde_json::Value = response.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.starts_with("route"), "{method} {path} fell through to the fallback: {body}");
        }
    }
}

#[tokio::test]
async fn health_readiness_metrics_and_the_served_contract() {
    let app = spawn_app().await;
    assert_eq!(app.get_json("/healthz").await["status"], "ok");
    assert_eq!(app.get_json("/readyz").await["status"], "ready");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("# TYPE distillery_jobs gauge"));
    assert!(metrics.contains("distillery_workers 1"));
    let served = app.get("/openapi.yaml").await.text().await.unwrap();
    assert_eq!(served, std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap());
}
