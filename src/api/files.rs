//! Uploaded files: upload (multipart, streamed to disk), list, show, download, delete. Specs
//! name them `file:<id>`; the bytes and archives are handled in `crate::uploads`.

use std::time::Duration;

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::Json;
use serde_json::json;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{FileId, FromQuery, Query, QueryParams};
use super::{quota, AppState};
use crate::layout;
use crate::store::{FileDeleteOutcome, Purpose, StoredFile};
use crate::uploads::archive::{ArchiveError, Kind};
use crate::uploads::{self, Incoming};

/// Room for the multipart framing and the `purpose` part around a file of the largest size.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<StoredFile>)> {
    let cap = state.limits.max_upload_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > cap.saturating_add(MULTIPART_OVERHEAD)) {
        return Err(too_large(cap));
    }
    let mut multipart = multipart.map_err(|rejection| ApiError::Rejected {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        message: format!(
            "send the file as multipart/form-data with a `file` part (curl -F file=@train.csv): {}",
            rejection.body_text()
        ),
    })?;
    state.limits.check_disk(&state.data_dir).map_err(|message| ApiError::Rejected {
        status: StatusCode::INSUFFICIENT_STORAGE,
        code: "insufficient_storage",
        message,
    })?;
    quota::check_storage(&state, &caller, 0).await?;
    let mut incoming = Incoming::create(&state.data_dir).await.map_err(|e| internal("staging an upload", e))?;
    let received = match receive(&state, &mut multipart, &mut incoming).await {
        Ok(received) => received,
        Err(e) => {
            incoming.discard().await;
            return Err(e);
        }
    };
    // The size is known once the body is on disk: an upload that would pass the quota is
    // received (at most --max-upload-bytes), then dropped.
    if let Err(e) = quota::check_storage(&state, &caller, incoming.bytes()).await {
        incoming.discard().await;
        return Err(e);
    }
    let file = StoredFile {
        id: incoming.id,
        filename: received.filename,
        bytes: incoming.bytes(),
        sha256: received.sha256,
        purpose: received.purpose,
        unpacked: received.unpacked,
        created_at: crate::store::now(),
    };
    // Recorded first: should the process die before the move, the record is listed and can be
    // deleted, where a folder without one would be usable by specs yet invisible.
    if let Err(e) = state.store.insert_file(&file, caller.key_id()).await {
        incoming.discard().await;
        return Err(e.into());
    }
    if let Err(e) = incoming.commit().await {
        if let Err(forget) = state.store.delete_file(file.id, &caller.owner()).await {
            tracing::warn!(error = %forget, id = %file.id, "forgetting an upload that could not be moved failed");
        }
        return Err(internal("moving an upload into place", e));
    }
    tracing::info!(id = %file.id, filename = %file.filename, bytes = file.bytes, "file uploaded");
    Ok((StatusCode::CREATED, Json(file)))
}

/// What the multipart body said, once its file is on disk (and unpacked).
struct Received {
    filename: String,
    purpose: Option<Purpose>,
    sha256: String,
    unpacked: bool,
}

async fn receive(state: &AppState, multipart: &mut Multipart, incoming: &mut Incoming) -> ApiResult<Received> {
    let (mut filename, mut purpose) = (None, None);
    while let Some(field) = timed(state.request_timeout, multipart.next_field()).await? {
        match field.name() {
            Some("file") if filename.is_none() => {
                filename = Some(clean_filename(field.file_name()));
                save(state, field, incoming).await?;
            }
            Some("purpose") if purpose.is_none() => purpose = Some(read_purpose(state, field).await?),
            name => {
                return Err(ApiError::bad_request(
                    "invalid_upload",
                    name.unwrap_or("body"),
                    "unexpected part: send one `file` part and at most one `purpose` part",
                ))
            }
        }
    }
    let filename = filename.ok_or_else(|| {
        ApiError::bad_request("invalid_upload", "file", "no `file` part: send the file as `-F file=@path`")
    })?;
    let sha256 = incoming.finish(&filename).await.map_err(|e| internal("writing an upload", e))?;
    let kind = Kind::of(&filename);
    if let Some(kind) = kind {
        incoming.unpack(kind, uploads::archive_limits(state.limits.max_upload_bytes)).await.map_err(refused_archive)?;
    }
    Ok(Received { filename, purpose, sha256, unpacked: kind.is_some() })
}

/// Streams the file part to disk, hashing it, and stops past the upload cap.
async fn save(state: &AppState, mut field: Field<'_>, incoming: &mut Incoming) -> ApiResult<()> {
    let cap = state.limits.max_upload_bytes;
    while let Some(chunk) = timed(state.request_timeout, field.chunk()).await? {
        if incoming.bytes() + chunk.len() as u64 > cap {
            return Err(too_large(cap));
        }
        incoming.write(&chunk).await.map_err(|e| internal("writing an upload", e))?;
    }
    Ok(())
}

async fn read_purpose(state: &AppState, mut field: Field<'_>) -> ApiResult<Purpose> {
    let mut text = Vec::new();
    while let Some(chunk) = timed(state.request_timeout, field.chunk()).await? {
        text.extend_from_slice(&chunk);
        if text.len() > 64 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text);
    text.trim().parse().map_err(|message| ApiError::bad_request("invalid_upload", "purpose", message))
}

/// A read of the body, which must make progress within the request timeout: an upload may take
/// as long as it needs, but not stall.
async fn timed<T>(limit: Duration, read: impl std::future::Future<Output = Result<T, MultipartError>>) -> ApiResult<T> {
    match tokio::time::timeout(limit, read).await {
        Ok(read) => read.map_err(body_error),
        Err(_) => Err(ApiError::Rejected {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: format!(
                "no bytes of the upload arrived for {} s (--request-timeout-secs); send the body promptly",
                limit.as_secs()
            ),
        }),
    }
}

fn body_error(e: MultipartError) -> ApiError {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_body" };
    ApiError::Rejected { status, code, message: format!("the multipart body cannot be read: {}", e.body_text()) }
}

fn too_large(cap: u64) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "payload_too_large",
        message: format!(
            "the upload is larger than {} ({cap} bytes), the limit (--max-upload-bytes)",
            crate::engine::job::budget::human(cap)
        ),
    }
}

fn refused_archive(e: ArchiveError) -> ApiError {
    let (status, code) = match &e {
        ArchiveError::Unsafe(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsafe_archive"),
        ArchiveError::Malformed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive"),
        ArchiveError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large"),
        ArchiveError::Io(e) => return internal("unpacking an upload", e),
    };
    ApiError::Rejected { status, code, message: e.to_string() }
}

fn internal(doing: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("{doing}: {e}"))
}

/// The name the client gave, as a label only (it is never a path on disk): its last component,
/// printable, at most 255 characters.
fn clean_filename(name: Option<&str>) -> String {
    let name = name.unwrap_or_default();
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last.chars().filter(|c| !c.is_control()).take(255).collect();
    match clean.trim() {
        "" | "." | ".." => "upload".to_string(),
        trimmed => trimmed.to_string(),
    }
}

/// `GET /v1/files?limit=&after=`.
pub struct ListQuery {
    limit: usize,
    after: Option<Uuid>,
}

impl FromQuery for ListQuery {
    const NAMES: &'static [&'static str] = &["limit", "after"];

    fn from_query(params: &QueryParams) -> ApiResult<Self> {
        Ok(ListQuery {
            limit: params.page_limit()?,
            after: params.get("after", |a| Uuid::parse_str(a).map_err(|_| "must be a file id".to_string()))?,
        })
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (files, has_more) = state.store.list_files(&caller.owner(), query.after, query.limit).await?;
    Ok(Json(json!({"data": files, "has_more": has_more})))
}

pub async fn show(State(state): State<AppState>, caller: Caller, FileId(id): FileId) -> ApiResult<Json<StoredFile>> {
    Ok(Json(find(&state, &caller, id).await?))
}

/// The upload, if the caller may see it: another owner's is a 404, as an unknown id is.
async fn find(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<StoredFile> {
    state.store.get_file(id, &caller.owner()).await?.ok_or_else(|| ApiError::NotFound(format!("file {id}")))
}

/// The bytes as uploaded, streamed from disk.
pub async fn content(State(state): State<AppState>, caller: Caller, FileId(id): FileId) -> ApiResult<Response> {
    let stored = find(&state, &caller, id).await?;
    let path = layout::file_dir(&state.data_dir, id).join(layout::FILE_CONTENT);
    let failed = |e: std::io::Error| internal(&format!("file {id}"), e);
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let size = file.metadata().await.map_err(failed)?.len();
    // Header-safe: printable ASCII without quotes or backslashes.
    let shown: String = stored
        .filename
        .chars()
        .map(|c| if c.is_ascii_graphic() && !"\"\\".contains(c) || c == ' ' { c } else { '_' })
        .collect();
    let fields = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{shown}\"")),
        (header::HeaderName::from_static("x-content-sha256"), stored.sha256),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((AppendHeaders(fields), super::artifacts::file_body(file, size)).into_response())
}

pub async fn remove(State(state): State<AppState>, caller: Caller, FileId(id): FileId) -> ApiResult<StatusCode> {
    match state.store.delete_file(id, &caller.owner()).await? {
        FileDeleteOutcome::NotFound => Err(ApiError::NotFound(format!("file {id}"))),
        FileDeleteOutcome::InUse(jobs) => Err(ApiError::Conflict {
            code: "file_in_use",
            message: format!(
                "file {id} is named by queued or running job(s) {}; cancel them or wait until they finish",
                jobs.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
            ),
        }),
        FileDeleteOutcome::Deleted => {
            let dir = layout::file_dir(&state.data_dir, id);
            let _ = tokio::task::spawn_blocking(move || uploads::remove(&dir)).await;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
