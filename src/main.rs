use std::path::PathBuf;

use clap::{Parser, Subcommand};

// candle allocates a fresh tensor per op; mimalloc more than doubles step throughput over the
// system allocator, whose page faults dominate otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Distillery: knowledge-distillation training jobs over REST",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: distillery::config::ServeConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and run queued jobs (the default).
    Serve(distillery::config::ServeConfig),
    /// Run one job spec in this process, without a server, and print its report.
    Run {
        /// The job spec (JSON), as POST /v1/jobs takes it.
        spec: PathBuf,
        /// Data directory; dataset and teacher paths in the spec are relative to its `datasets/`.
        #[arg(long, env = "DISTILLERY_DATA_DIR", default_value = "distillery-data")]
        data_dir: PathBuf,
        /// Where to write the artifacts (default: runs/<spec name>-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device for a spec that names none: `cpu` or `cuda:N`.
        #[arg(long, env = "DISTILLERY_DEVICE", default_value = "cpu")]
        device: String,
        /// The most memory the job may need, as estimated from its spec (e.g. `8GiB`); default:
        /// half the machine's memory.
        #[arg(long, env = "DISTILLERY_MAX_JOB_MEMORY", value_parser = distillery::config::parse_bytes)]
        max_job_memory: Option<u64>,
    },
    /// Create, list and revoke API keys (also while the server runs).
    Keys(distillery::cli::keys::KeysArgs),
    /// A running service's jobs: submit, list, watch, report, download, cancel, delete.
    Jobs(distillery::cli::jobs::JobsArgs),
    /// Upload files to a running service, for specs to name as `file:<id>`.
    Files(distillery::cli::files::FilesArgs),
}

fn main() -> anyhow::Result<()> {
    distillery::engine::set_up_threads();
    distillery::engine::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Run { spec, data_dir, out, device, max_job_memory }) => {
            let max_job_memory = max_job_memory.unwrap_or_else(|| distillery::config::default_job_memory(1));
            distillery::cli::run(&spec, &data_dir, out, &device, max_job_memory)?;
            Ok(())
        }
        Some(Command::Serve(config)) => distillery::server::serve(config),
        Some(Command::Keys(args)) => distillery::cli::keys::main(args),
        Some(Command::Jobs(args)) => exit_on_error(distillery::cli::jobs::main(args)),
        Some(Command::Files(args)) => exit_on_error(distillery::cli::files::main(args)),
        None => distillery::server::serve(cli.serve),
    }
}

/// The client's errors as one line, `error: <code>: <field>: <message>` for the API's, and exit
/// status 1.
fn exit_on_error(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
