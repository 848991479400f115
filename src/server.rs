//! `distillery serve`: the store, the worker pool and the HTTP API in one process, with a
//! graceful shutdown that checkpoints running jobs and returns them to the queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{watch, Notify};
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
    };
    let listener = tokio::net::TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, data_dir = %config.data_dir.display(), workers = config.workers, "distillery listening");
    let mut stop = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .context("serving HTTP")?;
        for task in workers {
            let _ = task.await;
        }
        Ok(())
    });
    Ok(ServerHandle { addr, shutdown: shutdown_tx, task: Some(task) })
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
