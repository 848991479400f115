//! Job resources: submit, list, show, cancel, delete.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{FromQuery, JobId, Query, QueryParams};
use super::{quota, AppState};
use crate::store::{CancelOutcome, DeleteOutcome, Inserted, Job, Owner, Status};
use crate::{engine, spec};

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    require_json(&headers, "the job spec")?;
    let body = body?;
    if std::str::from_utf8(&body).is_err() {
        return Err(ApiError::bad_request("malformed_json", "body", "the body is not UTF-8 text, so not JSON"));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        if !e.is_data() {
            return Err(ApiError::bad_request("malformed_json", "body", format!("the body is not valid JSON: {e}")));
        }
    }
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => {
            let key = value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 200).ok_or_else(|| {
                ApiError::bad_request("invalid_header", "Idempotency-Key", "must be 1 to 200 visible ASCII characters")
            })?;
            Some(key.to_string())
        }
        None => None,
    };
    let spec = spec::parse(&body)?;
    // A retry is answered from the store, even if its files have changed since the first try.
    if let Some(key) = &idempotency_key {
        if let Some(job) = state.store.job_by_idempotency_key(key, caller.key_id()).await? {
            return idempotent_replay(job, &spec);
        }
    }
    state.limits.check_disk(&state.data_dir).map_err(|message| ApiError::Rejected {
        status: StatusCode::INSUFFICIENT_STORAGE,
        code: "insufficient_storage",
        message,
    })?;
    // Before the preflight, which reads the data: a caller over quota costs little. Two
    // submissions at the same moment may both pass, overshooting by one.
    quota::check_new_job(&state, &caller).await?;
    let data_root = match caller.owner() {
        Owner::Any => state.data_root.clone(),
        owner => state.data_root.clone().with_visible_uploads(state.store.file_ids(&owner).await?),
    };
    let checked = spec.clone();
    let admission = tokio::task::spawn_blocking(move || engine::preflight(&checked, &data_root))
        .await
        .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))??;
    admission.memory.check(state.limits.max_job_memory)?;
    admission.size.check(&state.limits.job_size)?;
    match state.store.insert_job(&spec, idempotency_key.as_deref(), caller.key_id()).await? {
        Inserted::Created(job) => {
            state.queue.notify_waiters();
            tracing::info!(id = %job.id, name = %job.name, owner = caller.name(), "job queued");
            Ok((StatusCode::CREATED, Json(Created { job, warnings: admission.warnings })))
        }
        Inserted::Existing(job) => idempotent_replay(job, &spec),
    }
}

/// Refuses a body whose `Content-Type` is not JSON (`application/json`, any letter case, any
/// parameters) with 415, saying what the body should have been.
pub(super) fn require_json(headers: &HeaderMap, what: &str) -> ApiResult<()> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::Rejected {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        message: format!("send {what} as JSON with `content-type: application/json` (got `{content_type}`)"),
    })
}

/// A submission's answer: the job, and on a 201 what the spec alone warns of (a tiny student,
/// T = 1), so the submitter learns it before the job runs.
#[derive(serde::Serialize)]
pub struct Created {
    #[serde(flatten)]
    job: Job,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn idempotent_replay(job: Job, spec: &spec::JobSpec) -> ApiResult<(StatusCode, Json<Created>)> {
    if &job.spec != spec {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: format!("this Idempotency-Key was used for job {} with a different spec", job.id),
        });
    }
    Ok((StatusCode::OK, Json(Created { job, warnings: Vec::new() })))
}

/// `GET /v1/jobs?status=&limit=&after=&owner=`.
pub struct ListQuery {
    status: Option<Status>,
    limit: usize,
    /// The last id of the previous page.
    after: Option<Uuid>,
    /// A key's name: an administrator's filter.
    owner: Option<String>,
}

impl FromQuery for ListQuery {
    const NAMES: &'static [&'static str] = &["status", "limit", "after"];
    const ADMIN_NAMES: &'static [&'static str] = &["owner"];

    fn from_query(params: &QueryParams) -> ApiResult<Self> {
        Ok(ListQuery {
            status: params.get("status", str::parse)?,
            limit: params.page_limit()?,
            after: params.get("after", |a| Uuid::parse_str(a).map_err(|_| "must be a job id".to_string()))?,
            owner: params.get("owner", |o| Ok(o.to_string()))?,
        })
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let owner = match query.owner {
        None => caller.owner(),
        Some(name) => owner_named(&state, &caller, name).await?,
    };
    let (jobs, has_more) = state.store.list_jobs(&owner, query.status, query.after, query.limit).await?;
    Ok(Json(json!({"data": jobs, "has_more": has_more})))
}

/// `?owner=<name>`: only administrators may filter by owner, and only by a name some key has.
async fn owner_named(state: &AppState, caller: &Caller, name: String) -> ApiResult<Owner> {
    if !caller.is_admin() {
        return Err(ApiError::bad_request("invalid_query", "owner", "only an administrator may filter by owner"));
    }
    if !state.store.list_keys().await?.iter().any(|key| key.name == name) {
        return Err(ApiError::bad_request("invalid_query", "owner", format!("no key is named `{name}`")));
    }
    Ok(Owner::Named(name))
}

pub async fn show(State(state): State<AppState>, caller: Caller, JobId(id): JobId) -> ApiResult<Json<Job>> {
    let job = state.store.get_job(id, &caller.owner()).await?.ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    Ok(Json(job))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> ApiResult<(StatusCode, Json<Job>)> {
    match state.store.request_cancel(id, &caller.owner()).await? {
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("job {id}"))),
        CancelOutcome::AlreadyFinished(job) => Err(ApiError::Conflict {
            code: "job_finished",
            message: format!("job {id} has already finished ({})", job.status.as_str()),
        }),
        CancelOutcome::Cancelled(job) => Ok((StatusCode::OK, Json(job))),
        CancelOutcome::Requested(job) => {
            state.running.cancel(id);
            Ok((StatusCode::ACCEPTED, Json(job)))
        }
    }
}

pub async fn remove(State(state): State<AppState>, caller: Caller, JobId(id): JobId) -> ApiResult<StatusCode> {
    match state.store.delete_job(id, &caller.owner()).await? {
        DeleteOutcome::NotFound => Err(ApiError::NotFound(format!("job {id}"))),
        DeleteOutcome::NotFinished(status) => Err(ApiError::Conflict {
            code: "job_not_finished",
            message: format!("job {id} is {}; cancel it first", status.as_str()),
        }),
        DeleteOutcome::Deleted => {
            let dir = crate::layout::job_dir(&state.data_dir, id);
            match tokio::fs::remove_dir_all(&dir).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, dir = %dir.display(), "removing a deleted job's files failed")
                }
                _ => {}
            }
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
