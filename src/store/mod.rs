//! The service's state: API keys, jobs, their events and their artifacts, and uploaded files,
//! behind the [`Store`] trait.
//! The API, the workers and the server hold an `Arc<dyn Store>` and never name a database;
//! [`SqliteStore`] is the one implementation today (every SQL statement lives there), and a
//! PostgreSQL one can be added beside it without touching its callers. A store publishes the
//! events it commits to an [`EventHub`], after the commit, never before; the SSE streams
//! subscribe to it.

mod events;
mod sqlite;

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use uuid::Uuid;

use crate::spec::JobSpec;

pub use events::EventHub;
pub use sqlite::SqliteStore;

/// What every [`Store`] operation returns: a boxed future, so the trait can be used as
/// `dyn Store`.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Where jobs, events and artifacts are kept. Writes that must go together are atomic: a job's
/// status change and its status event are committed together or not at all.
pub trait Store: Send + Sync {
    /// Readiness: the database answers and every migration this build knows is applied.
    fn ready(&self) -> StoreFuture<'_, ()>;

    /// Stores a new key (its secret only as a hash).
    fn create_key<'a>(&'a self, key: &'a NewKey) -> StoreFuture<'a, ApiKey>;

    /// Every key, revoked ones included, oldest first.
    fn list_keys(&self) -> StoreFuture<'_, Vec<ApiKey>>;

    /// Marks a key revoked (once; revoking again changes nothing). `None`: no such key.
    fn revoke_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ApiKey>>;

    /// A key with its secret's hash, to check a caller's secret against.
    fn find_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<(ApiKey, String)>>;

    /// Whether any key was ever created: from then on every request needs one.
    fn any_keys(&self) -> StoreFuture<'_, bool>;

    /// Opens a browser session for `key_id` until `expires_at` (RFC 3339), and forgets the
    /// sessions that have expired.
    fn create_session<'a>(&'a self, token_hash: &'a str, key_id: &'a str, expires_at: &'a str) -> StoreFuture<'a, ()>;

    /// The key a session acts as, while it has not expired and its key is not revoked.
    fn find_session<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, Option<ApiKey>>;

    /// Ends a session (logging out); ending an unknown one changes nothing.
    fn delete_session<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, ()>;

    /// Queues a job for the key `owner` (`None`: the open mode). With an idempotency key this
    /// owner already used, returns that job instead.
    fn insert_job<'a>(
        &'a self,
        spec: &'a JobSpec,
        idempotency_key: Option<&'a str>,
        owner: Option<&'a str>,
    ) -> StoreFuture<'a, Inserted>;

    /// The job `owner` (a key id, `None` in the open mode) submitted with this idempotency key.
    fn job_by_idempotency_key<'a>(&'a self, key: &'a str, owner: Option<&'a str>) -> StoreFuture<'a, Option<Job>>;

    /// The job, if `owner` may see it.
    fn get_job<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, Option<Job>>;

    /// `owner`'s jobs, newest first; `after` is the last id of the previous page. Also says
    /// whether more follow.
    fn list_jobs<'a>(
        &'a self,
        owner: &'a Owner,
        status: Option<Status>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<Job>, bool)>;

    /// Takes a queued job for `worker`, with a lease of `lease`, by fair share: the oldest job of
    /// the owner with the fewest running jobs relative to their key's `share`, ties going to the
    /// owner whose jobs ran least in the last day; owners that already have `max_running` jobs
    /// running are skipped (the open mode is one owner, of share 1), and so are jobs for a GPU
    /// that a running job holds: one job per GPU. A spec without a device runs on
    /// `default_device`.
    fn claim_next<'a>(
        &'a self,
        worker: &'a str,
        lease: Duration,
        max_running: u32,
        default_device: &'a str,
    ) -> StoreFuture<'a, Option<Job>>;

    /// Extends the lease. Returns whether cancellation was requested, or `None` when this
    /// worker no longer holds the job.
    fn heartbeat<'a>(&'a self, id: Uuid, worker: &'a str, lease: Duration) -> StoreFuture<'a, Option<bool>>;

    /// Takes back running jobs whose process died: with `Abandoned::LeaseExpired`, those whose
    /// lease ran out; with `Abandoned::AllRunning` (at start-up, when this process holds the
    /// data-dir lock and so is the only one), every running job. Each goes back to the queue to
    /// resume from its checkpoint, unless cancellation was asked for (then it is cancelled) or
    /// the process has now died `max_crashes` times while running it (then it fails).
    fn recover_abandoned(&self, abandoned: Abandoned, max_crashes: u32) -> StoreFuture<'_, Vec<Recovered>>;

    /// Returns a job this worker holds to the queue (shutdown): it resumes from its checkpoint.
    fn release<'a>(&'a self, id: Uuid, worker: &'a str, reason: &'a str) -> StoreFuture<'a, ()>;

    /// Records a job's end: status, error or result, and the final status event, together.
    fn finish<'a>(
        &'a self,
        id: Uuid,
        worker: &'a str,
        status: Status,
        error: Option<&'a str>,
        result: Option<&'a serde_json::Value>,
        report: Option<&'a serde_json::Value>,
    ) -> StoreFuture<'a, ()>;

    /// Cancels a job `owner` may see; another owner's job is `NotFound`.
    fn request_cancel<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, CancelOutcome>;

    /// Deletes a finished job `owner` may see, with its events and artifact records.
    fn delete_job<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, DeleteOutcome>;

    /// Appends one event (and, for progress, keeps it as the job's latest progress).
    fn append_event(&self, id: Uuid, kind: EventKind, payload: serde_json::Value) -> StoreFuture<'_, Event>;

    /// Up to `limit` events after seq `after`, in order.
    fn events_after(&self, id: Uuid, after: i64, limit: usize) -> StoreFuture<'_, Vec<Event>>;

    /// Events of the given types, in order (for the metrics endpoint).
    fn events_of_types<'a>(&'a self, id: Uuid, kinds: &'a [EventKind]) -> StoreFuture<'a, Vec<Event>>;

    /// Records (or replaces) a file of the job's folder.
    fn record_artifact<'a>(
        &'a self,
        id: Uuid,
        name: &'a str,
        size_bytes: u64,
        sha256: &'a str,
        content_type: &'a str,
    ) -> StoreFuture<'a, ()>;

    fn delete_artifacts(&self, id: Uuid) -> StoreFuture<'_, ()>;

    /// A job's artifacts, by name.
    fn artifacts(&self, id: Uuid) -> StoreFuture<'_, Vec<Artifact>>;

    fn artifact<'a>(&'a self, id: Uuid, name: &'a str) -> StoreFuture<'a, Option<Artifact>>;

    /// How many jobs are in each status, every status listed.
    fn count_by_status(&self) -> StoreFuture<'_, Vec<(Status, i64)>>;

    /// Records an upload whose bytes are already in place, owned by the key `owner` (`None` in
    /// the open mode).
    fn insert_file<'a>(&'a self, file: &'a StoredFile, owner: Option<&'a str>) -> StoreFuture<'a, ()>;

    /// The upload, if `owner` may see it.
    fn get_file<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, Option<StoredFile>>;

    /// The uploads `owner` may see, newest first, paged as [`Store::list_jobs`] is.
    fn list_files<'a>(
        &'a self,
        owner: &'a Owner,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<StoredFile>, bool)>;

    /// The ids of every upload `owner` may see: what its specs may name as `file:<id>`.
    fn file_ids<'a>(&'a self, owner: &'a Owner) -> StoreFuture<'a, Vec<Uuid>>;

    /// What the key `owner` (`None`: the open mode) holds, for its quotas.
    fn usage<'a>(&'a self, owner: Option<&'a str>) -> StoreFuture<'a, Usage>;

    /// Forgets an upload `owner` may see, unless a queued or running job's spec names it.
    fn delete_file<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, FileDeleteOutcome>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Queued, Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            format!("unknown status `{s}`; expected one of queued, running, succeeded, failed, cancelled")
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    pub spec: JobSpec,
    pub progress: Option<serde_json::Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub attempts: i64,
    pub cancel_requested: bool,
    /// The name of the key that submitted it; `None` for a job of the open mode.
    pub owner: Option<String>,
}

/// Whose jobs an operation may see or act on. Another owner's job is as absent as an unknown
/// one, so its id answers 404, never 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Every job: administrators, and the open mode before any key exists.
    Any,
    /// The jobs the key with this id submitted.
    Key(String),
    /// The jobs of every key with this name (an administrator's `?owner=`).
    Named(String),
}

/// An API key as stored and listed; never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// `dk_<id>`: the key's start, to recognise it by.
    pub prefix: String,
    pub admin: bool,
    pub share: u32,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A key to store: the secret only as its hash (see `crate::keys`).
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub secret_hash: String,
    pub admin: bool,
    pub share: u32,
}

/// What an event tells; its name is the event's `type` in JSON, SSE and the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The job's status changed (the payload's `status`).
    Status,
    /// Where training is: phase, epoch, step of total steps.
    Progress,
    /// An epoch's losses and accuracies.
    Metrics,
    Log,
    /// A checkpoint was written (and recorded as an artifact).
    Checkpoint,
    /// The evaluation report of a job that succeeded.
    Report,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Status,
        EventKind::Progress,
        EventKind::Metrics,
        EventKind::Log,
        EventKind::Checkpoint,
        EventKind::Report,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Progress => "progress",
            EventKind::Metrics => "metrics",
            EventKind::Log => "log",
            EventKind::Checkpoint => "checkpoint",
            EventKind::Report => "report",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == s).ok_or_else(|| format!("unknown event type `{s}`"))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(skip)]
    pub job_id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub payload: serde_json::Value,
    pub created_at: String,
}

impl Event {
    /// The status event that ends a job's stream.
    pub fn is_terminal(&self) -> bool {
        self.kind == EventKind::Status
            && self.payload["status"].as_str().and_then(|s| s.parse::<Status>().ok()).is_some_and(Status::is_terminal)
    }
}

/// A job's training curves as persisted: the payloads of its `progress` events (sampled steps)
/// and of its `metrics` events (every epoch), each in the order they happened, over every
/// attempt. `GET /v1/jobs/{id}/metrics` serves it; `curves.svg` is drawn from it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrainingLog {
    pub steps: Vec<serde_json::Value>,
    pub epochs: Vec<serde_json::Value>,
}

impl TrainingLog {
    pub async fn read(store: &dyn Store, id: Uuid) -> Result<Self, StoreError> {
        let events = store.events_of_types(id, &[EventKind::Progress, EventKind::Metrics]).await?;
        let (steps, epochs): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.kind == EventKind::Progress);
        Ok(TrainingLog {
            steps: steps.into_iter().map(|e| e.payload).collect(),
            epochs: epochs.into_iter().map(|e| e.payload).collect(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub name: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub content_type: String,
    pub created_at: String,
}

pub enum Inserted {
    Created(Job),
    /// A job with this idempotency key already exists (a concurrent retry won the race).
    Existing(Job),
}

pub enum CancelOutcome {
    NotFound,
    AlreadyFinished(Job),
    /// A queued job is cancelled at once; a running one when its worker sees the flag.
    Cancelled(Job),
    Requested(Job),
}

/// Which running jobs a recovery takes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Those whose lease has expired: their worker stopped renewing it.
    LeaseExpired,
    /// All of them: at start-up, under the data-dir lock, no other process can be running one.
    AllRunning,
}

impl Abandoned {
    fn reason(self, status: Status) -> &'static str {
        match (self, status) {
            (_, Status::Cancelled) => "cancellation was requested while its process was gone",
            (Abandoned::LeaseExpired, _) => "its worker stopped (lease expired); it resumes from its last checkpoint",
            (Abandoned::AllRunning, _) => "the service restarted while it ran; it resumes from its last checkpoint",
        }
    }
}

/// What became of a job whose process died.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovered {
    Requeued(Uuid),
    Cancelled(Uuid),
    /// The process died `max_crashes` times while running it: most likely the job itself kills
    /// it (memory), so it is not run again.
    Failed(Uuid, String),
}

impl Recovered {
    fn decide(id: Uuid, crashes: i64, cancel_requested: bool, max_crashes: u32) -> Recovered {
        if cancel_requested {
            Recovered::Cancelled(id)
        } else if crashes >= i64::from(max_crashes) {
            Recovered::Failed(
                id,
                format!(
                    "the service stopped {crashes} times while running this job (killed, most likely for lack of memory); \
                     it is not retried: make it smaller (batch size, layer widths, sequence length) or give the service more memory"
                ),
            )
        } else {
            Recovered::Requeued(id)
        }
    }
}

/// What an upload is for, as its uploader said; informative only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Dataset,
    Model,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Dataset => "dataset",
            Purpose::Model => "model",
        }
    }
}

impl FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Purpose::Dataset, Purpose::Model]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown purpose `{s}`; expected dataset or model"))
    }
}

/// An uploaded file, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredFile {
    pub id: Uuid,
    pub filename: String,
    pub bytes: u64,
    pub sha256: String,
    pub purpose: Option<Purpose>,
    /// An archive, unpacked: specs may name `file:<id>/<path inside it>`.
    pub unpacked: bool,
    pub created_at: String,
}

/// What one owner holds: its quotas count these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Queued and running jobs.
    pub active_jobs: u64,
    /// Bytes of its uploads and its jobs' artifacts.
    pub storage_bytes: u64,
}

pub enum FileDeleteOutcome {
    NotFound,
    /// The queued or running jobs whose spec names the file.
    InUse(Vec<Uuid>),
    Deleted,
}

pub enum DeleteOutcome {
    NotFound,
    NotFinished(Status),
    Deleted,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_the_names_clients_and_the_database_know() {
        let names: Vec<_> = EventKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(names, ["status", "progress", "metrics", "log", "checkpoint", "report"]);
        for kind in EventKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert!("epoch".parse::<EventKind>().is_err());
    }
}
