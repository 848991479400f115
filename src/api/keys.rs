//! `/v1/keys`: administrators create, list and revoke API keys. A created key's secret is in
//! the creation's answer only; lists show its prefix.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::keys::{self, IssueError};
use crate::store::ApiKey;

/// The body of `POST /v1/keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    name: String,
    #[serde(default)]
    admin: bool,
    #[serde(default = "one")]
    share: u32,
}

fn one() -> u32 {
    1
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require_admin()?;
    super::jobs::require_json(&headers, "the key")?;
    let request: KeyRequest = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request("invalid_key", "body", format!("expected {{name, admin?, share?}}: {e}")))?;
    let (key, secret) =
        keys::issue(&*state.store, &request.name, request.admin, request.share).await.map_err(|e| match e {
            IssueError::Invalid { field, message } => ApiError::bad_request("invalid_key", field, message),
            other => ApiError::Internal(other.to_string()),
        })?;
    tracing::info!(key = %key.prefix, name = %key.name, admin = key.admin, "API key created");
    let mut body = serde_json::to_value(&key).expect("key serialises");
    body["key"] = secret.into();
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<serde_json::Value>> {
    caller.require_admin()?;
    Ok(Json(json!({"data": state.store.list_keys().await?})))
}

pub async fn revoke(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<ApiKey>> {
    caller.require_admin()?;
    let key = state.store.revoke_key(&id).await?.ok_or_else(|| ApiError::NotFound(format!("key `{id}`")))?;
    tracing::info!(key = %key.prefix, name = %key.name, "API key revoked");
    Ok(Json(key))
}
