//! `/v1/session`: the dashboard's login. The browser's EventSource cannot send an
//! `Authorization` header, so the page exchanges an API key for an `HttpOnly`, `SameSite=Strict`
//! cookie that scripts cannot read and other sites cannot send; the cookie then acts as the key.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::{identify, verify_key, Caller};
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::keys;

/// The cookie's name.
pub const COOKIE: &str = "distillery_session";
/// How long a login lasts; a revoked key ends its sessions at once.
const LIFETIME_HOURS: i64 = 12;

/// What `GET /v1/session` tells the page: whether it must show a login form, and who is in.
#[derive(Serialize)]
pub struct SessionView {
    keys_required: bool,
    user: Option<User>,
}

#[derive(Serialize)]
struct User {
    id: String,
    name: String,
    admin: bool,
}

/// The body of `POST /v1/session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    key: String,
}

/// The session token in a request's cookies, if one has its shape.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && keys::is_session_token(value))
        .map(|(_, value)| value)
}

/// `GET /v1/session`: never a 401, since the answer is what decides whether to ask for a key.
pub async fn show(State(state): State<AppState>, parts: Parts) -> ApiResult<Json<SessionView>> {
    let keys_required = state.store.any_keys().await?;
    let user = match identify(&parts, &state).await {
        Ok(Caller::User { id, name, admin }) => Some(User { id, name, admin }),
        _ => None,
    };
    Ok(Json(SessionView { keys_required, user }))
}

/// `POST /v1/session {"key"}`: checks the key and sets the session cookie.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    super::jobs::require_json(&headers, "the login")?;
    let login: Login = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request("malformed_json", "key", format!("expected {{\"key\": \"dk_…\"}}: {e}")))?;
    if !state.store.any_keys().await? {
        return Err(ApiError::Conflict {
            code: "no_keys",
            message: "this service has no API keys, so it is open to everyone and there is nothing to log in to".into(),
        });
    }
    let key = verify_key(login.key.trim(), &state).await?;
    let token = keys::session_token().map_err(|e| ApiError::Internal(format!("reading random bytes: {e}")))?;
    let expires = chrono::Utc::now() + chrono::Duration::hours(LIFETIME_HOURS);
    let expires_at = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    state.store.create_session(&keys::hash(&token), &key.id, &expires_at).await?;
    tracing::info!(key = %key.prefix, name = %key.name, "dashboard login");
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", LIFETIME_HOURS * 3600);
    let view = SessionView { keys_required: true, user: Some(User { id: key.id, name: key.name, admin: key.admin }) };
    Ok(([(header::SET_COOKIE, header_value(cookie))], Json(view)).into_response())
}

/// `DELETE /v1/session`: ends the session the cookie names, and clears the cookie.
pub async fn remove(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(token) = cookie(&headers) {
        state.store.delete_session(&keys::hash(token)).await?;
    }
    let cleared = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, header_value(cleared))]).into_response())
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("a cookie of ASCII name and hex token is a valid header")
}
