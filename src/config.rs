//! Settings of `distillery serve`, from flags or `DISTILLERY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::job::budget::SizeLimits;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "DISTILLERY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Data directory: the SQLite database, `datasets/` (the root for dataset and teacher paths
    /// in specs), `jobs/` (checkpoints and artifacts) and `files/` (uploads). Created if missing.
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
    /// The most memory one job may need, as estimated from its spec at submission (e.g. `8GiB`);
    /// larger jobs are refused with 422. Default: half the machine's memory, shared among the
    /// workers.
    #[arg(long, env = "DISTILLERY_MAX_JOB_MEMORY", value_parser = parse_bytes)]
    pub max_job_memory: Option<u64>,
    /// Submissions are refused (507) and `/readyz` reports `low_disk` when the data directory's
    /// file system has less free space than this (e.g. `1GiB`).
    #[arg(long, env = "DISTILLERY_MIN_FREE_DISK", default_value = "512MiB", value_parser = parse_bytes)]
    pub min_free_disk: u64,
    /// Times the process may die while running one job (killed, out of memory) before that job
    /// fails instead of going back to the queue.
    #[arg(long, env = "DISTILLERY_MAX_CRASHES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_crashes: u32,
    /// The largest file `POST /v1/files` takes (e.g. `2GiB`); larger uploads get 413. An archive
    /// may unpack to four times as much.
    #[arg(long, env = "DISTILLERY_MAX_UPLOAD_BYTES", default_value = "2GiB", value_parser = parse_bytes)]
    pub max_upload_bytes: u64,
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
    /// Queued and running jobs one key may have at once; more submissions get 429.
    #[arg(long, env = "DISTILLERY_MAX_ACTIVE_JOBS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_active_jobs: u32,
    /// Jobs of one key that train at once; its others wait in the queue while other keys' jobs
    /// run. Default: `--workers`.
    #[arg(long, env = "DISTILLERY_MAX_RUNNING_JOBS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running_jobs: Option<u32>,
    /// Bytes one key may keep: its uploads and its jobs' artifacts (e.g. `50GiB`); past it,
    /// uploads and submissions get 429.
    #[arg(long, env = "DISTILLERY_MAX_STORAGE_BYTES", default_value = "50GiB", value_parser = parse_bytes)]
    pub max_storage_bytes: u64,
    /// Trainable parameters of the largest model a spec may name; larger get 422.
    #[arg(long, env = "DISTILLERY_MAX_PARAMETERS", default_value_t = 1_000_000_000)]
    pub max_parameters: u64,
    /// Epochs × training samples of a job's longest phase; longer get 422.
    #[arg(long, env = "DISTILLERY_MAX_EPOCH_SAMPLES", default_value_t = 1_000_000_000)]
    pub max_epoch_samples: u64,
    /// The largest batch a spec may ask for (the spec allows 65536); larger get 422.
    #[arg(long, env = "DISTILLERY_MAX_BATCH_SIZE", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_size: u64,
    /// The most tokens per text a text job may use (the spec allows 512); more get 422.
    #[arg(long, env = "DISTILLERY_MAX_SEQUENCE_LENGTH", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sequence_length: u64,
    /// Writes (`POST`, `DELETE`) one key may send a minute, in bursts of as many; more get 429
    /// with `Retry-After`.
    #[arg(long, env = "DISTILLERY_RATE_LIMIT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
    /// Allow listening on an address other than loopback while no API key exists, so that
    /// anyone who reaches it may use the API. Once a key exists, every request needs one anyway.
    #[arg(long, env = "DISTILLERY_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_auth: bool,
    /// If no API key exists at start, create an administrator's key named `admin` and print it
    /// to the log, once (the Docker image sets this).
    #[arg(long, env = "DISTILLERY_CREATE_ADMIN_KEY", value_parser = clap::builder::BoolishValueParser::new())]
    pub create_admin_key: bool,
    /// CPU threads each running job trains with; by default the cores divided among the
    /// workers, so concurrent jobs do not oversubscribe the machine.
    #[arg(long, env = "DISTILLERY_THREADS_PER_JOB", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads_per_job: Option<u16>,
    /// Origins (`scheme://host[:port]`, comma-separated or repeated) whose pages may call the
    /// API and follow its SSE streams, with their cookies: an external dashboard. `*` lets any
    /// origin call it, without cookies.
    #[arg(long = "cors-origin", env = "DISTILLERY_CORS_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "DISTILLERY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl ServeConfig {
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| default_database_url(&self.data_dir))
    }

    pub fn running_jobs_limit(&self) -> u32 {
        self.max_running_jobs.unwrap_or(u32::from(self.workers))
    }

    pub fn job_size_limits(&self) -> SizeLimits {
        SizeLimits {
            parameters: self.max_parameters,
            epoch_samples: self.max_epoch_samples,
            batch_size: self.max_batch_size,
            sequence_length: self.max_sequence_length,
        }
    }

    pub fn job_memory_limit(&self) -> u64 {
        self.max_job_memory.unwrap_or_else(|| default_job_memory(self.workers))
    }

    /// `--threads-per-job`, or the cores shared among the workers (at least one each).
    pub fn job_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads_per_job.map_or_else(|| (cores / usize::from(self.workers.max(1))).max(1), usize::from)
    }
}

/// An origin as browsers send it in `Origin`: `http(s)://host[:port]`, no path, or `*`.
pub fn parse_origin(text: &str) -> Result<String, String> {
    // Browsers send schemes and hosts in lower case.
    let text = text.trim().to_ascii_lowercase();
    let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
    let host_ok = |host: &str| {
        !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    };
    match rest {
        _ if text == "*" => Ok(text),
        Some(host) if host_ok(host) => Ok(text),
        _ => Err(format!(
            "`{text}` is not an origin: write `http://host[:port]` or `https://host[:port]` (no path), or `*`"
        )),
    }
}

/// The SQLite database in `data_dir`.
pub fn default_database_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}", crate::layout::database(data_dir).display())
}

/// Half the machine's physical memory, shared among `workers` jobs.
pub fn default_job_memory(workers: u16) -> u64 {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGE_SIZE)) };
    let physical = (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64);
    physical / 2 / u64::from(workers.max(1))
}

/// A size in bytes: a whole number with an optional binary unit (`K`, `M`, `G`, `T`, also
/// written `KiB`, `MB`, …; all are powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("`{text}` is not a size; write e.g. 8GiB, 512MiB or 1048576"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown unit `{other}`; use K, M, G or T (powers of 1024)")),
    };
    number.checked_mul(1u64 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999T").is_err());
        assert!(default_job_memory(1) > default_job_memory(4));
    }
}
