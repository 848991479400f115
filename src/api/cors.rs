//! Cross-origin access for the origins `--cors-origin` names: an external dashboard may call the
//! API, read its errors and follow its SSE streams. Named origins may send cookies too (which
//! the `SameSite=Strict` session cookie allows only within the service's site); `*` admits any
//! origin without them, since a page from anywhere must not act with a user's login.
//! Requests from other origins pass unchanged: without these headers their browser withholds
//! the answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The request headers a page may send: credentials, JSON, retries, SSE resumption, ranges.
const ALLOWED_HEADERS: &str = "authorization, content-type, idempotency-key, last-event-id, range";
/// The response headers a page may read besides the always-visible ones.
const EXPOSED_HEADERS: &str =
    "content-disposition, content-range, accept-ranges, retry-after, location, www-authenticate";
/// How long a browser may reuse a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

#[derive(Clone, Debug, Default)]
pub struct Cors {
    origins: Arc<[String]>,
    any: bool,
}

impl Cors {
    /// From `--cors-origin`'s values, already checked to be origins or `*`.
    pub fn new(origins: &[String]) -> Self {
        let any = origins.iter().any(|o| o == "*");
        Cors { origins: origins.iter().filter(|o| *o != "*").cloned().collect(), any }
    }

    /// Whether a page from `origin` may act with a user's session cookie.
    pub fn admits_with_cookies(&self, origin: &str) -> bool {
        self.admits(origin) == Some(true)
    }

    /// Whether a page from `origin` may call the API, and whether with cookies.
    fn admits(&self, origin: &str) -> Option<bool> {
        match self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            true => Some(true),
            false => self.any.then_some(false),
        }
    }
}

/// Answers an admitted origin's preflight, and marks the answers to its requests readable.
pub async fn allow_origins(State(cors): State<Cors>, request: Request, next: Next) -> Response {
    let admitted = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| cors.admits(o.to_str().ok()?).map(|credentials| (o.clone(), credentials)));
    let Some((origin, credentials)) = admitted else {
        return next.run(request).await;
    };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = match preflight {
        true => preflight_answer(),
        false => next.run(request).await,
    };
    mark(response.headers_mut(), origin, credentials);
    response
}

fn preflight_answer() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
    response
}

fn mark(headers: &mut HeaderMap, origin: HeaderValue, credentials: bool) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if credentials {
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    // The answer depends on who asked, so no cache may hand it to another origin.
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}
