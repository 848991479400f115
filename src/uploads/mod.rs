//! Uploaded files on disk. An upload is written to `files/.incoming/<id>/` (its bytes hashed on
//! the way, an archive then unpacked beside them) and moved to `files/<id>/` whole, so a folder
//! there is always a complete upload; one cut short is removed, and start-up clears what a
//! stopped process left.

pub mod archive;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::layout;
use archive::{ArchiveError, ArchiveLimits, Kind};

/// Entries one archive may hold.
pub const MAX_ARCHIVE_ENTRIES: usize = 10_000;
/// Unpacked bytes per byte of archive; real models and datasets stay far below.
pub const MAX_ARCHIVE_RATIO: u64 = 100;

/// The caps on an archive, from the upload cap: it may unpack to four times as much.
pub fn archive_limits(max_upload_bytes: u64) -> ArchiveLimits {
    ArchiveLimits {
        max_entries: MAX_ARCHIVE_ENTRIES,
        max_bytes: max_upload_bytes.saturating_mul(4),
        max_ratio: MAX_ARCHIVE_RATIO,
    }
}

/// Creates `files/` and empties `files/.incoming/` (no upload is under way at start-up).
pub fn prepare(data_dir: &Path) -> std::io::Result<()> {
    let incoming = layout::incoming(data_dir);
    match std::fs::remove_dir_all(&incoming) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(incoming)
}

/// An upload being received. Dropped before [`Incoming::commit`], it removes what it wrote.
pub struct Incoming {
    pub id: Uuid,
    dir: PathBuf,
    target: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
    sha256: Sha256,
    bytes: u64,
    committed: bool,
}

impl Incoming {
    pub async fn create(data_dir: &Path) -> std::io::Result<Incoming> {
        let id = Uuid::now_v7();
        let dir = layout::incoming(data_dir).join(id.to_string());
        tokio::fs::create_dir_all(&dir).await?;
        let file = tokio::fs::File::create(dir.join(layout::FILE_CONTENT)).await?;
        Ok(Incoming {
            id,
            dir,
            target: layout::file_dir(data_dir, id),
            file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            sha256: Sha256::new(),
            bytes: 0,
            committed: false,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.sha256.update(chunk);
        self.bytes += chunk.len() as u64;
        self.file.write_all(chunk).await
    }

    /// Flushes and syncs the bytes, and keeps the name they were uploaded under; returns their
    /// sha256 in hex.
    pub async fn finish(&mut self, filename: &str) -> std::io::Result<String> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        tokio::fs::write(self.dir.join(layout::FILE_NAME), filename).await?;
        Ok(format!("{:x}", self.sha256.clone().finalize()))
    }

    /// Unpacks the received archive into `unpacked/` beside it (on a blocking thread).
    pub async fn unpack(&self, kind: Kind, limits: ArchiveLimits) -> Result<archive::Unpacked, ArchiveError> {
        let (content, dest) = (self.dir.join(layout::FILE_CONTENT), self.dir.join(layout::FILE_UNPACKED));
        tokio::task::spawn_blocking(move || archive::unpack(&content, kind, &dest, limits))
            .await
            .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))?
    }

    /// Removes what was written, and waits until it is gone.
    pub async fn discard(mut self) {
        self.committed = true;
        let dir = std::mem::take(&mut self.dir);
        let _ = tokio::task::spawn_blocking(move || remove(&dir)).await;
    }

    /// Moves the upload to `files/<id>/`, where specs can name it.
    pub async fn commit(mut self) -> std::io::Result<()> {
        tokio::fs::rename(&self.dir, &self.target).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        // Off the async threads when there is a runtime: an unpacked archive can be large.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || remove(&dir))),
            Err(_) => remove(&dir),
        }
    }
}

/// Removes an upload's folder (or a staged one); a folder already gone is fine.
pub fn remove(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, dir = %dir.display(), "removing an upload's files failed")
        }
        _ => {}
    }
}
