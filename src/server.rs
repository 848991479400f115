//! `distillery serve`: the store, the worker pool and the HTTP API in one process, with a
//! graceful shutdown that checkpoints running jobs and returns them to the queue.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::api::cors::Cors;
use crate::api::quota::RateLimiter;
use crate::api::{self, AppState, Limits};
use crate::config::ServeConfig;
use crate::engine::DataRoot;
use crate::keys;
use crate::layout;
use crate::store::{Abandoned, EventHub, SqliteStore, Store};
use crate::worker::{self, Running, WorkerConfig};

pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    init_tracing(&config.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A running service: its address, and the means to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    /// Stops accepting requests; running jobs checkpoint and return to the queue.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the HTTP server and every worker have stopped.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        match self.task.take() {
            Some(task) => task.await.context("the server task panicked")?,
            None => Ok(()),
        }
    }
}

/// A handle dropped without `shutdown` still stops the service, never leaves it headless.
impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(config: ServeConfig) -> anyhow::Result<()> {
    // Installed before the server announces itself, so a SIGTERM sent as soon as it listens
    // already shuts it down cleanly instead of killing it.
    let stop = stop_signals()?;
    let server = start(config).await?;
    stop.await;
    tracing::info!("shutting down: no new requests; running jobs checkpoint and return to the queue");
    server.shutdown();
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store, starts the workers and serves HTTP on `config.bind` (port 0 picks one).
pub async fn start(config: ServeConfig) -> anyhow::Result<ServerHandle> {
    crate::engine::device(&config.device).with_context(|| format!("--device {}", config.device))?;
    for path in [layout::datasets(&config.data_dir), layout::jobs(&config.data_dir)] {
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    let lock = lock_data_dir(&config.data_dir)?;
    let events = EventHub::new();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::connect(&config.database_url(), events.clone()).await.context("opening the database")?);
    check_access(&config, &*store).await?;
    // Under the lock no other process runs jobs from this data directory: whatever is still
    // marked running was left by a process that died, and need not wait for its lease.
    let recovered = store
        .recover_abandoned(Abandoned::AllRunning, config.max_crashes)
        .await
        .context("recovering jobs of a stopped process")?;
    if !recovered.is_empty() {
        tracing::info!(jobs = ?recovered, "took back the jobs a stopped process was running");
    }
    crate::uploads::prepare(&config.data_dir).context("preparing the uploads folder")?;
    let limits = limits(&config);
    let data_root = data_root(&config, limits.max_job_memory);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let running = Arc::new(Running::default());
    let queue = Arc::new(Notify::new());
    let workers = worker::spawn(
        store.clone(),
        WorkerConfig {
            workers: config.workers as usize,
            lease: Duration::from_secs(config.lease_secs),
            data_dir: config.data_dir.clone(),
            data_root: data_root.clone(),
            default_device: config.device.clone(),
            max_crashes: config.max_crashes,
            threads_per_job: config.job_threads(),
            max_running_per_owner: limits.max_running_jobs,
        },
        running.clone(),
        queue.clone(),
        shutdown.clone(),
    );
    let state = AppState {
        store,
        events,
        queue,
        running,
        data_dir: config.data_dir.clone(),
        data_root,
        limits,
        rate_limiter: Arc::new(RateLimiter::new(limits.rate_limit)),
        workers: config.workers as usize,
        shutdown: shutdown.clone(),
        started: Instant::now(),
        request_timeout: Duration::from_secs(config.request_timeout_secs),
        cors: Cors::new(&config.cors_origins),
    };
    let listener = TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        address = %addr,
        data_dir = %config.data_dir.display(),
        workers = config.workers,
        max_job_memory = limits.max_job_memory,
        "distillery listening"
    );
    let connection_limits = ConnectionLimits {
        max_connections: config.max_connections as usize,
        header_timeout: Duration::from_secs(config.header_timeout_secs),
    };
    let task = tokio::spawn(async move {
        serve_http(listener, api::router(state), connection_limits, shutdown).await;
        for task in workers {
            let _ = task.await;
        }
        drop(lock);
        Ok(())
    });
    Ok(ServerHandle { addr, shutdown: shutdown_tx, task: Some(task) })
}

fn limits(config: &ServeConfig) -> Limits {
    Limits {
        max_job_memory: config.job_memory_limit(),
        min_free_disk: config.min_free_disk,
        max_upload_bytes: config.max_upload_bytes,
        job_size: config.job_size_limits(),
        max_active_jobs: u64::from(config.max_active_jobs),
        max_running_jobs: config.running_jobs_limit(),
        max_storage_bytes: config.max_storage_bytes,
        rate_limit: config.rate_limit,
    }
}

/// Until a key exists the API is open to whoever reaches it, which is safe on loopback only:
/// elsewhere the service refuses to start unless `--no-auth` asks for that, or
/// `--create-admin-key` creates the first key now (printed once, to the log).
async fn check_access(config: &ServeConfig, store: &dyn Store) -> anyhow::Result<()> {
    if store.any_keys().await.context("reading the API keys")? {
        tracing::info!("API keys exist: every /v1 request needs `Authorization: Bearer <key>`");
        if config.no_auth {
            tracing::warn!("--no-auth changes nothing once API keys exist: every request still needs one");
        }
        return Ok(());
    }
    if config.create_admin_key {
        let (key, secret) = keys::issue(store, "admin", true, 1).await.context("creating the first API key")?;
        tracing::warn!(
            key = %secret,
            "created an administrator's API key named `admin` ({}): it is shown only this once, in this log line; \
             keep it, create the users' keys with it (POST /v1/keys), and revoke it if this log is not private",
            key.prefix
        );
        return Ok(());
    }
    if config.bind.ip().is_loopback() {
        tracing::info!("no API key exists: the API is open to this machine's users (loopback only)");
        return Ok(());
    }
    if config.no_auth {
        tracing::warn!(bind = %config.bind, "no API key exists and --no-auth is set: the API is open to anyone who reaches it");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {} without API keys: anyone who reaches it could run jobs and read every result. \
         Create an administrator's key first (`distillery keys create --name admin --admin --data-dir {}`), \
         or pass --no-auth (DISTILLERY_NO_AUTH=true) to serve without keys on purpose",
        config.bind,
        config.data_dir.display()
    )
}

/// What specs may read: the data root, without the service's own files, and no file larger
/// than a job may be.
fn data_root(config: &ServeConfig, max_file_bytes: u64) -> DataRoot {
    let root = DataRoot::of_data_dir(&config.data_dir).with_max_file_bytes(max_file_bytes);
    match config.database_url().strip_prefix("sqlite://").map(|path| path.split('?').next().unwrap_or_default()) {
        Some(path) if !path.is_empty() => root.with_private(path.into()),
        _ => root,
    }
}

/// Takes the data directory's lock for the life of the server: two servers on one SQLite
/// database would each run its jobs, and one's restart recovery would take the other's. The
/// lock is `flock`, which (unlike SQLite's POSIX locks) no other descriptor's close can drop.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = layout::lock(data_dir);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another distillery server is using the data directory {} ({} is locked); stop it first, or give this one its own --data-dir",
            data_dir.display(),
            path.display()
        );
    }
    Ok(file)
}

struct ConnectionLimits {
    max_connections: usize,
    header_timeout: Duration,
}

/// Serves HTTP/1 until `shutdown`, then lets each open connection finish its request.
/// Our own loop rather than `axum::serve`, which gives hyper no timer, so no header-read timeout.
async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    // Closes connections that dribble their headers (slowloris), and idle keep-alive ones.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // The router serves `Request<Incoming>` itself (it wraps any body in `axum::body::Body`).
    let service = TowerToHyperService::new(router);
    // One permit per open connection: with none left we stop accepting, and the OS backlog
    // holds newcomers until a connection closes.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((stream, permit)) = accepted else { continue };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection, once there is a permit for it; `None` after an accept error.
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, permit)),
        // The peer gave up before we accepted it: nothing to do.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(e) => {
            // Out of file descriptors, most likely: pause rather than spin.
            tracing::error!(error = %e, "accepting a connection failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are in place when this returns.
fn stop_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
