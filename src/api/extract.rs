//! Typed inputs for handlers: the job id of the path, and query parameters read into a struct,
//! refused with our error shape (`not_found`, `invalid_query` naming the parameter).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};

/// The `{id}` of a `/v1/jobs/{id}…` path. Text that is not a job id names no job: a 404, as an
/// unknown id is. A path that is not UTF-8 keeps axum's 400.
#[derive(Debug, Clone, Copy)]
pub struct JobId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        path_id(parts, state, "job").await.map(JobId)
    }
}

/// The `{id}` of a `/v1/files/{id}…` path, read as [`JobId`] is.
#[derive(Debug, Clone, Copy)]
pub struct FileId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for FileId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        path_id(parts, state, "file").await.map(FileId)
    }
}

/// The path's `{id}`; text that is not an id is a 404 naming `noun`.
async fn path_id<S: Send + Sync>(parts: &mut Parts, state: &S, noun: &str) -> Result<Uuid, Response> {
    let Path(params) =
        Path::<HashMap<String, String>>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
    let text = params
        .get("id")
        .ok_or_else(|| ApiError::Internal(format!("{noun} id on a route without an {{id}}")).into_response())?;
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("{noun} `{text}`")).into_response())
}

/// Query parameters a handler takes, read from the query string.
pub trait FromQuery: Sized {
    /// The parameters taken, in the order they are checked; any other is refused.
    const NAMES: &'static [&'static str];
    /// Parameters also taken, but only administrators may use them (the handler checks), so
    /// the unknown-parameter error does not offer them to everyone.
    const ADMIN_NAMES: &'static [&'static str] = &[];

    fn from_query(params: &QueryParams) -> ApiResult<Self>;
}

/// A query string's parameters by name; a repeated one counts with its last value.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// The parameter `name`, if given, read by `parse`; its error becomes an `invalid_query`
    /// error on `name` with that message.
    pub fn get<T>(&self, name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> ApiResult<Option<T>> {
        self.0
            .get(name)
            .map(|text| parse(text).map_err(|m| ApiError::bad_request("invalid_query", name, m)))
            .transpose()
    }
}

/// The most items a page holds, and how many without `limit`.
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 20;

impl QueryParams {
    /// `limit`, the page size of a list: 1 to 100, 20 when absent.
    pub fn page_limit(&self) -> ApiResult<usize> {
        let parse = |l: &str| {
            l.parse()
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or_else(|| format!("must be an integer within [1, {MAX_PAGE}]"))
        };
        Ok(self.get("limit", parse)?.unwrap_or(DEFAULT_PAGE))
    }
}

/// Query parameters read into `T` (see [`FromQuery`]); a parameter `T` does not take is an
/// `invalid_query` error naming it.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: FromQuery> FromRequestParts<S> for Query<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let axum::extract::Query(params) =
            axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(IntoResponse::into_response)?;
        let known = |name: &str| T::NAMES.contains(&name) || T::ADMIN_NAMES.contains(&name);
        if let Some(unknown) = params.keys().find(|name| !known(name)) {
            let message = format!("unknown query parameter; expected {}", one_of(T::NAMES));
            return Err(ApiError::bad_request("invalid_query", unknown, message).into_response());
        }
        T::from_query(&QueryParams(params)).map(Query).map_err(IntoResponse::into_response)
    }
}

/// `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    struct Page {
        size: Option<u32>,
        from: Option<String>,
    }

    impl FromQuery for Page {
        const NAMES: &'static [&'static str] = &["size", "from"];

        fn from_query(params: &QueryParams) -> ApiResult<Self> {
            Ok(Page {
                size: params.get("size", |s| s.parse().map_err(|_| "must be a number".to_string()))?,
                from: params.get("from", |s| Ok(s.to_string()))?,
            })
        }
    }

    async fn page(uri: &str) -> Result<Page, (u16, serde_json::Value)> {
        let (mut parts, ()) = Request::builder().uri(uri).body(()).unwrap().into_parts();
        match Query::<Page>::from_request_parts(&mut parts, &()).await {
            Ok(Query(page)) => Ok(page),
            Err(response) => {
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
                Err((status, serde_json::from_slice(&body).unwrap()))
            }
        }
    }

    #[tokio::test]
    async fn query_parameters_are_read_or_refused_by_name() {
        let read = page("/x?size=3&from=a%20b&size=4").await.ok().unwrap();
        assert_eq!((read.size, read.from.as_deref()), (Some(4), Some("a b")));
        let read = page("/x").await.ok().unwrap();
        assert_eq!((read.size, read.from), (None, None));
        let refused = |field: &str, message: &str| {
            Err::<(), _>((
                400,
                serde_json::json!({"error": {"code": "invalid_query", "field": field, "message": message}}),
            ))
        };
        assert_eq!(page("/x?size=big").await.map(|_| ()), refused("size", "must be a number"));
        assert_eq!(
            page("/x?from=a&to=b").await.map(|_| ()),
            refused("to", "unknown query parameter; expected size or from")
        );
    }

    #[test]
    fn lists_of_names() {
        assert_eq!(one_of(&["status", "limit", "after"]), "status, limit or after");
        assert_eq!(one_of(&["after", "limit"]), "after or limit");
        assert_eq!(one_of(&["after"]), "after");
    }
}
