//! Per-key quotas and the write rate limit. Each key is held to them alone; the open mode's
//! anonymous user is one more such owner, with the same limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::engine::job::budget::human;

/// Refuses a new job while the caller has `--max-active-jobs` queued or running, or holds
/// `--max-storage-bytes` already (its artifacts would only add to it).
pub async fn check_new_job(state: &AppState, caller: &Caller) -> ApiResult<()> {
    let usage = state.store.usage(caller.key_id()).await?;
    let limit = state.limits.max_active_jobs;
    if usage.active_jobs >= limit {
        return Err(exceeded(format!(
            "quota `max_active_jobs` exceeded: {} of {limit} jobs queued or running (--max-active-jobs); wait for one to finish or cancel one",
            usage.active_jobs
        )));
    }
    check_storage(state, caller, 0).await
}

/// Refuses to keep `adding` more bytes once the caller's uploads and artifacts would pass
/// `--max-storage-bytes`.
pub async fn check_storage(state: &AppState, caller: &Caller, adding: u64) -> ApiResult<()> {
    let used = state.store.usage(caller.key_id()).await?.storage_bytes;
    let limit = state.limits.max_storage_bytes;
    if used.saturating_add(adding) > limit || used >= limit {
        return Err(exceeded(format!(
            "quota `max_storage_bytes` exceeded: {} of {} used by uploads and artifacts{} (--max-storage-bytes); delete files or finished jobs",
            human(used),
            human(limit),
            if adding > 0 { format!(", {} more asked for", human(adding)) } else { String::new() }
        )));
    }
    Ok(())
}

fn exceeded(message: String) -> ApiError {
    ApiError::Rejected { status: StatusCode::TOO_MANY_REQUESTS, code: "quota_exceeded", message }
}

/// A token bucket per key: `per_minute` writes, in bursts of as many, refilled evenly.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one write from `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
    }

    /// [`RateLimiter::take`] for the caller, as the API answers it.
    pub fn check(&self, caller: &Caller) -> ApiResult<()> {
        // Key ids are hex, so the open mode's name cannot be one.
        self.take(caller.key_id().unwrap_or("open"), Instant::now()).map_err(|wait| {
            let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::RateLimited {
                retry_after,
                message: format!(
                    "more than {} writes (POST, DELETE) a minute for this key (--rate-limit); retry in {retry_after} s",
                    self.per_minute
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_refills_evenly() {
        let limiter = RateLimiter::new(60);
        let start = Instant::now();
        for _ in 0..60 {
            assert!(limiter.take("a", start).is_ok());
        }
        let wait = limiter.take("a", start).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.take("b", start).is_ok(), "another key has its own bucket");
        assert!(limiter.take("a", start + Duration::from_secs(1)).is_ok());
        assert!(limiter.take("a", start + Duration::from_secs(1)).is_err());
    }
}
