//! HTTP: routing, extractors, error mapping, SSE. Handlers validate, call the store or the
//! queue, and map errors; no training and no SQL happen here. Every `/v1` handler takes the
//! `Caller` first, so authentication precedes any other check.

mod artifacts;
mod auth;
pub mod cors;
pub mod error;
mod events;
mod extract;
mod files;
mod health;
mod jobs;
mod keys;
pub mod quota;
mod session;
mod ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use tokio::sync::{watch, Notify};

use crate::engine::job::budget::SizeLimits;
use crate::engine::DataRoot;
use crate::store::{EventHub, Store};
use crate::worker::Running;

/// The largest request body accepted (job specs are small); uploads have their own cap.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the service allows: each job's estimated memory and size, the free disk below which it
/// takes no new jobs, the largest upload, and each key's quotas.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_job_memory: u64,
    pub min_free_disk: u64,
    pub max_upload_bytes: u64,
    pub job_size: SizeLimits,
    pub max_active_jobs: u64,
    pub max_running_jobs: u32,
    pub max_storage_bytes: u64,
    /// Writes a minute per key.
    pub rate_limit: u32,
}

impl Limits {
    /// Refuses new work while the data directory's disk is nearly full: a job would fail
    /// writing its first checkpoint, and SQLite would fail recording it.
    pub fn check_disk(&self, data_dir: &std::path::Path) -> Result<(), String> {
        self.check_free(crate::layout::free_bytes(data_dir))
    }

    /// [`Limits::check_disk`] on a measurement already taken.
    pub fn check_free(&self, free: std::io::Result<u64>) -> Result<(), String> {
        let free = free.map_err(|e| format!("cannot measure the free disk space: {e}"))?;
        if free < self.min_free_disk {
            return Err(format!(
                "the service's disk is nearly full: {} free, below the {} it keeps free (--min-free-disk); delete finished jobs or free space",
                crate::engine::job::budget::human(free),
                crate::engine::job::budget::human(self.min_free_disk)
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Where the store publishes the events it commits.
    pub events: EventHub,
    pub queue: Arc<Notify>,
    pub running: Arc<Running>,
    pub data_dir: PathBuf,
    pub data_root: DataRoot,
    pub limits: Limits,
    pub rate_limiter: Arc<quota::RateLimiter>,
    pub workers: usize,
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
    /// How long an ordinary request may take; see `limit_request_time`.
    pub request_timeout: Duration,
    /// Which other origins' pages may call the API (`--cors-origin`).
    pub cors: cors::Cors,
}

/// The router, and the (method, path) pairs it serves, which the OpenAPI test checks against
/// `openapi.yaml` in both directions.
pub struct Routes {
    pub router: Router<AppState>,
    pub table: Vec<(Method, &'static str)>,
}

impl Routes {
    fn add(mut self, method: Method, path: &'static str, route: MethodRouter<AppState>) -> Self {
        self.table.push((method, path));
        self.router = self.router.route(path, route);
        self
    }
}

/// The routes whose responses (or, for uploads, requests) may stream for long: exempt from the
/// request timeout.
const EVENTS: &str = "/v1/jobs/{id}/events";
const DOWNLOAD: &str = "/v1/jobs/{id}/artifacts/{name}";
const FILES: &str = "/v1/files";
const FILE_CONTENT: &str = "/v1/files/{id}/content";

pub fn routes() -> Routes {
    Routes { router: Router::new(), table: Vec::new() }
        .add(Method::POST, "/v1/jobs", post(jobs::create))
        .add(Method::GET, "/v1/jobs", get(jobs::list))
        .add(Method::GET, "/v1/jobs/{id}", get(jobs::show))
        .add(Method::DELETE, "/v1/jobs/{id}", delete(jobs::remove))
        .add(Method::POST, "/v1/jobs/{id}/cancel", post(jobs::cancel))
        .add(Method::GET, EVENTS, get(events::events))
        .add(Method::GET, "/v1/jobs/{id}/metrics", get(events::metrics))
        .add(Method::GET, "/v1/jobs/{id}/report", get(artifacts::report))
        .add(Method::GET, "/v1/jobs/{id}/artifacts", get(artifacts::list))
        .add(Method::GET, DOWNLOAD, get(artifacts::download))
        // The upload enforces its own cap (--max-upload-bytes) while it streams to disk.
        .add(Method::POST, FILES, post(files::create).layer(DefaultBodyLimit::disable()))
        .add(Method::GET, FILES, get(files::list))
        .add(Method::GET, "/v1/files/{id}", get(files::show))
        .add(Method::DELETE, "/v1/files/{id}", delete(files::remove))
        .add(Method::GET, FILE_CONTENT, get(files::content))
        .add(Method::POST, "/v1/keys", post(keys::create))
        .add(Method::GET, "/v1/keys", get(keys::list))
        .add(Method::DELETE, "/v1/keys/{id}", delete(keys::revoke))
        .add(Method::GET, "/v1/session", get(session::show))
        .add(Method::POST, "/v1/session", post(session::create))
        .add(Method::DELETE, "/v1/session", delete(session::remove))
        .add(Method::GET, "/healthz", get(health::healthz))
        .add(Method::GET, "/readyz", get(health::readyz))
        .add(Method::GET, "/metrics", get(health::prometheus))
        .add(Method::GET, "/openapi.yaml", get(health::openapi))
        // The dashboard: static files, open like the contract; its data comes from /v1.
        .add(Method::GET, "/", get(ui::root))
        .add(Method::GET, "/ui", get(ui::index))
        .add(Method::GET, "/ui/{file}", get(ui::asset))
}

pub fn router(state: AppState) -> Router {
    routes()
        .router
        .fallback(|| async { error::ApiError::NotFound("route".into()) })
        .method_not_allowed_fallback(|method: Method| async move {
            error::ApiError::Rejected {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                message: format!("{method} is not served on this path; see /openapi.yaml"),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.request_timeout, limit_request_time))
        // Outside the routes and the timeout, so that refusals carry the headers too and an
        // external page can read why it was refused.
        .layer(axum::middleware::from_fn_with_state(state.cors.clone(), cors::allow_origins))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(state)
}

/// One span per request, and one line when it completes.
async fn trace_request(request: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request done"
        )
    });
    response
}

/// Answers 408 when a handler, reading the request body included, outlasts `limit`: a client
/// dribbling its body cannot hold a task and its buffers for ever. Only the handler is timed,
/// never the response body it returns.
async fn limit_request_time(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    if streams_long(&request) {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let refused = error::ApiError::Rejected {
                status: StatusCode::REQUEST_TIMEOUT,
                code: "request_timeout",
                message: format!("the request was not answered within {} s; send the body promptly", limit.as_secs()),
            };
            // The body may be half read, so the connection cannot carry another request.
            ([(header::CONNECTION, "close")], refused).into_response()
        }
    }
}

/// SSE streams and downloads are exempt from the request timeout, explicitly: their handlers
/// return at once today, but their bodies legitimately last minutes, and a later change that
/// does more work before answering (a long replay, a slow disk) must not cut them. Uploads are
/// exempt too (gigabytes take longer than any fixed limit); instead each read of their body
/// must make progress within the timeout.
fn streams_long(request: &Request) -> bool {
    match request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some(EVENTS) => request.method() == Method::GET && events::wants_stream(request.headers()),
        Some(DOWNLOAD | FILE_CONTENT) => request.method() == Method::GET,
        Some(FILES) => request.method() == Method::POST,
        _ => false,
    }
}
