//! The event log: a JSON page, or a live SSE stream that replays from the store after
//! `Last-Event-ID` and then follows new events, without gap or duplicate; and the training
//! curves built from it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{FromQuery, JobId, Query, QueryParams};
use super::AppState;
use crate::store::{Event, Owner, Store, TrainingLog};

const PAGE: usize = 500;

/// `GET /v1/jobs/{id}/events?after=&limit=`.
pub struct EventsQuery {
    /// The seq of the last event the client has (0: none).
    after: i64,
    /// The size of a JSON page, or why it is wrong: only a page reads it, a stream ignores it.
    limit: ApiResult<usize>,
}

impl FromQuery for EventsQuery {
    const NAMES: &'static [&'static str] = &["after", "limit"];

    fn from_query(params: &QueryParams) -> ApiResult<Self> {
        let after = params.get("after", |a| {
            a.parse().ok().filter(|a| *a >= 0).ok_or_else(|| "must be an event seq (integer ≥ 0)".to_string())
        })?;
        let limit = params.get("limit", |l| {
            l.parse().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| "must be within [1, 1000]".to_string())
        });
        Ok(EventsQuery { after: after.unwrap_or(0), limit: limit.map(|l| l.unwrap_or(PAGE)) })
    }
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Response> {
    if !wants_stream(&headers) {
        let limit = query.limit?;
        ensure_job(&*state.store, id, &caller.owner()).await?;
        let mut data = state.store.events_after(id, query.after, limit + 1).await?;
        let has_more = data.len() > limit;
        data.truncate(limit);
        return Ok(Json(json!({"data": data, "has_more": has_more})).into_response());
    }
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::bad_request("invalid_header", "Last-Event-ID", "must be the seq of an event (integer ≥ 0)")
        })?,
        None => query.after,
    };
    // Subscribe before reading the store: anything committed after the read is then received
    // live, and the seq check drops what both paths deliver.
    let live = state.events.subscribe();
    ensure_job(&*state.store, id, &caller.owner()).await?;
    let follow = Follow {
        store: state.store.clone(),
        job: id,
        last: last_event_id,
        buffer: VecDeque::new(),
        replaying: true,
        live,
        shutdown: state.shutdown.clone(),
        done: false,
    };
    Ok(Sse::new(follow.into_stream()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// Whether the client asks for the live SSE stream rather than a JSON page.
pub(super) fn wants_stream(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"))
}

/// A 404 unless the job exists and `owner` may see it.
async fn ensure_job(store: &dyn Store, id: Uuid, owner: &Owner) -> ApiResult<()> {
    store.get_job(id, owner).await?.map(|_| ()).ok_or_else(|| ApiError::NotFound(format!("job {id}")))
}

struct Follow {
    store: Arc<dyn Store>,
    job: Uuid,
    /// The seq of the last event sent.
    last: i64,
    buffer: VecDeque<Event>,
    replaying: bool,
    live: broadcast::Receiver<Event>,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        stream::unfold(self, |mut follow| async move {
            let event = follow.next().await?;
            Some((Ok(to_sse(&event)), follow))
        })
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                if event.seq <= self.last {
                    continue;
                }
                self.last = event.seq;
                self.done = event.is_terminal();
                return Some(event);
            }
            if self.replaying {
                match self.store.events_after(self.job, self.last, PAGE).await {
                    Ok(page) if !page.is_empty() => self.buffer.extend(page),
                    Ok(_) => {
                        self.replaying = false;
                        // Nothing more will come for a job that has already ended.
                        match self.store.get_job(self.job, &Owner::Any).await {
                            Ok(Some(job)) if !job.status.is_terminal() => {}
                            _ => return None,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replaying events failed");
                        return None;
                    }
                }
                continue;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(event) if event.job_id != self.job => {}
                    // The job has ended: so does the stream, even if the client claimed to have
                    // seen a seq beyond the end (a `Last-Event-ID` from the future).
                    Ok(event) if event.seq <= self.last && event.is_terminal() => return None,
                    Ok(event) if event.seq <= self.last => {}
                    Ok(event) if event.seq == self.last + 1 => self.buffer.push_back(event),
                    // A gap or a lag: the store has everything, in order.
                    Ok(_) | Err(RecvError::Lagged(_)) => self.replaying = true,
                    Err(RecvError::Closed) => return None,
                },
                _ = self.shutdown.wait_for(|stop| *stop) => return None,
            }
        }
    }
}

fn to_sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(serde_json::to_string(event).expect("event serialises"))
}

/// Training curves for charts: the persisted progress samples and every epoch's metrics.
pub async fn metrics(State(state): State<AppState>, caller: Caller, JobId(id): JobId) -> ApiResult<Json<TrainingLog>> {
    ensure_job(&*state.store, id, &caller.owner()).await?;
    Ok(Json(TrainingLog::read(&*state.store, id).await?))
}
