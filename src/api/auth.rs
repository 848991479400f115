//! Who is calling: the [`Caller`] extractor every `/v1` handler takes first. Until a key exists
//! the service is open (one user on loopback, as before keys); from the first key on, every
//! request needs `Authorization: Bearer <key>` (or the dashboard's session cookie, which acts as
//! the key it was opened with), and an unknown, revoked or malformed key is a 401 whatever the
//! mode.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};

use super::error::{ApiError, ApiResult};
use super::{session, AppState};
use crate::keys;
use crate::store::{ApiKey, Owner};

#[derive(Debug, Clone)]
pub enum Caller {
    /// No key exists: the single-user mode, which may do everything.
    Open,
    User {
        id: String,
        name: String,
        admin: bool,
    },
}

impl Caller {
    /// Whose jobs the caller sees: all of them for administrators and the open mode.
    pub fn owner(&self) -> Owner {
        match self {
            Caller::User { id, admin: false, .. } => Owner::Key(id.clone()),
            _ => Owner::Any,
        }
    }

    /// The key new jobs belong to; `None` in the open mode.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::User { id, .. } => Some(id),
        }
    }

    /// The key's name, for logs; `None` in the open mode.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::User { name, .. } => Some(name),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Open | Caller::User { admin: true, .. })
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        match self.is_admin() {
            true => Ok(()),
            false => Err(ApiError::Forbidden("only an administrator's key may manage keys".into())),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// Writes are rate-limited here, once the caller is known, so that a stranger cannot spend
    /// a user's allowance by sending their key id with a wrong secret.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        let caller = identify(parts, state).await?;
        if matches!(parts.method, Method::POST | Method::DELETE) {
            state.rate_limiter.check(&caller)?;
        }
        Ok(caller)
    }
}

/// The caller a request's credentials name: `Authorization` first, then the dashboard's session
/// cookie; with neither, the open mode's user until a key exists.
pub(super) async fn identify(parts: &Parts, state: &AppState) -> ApiResult<Caller> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        return from_bearer(value, state).await;
    }
    if let Some(token) = session::cookie(&parts.headers) {
        if let Some(key) = state.store.find_session(&keys::hash(token)).await? {
            check_cookie_write(parts, state)?;
            return Ok(Caller::User { id: key.id, name: key.name, admin: key.admin });
        }
    }
    match state.store.any_keys().await? {
        // A stale cookie (another server on this host shares its cookies) means nothing here.
        false => Ok(Caller::Open),
        true => Err(ApiError::Unauthorized(
            "this service needs an API key: send `Authorization: Bearer <key>` or log in on the dashboard; an administrator creates one with `distillery keys create`".into(),
        )),
    }
}

/// The browser attaches the cookie to any request for this host, whatever page sends it
/// (`SameSite` ignores ports), so a write that the cookie authenticates must come from this
/// service's own pages or an origin `--cors-origin` admits with cookies. Requests without an
/// `Origin` are not a browser's cross-site writes: browsers send it on every such request.
fn check_cookie_write(parts: &Parts, state: &AppState) -> ApiResult<()> {
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if !matches!(parts.method, Method::POST | Method::DELETE) {
        return Ok(());
    }
    let origin = origin.to_str().unwrap_or_default();
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let authority = origin.split_once("://").map_or("", |(_, authority)| authority);
    if (!host.is_empty() && authority.eq_ignore_ascii_case(host)) || state.cors.admits_with_cookies(origin) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "a write signed in by the dashboard's cookie must come from its own pages, not from `{origin}`; other pages send `Authorization: Bearer <key>`, or are named with --cors-origin"
    )))
}

async fn from_bearer(value: &HeaderValue, state: &AppState) -> ApiResult<Caller> {
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or_else(invalid_key)?;
    let key = verify_key(token, state).await?;
    Ok(Caller::User { id: key.id, name: key.name, admin: key.admin })
}

/// The stored key a whole key (`dk_<id>_<secret>`) names, if it is valid and not revoked.
pub(super) async fn verify_key(whole: &str, state: &AppState) -> ApiResult<ApiKey> {
    let token = keys::parse(whole).ok_or_else(invalid_key)?;
    let (key, hash) = state.store.find_key(token.id).await?.ok_or_else(invalid_key)?;
    if key.revoked_at.is_some() || !keys::verify(token.secret, &hash) {
        return Err(invalid_key());
    }
    Ok(key)
}

fn invalid_key() -> ApiError {
    ApiError::Unauthorized("the API key is not valid (unknown, revoked or mistyped)".into())
}
