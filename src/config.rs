//! Settings of `distillery serve`, from flags or `DISTILLERY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "DISTILLERY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Data directory: the SQLite database, `datasets/` (the root for dataset and teacher paths
    /// in specs) and `jobs/` (checkpoints and artifacts). Created if missing.
    #[arg(long, env = "DISTILLERY_DATA_DIR", default_value = "distillery-data")]
    pub data_dir: PathBuf,
    /// Database URL; default `sqlite://<data-dir>/distillery.db`.
    #[arg(long, env = "DISTILLERY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Jobs trained at the same time.
    #[arg(long, env = "DISTILLERY_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Device for jobs whose spec names none: `cpu` or `cuda:N`.
    #[arg(long, env = "DISTILLERY_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Seconds a worker's claim on a job lasts without a heartbeat; after that the job is
    /// requeued and resumes from its last checkpoint.
    #[arg(long, env = "DISTILLERY_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// HTTP connections open at once; when all are taken, new ones wait in the OS backlog until
    /// one closes.
    #[arg(long, env = "DISTILLERY_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// Seconds a connection has to send a request's headers; a slower one (or a keep-alive
    /// connection idle that long) is closed.
    #[arg(long, env = "DISTILLERY_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// Seconds a request may take to be answered, reading its body included, before it gets
    /// 408; event streams and artifact downloads are exempt.
    #[arg(long, env = "DISTILLERY_REQUEST_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub request_timeout_secs: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "DISTILLERY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl ServeConfig {
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("distillery.db").display()))
    }
}
