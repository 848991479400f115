//! The HTTP side of the CLI client (`distillery jobs …`, `distillery files …`): where the
//! service is and which key to send, requests whose failures read as the API's own
//! `{code, field, message}`, and a reader of server-sent events.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Where the service listens. The key is read from `DISTILLERY_API_KEY` only: a flag would
/// show it to everyone on the machine through `ps`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The service's base URL (plain HTTP).
    #[arg(long, env = "DISTILLERY_URL", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
}

/// Runs the client's async work on a small runtime of its own: the binary's `main` is sync.
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    Ok(runtime.block_on(future))
}

/// An error answer of the API: `{"error": {"code", "message", "field"}}` and its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
    field: Option<String>,
}

impl ApiError {
    async fn read(response: Response) -> ApiError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => {
                ApiError { status: status.as_u16(), code: error.code, message: error.message, field: error.field }
            }
            // Not the service's own error (a proxy's page, say): show its start.
            Err(_) => ApiError {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: body.chars().take(200).collect::<String>().trim().to_string(),
                field: None,
            },
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
}

impl Client {
    pub fn new(args: &ServerArgs) -> anyhow::Result<Client> {
        let base = Url::parse(&args.server).with_context(|| format!("--server `{}` is not a URL", args.server))?;
        if base.scheme() != "http" || base.cannot_be_a_base() {
            anyhow::bail!("--server `{}`: only http:// URLs are supported (this build has no TLS)", args.server);
        }
        let key = std::env::var("DISTILLERY_API_KEY").ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
        // No overall timeout: event streams and downloads last as long as they need.
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Client { http, base, key })
    }

    /// A request to the path made of `segments`, each escaped, so an argument can never
    /// walk to another route (`../keys`).
    pub fn request<S: AsRef<str>>(&self, method: Method, segments: &[S]) -> RequestBuilder {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in new").pop_if_empty().extend(segments);
        let request = self.http.request(method, url);
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`: an error status becomes an [`ApiError`], a failed connection an error
    /// that names the server.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        match response.status().is_success() {
            true => Ok(response),
            false => Err(ApiError::read(response).await.into()),
        }
    }

    /// Sends `request` and reads its JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = self.send(request).await?;
        let url = response.url().path().to_string();
        let body = response.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from {url}"))
    }

    /// The next chunk of a response's body; an error once the server has been silent for
    /// longer than its keep-alives (every 15 s) allow, as a connection that died without a
    /// word would otherwise hang the client for good.
    pub async fn chunk(&self, response: &mut Response) -> anyhow::Result<Option<impl AsRef<[u8]>>> {
        const SILENCE: Duration = Duration::from_secs(45);
        tokio::time::timeout(SILENCE, response.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("no word from the server at {} for {} s", self.base, SILENCE.as_secs()))?
            .map_err(|e| self.transport(e))
    }

    /// What a failed exchange with the server says: which server, and the cause at the bottom.
    fn transport(&self, e: reqwest::Error) -> anyhow::Error {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(source) = cause.source() {
            cause = source;
        }
        match e.is_connect() {
            true => anyhow::anyhow!(
                "cannot connect to the server at {}: {cause}; is `distillery serve` running there? (--server or DISTILLERY_URL sets the address)",
                self.base
            ),
            false => anyhow::anyhow!("talking to the server at {}: {cause}", self.base),
        }
    }
}

/// One server-sent event: its `id` and `event` fields, if any, and its `data` lines joined by
/// `\n`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Splits an SSE byte stream into events as its chunks arrive; a line, or a UTF-8 character,
/// may span two chunks.
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: SseEvent,
    has_data: bool,
    after_cr: bool,
}

impl SseParser {
    /// Takes the next chunk of the stream and returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        loop {
            // The `\n` of a `\r\n` whose `\r` ended the previous line, perhaps in the last chunk.
            if self.after_cr && start < self.buffer.len() {
                start += usize::from(self.buffer[start] == b'\n');
                self.after_cr = false;
            }
            let Some(end) = self.buffer[start..].iter().position(|b| matches!(b, b'\n' | b'\r')) else {
                break;
            };
            let end = start + end;
            self.after_cr = self.buffer[end] == b'\r';
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = end + 1;
            events.extend(self.line(&line));
        }
        self.buffer.drain(..start);
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            // A blank line ends the event; one without data (only an id, say) is not dispatched.
            let event = std::mem::take(&mut self.event);
            return std::mem::take(&mut self.has_data).then_some(event);
        }
        if line.starts_with(':') {
            return None; // a comment: the server's keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if std::mem::replace(&mut self.has_data, true) {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
            }
            "id" if !value.contains('\0') => self.event.id = Some(value.to_string()),
            "event" => self.event.event = Some(value.to_string()),
            _ => {} // `retry` and unknown fields
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, kind: Option<&str>, data: &str) -> SseEvent {
        SseEvent { id: id.map(Into::into), event: kind.map(Into::into), data: data.into() }
    }

    #[test]
    fn sse_events_with_ids_comments_and_multi_line_data() {
        let stream = ": keep-alive\n\nid: 7\nevent: log\ndata: {\"a\":\ndata:1}\n\n:ping\n\nid:8\ndata: plain\n\n";
        let mut parser = SseParser::default();
        assert_eq!(
            parser.push(stream.as_bytes()),
            [event(Some("7"), Some("log"), "{\"a\":\n1}"), event(Some("8"), None, "plain")]
        );
        // An id without data dispatches nothing; fields without a colon and unknown ones are kept out.
        assert!(parser.push(b"id: 9\n\nretry: 10\nfoo\n\n").is_empty());
    }

    #[test]
    fn sse_lines_and_characters_split_across_chunks() {
        let stream = "id: 1\r\ndata: épée\r\n\r\nid: 2\rdata: x\r\r".as_bytes();
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream[..split]);
            events.extend(parser.push(&stream[split..]));
            assert_eq!(events, [event(Some("1"), None, "épée"), event(Some("2"), None, "x")], "split at {split}");
        }
    }

    #[test]
    fn api_errors_read_as_code_field_message() {
        let error = |field: Option<&str>| ApiError {
            status: 422,
            code: "invalid_spec".into(),
            message: "must be > 0".into(),
            field: field.map(Into::into),
        };
        assert_eq!(error(Some("distill.temperature")).to_string(), "invalid_spec: distill.temperature: must be > 0");
        assert_eq!(error(None).to_string(), "invalid_spec: must be > 0");
    }
}
