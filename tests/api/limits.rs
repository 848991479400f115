//! What keeps one client from exhausting the service: downloads streamed from disk with
//! `Range` support, a header-read timeout, a connection cap and a request timeout.

use sha2::{Digest, Sha256};

use crate::helpers::{small_spec, spawn_app};

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
