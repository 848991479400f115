//! The data directory's layout, in one place: the database, the lock that makes this process
//! its only server, the data root that specs read from, the job folders and the files in them,
//! and the uploaded files.

use std::path::{Path, PathBuf};

use uuid::Uuid;

/// The SQLite database (and its `-wal` and `-shm` files beside it).
pub const DATABASE: &str = "distillery.db";
/// Held with an exclusive lock while a server runs on the directory.
pub const LOCK: &str = "distillery.lock";
/// The data root: dataset and teacher paths in specs are relative to it.
pub const DATASETS: &str = "datasets";
/// One folder per job: checkpoints and artifacts.
pub const JOBS: &str = "jobs";

/// One folder per uploaded file, named by its id: `content` and, for an archive, `unpacked/`.
/// A folder there is a complete upload; one being received waits in `.incoming/`.
pub const FILES: &str = "files";
/// In a file's folder: the bytes as uploaded.
pub const FILE_CONTENT: &str = "content";
/// In a file's folder: an archive's entries.
pub const FILE_UNPACKED: &str = "unpacked";
/// In a file's folder: the name it was uploaded under, whose extension says its format.
pub const FILE_NAME: &str = "filename";

pub fn database(data_dir: &Path) -> PathBuf {
    data_dir.join(DATABASE)
}

pub fn lock(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK)
}

pub fn datasets(data_dir: &Path) -> PathBuf {
    data_dir.join(DATASETS)
}

pub fn jobs(data_dir: &Path) -> PathBuf {
    data_dir.join(JOBS)
}

pub fn job_dir(data_dir: &Path, id: Uuid) -> PathBuf {
    jobs(data_dir).join(id.to_string())
}

pub fn files(data_dir: &Path) -> PathBuf {
    data_dir.join(FILES)
}

pub fn file_dir(data_dir: &Path, id: Uuid) -> PathBuf {
    files(data_dir).join(id.to_string())
}

/// Uploads being received (and unpacked) before they are moved into `files/` whole; whatever is
/// left there at start-up was cut short.
pub fn incoming(data_dir: &Path) -> PathBuf {
    files(data_dir).join(".incoming")
}

/// In a job folder: how to rebuild and feed the student.
pub const CONFIG_FILE: &str = "config.json";
/// In a job folder: the report.
pub const REPORT_FILE: &str = "report.json";
/// In a job folder: the loss and accuracy curves of every phase, drawn.
pub const CURVES_FILE: &str = "curves.svg";
/// In a job folder: the report's table, bars and verdict, drawn.
pub const REPORT_PLOT_FILE: &str = "report.svg";
/// In a job folder: a sweep's trials against their settings, drawn.
pub const SWEEP_PLOT_FILE: &str = "sweep.svg";
/// In a job folder: the phases an earlier run finished, so a restart skips them.
pub const STATE_FILE: &str = "state.json";
/// In a text job's folder: the student as a Hugging Face folder, and its tar.
pub const HF_FOLDER: &str = "student-hf";
pub const HF_ARCHIVE: &str = "student-hf.tar";

/// In a job folder: a finished phase's weights (`teacher`, `student`, `baseline`, …).
pub fn weights_file(phase: &str) -> String {
    format!("{phase}.safetensors")
}

/// In a job folder: a phase's latest checkpoint, with its optimiser state and position.
pub fn checkpoint_file(phase: &str) -> String {
    format!("checkpoint-{phase}.safetensors")
}

/// In a job folder: with early stopping, a phase's best epoch so far.
pub fn best_file(phase: &str) -> String {
    format!("best-{phase}.safetensors")
}

/// The service's own files, which no spec may read: the database with its journal files, the
/// lock and the job folders.
pub fn private_paths(data_dir: &Path) -> Vec<PathBuf> {
    let database = database(data_dir);
    let mut paths = vec![lock(data_dir), jobs(data_dir)];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = database.clone().into_os_string();
        name.push(suffix);
        paths.push(name.into());
    }
    paths.push(database);
    paths
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs writes the struct on success; it is read only then.
    if unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}
