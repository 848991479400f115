//! A job's files: the report, the list of artifacts and their downloads.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::JobId;
use super::AppState;
use crate::layout::{job_dir, REPORT_FILE};
use crate::store::{Job, Status};

/// The job, or a 404 when it does not exist or belongs to someone else.
async fn visible_job(state: &AppState, caller: &Caller, id: uuid::Uuid) -> ApiResult<Job> {
    state.store.get_job(id, &caller.owner()).await?.ok_or_else(|| ApiError::NotFound(format!("job {id}")))
}

pub async fn report(State(state): State<AppState>, caller: Caller, JobId(id): JobId) -> ApiResult<Response> {
    let job = visible_job(&state, &caller, id).await?;
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

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> ApiResult<Json<serde_json::Value>> {
    visible_job(&state, &caller, id).await?;
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

/// The rest of `/v1/jobs/{id}/artifacts/{name}`.
#[derive(Deserialize)]
pub struct ArtifactPath {
    name: String,
}

pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
    Path(ArtifactPath { name }): Path<ArtifactPath>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let not_found = || ApiError::NotFound(format!("artifact `{name}` of job {id}"));
    // Another owner's job answers exactly as an unknown one does.
    state.store.get_job(id, &caller.owner()).await?.ok_or_else(not_found)?;
    // Only names the store recorded are served, so a name can never walk out of the job folder.
    let artifact = state.store.artifact(id, &name).await?.ok_or_else(not_found)?;
    let failed = |e: std::io::Error| ApiError::Internal(format!("artifact {name} of {id}: {e}"));
    let mut file = tokio::fs::File::open(job_dir(&state.data_dir, id).join(&artifact.name)).await.map_err(failed)?;
    // The size of the open file, so the headers describe exactly the bytes streamed.
    let size = file.metadata().await.map_err(failed)?.len();
    let range = match headers.get(header::RANGE) {
        Some(value) => byte_range(value, size)?,
        None => None,
    };
    let (status, start, len) = match range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        None => (StatusCode::OK, 0, size),
    };
    file.seek(SeekFrom::Start(start)).await.map_err(failed)?;
    let mut fields = vec![
        (header::CONTENT_TYPE, artifact.content_type),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", artifact.name)),
        (header::HeaderName::from_static("x-content-sha256"), artifact.sha256),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        // Set by hand: a streamed body has no size of its own, and without it hyper would chunk.
        (header::CONTENT_LENGTH, len.to_string()),
    ];
    if let Some((first, last)) = range {
        fields.push((header::CONTENT_RANGE, format!("bytes {first}-{last}/{size}")));
    }
    Ok((status, AppendHeaders(fields), file_body(file, len)).into_response())
}

/// Bytes read from disk per chunk of a download: about what one download holds in memory,
/// however large the file.
const CHUNK_BYTES: usize = 64 * 1024;

/// The next `len` bytes of `file`, streamed from disk a chunk at a time.
pub(super) fn file_body(file: tokio::fs::File, len: u64) -> Body {
    Body::from_stream(ReaderStream::with_capacity(file.take(len), CHUNK_BYTES))
}

/// The inclusive byte range a `Range` header asks of a `size`-byte file. Several ranges give
/// `None`, the whole file (RFC 9110 lets a server ignore `Range`); a malformed or unsatisfiable
/// one is a 416.
fn byte_range(value: &HeaderValue, size: u64) -> ApiResult<Option<(u64, u64)>> {
    let refused = || {
        ApiError::RangeNotSatisfiable {
        size,
        message: format!(
            "`{}` is not a satisfiable range of this {size}-byte file; send bytes=first-last, bytes=first- or bytes=-suffix",
            String::from_utf8_lossy(value.as_bytes())
        ),
    }
    };
    let text = value.to_str().map_err(|_| refused())?.trim();
    let spec = match text.split_once('=') {
        Some((unit, spec)) if unit.eq_ignore_ascii_case("bytes") => spec,
        _ => return Err(refused()),
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or_else(refused)?;
    let range = match (position(first), position(last)) {
        (None, Some(suffix)) if first.trim().is_empty() && suffix > 0 && size > 0 => {
            Some((size.saturating_sub(suffix), size - 1))
        }
        (Some(first), None) if last.trim().is_empty() && first < size => Some((first, size - 1)),
        (Some(first), Some(last)) if first <= last && first < size => Some((first, last.min(size - 1))),
        _ => None,
    };
    range.map(Some).ok_or_else(refused)
}

/// A byte position: ASCII digits only (no sign), and one too large for u64 is past any file.
fn position(text: &str) -> Option<u64> {
    let text = text.trim();
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use axum::body::HttpBody;
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn byte_ranges() {
        let range =
            |text: &str, size| byte_range(&HeaderValue::from_str(text).unwrap(), size).map_err(|e| e.to_string());
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(range("bytes=10-", 100).unwrap(), Some((10, 99)));
        assert_eq!(range("bytes=-5", 100).unwrap(), Some((95, 99)));
        assert_eq!(range("bytes=-500", 100).unwrap(), Some((0, 99)));
        assert_eq!(range("bytes=90-200", 100).unwrap(), Some((90, 99)));
        assert_eq!(range("Bytes=99-99999999999999999999999", 100).unwrap(), Some((99, 99)));
        assert_eq!(range("bytes=0-1, 5-6", 100).unwrap(), None);
        for refused in
            ["bytes=100-", "bytes=5-3", "bytes=-0", "bytes=+1-2", "bytes=x-", "bytes=-", "bytes=3", "items=0-1"]
        {
            assert!(range(refused, 100).is_err(), "{refused} was accepted");
        }
        assert!(range("bytes=0-0", 0).is_err(), "an empty file has no byte 0");
    }

    #[tokio::test]
    async fn a_download_is_streamed_a_chunk_at_a_time() {
        let bytes: Vec<u8> = (0..CHUNK_BYTES * 4 + 7).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights");
        std::fs::write(&path, &bytes).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        file.seek(SeekFrom::Start(3)).await.unwrap();
        let body = file_body(file, bytes.len() as u64 - 5);
        // A buffered body knows its exact size up front; a stream from disk does not.
        assert_eq!(body.size_hint().exact(), None);
        let (mut streamed, mut chunks) = (Vec::new(), 0);
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK_BYTES, "a chunk of {} bytes", chunk.len());
            streamed.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks >= 4, "{chunks} chunks");
        assert_eq!(streamed, bytes[3..bytes.len() - 2]);
    }
}
