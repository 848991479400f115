//! The web dashboard: static files compiled into the binary, so the page works on a box with no
//! internet and needs no build step. It talks to the same `/v1` API as any other client.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Scripts and styles only from this origin, none inline; nothing may frame the page.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// (name under `/ui/`, content type, bytes).
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../ui/index.html")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../ui/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../ui/api.js")),
    ("chart.js", "text/javascript; charset=utf-8", include_str!("../../ui/chart.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../../ui/dom.js")),
    ("jobs.js", "text/javascript; charset=utf-8", include_str!("../../ui/jobs.js")),
    ("job.js", "text/javascript; charset=utf-8", include_str!("../../ui/job.js")),
    ("curves.js", "text/javascript; charset=utf-8", include_str!("../../ui/curves.js")),
    ("report.js", "text/javascript; charset=utf-8", include_str!("../../ui/report.js")),
    ("compare.js", "text/javascript; charset=utf-8", include_str!("../../ui/compare.js")),
    ("submit.js", "text/javascript; charset=utf-8", include_str!("../../ui/submit.js")),
    ("session.js", "text/javascript; charset=utf-8", include_str!("../../ui/session.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../ui/favicon.svg")),
];

/// The specs in `examples/`, offered as starting points on the submit page.
const EXAMPLES: &[(&str, &str)] = &[
    ("digits.json", include_str!("../../examples/digits.json")),
    ("digits-small-data.json", include_str!("../../examples/digits-small-data.json")),
    ("digits-tiny-student.json", include_str!("../../examples/digits-tiny-student.json")),
    ("digits-mse.json", include_str!("../../examples/digits-mse.json")),
    ("digits-repeats.json", include_str!("../../examples/digits-repeats.json")),
    ("digits-sweep.json", include_str!("../../examples/digits-sweep.json")),
    ("fashion-mnist.json", include_str!("../../examples/fashion-mnist.json")),
    ("fashion-mnist-logits.json", include_str!("../../examples/fashion-mnist-logits.json")),
    ("fashion-mnist-ensemble.json", include_str!("../../examples/fashion-mnist-ensemble.json")),
    ("fashion-mnist-shifts.json", include_str!("../../examples/fashion-mnist-shifts.json")),
    ("fashion-mnist-transfer.json", include_str!("../../examples/fashion-mnist-transfer.json")),
    ("election-minilm.json", include_str!("../../examples/election-minilm.json")),
    ("election-minilm-trimmed.json", include_str!("../../examples/election-minilm-trimmed.json")),
    ("election-minilm-embeddings.json", include_str!("../../examples/election-minilm-embeddings.json")),
    ("smollm2-token-kd.json", include_str!("../../examples/smollm2-token-kd.json")),
    ("smollm2-sequence-kd.json", include_str!("../../examples/smollm2-sequence-kd.json")),
];

/// `GET /`: the dashboard is the service's front page.
pub async fn root() -> Redirect {
    Redirect::to("/ui")
}

/// `GET /ui`: the page itself; the hash after it picks the view.
pub async fn index(headers: HeaderMap) -> Response {
    file(&headers, "index.html").expect("index.html is embedded")
}

/// `GET /ui/{file}`: the page's scripts, styles and the examples.
pub async fn asset(headers: HeaderMap, Path(name): Path<String>) -> Result<Response, ApiError> {
    file(&headers, &name).ok_or_else(|| ApiError::NotFound(format!("dashboard file `{name}`")))
}

/// The examples as `[{"name", "text"}]`, the text as written so the page shows it verbatim.
fn examples_json() -> String {
    let list: Vec<_> = EXAMPLES.iter().map(|(name, text)| serde_json::json!({"name": name, "text": text})).collect();
    serde_json::to_string(&list).expect("examples serialise")
}

/// A file the dashboard serves, with its `ETag`: its content's hash.
struct Served {
    name: &'static str,
    content_type: &'static str,
    body: String,
    etag: HeaderValue,
}

/// Every file, built and hashed once: they change only with the binary.
fn served() -> &'static [Served] {
    static SERVED: OnceLock<Vec<Served>> = OnceLock::new();
    SERVED.get_or_init(|| {
        let examples = ("examples.json", "application/json", examples_json());
        let files = FILES.iter().map(|&(name, kind, body)| (name, kind, body.to_string()));
        files
            .chain(std::iter::once(examples))
            .map(|(name, content_type, body)| {
                let etag = format!("\"{:.16}\"", format!("{:x}", Sha256::digest(body.as_bytes())));
                Served { name, content_type, body, etag: HeaderValue::from_str(&etag).expect("hex is a valid header") }
            })
            .collect()
    })
}

/// A file with its headers, or a `304` when the browser's copy is current. `no-cache` plus an
/// `ETag` keeps a page from an upgraded server fresh for one small request each.
fn file(headers: &HeaderMap, name: &str) -> Option<Response> {
    let file = served().iter().find(|file| file.name == name)?;
    let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == file.etag);
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, file.etag.clone()),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    if fresh {
        return Some((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Some((common, [(header::CONTENT_TYPE, file.content_type)], file.body.as_str()).into_response())
}
