//! Reconnecting to the event stream: exactly the events after Last-Event-ID, then live.

use crate::helpers::{slow_spec, small_spec, spawn_app};

#[tokio::test]
async fn reconnecting_mid_job_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    let mut spec = slow_spec();
    spec["training"]["epochs"] = 8.into();
    let id = app.submit(&spec).await;
    let first = app.follow(&id, None, Some(12)).await;
    assert_eq!(first.len(), 12);
    let last = first.last().unwrap().id.unwrap();
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "running", "the test needs a job still running at reconnection");
    let rest = app.follow(&id, Some(last), None).await;
    let ids: Vec<i64> = first.iter().chain(&rest).map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    assert_eq!(rest.last().unwrap().data["payload"]["status"], "succeeded");
    let stored = app.events(&id).await;
    assert_eq!(stored.len(), ids.len(), "the stream and the store disagree");
}

#[tokio::test]
async fn replaying_a_finished_job_and_paging_the_log() {
    let app = spawn_app().await;
    let id = app.submit(&small_spec(1)).await;
    let all = app.follow(&id, None, None).await;
    assert!(all.len() > 10);
    let tail = app.follow(&id, Some(5), None).await;
    let tail_ids: Vec<i64> = tail.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(tail_ids, (6..=all.len() as i64).collect::<Vec<_>>());
    assert!(app.follow(&id, Some(all.len() as i64), None).await.is_empty(), "nothing after the terminal event");

    let page = app.get_json(&format!("/v1/jobs/{id}/events?after=3&limit=4")).await;
    let seqs: Vec<i64> = page["data"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7]);
    assert_eq!(page["has_more"], true);
    let bad = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("accept", "text/event-stream")
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_last_event_id_beyond_the_end_still_ends_with_the_job() {
    use futures_util::StreamExt;
    let app = spawn_app().await;
    let id = app.submit(&slow_spec()).await;
    app.follow(&id, None, Some(3)).await;
    let response = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("accept", "text/event-stream")
        .header("last-event-id", "1000000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_json(&format!("/v1/jobs/{id}")).await["status"], "running", "the test needs a running job");
    app.client.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap();
    app.wait_for_status(&id, &["cancelled"]).await;
    let mut stream = response.bytes_stream();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            let text = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
            assert!(!text.contains("data:"), "an event below the client's Last-Event-ID was sent: {text}");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open after the job ended");
}
