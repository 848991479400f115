//! A job's files: the report, the list of artifacts and their downloads.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::{parse_id, AppState};
use crate::engine::run::REPORT_FILE;
use crate::store::Status;
use crate::worker::job_dir;

pub async fn report(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let job = state.store.get_job(id).await?.ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    if job.status != Status::Succeeded {
        return Err(ApiError::Conflict {
            code: "report_not_ready",
            message: format!("job {id} is {}; the report exists once it has succeeded", job.status.as_str()),
        });
    }
    let bytes = tokio::fs::read(job_dir(&state.data_dir, id).join(REPORT_FILE))
        .await
        .map_err(|e| ApiError::Internal(format!("report of {id}: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

pub async fn list(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = parse_id(&id)?;
    state.store.get_job(id).await?.ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let artifacts = state.store.artifacts(id).await?;
    let data: Vec<_> = artifacts
        .into_iter()
        .map(|a| {
            let url = format!("/v1/jobs/{id}/artifacts/{}", a.name);
            let mut value = serde_json::to_value(a).expect("artifact serialises");
            value["url"] = url.into();
            value
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn download(State(state): State<AppState>, Path((id, name)): Path<(String, String)>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    // Only names the store recorded are served, so a name can never walk out of the job folder.
    let artifact = state
        .store
        .artifact(id, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("artifact `{name}` of job {id}")))?;
    let bytes = tokio::fs::read(job_dir(&state.data_dir, id).join(&artifact.name))
        .await
        .map_err(|e| ApiError::Internal(format!("artifact {name} of {id}: {e}")))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, artifact.content_type),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", artifact.name)),
            (header::HeaderName::from_static("x-content-sha256"), artifact.sha256),
        ],
        Body::from(bytes),
    )
        .into_response())
}
