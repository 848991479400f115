//! One error type for every handler: a stable `code`, a message, and the offending field,
//! rendered as `{"error": {"code", "message", "field"}}`. Internal errors are logged, not leaked.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::spec::SpecError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String, field: Option<String> },
    #[error("{0}")]
    InvalidSpec(SpecError),
    /// No key, or one that is not valid; the 401 asks for a bearer token.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Rejected { status: StatusCode, code: &'static str, message: String },
    /// Too many writes; the 429 says in `Retry-After` how many seconds to wait.
    #[error("{message}")]
    RateLimited { retry_after: u64, message: String },
    /// A `Range` the file cannot serve; the 416 names the file's size in `Content-Range`.
    #[error("{message}")]
    RangeNotSatisfiable { size: u64, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into(), field: Some(field.to_string()) }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            ApiError::BadRequest { code, field, .. } => (StatusCode::BAD_REQUEST, code, field.as_deref()),
            ApiError::InvalidSpec(e) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", Some(&e.field)),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code, None),
            ApiError::Rejected { status, code, .. } => (*status, code, None),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", Some("Range"))
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal error; see the server log".to_string()
            }
            ApiError::InvalidSpec(e) => e.message.clone(),
            other => other.to_string(),
        };
        let mut error = serde_json::json!({"code": code, "message": message});
        if let Some(field) = field {
            error["field"] = field.into();
        }
        let body = Json(serde_json::json!({ "error": error }));
        match self {
            ApiError::RangeNotSatisfiable { size, .. } => {
                (status, [(header::CONTENT_RANGE, format!("bytes */{size}"))], body).into_response()
            }
            ApiError::RateLimited { retry_after, .. } => {
                (status, [(header::RETRY_AFTER, retry_after.to_string())], body).into_response()
            }
            ApiError::Unauthorized(_) => {
                (status, [(header::WWW_AUTHENTICATE, "Bearer realm=\"distillery\"")], body).into_response()
            }
            _ => (status, body).into_response(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::InvalidSpec(e)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_body" };
        ApiError::Rejected { status, code, message: rejection.body_text() }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
