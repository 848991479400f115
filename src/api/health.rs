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

/// Ready when the database answers with every migration applied and the disk has room; the
/// body also says what the service allows a job.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let free = crate::layout::free_bytes(&state.data_dir);
    let limits = json!({
        "max_job_memory_bytes": state.limits.max_job_memory,
        "min_free_disk_bytes": state.limits.min_free_disk,
        "max_upload_bytes": state.limits.max_upload_bytes,
        "max_parameters": state.limits.job_size.parameters,
        "max_epoch_samples": state.limits.job_size.epoch_samples,
        "max_batch_size": state.limits.job_size.batch_size,
        "max_sequence_length": state.limits.job_size.sequence_length,
        "max_active_jobs": state.limits.max_active_jobs,
        "max_running_jobs": state.limits.max_running_jobs,
        "max_storage_bytes": state.limits.max_storage_bytes,
        "rate_limit_per_minute": state.limits.rate_limit,
        "free_disk_bytes": free.as_ref().ok(),
    });
    let problem = match state.store.ready().await {
        Err(e) => Some(("not_ready", e.to_string())),
        Ok(()) => state.limits.check_free(free).err().map(|reason| ("low_disk", reason)),
    };
    match problem {
        None => (StatusCode::OK, Json(json!({"status": "ready", "limits": limits}))),
        Some((status, reason)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": status, "reason": reason, "limits": limits})))
        }
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
