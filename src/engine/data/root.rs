//! The data root: the one folder a spec's files may come from. Every file read on a spec's
//! behalf goes through here: once symlinks are followed it must still be under the root, be a
//! regular file, fit the size cap, and not be one of the service's own files (the database and
//! its journals, the lock, `jobs/`), not even through a hard link. Those are refused without
//! being opened: closing any descriptor of the SQLite database would drop the server's POSIX
//! locks on it. Messages show paths relative to the root, never where the root is.
//!
//! A path may also name an upload, `file:<id>` (its bytes) or `file:<id>/<path>` (inside its
//! unpacked archive), under `<data-dir>/files/<id>/` with the same checks. That the folder exists
//! is all it takes: it appears whole once the upload is complete and goes when it is deleted, so
//! no database is asked.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layout::{FILE_CONTENT, FILE_NAME, FILE_UNPACKED};
use crate::spec::{file_id, SpecError, FILE_SCHEME};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct DataRoot {
    dir: PathBuf,
    /// The uploaded files' folder, for `file:` paths; none outside a data directory.
    files: Option<PathBuf>,
    /// Paths no spec may read (files, or folders with all they hold).
    private: Vec<PathBuf>,
    /// The largest file, and the most bytes a compressed file may expand to.
    max_file_bytes: u64,
    /// The uploads this root's user may name; `None`: all of them (an administrator, the open
    /// mode, a job already admitted).
    visible_uploads: Option<Arc<HashSet<Uuid>>>,
}

impl DataRoot {
    /// A root with no private files and no size cap (tests, tools).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: None, private: Vec::new(), max_file_bytes: u64::MAX, visible_uploads: None }
    }

    /// The root of a service's data directory, its own files kept out of reach.
    pub fn of_data_dir(data_dir: &Path) -> Self {
        Self {
            files: Some(crate::layout::files(data_dir)),
            private: crate::layout::private_paths(data_dir),
            ..Self::new(crate::layout::datasets(data_dir))
        }
    }

    /// Also keeps `path` out of reach (e.g. a database given by URL elsewhere).
    pub fn with_private(mut self, path: PathBuf) -> Self {
        self.private.push(path);
        self
    }

    pub fn with_max_file_bytes(self, max_file_bytes: u64) -> Self {
        Self { max_file_bytes, ..self }
    }

    /// Lets `file:` paths name only these uploads (a user's own); any other id reads as one
    /// that does not exist.
    pub fn with_visible_uploads(self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        Self { visible_uploads: Some(Arc::new(ids.into_iter().collect())), ..self }
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// The file `relative` names, checked: under the root (or in its upload's folder), a regular
    /// file, not private.
    pub fn resolve(&self, relative: &str, field: &str) -> Result<PathBuf, SpecError> {
        let refuse = |why: &str| SpecError::new(field, format!("`{relative}` {why}"));
        let place = match relative.strip_prefix(FILE_SCHEME) {
            Some(rest) => self.upload(rest).map_err(&refuse)?,
            None => Place {
                base: self.dir.clone(),
                inner: relative.to_string(),
                missing: "does not exist under the data root",
                outside: "leads outside the data root",
            },
        };
        let base = match place.base.canonicalize() {
            Ok(base) => base,
            Err(_) if relative.starts_with(FILE_SCHEME) => return Err(refuse(place.missing)),
            Err(_) => return Err(SpecError::new(field, "the data root does not exist")),
        };
        let resolved = base.join(&place.inner).canonicalize().map_err(|_| refuse(place.missing))?;
        if !resolved.starts_with(&base) {
            return Err(refuse(place.outside));
        }
        let metadata = std::fs::metadata(&resolved).map_err(|_| refuse(place.missing))?;
        if !metadata.is_file() {
            return Err(refuse("is not a regular file"));
        }
        if self.is_private(&resolved, &metadata) {
            return Err(refuse("is one of the service's own files; a spec may not read it"));
        }
        Ok(resolved)
    }

    /// Where `file:<rest>` lies: the upload's bytes, or its unpacked folder and a path in it.
    fn upload(&self, rest: &str) -> Result<Place, &'static str> {
        let files = self.files.as_ref().ok_or("names an uploaded file, but only a service keeps them")?;
        let (id, inner) = rest.split_once('/').map_or((rest, None), |(id, inner)| (id, Some(inner)));
        let id = file_id(id).ok_or("must be `file:<id>` or `file:<id>/<path inside it>`")?;
        let dir = files.join(id.to_string());
        let hidden = self.visible_uploads.as_ref().is_some_and(|visible| !visible.contains(&id));
        if hidden || !dir.is_dir() {
            return Err("does not exist: no uploaded file has this id");
        }
        Ok(match inner {
            None => Place {
                base: dir,
                inner: FILE_CONTENT.into(),
                missing: "does not exist: no uploaded file has this id",
                outside: "leads outside its uploaded file",
            },
            Some(inner) => Place {
                base: dir.join(FILE_UNPACKED),
                inner: inner.into(),
                missing: "does not exist in the uploaded archive (only .tar, .tar.gz and .zip uploads are unpacked)",
                outside: "leads outside its uploaded archive",
            },
        })
    }

    /// The name whose extension says the format of the file `relative` names: the path itself,
    /// or for `file:<id>` the name it was uploaded under.
    pub fn format_name(&self, relative: &str) -> String {
        let uploaded = relative
            .strip_prefix(FILE_SCHEME)
            .filter(|rest| !rest.contains('/'))
            .and_then(|rest| self.upload(rest).ok())
            .and_then(|place| std::fs::read_to_string(place.base.join(FILE_NAME)).ok());
        uploaded.unwrap_or_else(|| relative.to_string())
    }

    /// Whether `relative` names anything at all (a symlink counts, even a broken one), for
    /// optional files that, when present, must pass [`DataRoot::resolve`].
    pub fn exists(&self, relative: &str) -> bool {
        match relative.strip_prefix(FILE_SCHEME) {
            Some(rest) => self.upload(rest).is_ok_and(|p| std::fs::symlink_metadata(p.base.join(p.inner)).is_ok()),
            None => std::fs::symlink_metadata(self.dir.join(relative)).is_ok(),
        }
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

/// A folder paths are resolved in, and how to word a path that is missing or leaves it.
struct Place {
    base: PathBuf,
    inner: String,
    missing: &'static str,
    outside: &'static str,
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

    #[test]
    fn uploads_resolve_by_id_with_the_same_checks() {
        let dir = data_dir();
        let id = "0190b7b4-0000-7000-8000-00000000000a";
        let upload = dir.path().join("files").join(id);
        std::fs::create_dir_all(upload.join("unpacked/bert")).unwrap();
        std::fs::write(upload.join("content"), b"a,label\n1,0\n").unwrap();
        std::fs::write(upload.join("filename"), "train.tsv").unwrap();
        std::fs::write(upload.join("unpacked/bert/config.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(dir.path().join("datasets/ok.csv"), upload.join("unpacked/link.csv")).unwrap();
        let root = DataRoot::of_data_dir(dir.path());
        assert_eq!(root.read(&format!("file:{id}"), "dataset.path").unwrap(), b"a,label\n1,0\n");
        assert_eq!(root.read(&format!("file:{}/bert/config.json", id.to_uppercase()), "f").unwrap(), b"{}");
        assert!(root.exists(&format!("file:{id}/bert/config.json")));
        assert_eq!(root.format_name(&format!("file:{id}")), "train.tsv");
        assert_eq!(root.format_name(&format!("file:{id}/bert/config.json")), format!("file:{id}/bert/config.json"));
        assert!(!root.exists(&format!("file:{id}/bert/vocab.txt")));
        let refused = |path: &str| root.read(path, "teacher.arch.path").unwrap_err();
        let error = refused("file:0190b7b4-0000-7000-8000-00000000000b");
        assert_eq!(error.field, "teacher.arch.path");
        assert!(error.message.contains("no uploaded file has this id"), "{}", error.message);
        assert!(refused(&format!("file:{id}/missing")).message.contains("does not exist in the uploaded archive"));
        assert!(refused(&format!("file:{id}/bert")).message.contains("not a regular file"));
        assert!(refused(&format!("file:{id}/link.csv")).message.contains("leads outside its uploaded archive"));
        assert!(refused(&format!("file:{id}/../content")).message.contains("leads outside"));
        let error = DataRoot::new(dir.path()).read(&format!("file:{id}"), "dataset.path").unwrap_err();
        assert!(error.message.contains("only a service keeps them"), "{}", error.message);
    }
}
