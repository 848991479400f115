//! `distillery jobs …`: the service's jobs from the command line. What a script reads goes to
//! stdout (a new job's id alone on its line, the list as an aligned table, downloaded paths);
//! progress bars go to the terminal only.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::client::{block_on, ApiError, Client, ServerArgs, SseParser};
use crate::engine::job::report::Report;
use crate::engine::{EpochMetrics, Progress};

#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Subcommand, Debug)]
enum JobsCommand {
    /// Submit a job spec (JSON) and print the new job's id.
    Submit {
        spec: PathBuf,
        /// Then follow it as `jobs watch` does.
        #[arg(long)]
        watch: bool,
    },
    /// List jobs, newest first.
    List {
        #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "cancelled"])]
        status: Option<String>,
        /// Jobs per page (1 to 100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Print a job as JSON.
    Show { id: Uuid },
    /// Follow a job's progress until it ends; print its report if it succeeded, exit non-zero
    /// if it failed or was cancelled.
    Watch { id: Uuid },
    /// Print a succeeded job's report as a table, as `distillery run` does.
    Report { id: Uuid },
    /// Cancel a queued job, or stop a running one before its next step.
    Cancel { id: Uuid },
    /// Delete a finished job and its files.
    Rm { id: Uuid },
    /// Download a job's artifacts (all of them without NAME), checked against their sha256.
    Download {
        id: Uuid,
        name: Option<String>,
        /// The folder to write them to.
        #[arg(short, long, default_value = ".")]
        out: PathBuf,
    },
}

pub fn main(args: JobsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    block_on(run(&client, args.command))?
}

async fn run(client: &Client, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::Submit { spec, watch: follow } => {
            let id = submit(client, &spec).await?;
            println!("{id}");
            match follow {
                true => watch(client, id).await,
                false => Ok(()),
            }
        }
        JobsCommand::List { status, limit, all } => list(client, status, limit, all).await,
        JobsCommand::Show { id } => {
            let job: Value = client.json(client.request(Method::GET, &job_path(id, &[]))).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
            Ok(())
        }
        JobsCommand::Watch { id } => watch(client, id).await,
        JobsCommand::Report { id } => {
            println!("{}", super::table(&report(client, id).await?));
            Ok(())
        }
        JobsCommand::Cancel { id } => {
            let response = client.send(client.request(Method::POST, &job_path(id, &["cancel"]))).await?;
            match response.status() {
                StatusCode::ACCEPTED => println!("{id} cancel requested: it stops before its next step"),
                _ => println!("{id} cancelled"),
            }
            Ok(())
        }
        JobsCommand::Rm { id } => {
            client.send(client.request(Method::DELETE, &job_path(id, &[]))).await?;
            println!("{id} deleted");
            Ok(())
        }
        JobsCommand::Download { id, name, out } => download(client, id, name.as_deref(), &out).await,
    }
}

/// `/v1/jobs/{id}/…` as path segments.
fn job_path(id: Uuid, rest: &[&'static str]) -> Vec<String> {
    let mut path = vec!["v1".to_string(), "jobs".into(), id.to_string()];
    path.extend(rest.iter().map(|s| s.to_string()));
    path
}

#[derive(Deserialize)]
struct Job {
    id: Uuid,
    name: String,
    status: String,
    created_at: String,
    progress: Option<Value>,
    error: Option<String>,
    result: Option<Value>,
}

/// The answer to a submission: the job's id and what its spec warns of.
#[derive(Deserialize)]
struct Created {
    id: Uuid,
    #[serde(default)]
    warnings: Vec<String>,
}

/// Submits a spec; its warnings go to stderr, so stdout stays the id alone.
async fn submit(client: &Client, spec: &Path) -> anyhow::Result<Uuid> {
    let body = std::fs::read(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    let request = client.request(Method::POST, &["v1", "jobs"]).header(CONTENT_TYPE, "application/json").body(body);
    let created: Created = client.json(request).await?;
    for warning in &created.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(created.id)
}

async fn report(client: &Client, id: Uuid) -> anyhow::Result<Report> {
    client.json(client.request(Method::GET, &job_path(id, &["report"]))).await
}

#[derive(Deserialize)]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

async fn list(client: &Client, status: Option<String>, limit: u32, all: bool) -> anyhow::Result<()> {
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(status.clone().map(|s| ("status", s)));
        query.extend(jobs.last().map(|job| ("after", job.id.to_string())));
        let page: Page<Job> = client.json(client.request(Method::GET, &["v1", "jobs"]).query(&query)).await?;
        jobs.extend(page.data);
        if !page.has_more || !all {
            if page.has_more {
                eprintln!("(more jobs: --all lists every page)");
            }
            break;
        }
    }
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|job| [job.id.to_string(), job.status.clone(), job.name.clone(), job.created_at.clone(), detail(job)])
        .collect();
    print!("{}", aligned(["ID", "STATUS", "NAME", "CREATED", "DETAIL"], &rows));
    Ok(())
}

/// One line on where a job stands: its phase while it runs, its accuracy once it succeeded,
/// its error once it failed.
fn detail(job: &Job) -> String {
    if let Some(error) = &job.error {
        return error.lines().next().unwrap_or_default().chars().take(80).collect();
    }
    if let Some(result) = &job.result {
        let percent = |key: &str| result[key].as_f64().map(|v| format!("{:.2}%", v * 100.0)).unwrap_or_default();
        return format!("student {}, retention {}", percent("student_accuracy"), percent("retention"));
    }
    match (&job.progress, job.status.as_str()) {
        (Some(p), "running") => format!("{} epoch {}/{}", p["phase"].as_str().unwrap_or(""), p["epoch"], p["epochs"]),
        _ => String::new(),
    }
}

/// A table whose columns are as wide as their widest cell, separated by two spaces.
fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(String::from)).chain(rows.iter().cloned()) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// Consecutive failed attempts to reach the event stream before `watch` gives up; with the
/// back-off below, about a minute of the server being away (a restart, say).
const RECONNECTS: u32 = 15;

/// Follows the job's event stream to its end, reconnecting with `Last-Event-ID` when the
/// connection drops, so each event is shown once; then the report, or the job's error.
async fn watch(client: &Client, id: Uuid) -> anyhow::Result<()> {
    let mut view = View::new();
    let mut last = None;
    let (mut failures, mut said) = (0, String::new());
    let end = loop {
        let before = last;
        let attempt = follow(client, id, &mut last, &mut view).await;
        if last != before {
            failures = 0;
        }
        let problem = match attempt {
            Ok(Some(end)) => break end,
            // A refusal (404, 401) stays a refusal; a 5xx may be a proxy while the service restarts.
            Err(e) if e.downcast_ref::<ApiError>().is_some_and(|e| e.status < 500) => return Err(e),
            Err(e) => e,
            Ok(None) => anyhow::anyhow!("the event stream ended before the job did"),
        };
        failures += 1;
        if failures > RECONNECTS {
            return Err(problem.context(format!("following job {id}: gave up after {RECONNECTS} reconnections")));
        }
        // Once per kind of trouble: a restarting server refuses several attempts alike.
        let note = format!("{problem:#}; reconnecting");
        if note != said {
            view.note(&note);
            said = note;
        }
        tokio::time::sleep(Duration::from_millis(250 << failures.min(4))).await;
    };
    view.finish();
    match end["status"].as_str() {
        Some("succeeded") => {
            println!("{}", super::table(&report(client, id).await?));
            Ok(())
        }
        status => {
            let why = end["error"].as_str().or(end["reason"].as_str()).map(|why| format!(": {why}"));
            anyhow::bail!("job {id} {}{}", status.unwrap_or("ended"), why.unwrap_or_default())
        }
    }
}

/// One connection to the event stream: shows each event after `last` and advances it; the
/// terminal status's payload once it arrives, `None` if the stream ended before it.
async fn follow(client: &Client, id: Uuid, last: &mut Option<i64>, view: &mut View) -> anyhow::Result<Option<Value>> {
    let mut request = client.request(Method::GET, &job_path(id, &["events"])).header(ACCEPT, "text/event-stream");
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let mut response = client.send(request).await?;
    let mut parser = SseParser::default();
    while let Some(chunk) = client.chunk(&mut response).await? {
        for event in parser.push(chunk.as_ref()) {
            let seq = event.id.as_deref().and_then(|id| id.parse::<i64>().ok());
            if seq.is_some_and(|seq| Some(seq) <= *last) {
                continue; // already shown before a reconnection
            }
            *last = seq.or(*last);
            let data: Value = serde_json::from_str(&event.data).context("an event that is not JSON")?;
            if let Some(end) = view.show(event.event.as_deref().unwrap_or_default(), &data["payload"]) {
                return Ok(Some(end));
            }
        }
    }
    Ok(None)
}

/// The terminal's picture of a job: one progress bar per phase, and the epoch and log lines.
struct View {
    bars: MultiProgress,
    phases: HashMap<String, ProgressBar>,
}

impl View {
    fn new() -> View {
        View { bars: MultiProgress::new(), phases: HashMap::new() }
    }

    /// Shows one event; the payload of the status event that ends the job, when it is that.
    fn show(&mut self, kind: &str, payload: &Value) -> Option<Value> {
        match kind {
            "progress" => {
                if let Ok(p) = Progress::deserialize(payload) {
                    self.progress(&p);
                }
            }
            "metrics" => {
                if let Ok(m) = EpochMetrics::deserialize(payload) {
                    self.say(&super::epoch_line(&m));
                }
            }
            "log" => self.say(payload["message"].as_str().unwrap_or_default()),
            "status" => {
                let status = payload["status"].as_str().unwrap_or_default();
                if matches!(status, "succeeded" | "failed" | "cancelled") {
                    return Some(payload.clone());
                }
                let attempt = match payload["attempt"].as_u64() {
                    Some(attempt) if attempt > 1 => format!(" (attempt {attempt})"),
                    _ => String::new(),
                };
                let why = payload["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
                self.say(&format!("job {status}{attempt}{why}"));
            }
            _ => {} // checkpoints; the report is fetched whole at the end
        }
        None
    }

    fn progress(&mut self, p: &Progress) {
        let phase = p.phase.as_str().into_owned();
        let bar = self.phases.entry(phase.clone()).or_insert_with(|| {
            let bar = self.bars.add(ProgressBar::new(p.total_steps));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} steps {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(phase);
            bar
        });
        bar.set_length(p.total_steps);
        bar.set_position(p.step);
        bar.set_message(format!("epoch {}/{} loss {:.4}", p.epoch, p.epochs, p.loss));
        if p.step >= p.total_steps {
            bar.finish();
        }
    }

    /// A line of the job's story: above the bars on a terminal, on stdout otherwise.
    fn say(&self, line: &str) {
        match self.bars.is_hidden() {
            true => println!("{line}"),
            false => {
                let _ = self.bars.println(line);
            }
        }
    }

    /// A line about the client itself, for stderr.
    fn note(&self, line: &str) {
        self.bars.suspend(|| eprintln!("{line}"));
    }

    fn finish(&self) {
        let _ = self.bars.clear();
    }
}

#[derive(Deserialize)]
struct Artifact {
    name: String,
    size_bytes: u64,
    sha256: String,
}

/// Downloads the job's artifact `name` (all of them with `None`) into `out`, printing each
/// path written.
async fn download(client: &Client, id: Uuid, name: Option<&str>, out: &Path) -> anyhow::Result<()> {
    let list: Page<Artifact> = client.json(client.request(Method::GET, &job_path(id, &["artifacts"]))).await?;
    let chosen: Vec<&Artifact> = match name {
        None => list.data.iter().collect(),
        Some(name) => match list.data.iter().find(|a| a.name == name) {
            Some(artifact) => vec![artifact],
            None => {
                let names: Vec<&str> = list.data.iter().map(|a| a.name.as_str()).collect();
                anyhow::bail!("job {id} has no artifact `{name}`; it has: {}", names.join(", "))
            }
        },
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for artifact in chosen {
        let path = fetch_artifact(client, id, artifact, out).await?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Streams one artifact to a temporary file in `out`, hashing it on the way, and gives it its
/// name only if its sha256 is the one the server recorded.
async fn fetch_artifact(client: &Client, id: Uuid, artifact: &Artifact, out: &Path) -> anyhow::Result<PathBuf> {
    let name = &artifact.name;
    // The server's names are plain file names; anything else must not steer where we write.
    if !matches!(Path::new(name).components().collect::<Vec<_>>()[..], [Component::Normal(_)]) {
        anyhow::bail!("artifact `{name}` is not a plain file name; not written");
    }
    let mut segments = job_path(id, &["artifacts"]);
    segments.push(name.clone());
    let mut response = client.send(client.request(Method::GET, &segments)).await?;
    let (path, partial) = (out.join(name), out.join(format!(".{name}.part")));
    let mut file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let bar = ProgressBar::new(artifact.size_bytes).with_prefix(name.clone());
    bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes}").expect("valid template"));
    let mut hasher = Sha256::new();
    let written: anyhow::Result<()> = async {
        while let Some(chunk) = client.chunk(&mut response).await? {
            let chunk = chunk.as_ref();
            hasher.update(chunk);
            file.write_all(chunk).with_context(|| format!("writing {}", partial.display()))?;
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    let sha256 = format!("{:x}", hasher.finalize());
    let checked = written.and_then(|()| match sha256 == artifact.sha256 {
        true => Ok(()),
        false => Err(anyhow::anyhow!("{name}: sha256 {sha256} differs from the server's {}", artifact.sha256)),
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("{name} was not kept")));
    }
    std::fs::rename(&partial, &path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_columns_are_aligned() {
        let rows = [["a".to_string(), "queued".into()], ["bbbb".into(), "running".into()]];
        assert_eq!(aligned(["ID", "STATUS"], &rows), "ID    STATUS\na     queued\nbbbb  running\n");
    }
}
