//! The data root: the one folder a spec's files may come from. Every file read on a spec's
//! behalf goes through here: once symlinks are followed it must still be under the root, be a
//! regular file, fit the size cap, and not be one of the service's own files (the database and
//! its journals, the lock, `jobs/`), not even through a hard link. Those are refused without
//! being opened: closing any descriptor of the SQLite database would drop the server's POSIX
//! locks on it. Messages show paths relative to the root, never where the root is.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::spec::SpecError;

#[derive(Debug, Clone)]
pub struct DataRoot {
    dir: PathBuf,
    /// Paths no spec may read (files, or folders with all they hold).
    private: Vec<PathBuf>,
    /// The largest file, and the most bytes a compressed file may expand to.
    max_file_bytes: u64,
}

impl DataRoot {
    /// A root with no private files and no size cap (tests, tools).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), private: Vec::new(), max_file_bytes: u64::MAX }
    }

    /// The root of a service's data directory, its own files kept out of reach.
    pub fn of_data_dir(data_dir: &Path) -> Self {
        Self { private: crate::layout::private_paths(data_dir), ..Self::new(crate::layout::datasets(data_dir)) }
    }

    /// Also keeps `path` out of reach (e.g. a database given by URL elsewhere).
    pub fn with_private(mut self, path: PathBuf) -> Self {
        self.private.push(path);
        self
    }

    pub fn with_max_file_bytes(self, max_file_bytes: u64) -> Self {
        Self { max_file_bytes, ..self }
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// The file `relative` names, checked: under the root, a regular file, not private.
    pub fn resolve(&self, relative: &str, field: &str) -> Result<PathBuf, SpecError> {
        let refuse = |why: &str| SpecError::new(field, format!("`{relative}` {why}"));
        let root = self.dir.canonicalize().map_err(|_| SpecError::new(field, "the data root does not exist"))?;
        let resolved = root.join(relative).canonicalize().map_err(|_| refuse("does not exist under the data root"))?;
        if !resolved.starts_with(&root) {
            return Err(refuse("leads outside the data root"));
        }
        let metadata = std::fs::metadata(&resolved).map_err(|_| refuse("does not exist under the data root"))?;
        if !metadata.is_file() {
            return Err(refuse("is not a regular file"));
        }
        if self.is_private(&resolved, &metadata) {
            return Err(refuse("is one of the service's own files; a spec may not read it"));
        }
        Ok(resolved)
    }

    /// Whether `relative` names anything at all (a symlink counts, even a broken one), for
    /// optional files that, when present, must pass [`DataRoot::resolve`].
    pub fn exists(&self, relative: &str) -> bool {
        std::fs::symlink_metadata(self.dir.join(relative)).is_ok()
    }

    /// The bytes of the file `relative` names, checked as [`DataRoot::resolve`] does, and at
    /// most `max_file_bytes` of them.
    pub fn read(&self, relative: &str, field: &str) -> Result<Vec<u8>, SpecError> {
        let path = self.resolve(relative, field)?;
        read_checked(&path, self.max_file_bytes).map_err(|m| SpecError::new(field, format!("`{relative}`: {m}")))
    }

    fn is_private(&self, resolved: &Path, metadata: &std::fs::Metadata) -> bool {
        self.private.iter().any(|private| {
            let same_file =
                std::fs::metadata(private).is_ok_and(|p| p.dev() == metadata.dev() && p.ino() == metadata.ino());
            same_file || private.canonicalize().is_ok_and(|p| resolved.starts_with(p))
        })
    }
}

/// Reads a resolved file without following a link swapped in since it was resolved, and
/// refuses more than `limit` bytes.
pub fn read_checked(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let metadata = file.metadata().map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".into());
    }
    if metadata.len() > limit {
        return Err(format!("is {} bytes; the limit is {limit} bytes (--max-job-memory)", metadata.len()));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("grew past the limit of {limit} bytes while being read"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("datasets/models/bert")).unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/one")).unwrap();
        std::fs::write(dir.path().join("distillery.db"), b"SQLite format 3\0").unwrap();
        std::fs::write(dir.path().join("jobs/one/student.safetensors"), b"weights").unwrap();
        std::fs::write(dir.path().join("datasets/ok.csv"), b"a,label\n1,0\n").unwrap();
        dir
    }

    #[test]
    fn a_plain_file_under_the_root_is_read() {
        let dir = data_dir();
        let root = DataRoot::of_data_dir(dir.path());
        assert_eq!(root.read("ok.csv", "dataset.path").unwrap(), b"a,label\n1,0\n");
    }

    #[test]
    fn symlinks_out_of_the_root_and_to_the_services_files_are_refused_unopened() {
        let dir = data_dir();
        let root = DataRoot::of_data_dir(dir.path());
        let models = dir.path().join("datasets/models/bert");
        std::os::unix::fs::symlink("/etc/hostname", models.join("vocab.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("distillery.db"), models.join("tokenizer.json")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("jobs/one/student.safetensors"), models.join("merges.txt")).unwrap();
        for name in ["vocab.txt", "tokenizer.json", "merges.txt"] {
            let error = root.read(&format!("models/bert/{name}"), "teacher.arch.path").unwrap_err();
            assert_eq!(error.field, "teacher.arch.path");
            assert!(error.message.contains("leads outside the data root"), "{name}: {}", error.message);
            assert!(
                !error.message.contains(&dir.path().display().to_string()),
                "the message shows where the root is: {}",
                error.message
            );
        }
    }

    #[test]
    fn a_hard_link_to_the_database_inside_the_root_is_refused() {
        let dir = data_dir();
        std::fs::hard_link(dir.path().join("distillery.db"), dir.path().join("datasets/copy.csv")).unwrap();
        let error = DataRoot::of_data_dir(dir.path()).read("copy.csv", "dataset.path").unwrap_err();
        assert!(error.message.contains("the service's own files"), "{}", error.message);
    }

    #[test]
    fn folders_fifos_and_oversized_files_are_refused() {
        let dir = data_dir();
        let root = DataRoot::of_data_dir(dir.path()).with_max_file_bytes(4);
        assert!(root.read("models", "dataset.path").unwrap_err().message.contains("not a regular file"));
        let fifo =
            std::ffi::CString::new(dir.path().join("datasets/pipe.csv").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(root.read("pipe.csv", "dataset.path").unwrap_err().message.contains("not a regular file"));
        let error = root.read("ok.csv", "dataset.path").unwrap_err();
        assert!(error.message.contains("the limit is 4 bytes"), "{}", error.message);
    }
}
