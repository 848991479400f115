//! Liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::error::ApiResult;
use super::AppState;

pub const OPENAPI: &str = include_str!("../../openapi.yaml");

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": e.to_string()}))),
    }
}

pub async fn prometheus(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut text = String::from("# HELP distillery_jobs Jobs in the store by status.\n# TYPE distillery_jobs gauge\n");
    for (status, count) in state.store.count_by_status().await? {
        text += &format!("distillery_jobs{{status=\"{}\"}} {count}\n", status.as_str());
    }
    text += &format!(
        "# HELP distillery_workers Workers in this process.\n# TYPE distillery_workers gauge\ndistillery_workers {}\n\
         # HELP distillery_jobs_running_here Jobs training in this process now.\n# TYPE distillery_jobs_running_here gauge\ndistillery_jobs_running_here {}\n\
         # HELP distillery_uptime_seconds Seconds since this process started.\n# TYPE distillery_uptime_seconds gauge\ndistillery_uptime_seconds {:.0}\n",
        state.workers,
        state.running.count(),
        state.started.elapsed().as_secs_f64()
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}
