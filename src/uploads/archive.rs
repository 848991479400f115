//! Unpacking an uploaded archive (`.tar`, `.tar.gz`, `.zip`) into a folder of its own, for a
//! hostile archive as much as a friendly one. Only files and folders are made, each at a plain
//! relative name inside the folder: an absolute name, a `..`, a symlink, a hard link or a device
//! refuses the whole archive, so no entry can write, or later lead, outside it. Entry count,
//! total unpacked bytes and the compression ratio are capped while bytes are written (a declared
//! size is not trusted), so a decompression bomb stops at the cap.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::engine::job::budget::human;

/// Below this many unpacked bytes the ratio is not checked: small text files compress well.
const RATIO_FLOOR: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tar,
    TarGz,
    Zip,
}

impl Kind {
    /// The archive kind an upload's name says, if any; other uploads are kept as they are.
    pub fn of(filename: &str) -> Option<Kind> {
        let name = filename.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Kind::TarGz)
        } else if name.ends_with(".tar") {
            Some(Kind::Tar)
        } else if name.ends_with(".zip") {
            Some(Kind::Zip)
        } else {
            None
        }
    }
}

/// Caps on what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: usize,
    pub max_bytes: u64,
    /// Unpacked bytes per byte of archive.
    pub max_ratio: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry that could leave the folder, or that is not a file or a folder.
    #[error("{0}")]
    Unsafe(String),
    /// Past one of the [`ArchiveLimits`].
    #[error("{0}")]
    TooLarge(String),
    /// Not an archive of its kind, or one this reader does not support.
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What an archive held: entries (folders included) and file bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    pub bytes: u64,
}

/// Unpacks `archive` into `dest` (created; must not exist). When everything sits in one
/// top-level folder (`tar czf model.tar.gz my-model/`), that folder's content becomes `dest`'s,
/// so `file:<id>/config.json` works however the archive was made. On error `dest` is left for
/// the caller to remove.
pub fn unpack(archive: &Path, kind: Kind, dest: &Path, limits: ArchiveLimits) -> Result<Unpacked, ArchiveError> {
    std::fs::create_dir(dest)?;
    let file = File::open(archive)?;
    let mut budget = Budget { limits, archive_bytes: file.metadata()?.len(), entries: 0, bytes: 0 };
    match kind {
        Kind::Tar => unpack_tar(BufReader::new(file), dest, &mut budget)?,
        Kind::TarGz => unpack_tar(flate2::read::GzDecoder::new(BufReader::new(file)), dest, &mut budget)?,
        Kind::Zip => unpack_zip(file, dest, &mut budget)?,
    }
    collapse_single_folder(dest)?;
    Ok(Unpacked { entries: budget.entries, bytes: budget.bytes })
}

fn unpack_tar(reader: impl Read, dest: &Path, budget: &mut Budget) -> Result<(), ArchiveError> {
    let malformed = |e: std::io::Error| ArchiveError::Malformed(format!("not a readable tar archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let name = entry.path().map_err(malformed)?.into_owned();
        use tar::EntryType as T;
        let kind = match entry.header().entry_type() {
            T::Regular | T::Continuous => EntryKind::File,
            T::Directory => EntryKind::Folder,
            // A pax global header (git archive writes one) holds metadata, not a file.
            T::XGlobalHeader => continue,
            T::Symlink => EntryKind::Refused("a symbolic link"),
            T::Link => EntryKind::Refused("a hard link"),
            T::Char | T::Block => EntryKind::Refused("a device"),
            T::Fifo => EntryKind::Refused("a pipe"),
            _ => EntryKind::Refused("neither a file nor a folder"),
        };
        let declared = entry.header().size().map_err(malformed)?;
        place(&name, kind, declared, &mut entry, dest, budget)?;
    }
    Ok(())
}

fn unpack_zip(file: File, dest: &Path, budget: &mut Budget) -> Result<(), ArchiveError> {
    let malformed = |e: zip::result::ZipError| ArchiveError::Malformed(format!("not a readable zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(malformed)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(malformed)?;
        let name = PathBuf::from(entry.name().map_err(malformed)?.as_ref());
        // The Unix file type, when the archive was made on Unix: devices and pipes are refused.
        let file_type = entry.unix_mode().map_or(0, |mode| mode & 0o170_000);
        let kind = if entry.is_symlink() {
            EntryKind::Refused("a symbolic link")
        } else if entry.encrypted() {
            EntryKind::Refused("encrypted")
        } else if entry.is_dir() {
            EntryKind::Folder
        } else if ![0, 0o100_000].contains(&file_type) {
            EntryKind::Refused("neither a file nor a folder")
        } else {
            EntryKind::File
        };
        let declared = entry.size();
        place(&name, kind, declared, &mut entry, dest, budget)?;
    }
    Ok(())
}

enum EntryKind {
    File,
    Folder,
    Refused(&'static str),
}

/// Makes one entry under `dest`, within the budget.
fn place(
    name: &Path,
    kind: EntryKind,
    declared: u64,
    content: &mut impl Read,
    dest: &Path,
    budget: &mut Budget,
) -> Result<(), ArchiveError> {
    budget.count_entry()?;
    let shown = name.display();
    if let EntryKind::Refused(what) = kind {
        return Err(ArchiveError::Unsafe(format!(
            "entry `{shown}` is {what}; an archive may hold only files and folders"
        )));
    }
    let relative = inside(name)?;
    if relative.as_os_str().is_empty() {
        return Ok(()); // `./`, the folder itself
    }
    let path = dest.join(&relative);
    let unplaceable = |e: std::io::Error| ArchiveError::Malformed(format!("entry `{shown}` cannot be unpacked: {e}"));
    if let EntryKind::Folder = kind {
        return std::fs::create_dir_all(&path).map_err(unplaceable);
    }
    budget.check(budget.bytes.saturating_add(declared))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(unplaceable)?;
    }
    // Never through a link, never over an earlier entry of the same name.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(unplaceable)?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = content
            .read(&mut buffer)
            .map_err(|e| ArchiveError::Malformed(format!("entry `{shown}` cannot be read: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        budget.add(n as u64)?;
        file.write_all(&buffer[..n])?;
    }
}

/// `name` as a path inside the folder: plain names only (`.` is dropped).
fn inside(name: &Path) -> Result<PathBuf, ArchiveError> {
    let mut relative = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            _ => {
                return Err(ArchiveError::Unsafe(format!(
                    "entry `{}` is absolute or goes up with `..`; every entry must stay inside the archive's folder",
                    name.display()
                )))
            }
        }
    }
    Ok(relative)
}

/// Counts what an archive has unpacked so far against its limits.
struct Budget {
    limits: ArchiveLimits,
    archive_bytes: u64,
    entries: usize,
    bytes: u64,
}

impl Budget {
    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooLarge(format!(
                "the archive has more than {} entries, the limit on entries per archive",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    fn add(&mut self, bytes: u64) -> Result<(), ArchiveError> {
        self.bytes = self.bytes.saturating_add(bytes);
        self.check(self.bytes)
    }

    fn check(&self, total: u64) -> Result<(), ArchiveError> {
        if total > self.limits.max_bytes {
            return Err(ArchiveError::TooLarge(format!(
                "the archive unpacks to more than {}, the limit on unpacked bytes (4 × --max-upload-bytes)",
                human(self.limits.max_bytes)
            )));
        }
        if total > RATIO_FLOOR && total > self.archive_bytes.saturating_mul(self.limits.max_ratio) {
            return Err(ArchiveError::TooLarge(format!(
                "the archive expands more than {}× its {} (the limit on the compression ratio)",
                self.limits.max_ratio,
                human(self.archive_bytes)
            )));
        }
        Ok(())
    }
}

/// Lifts the content of a lone top-level folder into `dest`.
fn collapse_single_folder(dest: &Path) -> std::io::Result<()> {
    let entries: Vec<_> = std::fs::read_dir(dest)?.collect::<Result<_, _>>()?;
    let [only] = &entries[..] else { return Ok(()) };
    if !only.file_type()?.is_dir() {
        return Ok(());
    }
    let lifted = dest.with_extension("lifting");
    std::fs::rename(only.path(), &lifted)?;
    std::fs::remove_dir(dest)?;
    std::fs::rename(&lifted, dest)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LIMITS: ArchiveLimits = ArchiveLimits { max_entries: 10, max_bytes: 1 << 20, max_ratio: 100 };

    #[test]
    fn a_zip_of_one_folder_unpacks_to_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        zip.add_directory("model/", options).unwrap();
        for (name, bytes) in [("model/config.json", &b"{}"[..]), ("model/sub/vocab.txt", b"[PAD]\n")] {
            zip.start_file(name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        std::fs::write(dir.path().join("content"), zip.finish().unwrap().into_inner()).unwrap();
        let dest = dir.path().join("unpacked");
        let unpacked = unpack(&dir.path().join("content"), Kind::Zip, &dest, LIMITS).unwrap();
        assert_eq!(unpacked, Unpacked { entries: 3, bytes: 8 });
        assert_eq!(std::fs::read(dest.join("config.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(dest.join("sub/vocab.txt")).unwrap(), b"[PAD]\n");
        assert!(!dir.path().join("unpacked.lifting").exists());
    }

    #[test]
    fn a_tar_of_loose_files_keeps_its_names_and_refuses_a_repeated_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(2);
        for name in ["./a.csv", "b.csv"] {
            tar.append_data(&mut header.clone(), name, &b"x\n"[..]).unwrap();
        }
        std::fs::write(dir.path().join("ok.tar"), tar.into_inner().unwrap()).unwrap();
        let dest = dir.path().join("ok");
        assert_eq!(unpack(&dir.path().join("ok.tar"), Kind::Tar, &dest, LIMITS).unwrap().entries, 2);
        assert!(dest.join("a.csv").is_file() && dest.join("b.csv").is_file());

        let mut tar = tar::Builder::new(Vec::new());
        for _ in 0..2 {
            tar.append_data(&mut header.clone(), "a.csv", &b"x\n"[..]).unwrap();
        }
        std::fs::write(dir.path().join("twice.tar"), tar.into_inner().unwrap()).unwrap();
        let error = unpack(&dir.path().join("twice.tar"), Kind::Tar, &dir.path().join("twice"), LIMITS).unwrap_err();
        assert!(matches!(&error, ArchiveError::Malformed(m) if m.contains("`a.csv` cannot be unpacked")), "{error}");
        assert_eq!(Kind::of("Model.TGZ"), Some(Kind::TarGz));
        assert_eq!(Kind::of("train.csv.gz"), None);
    }
}
