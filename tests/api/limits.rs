//! What keeps one client from exhausting the service: downloads streamed from disk with
//! `Range` support, a header-read timeout, a connection cap and a request timeout.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{slow_spec, small_spec, spawn_app, spawn_app_with, TestApp};

/// A raw connection, for clients that misbehave in ways reqwest cannot.
async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap()
}

#[tokio::test]
async fn downloads_are_whole_or_the_range_asked_for() {
    let app = spawn_app().await;
    let id = app.submit(&small_spec(1)).await;
    app.wait_for_status(&id, &["succeeded"]).await;
    let url = app.url(&format!("/v1/jobs/{id}/artifacts/student.safetensors"));

    let whole = app.client.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let headers = whole.headers().clone();
    assert_eq!(headers["accept-ranges"], "bytes");
    let sha256 = headers["x-content-sha256"].to_str().unwrap().to_string();
    let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
    let bytes = whole.bytes().await.unwrap();
    assert_eq!(bytes.len(), length);
    assert!(length > 20, "{length} bytes");
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, sha256);

    let size = bytes.len();
    for (range, first, last) in [("bytes=0-9", 0, 9), ("bytes=10-", 10, size - 1), ("bytes=-5", size - 5, size - 1)] {
        let part = app.client.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(part.status(), 206, "{range}");
        assert_eq!(part.headers()["content-range"], format!("bytes {first}-{last}/{size}").as_str(), "{range}");
        assert_eq!(part.headers()["content-length"], (last - first + 1).to_string().as_str(), "{range}");
        assert_eq!(part.headers()["accept-ranges"], "bytes");
        assert_eq!(part.bytes().await.unwrap(), bytes[first..=last], "{range}");
    }

    // Several ranges are answered with the whole file.
    let several = app.client.get(&url).header("range", "bytes=0-1,4-5").send().await.unwrap();
    assert_eq!(several.status(), 200);
    assert_eq!(several.bytes().await.unwrap(), bytes);

    for range in ["bytes=999999999-", "bytes=9-2", "lines=1-2"] {
        let refused = app.client.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(refused.status(), 416, "{range}");
        assert_eq!(refused.headers()["content-range"], format!("bytes */{size}").as_str());
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "range_not_satisfiable", "{body}");
        assert_eq!(body["error"]["field"], "Range", "{body}");
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let app = spawn_app_with(|config| config.header_timeout_secs = 1).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // Ends when the server closes the connection, whether with a reset or after a 408.
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection was still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(app.get_json("/healthz").await["status"], "ok");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|config| config.max_connections = 4).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(&app).await);
    }
    let request = tokio::spawn(app.client.get(app.url("/healthz")).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!request.is_finished(), "a fifth connection was served while four were open");
    drop(silent);
    let response =
        tokio::time::timeout(Duration::from_secs(5), request).await.expect("still waiting after the four closed");
    assert_eq!(response.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn a_body_dribbled_slower_than_the_request_timeout_gets_408() {
    let app = spawn_app_with(|config| config.request_timeout_secs = 1).await;
    let body = serde_json::to_vec(&small_spec(1)).unwrap();
    let (mut reader, mut writer) = connect(&app).await.into_split();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // A byte every 250 ms: the whole body would take over a minute.
    let dribble = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    dribble.abort();
    assert!(closed.is_ok(), "no answer, and the connection still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered after {:?}, before the timeout",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":{"code":"request_timeout","#), "{answer}");
    assert!(app.get_json("/v1/jobs").await["data"].as_array().unwrap().is_empty(), "no job was created");
}

#[tokio::test]
async fn an_event_stream_outlives_the_request_timeout() {
    let app = spawn_app_with(|config| config.request_timeout_secs = 1).await;
    let mut spec = slow_spec();
    spec["training"]["epochs"] = 500.into(); // still running when the test ends
    let id = app.submit(&spec).await;
    let url = app.url(&format!("/v1/jobs/{id}/events"));
    let response = app.client.get(&url).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let mut stream = response.bytes_stream();
    let mut late_events = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let chunk = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("no event for 2 s");
        let chunk = chunk.expect("the stream ended").expect("the stream broke");
        if started.elapsed() > Duration::from_millis(1500) && chunk.windows(5).any(|w| w == b"data:") {
            late_events += 1;
        }
    }
    assert!(late_events > 0, "no event arrived after the request timeout");
    app.client.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap();
}
