//! `distillery files upload`: sends a dataset, teacher weights or a model archive to the
//! service, streamed from disk, and prints the file's id alone on stdout, for a spec's
//! `file:<id>`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::io::ReaderStream;

use super::client::{block_on, Client, ServerArgs};

#[derive(clap::Args, Debug)]
pub struct FilesArgs {
    #[command(subcommand)]
    command: FilesCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Subcommand, Debug)]
enum FilesCommand {
    /// Upload a file (.tar, .tar.gz, .tgz and .zip are unpacked) and print its id.
    Upload {
        path: std::path::PathBuf,
        #[arg(long, value_parser = ["dataset", "model"])]
        purpose: Option<String>,
    },
}

pub fn main(args: FilesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    match args.command {
        FilesCommand::Upload { path, purpose } => block_on(upload(&client, &path, purpose))?,
    }
}

#[derive(Deserialize)]
struct StoredFile {
    id: String,
    filename: String,
    bytes: u64,
    sha256: String,
}

async fn upload(client: &Client, path: &Path, purpose: Option<String>) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("cannot read {}", path.display()))?;
    let metadata = file.metadata().await.with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_file() {
        anyhow::bail!("{} is not a file; send a folder as a .tar.gz or .zip archive", path.display());
    }
    let filename = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Hashed as it is sent, so the server's sha256 can be checked without reading the file twice.
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let hashing = hasher.clone();
    let stream = ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            hashing.lock().expect("not poisoned").update(chunk);
        }
    });
    let mut form = Form::new()
        .part("file", Part::stream_with_length(Body::wrap_stream(stream), metadata.len()).file_name(filename));
    if let Some(purpose) = purpose {
        form = form.text("purpose", purpose);
    }
    let stored: StoredFile = client.json(client.request(Method::POST, &["v1", "files"]).multipart(form)).await?;
    let sent = format!("{:x}", hasher.lock().expect("not poisoned").clone().finalize());
    if stored.sha256 != sent {
        anyhow::bail!("the server stored {} with sha256 {}, but {sent} was sent", stored.id, stored.sha256);
    }
    println!("{}", stored.id);
    eprintln!(
        "uploaded {} ({} bytes, sha256 {}): name it file:{} in a spec",
        stored.filename, stored.bytes, sent, stored.id
    );
    Ok(())
}
