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

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::store::Store;
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
    let server = start(config).await?;
    terminate().await;
    tracing::info!("shutting down: no new requests; running jobs checkpoint and return to the queue");
    server.shutdown();
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store, starts the workers and serves HTTP on `config.bind` (port 0 picks one).
pub async fn start(config: ServeConfig) -> anyhow::Result<ServerHandle> {
    crate::engine::device(&config.device).with_context(|| format!("--device {}", config.device))?;
    for dir in ["datasets", "jobs"] {
        let path = config.data_dir.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    let store = Store::connect(&config.database_url()).await.context("opening the database")?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let running = Arc::new(Running::default());
    let queue = Arc::new(Notify::new());
    let workers = worker::spawn(
        store.clone(),
        WorkerConfig {
            workers: config.workers as usize,
            lease: Duration::from_secs(config.lease_secs),
            data_dir: config.data_dir.clone(),
            default_device: config.device.clone(),
        },
        running.clone(),
        queue.clone(),
        shutdown.clone(),
    );
    let state = AppState {
        store,
        queue,
        running,
        data_dir: config.data_dir.clone(),
        workers: config.workers as usize,
        shutdown: shutdown.clone(),
        started: Instant::now(),
        request_timeout: Duration::from_secs(config.request_timeout_secs),
    };
    let listener = TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, data_dir = %config.data_dir.display(), workers = config.workers, "distillery listening");
    let limits = ConnectionLimits {
        max_connections: config.max_connections as usize,
        header_timeout: Duration::from_secs(config.header_timeout_secs),
    };
    let task = tokio::spawn(async move {
        serve_http(listener, api::router(state), limits, shutdown).await;
        for task in workers {
            let _ = task.await;
        }
        Ok(())
    });
    Ok(ServerHandle { addr, shutdown: shutdown_tx, task: Some(task) })
}

struct ConnectionLimits {
    max_connections: usize,
    header_timeout: Duration,
}

/// Serves HTTP/1 until `shutdown`, then lets each open connection finish its request.
/// Our own loop rather than `axum::serve`, which gives hyper no timer, so no header-read timeout.
async fn serve_http(listener: TcpListener, router: Router, limits: ConnectionLimits, mut shutdown: watch::Receiver<bool>) {
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
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused) => None,
        Err(e) => {
            // Out of file descriptors, most likely: pause rather than spin.
            tracing::error!(error = %e, "accepting a connection failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

async fn terminate() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = sigterm => {}
    }
}
