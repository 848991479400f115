//! The worker pool: claims queued jobs, holds their leases, runs the engine on a dedicated
//! thread per job, forwards its events to the store, and reacts to cancellation and shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::engine::{self, Control, DataRoot, EngineError, EngineEvent, RunOutput};
use crate::layout;
use crate::plots::{self, History};
use crate::store::{Abandoned, EventKind, Job, Status, Store, TrainingLog};

/// Progress events are persisted at most this often; epoch ends and status changes always.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub workers: usize,
    pub lease: Duration,
    pub data_dir: PathBuf,
    /// What a job's spec may read.
    pub data_root: DataRoot,
    pub default_device: String,
    /// Deaths of the process while running a job before the job fails for good.
    pub max_crashes: u32,
    /// CPU threads each job trains with, in a pool of its own.
    pub threads_per_job: usize,
    /// Jobs of one owner that run at once.
    pub max_running_per_owner: u32,
}

impl WorkerConfig {
    pub fn job_dir(&self, id: Uuid) -> PathBuf {
        layout::job_dir(&self.data_dir, id)
    }
}

/// Controls of the jobs running in this process, so a cancel request reaches the engine at
/// once (other processes see it through the lease heartbeat).
#[derive(Default)]
pub struct Running {
    jobs: Mutex<HashMap<Uuid, Arc<Control>>>,
}

impl Running {
    pub fn cancel(&self, id: Uuid) {
        if let Some(control) = self.jobs.lock().expect("registry lock").get(&id) {
            control.cancel();
        }
    }

    pub fn count(&self) -> usize {
        self.jobs.lock().expect("registry lock").len()
    }

    fn interrupt_all(&self) {
        for control in self.jobs.lock().expect("registry lock").values() {
            control.interrupt();
        }
    }

    fn insert(&self, id: Uuid, control: Arc<Control>) {
        self.jobs.lock().expect("registry lock").insert(id, control);
    }

    fn remove(&self, id: Uuid) {
        self.jobs.lock().expect("registry lock").remove(&id);
    }
}

/// Starts the workers and the reaper that requeues jobs of dead workers. The returned tasks
/// end after `shutdown` turns true and their running jobs have checkpointed and been released.
pub fn spawn(
    store: Arc<dyn Store>,
    config: WorkerConfig,
    running: Arc<Running>,
    queue: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    {
        let (store, mut shutdown, lease, max_crashes) =
            (store.clone(), shutdown.clone(), config.lease, config.max_crashes);
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match store.recover_abandoned(Abandoned::LeaseExpired, max_crashes).await {
                    Ok(jobs) if !jobs.is_empty() => {
                        info!(jobs = ?jobs, "took back jobs whose lease expired");
                        queue.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "recovering jobs with expired leases failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep((lease / 2).max(Duration::from_millis(200))) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }));
    }
    {
        let (running, mut shutdown) = (running.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            running.interrupt_all();
        }));
    }
    for n in 0..config.workers {
        let worker = Worker {
            id: format!("{}-{n}", Uuid::now_v7()),
            store: store.clone(),
            config: config.clone(),
            running: running.clone(),
            shutdown: shutdown.clone(),
        };
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move { worker.run(queue).await }));
    }
    tasks
}

struct Worker {
    id: String,
    store: Arc<dyn Store>,
    config: WorkerConfig,
    running: Arc<Running>,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    async fn run(self, queue: Arc<Notify>) {
        let mut shutdown = self.shutdown.clone();
        while !*shutdown.borrow() {
            let notified = queue.notified();
            let claim = self.store.claim_next(
                &self.id,
                self.config.lease,
                self.config.max_running_per_owner,
                &self.config.default_device,
            );
            match claim.await {
                Ok(Some(job)) => {
                    let span = tracing::info_span!("job", id = %job.id, name = %job.name, attempt = job.attempts);
                    self.run_job(job).instrument(span).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "claiming a job failed"),
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn run_job(&self, job: Job) {
        info!("job started");
        let control = Arc::new(Control::default());
        if job.cancel_requested {
            control.cancel();
        }
        self.running.insert(job.id, control.clone());
        // A claim that raced with shutdown: checkpoint at the first step and hand the job back.
        if *self.shutdown.borrow() {
            control.interrupt();
        }
        let outcome = self.drive(&job, control).await;
        self.running.remove(job.id);
        let recorded = match outcome {
            Ok(output) => self.succeed(&job, output).await,
            Err(EngineError::Cancelled) => {
                info!("job cancelled");
                self.store.finish(job.id, &self.id, Status::Cancelled, None, None, None).await
            }
            Err(EngineError::Interrupted) => {
                info!("job interrupted by shutdown; back in the queue");
                self.store.release(job.id, &self.id, "the service shut down; the job resumes from its checkpoint").await
            }
            Err(e) => self.fail(&job, e).await,
        };
        if let Err(e) = recorded {
            warn!(error = %e, "recording the job's outcome failed; its lease will expire and it will run again");
        }
    }

    /// Runs the engine on its own thread while forwarding its events and keeping the lease.
    async fn drive(&self, job: &Job, control: Arc<Control>) -> Result<RunOutput, EngineError> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<EngineEvent>();
        let (done_tx, done) = oneshot::channel();
        let (spec, config, thread_control) = (job.spec.clone(), self.config.clone(), control.clone());
        let job_dir = self.config.job_dir(job.id);
        std::thread::Builder::new()
            .name(format!("job-{}", job.id))
            .spawn(move || {
                let mut sink = |event| {
                    let _ = events_tx.send(event);
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // The job's own pool: candle's and the kernels' parallel loops run on the pool
                    // they are called from, so jobs side by side share the cores, not contend.
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(config.threads_per_job)
                        .thread_name(|i| format!("job-worker-{i}"))
                        .build()
                        .map_err(|e| EngineError::Internal(format!("starting the job's threads: {e}")))?;
                    pool.install(|| {
                        engine::run(
                            &spec,
                            &config.default_device,
                            &config.data_root,
                            &job_dir,
                            &thread_control,
                            &mut sink,
                        )
                    })
                }));
                let result =
                    result.unwrap_or_else(|_| Err(EngineError::Internal("the training thread panicked".into())));
                let _ = done_tx.send(result);
            })
            .map_err(EngineError::Io)?;

        let mut heartbeat = tokio::time::interval((self.config.lease / 3).max(Duration::from_millis(100)));
        let mut last_progress: Option<Instant> = None;
        let mut pending_progress = None;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(EngineEvent::Progress(p)) => {
                        if p.step == p.total_steps || last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL) {
                            self.forward(job.id, EngineEvent::Progress(p)).await;
                            last_progress = Some(Instant::now());
                            pending_progress = None;
                        } else {
                            pending_progress = Some(p);
                        }
                    }
                    Some(other) => {
                        // The newest progress goes first, so the log never runs behind an epoch end.
                        if let Some(p) = pending_progress.take() {
                            self.forward(job.id, EngineEvent::Progress(p)).await;
                        }
                        self.forward(job.id, other).await;
                    }
                    None => break,
                },
                _ = heartbeat.tick() => match self.store.heartbeat(job.id, &self.id, self.config.lease).await {
                    Ok(Some(true)) => control.cancel(),
                    Ok(Some(false)) => {}
                    Ok(None) => {
                        warn!("lost the job's lease; stopping it here");
                        control.interrupt();
                    }
                    Err(e) => warn!(error = %e, "heartbeat failed"),
                },
            }
        }
        if let Some(p) = pending_progress.take() {
            self.forward(job.id, EngineEvent::Progress(p)).await;
        }
        done.await.unwrap_or_else(|_| Err(EngineError::Internal("the training thread vanished".into())))
    }

    async fn forward(&self, id: Uuid, event: EngineEvent) {
        match event {
            EngineEvent::Log(message) => {
                info!(%message);
                self.persist(id, EventKind::Log, serde_json::json!({"message": message})).await;
            }
            EngineEvent::Epoch(m) => {
                self.persist(id, EventKind::Metrics, serde_json::to_value(&m).expect("metrics serialise")).await
            }
            EngineEvent::Checkpoint(c) => {
                if c.phase.keeps_files() {
                    self.record_file(id, &c.file).await;
                }
                self.persist(id, EventKind::Checkpoint, serde_json::to_value(&c).expect("checkpoint serialises")).await;
            }
            EngineEvent::Progress(p) => {
                self.persist(id, EventKind::Progress, serde_json::to_value(&p).expect("progress serialises")).await
            }
        }
    }

    async fn persist(&self, id: Uuid, kind: EventKind, payload: serde_json::Value) {
        if let Err(e) = self.store.append_event(id, kind, payload).await {
            warn!(error = %e, kind = kind.as_str(), "storing an event failed");
        }
    }

    /// Hashes a file of the job's folder and records it as an artifact.
    async fn record_file(&self, id: Uuid, name: &str) {
        let path = self.config.job_dir(id).join(name);
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
            let mut hasher = Sha256::new();
            let size = std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
            Ok((size, format!("{:x}", hasher.finalize())))
        })
        .await;
        let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
            Some("json") => "application/json",
            Some("tar") => "application/x-tar",
            Some("svg") => "image/svg+xml",
            _ => "application/octet-stream",
        };
        match hashed {
            Ok(Ok((size, sha))) => {
                if let Err(e) = self.store.record_artifact(id, name, size, &sha, content_type).await {
                    warn!(error = %e, name, "recording an artifact failed");
                }
            }
            Ok(Err(e)) => warn!(error = %e, name, "reading an artifact failed"),
            Err(e) => warn!(error = %e, name, "hashing an artifact failed"),
        }
    }

    /// Draws `curves.svg` again from the stored events: the engine drew only what its own
    /// attempt trained, and a job resumed after a restart had earlier ones. If that fails, the
    /// engine's drawing stays.
    async fn redraw_curves(&self, job: &Job) {
        let log = match TrainingLog::read(&*self.store, job.id).await {
            Ok(log) => log,
            Err(e) => return warn!(error = %e, "reading the training curves failed"),
        };
        let (dir, title) = (self.config.job_dir(job.id), job.name.clone());
        let drawn = tokio::task::spawn_blocking(move || plots::write_curves(&dir, &title, &History::from_log(&log)));
        match drawn.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "writing curves.svg failed"),
            Err(e) => warn!(error = %e, "drawing curves.svg failed"),
        }
    }

    /// Records a failure. A job that failed for lack of disk space first deletes what it wrote
    /// (partial checkpoints included), so the space is back and SQLite can record the failure.
    /// If recording fails anyway (another job filled the disk), the job's files go and it is
    /// tried once more: the job fails once instead of being requeued to fill the disk again.
    async fn fail(&self, job: &Job, error: EngineError) -> Result<(), crate::store::StoreError> {
        let disk_full = error.is_disk_full();
        let mut message = error.to_string();
        if disk_full {
            self.delete_files(job.id).await;
            message += "; the disk is full: the job's files were deleted to free the space";
        }
        warn!(error = %message, "job failed");
        let record = || self.store.finish(job.id, &self.id, Status::Failed, Some(&message), None, None);
        if let Err(e) = record().await {
            warn!(error = %e, "recording the failure failed; freeing the job's files and trying once more");
            if !disk_full {
                self.delete_files(job.id).await;
            }
            return record().await;
        }
        Ok(())
    }

    /// Deletes a failed job's folder and the artifact records that pointed into it.
    async fn delete_files(&self, id: Uuid) {
        let dir = self.config.job_dir(id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            warn!(error = %e, "deleting the job's files failed");
        }
        if let Err(e) = self.store.delete_artifacts(id).await {
            warn!(error = %e, "deleting the job's artifact records failed");
        }
    }

    async fn succeed(&self, job: &Job, output: RunOutput) -> Result<(), crate::store::StoreError> {
        self.redraw_curves(job).await;
        for name in &output.artifacts {
            self.record_file(job.id, name).await;
        }
        let r = &output.report;
        let summary = serde_json::json!({
            "teacher_accuracy": r.teacher.accuracy,
            "student_accuracy": r.student.accuracy,
            "baseline_accuracy": r.baseline.as_ref().map(|b| b.accuracy),
            "retention": r.retention,
            "gain": r.gain,
            "size_ratio": r.size_ratio,
            "speedup_batch_1": r.speedup.batch_1,
            "verdict": r.verdict,
        });
        let report = serde_json::to_value(r).expect("report serialises");
        info!(student_accuracy = r.student.accuracy, retention = r.retention, "job succeeded");
        self.store.finish(job.id, &self.id, Status::Succeeded, None, Some(&summary), Some(&report)).await
    }
}
