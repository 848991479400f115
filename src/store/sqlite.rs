//! The SQLite [`Store`]: every SQL statement of the service. SQLite in WAL mode; writes that
//! must go together run in one `BEGIN IMMEDIATE` transaction. Committed events are published to
//! subscribers (the SSE streams) after the commit, never before.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use super::{
    now, Abandoned, ApiKey, Artifact, CancelOutcome, DeleteOutcome, Event, EventHub, EventKind, FileDeleteOutcome,
    Inserted, Job, NewKey, Owner, Recovered, Status, Store, StoreError, StoreFuture, StoredFile, Usage,
};
use crate::spec::JobSpec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    events: EventHub,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const FILE_COLUMNS: &str = "id, filename, bytes, sha256, purpose, unpacked, created_at";

const JOB_COLUMNS: &str = "id, name, spec, status, created_at, started_at, finished_at, error, progress, result, \
     attempts, cancel_requested, (SELECT name FROM api_keys WHERE api_keys.id = jobs.owner) AS owner_name";

const KEY_COLUMNS: &str = "id, name, prefix, admin, share, created_at, revoked_at";

/// The condition that a job belongs to `owner`, for [`owner_binds`]' two values bound as `?{n}`
/// (a key id) and `?{n + 1}` (a key name); a NULL one does not filter.
fn owner_clause(n: usize) -> String {
    let m = n + 1;
    format!("(?{n} IS NULL OR owner = ?{n}) AND (?{m} IS NULL OR owner IN (SELECT id FROM api_keys WHERE name = ?{m}))")
}

/// The device the job `alias` runs on, in SQL: its spec's `device`, else the service's default
/// (`?5`), with `cuda` read as `cuda:0` as the engine reads it.
fn device_of(alias: &str) -> String {
    let device = format!("COALESCE(json_extract({alias}.spec, '$.device'), ?5)");
    format!("(CASE {device} WHEN 'cuda' THEN 'cuda:0' ELSE {device} END)")
}

fn owner_binds(owner: &Owner) -> (Option<&str>, Option<&str>) {
    match owner {
        Owner::Any => (None, None),
        Owner::Key(id) => (Some(id), None),
        Owner::Named(name) => (None, Some(name)),
    }
}

/// Idempotency keys are unique per owner: the stored one is prefixed with the owner's key id,
/// so one user's key can neither find nor block another's job.
fn scoped_key(key: &str, owner: Option<&str>) -> String {
    match owner {
        Some(owner) => format!("{owner}/{key}"),
        None => key.to_string(),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations. Committed
    /// events go to `events`.
    pub async fn connect(url: &str, events: EventHub) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .after_release(|conn, _| Box::pin(outside_transaction(conn)))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, events })
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Commits, then publishes the events the transaction stored: subscribers never see an
    /// event that could still be rolled back.
    async fn commit(&self, tx: Transaction<'static, Sqlite>, events: Vec<Event>) -> Result<(), StoreError> {
        tx.commit().await?;
        for event in events {
            self.events.publish(event);
        }
        Ok(())
    }

    /// Commits (see [`SqliteStore::commit`]) and returns the job as committed.
    async fn commit_returning_job(
        &self,
        mut tx: Transaction<'static, Sqlite>,
        id: Uuid,
        events: Vec<Event>,
    ) -> Result<Job, StoreError> {
        let job = fetch(&mut tx, id).await?.ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished")))?;
        self.commit(tx, events).await?;
        Ok(job)
    }
}

impl Store for SqliteStore {
    fn ready(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.pool)
                .await?;
            let known = MIGRATOR.iter().count() as i64;
            if applied < known {
                return Err(StoreError::Corrupt(format!("{applied} of {known} migrations applied")));
            }
            Ok(())
        })
    }

    fn create_key<'a>(&'a self, key: &'a NewKey) -> StoreFuture<'a, ApiKey> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "INSERT INTO api_keys (id, name, prefix, secret_hash, admin, share, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                 RETURNING {KEY_COLUMNS}"
            ))
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(&key.secret_hash)
            .bind(key.admin)
            .bind(key.share)
            .bind(now())
            .fetch_one(&self.pool)
            .await?;
            key_from_row(&row)
        })
    }

    fn list_keys(&self) -> StoreFuture<'_, Vec<ApiKey>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY rowid"))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(key_from_row).collect()
        })
    }

    fn revoke_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ApiKey>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING {KEY_COLUMNS}"
            ))
            .bind(now())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(key_from_row).transpose()
        })
    }

    fn find_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<(ApiKey, String)>> {
        Box::pin(async move {
            let row = sqlx::query(&format!("SELECT {KEY_COLUMNS}, secret_hash FROM api_keys WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.map(|row| Ok((key_from_row(&row)?, row.try_get("secret_hash")?))).transpose()
        })
    }

    fn any_keys(&self) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)").fetch_one(&self.pool).await?)
        })
    }

    fn create_session<'a>(&'a self, token_hash: &'a str, key_id: &'a str, expires_at: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = now();
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM sessions WHERE expires_at <= ?").bind(&now).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO sessions (token_hash, key_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
                .bind(token_hash)
                .bind(key_id)
                .bind(&now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
            Ok(tx.commit().await?)
        })
    }

    fn find_session<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, Option<ApiKey>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL
                 AND id = (SELECT key_id FROM sessions WHERE token_hash = ? AND expires_at > ?)"
            ))
            .bind(token_hash)
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(key_from_row).transpose()
        })
    }

    fn delete_session<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM sessions WHERE token_hash = ?").bind(token_hash).execute(&self.pool).await?;
            Ok(())
        })
    }

    fn insert_job<'a>(
        &'a self,
        spec: &'a JobSpec,
        idempotency_key: Option<&'a str>,
        owner: Option<&'a str>,
    ) -> StoreFuture<'a, Inserted> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let idempotency_key = idempotency_key.map(|key| scoped_key(key, owner));
            if let Some(key) = &idempotency_key {
                let existing = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?"))
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = existing {
                    return Ok(Inserted::Existing(job_from_row(&row)?));
                }
            }
            let id = Uuid::now_v7();
            let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO jobs (id, name, spec, status, idempotency_key, created_at, owner) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
            )
            .bind(id.to_string())
            .bind(spec.display_name())
            .bind(spec_json)
            .bind(idempotency_key)
            .bind(now())
            .bind(owner)
            .execute(&mut *tx)
            .await?;
            let event = append(&mut tx, id, EventKind::Status, serde_json::json!({"status": "queued"})).await?;
            Ok(Inserted::Created(self.commit_returning_job(tx, id, vec![event]).await?))
        })
    }

    fn job_by_idempotency_key<'a>(&'a self, key: &'a str, owner: Option<&'a str>) -> StoreFuture<'a, Option<Job>> {
        Box::pin(async move {
            let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?"))
                .bind(scoped_key(key, owner))
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(job_from_row).transpose()
        })
    }

    fn get_job<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, Option<Job>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            fetch_owned(&mut conn, id, owner).await
        })
    }

    fn list_jobs<'a>(
        &'a self,
        owner: &'a Owner,
        status: Option<Status>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<Job>, bool)> {
        Box::pin(async move {
            let (key, name) = owner_binds(owner);
            let rows = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR id < ?2) AND {}
                 ORDER BY id DESC LIMIT ?3",
                owner_clause(4)
            ))
            .bind(status.map(Status::as_str))
            .bind(after.map(|a| a.to_string()))
            .bind(limit as i64 + 1)
            .bind(key)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
            let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
            let has_more = jobs.len() > limit;
            jobs.truncate(limit);
            Ok((jobs, has_more))
        })
    }

    fn claim_next<'a>(
        &'a self,
        worker: &'a str,
        lease: Duration,
        max_running: u32,
        default_device: &'a str,
    ) -> StoreFuture<'a, Option<Job>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            // `IS` compares owners NULL-safely: the open mode's jobs count as one owner's. The
            // counts and the update run in one write transaction, so two workers cannot both
            // take an owner's last running slot. Fair share first (running ÷ share), then the
            // owner's compute in the last day (days of its jobs' runs, the running ones to now),
            // then age: one user's 50 queued jobs no longer wait out everyone else's. A GPU that
            // a running job holds is not shared: jobs for it wait.
            let claimed: Option<String> = sqlx::query_scalar(&format!(
                "UPDATE jobs SET status = 'running', lease_owner = ?1, lease_expires_ms = ?2, attempts = attempts + 1,
                        started_at = COALESCE(started_at, ?3), error = NULL
                 WHERE id = (SELECT q.id FROM jobs AS q WHERE q.status = 'queued'
                               AND (SELECT COUNT(*) FROM jobs AS r WHERE r.status = 'running' AND r.owner IS q.owner) < ?4
                               AND NOT EXISTS (SELECT 1 FROM jobs AS g WHERE g.status = 'running'
                                     AND {gpu_of_q} LIKE 'cuda:%' AND {gpu_of_g} = {gpu_of_q})
                             ORDER BY
                               (SELECT COUNT(*) FROM jobs AS r WHERE r.status = 'running' AND r.owner IS q.owner) * 1.0
                                 / MAX(COALESCE((SELECT share FROM api_keys AS k WHERE k.id = q.owner), 1), 1),
                               (SELECT COALESCE(SUM(julianday(COALESCE(c.finished_at, ?3)) - julianday(c.started_at)), 0)
                                  FROM jobs AS c WHERE c.owner IS q.owner AND c.started_at IS NOT NULL
                                   AND julianday(COALESCE(c.finished_at, ?3)) > julianday(?3) - 1),
                               q.id
                             LIMIT 1)
                 RETURNING id",
                gpu_of_q = device_of("q"),
                gpu_of_g = device_of("g"),
            ))
            .bind(worker)
            .bind(now_ms() + lease.as_millis() as i64)
            .bind(now())
            .bind(i64::from(max_running))
            .bind(default_device)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = claimed else { return Ok(None) };
            let id = parse_id(&id)?;
            let job = fetch(&mut tx, id).await?.ok_or_else(|| StoreError::Corrupt("claimed job vanished".into()))?;
            let event = append(
                &mut tx,
                id,
                EventKind::Status,
                serde_json::json!({"status": "running", "attempt": job.attempts}),
            )
            .await?;
            self.commit(tx, vec![event]).await?;
            Ok(Some(job))
        })
    }

    fn heartbeat<'a>(&'a self, id: Uuid, worker: &'a str, lease: Duration) -> StoreFuture<'a, Option<bool>> {
        Box::pin(async move {
            let cancel: Option<bool> = sqlx::query_scalar(
                "UPDATE jobs SET lease_expires_ms = ? WHERE id = ? AND lease_owner = ? AND status = 'running' RETURNING cancel_requested",
            )
            .bind(now_ms() + lease.as_millis() as i64)
            .bind(id.to_string())
            .bind(worker)
            .fetch_optional(&self.pool)
            .await?;
            Ok(cancel)
        })
    }

    fn recover_abandoned(&self, abandoned: Abandoned, max_crashes: u32) -> StoreFuture<'_, Vec<Recovered>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let deadline = match abandoned {
                Abandoned::LeaseExpired => now_ms(),
                Abandoned::AllRunning => i64::MAX,
            };
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "UPDATE jobs SET crashes = crashes + 1, lease_owner = NULL, lease_expires_ms = NULL
                 WHERE status = 'running' AND lease_expires_ms < ? RETURNING id, crashes, cancel_requested",
            )
            .bind(deadline)
            .fetch_all(&mut *tx)
            .await?;
            let mut events = Vec::new();
            let mut recovered = Vec::new();
            for (id, crashes, cancel_requested) in rows {
                let id = parse_id(&id)?;
                let outcome = Recovered::decide(id, crashes, cancel_requested != 0, max_crashes);
                let (status, error) = match &outcome {
                    Recovered::Requeued(_) => (Status::Queued, None),
                    Recovered::Cancelled(_) => (Status::Cancelled, None),
                    Recovered::Failed(_, error) => (Status::Failed, Some(error.clone())),
                };
                let finished = status.is_terminal().then(now);
                sqlx::query("UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?")
                    .bind(status.as_str())
                    .bind(&error)
                    .bind(finished)
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                let mut payload = serde_json::json!({"status": status.as_str()});
                match &error {
                    Some(error) => payload["error"] = error.as_str().into(),
                    None => payload["reason"] = abandoned.reason(status).into(),
                }
                events.push(append(&mut tx, id, EventKind::Status, payload).await?);
                recovered.push(outcome);
            }
            self.commit(tx, events).await?;
            Ok(recovered)
        })
    }

    fn release<'a>(&'a self, id: Uuid, worker: &'a str, reason: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let updated = sqlx::query(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_ms = NULL WHERE id = ? AND lease_owner = ? AND status = 'running'",
            )
            .bind(id.to_string())
            .bind(worker)
            .execute(&mut *tx)
            .await?;
            let mut events = Vec::new();
            if updated.rows_affected() > 0 {
                events.push(
                    append(&mut tx, id, EventKind::Status, serde_json::json!({"status": "queued", "reason": reason}))
                        .await?,
                );
            }
            self.commit(tx, events).await?;
            Ok(())
        })
    }

    fn finish<'a>(
        &'a self,
        id: Uuid,
        worker: &'a str,
        status: Status,
        error: Option<&'a str>,
        result: Option<&'a serde_json::Value>,
        report: Option<&'a serde_json::Value>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let updated = sqlx::query(
                "UPDATE jobs SET status = ?, error = ?, result = ?, finished_at = ?, lease_owner = NULL, lease_expires_ms = NULL
                 WHERE id = ? AND lease_owner = ? AND status = 'running'",
            )
            .bind(status.as_str())
            .bind(error)
            .bind(result.map(|r| r.to_string()))
            .bind(now())
            .bind(id.to_string())
            .bind(worker)
            .execute(&mut *tx)
            .await?;
            let mut events = Vec::new();
            if updated.rows_affected() > 0 {
                if let Some(report) = report {
                    events.push(append(&mut tx, id, EventKind::Report, report.clone()).await?);
                }
                let mut payload = serde_json::json!({"status": status.as_str()});
                if let Some(error) = error {
                    payload["error"] = error.into();
                }
                events.push(append(&mut tx, id, EventKind::Status, payload).await?);
            }
            self.commit(tx, events).await?;
            Ok(())
        })
    }

    fn request_cancel<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, CancelOutcome> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let Some(job) = fetch_owned(&mut tx, id, owner).await? else { return Ok(CancelOutcome::NotFound) };
            if job.status.is_terminal() {
                return Ok(CancelOutcome::AlreadyFinished(job));
            }
            if job.status == Status::Queued {
                sqlx::query("UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ? WHERE id = ?")
                    .bind(now())
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                let event = append(&mut tx, id, EventKind::Status, serde_json::json!({"status": "cancelled"})).await?;
                return Ok(CancelOutcome::Cancelled(self.commit_returning_job(tx, id, vec![event]).await?));
            }
            sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let event =
                append(&mut tx, id, EventKind::Log, serde_json::json!({"message": "cancellation requested"})).await?;
            Ok(CancelOutcome::Requested(self.commit_returning_job(tx, id, vec![event]).await?))
        })
    }

    fn delete_job<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, DeleteOutcome> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let (key, name) = owner_binds(owner);
            let status: Option<String> =
                sqlx::query_scalar(&format!("SELECT status FROM jobs WHERE id = ?1 AND {}", owner_clause(2)))
                    .bind(id.to_string())
                    .bind(key)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(status) = status else { return Ok(DeleteOutcome::NotFound) };
            let status: Status = status.parse().map_err(StoreError::Corrupt)?;
            if !status.is_terminal() {
                return Ok(DeleteOutcome::NotFinished(status));
            }
            sqlx::query("DELETE FROM jobs WHERE id = ?").bind(id.to_string()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(DeleteOutcome::Deleted)
        })
    }

    fn append_event(&self, id: Uuid, kind: EventKind, payload: serde_json::Value) -> StoreFuture<'_, Event> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            if kind == EventKind::Progress {
                sqlx::query("UPDATE jobs SET progress = ? WHERE id = ?")
                    .bind(payload.to_string())
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            let event = append(&mut tx, id, kind, payload).await?;
            self.commit(tx, vec![event.clone()]).await?;
            Ok(event)
        })
    }

    fn events_after(&self, id: Uuid, after: i64, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT job_id, seq, type, payload, created_at FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?")
                .bind(id.to_string())
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn events_of_types<'a>(&'a self, id: Uuid, kinds: &'a [EventKind]) -> StoreFuture<'a, Vec<Event>> {
        Box::pin(async move {
            let placeholders = vec!["?"; kinds.len()].join(", ");
            let sql = format!("SELECT job_id, seq, type, payload, created_at FROM events WHERE job_id = ? AND type IN ({placeholders}) ORDER BY seq");
            let mut query = sqlx::query(&sql).bind(id.to_string());
            for kind in kinds {
                query = query.bind(kind.as_str());
            }
            query.fetch_all(&self.pool).await?.iter().map(event_from_row).collect()
        })
    }

    fn record_artifact<'a>(
        &'a self,
        id: Uuid,
        name: &'a str,
        size_bytes: u64,
        sha256: &'a str,
        content_type: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO artifacts (job_id, name, size_bytes, sha256, content_type, created_at) VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (job_id, name) DO UPDATE SET size_bytes = excluded.size_bytes, sha256 = excluded.sha256, created_at = excluded.created_at",
            )
            .bind(id.to_string())
            .bind(name)
            .bind(size_bytes as i64)
            .bind(sha256)
            .bind(content_type)
            .bind(now())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn delete_artifacts(&self, id: Uuid) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM artifacts WHERE job_id = ?").bind(id.to_string()).execute(&self.pool).await?;
            Ok(())
        })
    }

    fn artifacts(&self, id: Uuid) -> StoreFuture<'_, Vec<Artifact>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT name, size_bytes, sha256, content_type, created_at FROM artifacts WHERE job_id = ? ORDER BY name",
            )
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(artifact_from_row).collect()
        })
    }

    fn artifact<'a>(&'a self, id: Uuid, name: &'a str) -> StoreFuture<'a, Option<Artifact>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT name, size_bytes, sha256, content_type, created_at FROM artifacts WHERE job_id = ? AND name = ?",
            )
            .bind(id.to_string())
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(artifact_from_row).transpose()
        })
    }

    fn count_by_status(&self) -> StoreFuture<'_, Vec<(Status, i64)>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(&self.pool).await?;
            let mut counts: Vec<(Status, i64)> = Status::ALL.iter().map(|s| (*s, 0)).collect();
            for row in rows {
                let status: Status = row.try_get::<String, _>("status")?.parse().map_err(StoreError::Corrupt)?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                    slot.1 = row.try_get("n")?;
                }
            }
            Ok(counts)
        })
    }

    fn insert_file<'a>(&'a self, file: &'a StoredFile, owner: Option<&'a str>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO files (id, filename, bytes, sha256, purpose, unpacked, created_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(file.id.to_string())
            .bind(&file.filename)
            .bind(file.bytes as i64)
            .bind(&file.sha256)
            .bind(file.purpose.map(|p| p.as_str()))
            .bind(file.unpacked)
            .bind(&file.created_at)
            .bind(owner)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn get_file<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, Option<StoredFile>> {
        Box::pin(async move {
            let (key, name) = owner_binds(owner);
            let row = sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1 AND {}", owner_clause(2)))
                .bind(id.to_string())
                .bind(key)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(file_from_row).transpose()
        })
    }

    fn list_files<'a>(
        &'a self,
        owner: &'a Owner,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<StoredFile>, bool)> {
        Box::pin(async move {
            let (key, name) = owner_binds(owner);
            let rows = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files WHERE (?1 IS NULL OR id < ?1) AND {} ORDER BY id DESC LIMIT ?2",
                owner_clause(3)
            ))
            .bind(after.map(|a| a.to_string()))
            .bind(limit as i64 + 1)
            .bind(key)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
            let mut files = rows.iter().map(file_from_row).collect::<Result<Vec<_>, _>>()?;
            let has_more = files.len() > limit;
            files.truncate(limit);
            Ok((files, has_more))
        })
    }

    fn file_ids<'a>(&'a self, owner: &'a Owner) -> StoreFuture<'a, Vec<Uuid>> {
        Box::pin(async move {
            let (key, name) = owner_binds(owner);
            let ids: Vec<String> = sqlx::query_scalar(&format!("SELECT id FROM files WHERE {}", owner_clause(1)))
                .bind(key)
                .bind(name)
                .fetch_all(&self.pool)
                .await?;
            ids.iter().map(|id| parse_id(id)).collect()
        })
    }

    fn usage<'a>(&'a self, owner: Option<&'a str>) -> StoreFuture<'a, Usage> {
        Box::pin(async move {
            let (active, files, artifacts): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE owner IS ?1 AND status IN ('queued', 'running')),
                        (SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner IS ?1),
                        (SELECT COALESCE(SUM(a.size_bytes), 0) FROM artifacts AS a JOIN jobs AS j ON j.id = a.job_id
                          WHERE j.owner IS ?1)",
            )
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
            Ok(Usage {
                active_jobs: active.max(0) as u64,
                storage_bytes: files.saturating_add(artifacts).max(0) as u64,
            })
        })
    }

    fn delete_file<'a>(&'a self, id: Uuid, owner: &'a Owner) -> StoreFuture<'a, FileDeleteOutcome> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let (key, name) = owner_binds(owner);
            let exists: Option<i64> =
                sqlx::query_scalar(&format!("SELECT 1 FROM files WHERE id = ?1 AND {}", owner_clause(2)))
                    .bind(id.to_string())
                    .bind(key)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return Ok(FileDeleteOutcome::NotFound);
            }
            // Specs are stored as JSON, where a file is the string `"file:<id>"` or
            // `"file:<id>/<path>"`: a text match finds every field that can name one, without a
            // second table to keep in step. Ids are hex and dashes, so never LIKE wildcards, and
            // LIKE ignores ASCII case as `file:` ids do.
            let users: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE status IN ('queued', 'running')
                   AND (spec LIKE '%\"file:' || ?1 || '\"%' OR spec LIKE '%\"file:' || ?1 || '/%') ORDER BY id",
            )
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
            if !users.is_empty() {
                return Ok(FileDeleteOutcome::InUse(users.iter().map(|u| parse_id(u)).collect::<Result<_, _>>()?));
            }
            sqlx::query("DELETE FROM files WHERE id = ?").bind(id.to_string()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(FileDeleteOutcome::Deleted)
        })
    }
}

/// Whether a connection going back to the pool is outside any transaction. A COMMIT or statement
/// that fails for lack of disk space can end SQLite's transaction behind sqlx's back; the
/// rollback sqlx then queues fails, and the connection would keep a transaction depth of 1, so
/// every later `BEGIN` on it fails. Such a connection is closed instead (`false`), and the pool
/// opens a fresh one.
async fn outside_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    // Runs any rollback queued by a dropped transaction first: commands run in order.
    sqlx::Connection::ping(conn).await?;
    Ok(<<Sqlite as sqlx::Database>::TransactionManager as sqlx::TransactionManager>::get_transaction_depth(conn) == 0)
}

async fn append(
    conn: &mut sqlx::SqliteConnection,
    id: Uuid,
    kind: EventKind,
    payload: serde_json::Value,
) -> Result<Event, StoreError> {
    let created_at = now();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (job_id, seq, type, payload, created_at)
         SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4 FROM events WHERE job_id = ?1 RETURNING seq",
    )
    .bind(id.to_string())
    .bind(kind.as_str())
    .bind(payload.to_string())
    .bind(&created_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Event { job_id: id, seq, kind, payload, created_at })
}

async fn fetch(conn: &mut sqlx::SqliteConnection, id: Uuid) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// The job, if it belongs to `owner`.
async fn fetch_owned(conn: &mut sqlx::SqliteConnection, id: Uuid, owner: &Owner) -> Result<Option<Job>, StoreError> {
    let (key, name) = owner_binds(owner);
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND {}", owner_clause(2)))
        .bind(id.to_string())
        .bind(key)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

fn parse_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("bad id {text}: {e}")))
}

fn json_column(row: &SqliteRow, column: &str) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))).transpose()
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(Job {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        status: row.try_get::<String, _>("status")?.parse().map_err(StoreError::Corrupt)?,
        spec: serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?,
        progress: json_column(row, "progress")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        result: json_column(row, "result")?,
        attempts: row.try_get("attempts")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        owner: row.try_get("owner_name")?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        admin: row.try_get("admin")?,
        share: row.try_get("share")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    Ok(Event {
        job_id: parse_id(&row.try_get::<String, _>("job_id")?)?,
        seq: row.try_get("seq")?,
        kind: row.try_get::<String, _>("type")?.parse().map_err(StoreError::Corrupt)?,
        payload: json_column(row, "payload")?.unwrap_or_default(),
        created_at: row.try_get("created_at")?,
    })
}

fn artifact_from_row(row: &SqliteRow) -> Result<Artifact, StoreError> {
    Ok(Artifact {
        name: row.try_get("name")?,
        size_bytes: row.try_get("size_bytes")?,
        sha256: row.try_get("sha256")?,
        content_type: row.try_get("content_type")?,
        created_at: row.try_get("created_at")?,
    })
}

fn file_from_row(row: &SqliteRow) -> Result<StoredFile, StoreError> {
    let purpose: Option<String> = row.try_get("purpose")?;
    Ok(StoredFile {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        filename: row.try_get("filename")?,
        bytes: row.try_get::<i64, _>("bytes")? as u64,
        sha256: row.try_get("sha256")?,
        purpose: purpose.map(|p| p.parse()).transpose().map_err(StoreError::Corrupt)?,
        unpacked: row.try_get("unpacked")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Timelike;

    use super::*;

    async fn store_with_a_job() -> (tempfile::TempDir, SqliteStore, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::connect(&format!("sqlite://{}", dir.path().join("db.sqlite").display()), EventHub::new())
                .await
                .unwrap();
        let Inserted::Created(job) = store.insert_job(&tiny_spec(), None, None).await.unwrap() else {
            panic!("not created")
        };
        (dir, store, job.id)
    }

    fn tiny_spec() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "dataset": {"source": "builtin:digits"},
            "teacher": {"arch": {"kind": "mlp", "hidden": [8]}, "train": {"epochs": 1}},
            "student": {"arch": {"kind": "mlp", "hidden": [4]}},
            "distill": {"temperature": 4.0, "alpha": 0.7},
            "training": {"epochs": 1, "batch_size": 8, "optimizer": {"kind": "adamw", "lr": 0.001}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_job_that_keeps_killing_the_process_fails_instead_of_looping() {
        let (_dir, store, id) = store_with_a_job().await;
        for crash in 1..=3 {
            let claimed = store.claim_next("worker", Duration::from_secs(60), u32::MAX, "cpu").await.unwrap();
            assert_eq!(claimed.map(|j| j.id), Some(id), "crash {crash}: the job is claimable");
            let recovered = store.recover_abandoned(Abandoned::AllRunning, 3).await.unwrap();
            match crash {
                3 => assert!(
                    matches!(&recovered[..], [Recovered::Failed(job, why)] if *job == id && why.contains("stopped 3 times"))
                ),
                _ => assert_eq!(recovered, vec![Recovered::Requeued(id)]),
            }
        }
        let job = store.get_job(id, &Owner::Any).await.unwrap().unwrap();
        assert_eq!(job.status, Status::Failed);
        assert!(job.error.unwrap().contains("not retried"));
        assert!(
            store.claim_next("worker", Duration::from_secs(60), u32::MAX, "cpu").await.unwrap().is_none(),
            "a failed job is never claimed"
        );
    }

    #[tokio::test]
    async fn cancelling_a_job_whose_process_died_wins_over_the_requeue() {
        let (_dir, store, id) = store_with_a_job().await;
        store.claim_next("worker", Duration::from_millis(1), u32::MAX, "cpu").await.unwrap().unwrap();
        assert!(matches!(store.request_cancel(id, &Owner::Any).await.unwrap(), CancelOutcome::Requested(_)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.recover_abandoned(Abandoned::LeaseExpired, 3).await.unwrap(), vec![Recovered::Cancelled(id)]);
        assert_eq!(store.get_job(id, &Owner::Any).await.unwrap().unwrap().status, Status::Cancelled);
        assert!(store.claim_next("worker", Duration::from_secs(60), u32::MAX, "cpu").await.unwrap().is_none());
    }

    /// Queued jobs of `owner`, oldest first.
    async fn queue(store: &SqliteStore, owner: &str, n: usize) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let Inserted::Created(job) = store.insert_job(&tiny_spec(), None, Some(owner)).await.unwrap() else {
                panic!("not created")
            };
            ids.push(job.id);
        }
        ids
    }

    /// Claims the next job and finishes it as if it had run for exactly `seconds`, ending a
    /// minute ago (so equal runs tie exactly).
    async fn run_next(store: &SqliteStore, seconds: i64) -> Uuid {
        let job =
            store.claim_next("worker", Duration::from_secs(60), u32::MAX, "cpu").await.unwrap().expect("a queued job");
        store.finish(job.id, "worker", Status::Succeeded, None, None, None).await.unwrap();
        let minute = chrono::Utc::now().with_nanosecond(0).unwrap() - chrono::Duration::seconds(60);
        let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        sqlx::query("UPDATE jobs SET started_at = ?, finished_at = ? WHERE id = ?")
            .bind(at(minute - chrono::Duration::seconds(seconds)))
            .bind(at(minute))
            .bind(job.id.to_string())
            .execute(&store.pool)
            .await
            .unwrap();
        job.id
    }

    #[tokio::test]
    async fn one_worker_alternates_between_owners_instead_of_draining_the_first_queue() {
        let (_dir, store, open_job) = store_with_a_job().await;
        sqlx::query("DELETE FROM jobs WHERE id = ?").bind(open_job.to_string()).execute(&store.pool).await.unwrap();
        store.create_key(&new_key("a", "alice")).await.unwrap();
        store.create_key(&new_key("b", "bob")).await.unwrap();
        let alice = queue(&store, "a", 6).await;
        let bob = queue(&store, "b", 2).await;
        let mut order = Vec::new();
        for _ in 0..8 {
            order.push(run_next(&store, 10).await);
        }
        // Bob has used no compute when Alice's first job ends, and less than her after each of
        // his: his jobs run second and fourth, not last.
        assert_eq!(order, [alice[0], bob[0], alice[1], bob[1], alice[2], alice[3], alice[4], alice[5]]);
    }

    #[tokio::test]
    async fn a_larger_share_runs_more_jobs_at_once() {
        let (_dir, store, open_job) = store_with_a_job().await;
        sqlx::query("DELETE FROM jobs WHERE id = ?").bind(open_job.to_string()).execute(&store.pool).await.unwrap();
        store.create_key(&new_key("a", "alice")).await.unwrap();
        store.create_key(&NewKey { share: 2, ..new_key("b", "bob") }).await.unwrap();
        let alice = queue(&store, "a", 3).await;
        let bob = queue(&store, "b", 3).await;
        let mut claimed = Vec::new();
        for _ in 0..3 {
            claimed.push(store.claim_next("w", Duration::from_secs(60), u32::MAX, "cpu").await.unwrap().unwrap().id);
        }
        // Alice's oldest first (nobody runs anything); then Bob, whose running job counts half.
        assert_eq!(claimed, [alice[0], bob[0], bob[1]]);
    }

    #[tokio::test]
    async fn a_job_for_a_busy_gpu_waits_while_the_queue_moves_on() {
        let (_dir, store, cpu_job) = store_with_a_job().await;
        let on = |device: &str| JobSpec { device: Some(device.into()), ..tiny_spec() };
        let mut ids = Vec::new();
        for spec in [on("cuda:0"), on("cuda"), on("cuda:1")] {
            let Inserted::Created(job) = store.insert_job(&spec, None, None).await.unwrap() else { panic!() };
            ids.push(job.id);
        }
        let claim =
            async || store.claim_next("w", Duration::from_secs(60), u32::MAX, "cpu").await.unwrap().map(|j| j.id);
        assert_eq!(claim().await, Some(cpu_job));
        assert_eq!(claim().await, Some(ids[0]), "cuda:0 is free");
        // `cuda` is cuda:0, which the job before holds; cuda:1 is free.
        assert_eq!(claim().await, Some(ids[2]));
        assert_eq!(claim().await, None, "the job for cuda:0 waits for it");
        store.finish(ids[0], "w", Status::Succeeded, None, None, None).await.unwrap();
        assert_eq!(claim().await, Some(ids[1]));
    }

    fn new_key(id: &str, name: &str) -> NewKey {
        let prefix = format!("dk_{id}");
        NewKey { id: id.into(), name: name.into(), prefix, secret_hash: "00".into(), admin: false, share: 1 }
    }

    #[tokio::test]
    async fn jobs_are_seen_by_their_key_and_listed_by_their_owners_name() {
        let (_dir, store, open_job) = store_with_a_job().await;
        assert!(!store.any_keys().await.unwrap());
        for (id, name) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
            store.create_key(&new_key(id, name)).await.unwrap();
        }
        let mut jobs = Vec::new();
        for key in ["a1", "a2", "b1"] {
            let Inserted::Created(job) = store.insert_job(&tiny_spec(), Some("same"), Some(key)).await.unwrap() else {
                panic!("an idempotency key is per owner")
            };
            jobs.push(job.id);
        }
        let store = &store;
        let listed = async |owner: Owner| {
            store.list_jobs(&owner, None, None, 10).await.unwrap().0.into_iter().map(|j| j.id).collect::<Vec<_>>()
        };
        assert_eq!(listed(Owner::Key("a1".into())).await, [jobs[0]]);
        assert_eq!(listed(Owner::Named("alice".into())).await, [jobs[1], jobs[0]]);
        assert_eq!(listed(Owner::Any).await, [jobs[2], jobs[1], jobs[0], open_job]);
        let bob = Owner::Key("b1".into());
        assert!(store.get_job(jobs[0], &bob).await.unwrap().is_none());
        assert!(matches!(store.request_cancel(jobs[0], &bob).await.unwrap(), CancelOutcome::NotFound));
        assert!(matches!(store.delete_job(open_job, &bob).await.unwrap(), DeleteOutcome::NotFound));
        assert_eq!(store.get_job(jobs[2], &bob).await.unwrap().unwrap().owner.as_deref(), Some("bob"));

        let first = store.revoke_key("b1").await.unwrap().unwrap().revoked_at.unwrap();
        let again = store.revoke_key("b1").await.unwrap().unwrap().revoked_at.unwrap();
        assert_eq!(first, again, "revoking twice keeps the first time");
        assert!(store.revoke_key("zz").await.unwrap().is_none());
        let (key, hash) = store.find_key("a1").await.unwrap().unwrap();
        assert_eq!((key.prefix.as_str(), hash.as_str()), ("dk_a1", "00"));
    }

    #[tokio::test]
    async fn a_claim_skips_the_jobs_of_owners_at_their_running_limit() {
        let (_dir, store, open_job) = store_with_a_job().await;
        for (id, name) in [("a1", "alice"), ("b1", "bob")] {
            store.create_key(&new_key(id, name)).await.unwrap();
        }
        let mut jobs = Vec::new();
        for owner in [Some("a1"), Some("a1"), Some("b1"), None] {
            let Inserted::Created(job) = store.insert_job(&tiny_spec(), None, owner).await.unwrap() else {
                panic!("not created")
            };
            jobs.push(job.id);
        }
        let lease = Duration::from_secs(60);
        let mut claimed = Vec::new();
        while let Some(job) = store.claim_next("worker", lease, 1, "cpu").await.unwrap() {
            claimed.push(job.id);
        }
        assert_eq!(claimed, [open_job, jobs[0], jobs[2]], "one job of each owner, the open mode's included");
        store.finish(jobs[0], "worker", Status::Succeeded, None, None, None).await.unwrap();
        assert_eq!(store.claim_next("worker", lease, 1, "cpu").await.unwrap().map(|j| j.id), Some(jobs[1]));
        assert_eq!(store.claim_next("worker", lease, 3, "cpu").await.unwrap().map(|j| j.id), Some(jobs[3]));
        let usage = store.usage(Some("a1")).await.unwrap();
        assert_eq!((usage.active_jobs, usage.storage_bytes), (1, 0));
        assert_eq!(store.usage(None).await.unwrap().active_jobs, 2);
    }

    #[tokio::test]
    async fn a_transaction_that_sqlite_ended_alone_does_not_poison_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::connect(&format!("sqlite://{}", dir.path().join("db.sqlite").display()), EventHub::new())
                .await
                .unwrap();
        for _ in 0..3 {
            // SQLite ends the transaction (as it may on a full disk) without sqlx knowing; the
            // rollback sqlx queues on drop then fails.
            let mut tx = store.begin().await.unwrap();
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
            drop(tx);
            assert!(matches!(store.insert_job(&tiny_spec(), None, None).await, Ok(Inserted::Created(_))));
        }
        assert_eq!(store.list_jobs(&Owner::Any, None, None, 10).await.unwrap().0.len(), 3);
    }

    #[tokio::test]
    async fn a_file_named_by_a_queued_job_is_not_deleted() {
        let (_dir, store, _) = store_with_a_job().await;
        let file = StoredFile {
            id: Uuid::now_v7(),
            filename: "train.csv".into(),
            bytes: 3,
            sha256: "ab".into(),
            purpose: Some(super::super::Purpose::Dataset),
            unpacked: false,
            created_at: now(),
        };
        store.insert_file(&file, None).await.unwrap();
        let mut spec = tiny_spec();
        spec.dataset =
            serde_json::from_value(serde_json::json!({"source": "csv", "path": format!("file:{}", file.id)})).unwrap();
        let Inserted::Created(job) = store.insert_job(&spec, None, None).await.unwrap() else { panic!("not created") };
        let any = Owner::Any;
        assert!(
            matches!(store.delete_file(file.id, &any).await.unwrap(), FileDeleteOutcome::InUse(jobs) if jobs == [job.id])
        );
        assert!(matches!(store.request_cancel(job.id, &any).await.unwrap(), CancelOutcome::Cancelled(_)));
        assert_eq!(store.list_files(&any, None, 10).await.unwrap().0[0].filename, "train.csv");
        assert!(matches!(store.delete_file(file.id, &any).await.unwrap(), FileDeleteOutcome::Deleted));
        assert!(matches!(store.delete_file(file.id, &any).await.unwrap(), FileDeleteOutcome::NotFound));
        assert!(store.get_file(file.id, &any).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_session_ends_at_its_expiry_and_expired_ones_are_forgotten() {
        let (_dir, store, _) = store_with_a_job().await;
        let key = NewKey {
            id: "00000000000000aa".into(),
            name: "alice".into(),
            prefix: "dk_00000000000000aa".into(),
            secret_hash: "0".repeat(64),
            admin: false,
            share: 1,
        };
        store.create_key(&key).await.unwrap();
        let later =
            (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let past =
            (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        store.create_session("expired", &key.id, &past).await.unwrap();
        assert!(store.find_session("expired").await.unwrap().is_none(), "an expired session still acts");
        store.create_session("live", &key.id, &later).await.unwrap();
        assert_eq!(store.find_session("live").await.unwrap().map(|k| k.name).as_deref(), Some("alice"));
        let left: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM sessions").fetch_all(&store.pool).await.unwrap();
        assert_eq!(left, ["live"], "opening a session forgets the expired ones");
        store.delete_session("live").await.unwrap();
        assert!(store.find_session("live").await.unwrap().is_none());
    }
}
