//! The file primitives every store module uses (node, pod, attachment, NodePort, peer records
//! and IPAM): root-only directories, atomic writes (temp file, fsync, rename, fsync dir), reads
//! that tell "missing" from "broken", temporary-file clean-up, and a process lock.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::sys::flock::{self, Mode};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON for this podnet version: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { op, path, source }
}

/// Creates `dir` (and parents) readable by root only.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating directory", dir))
}

/// Writes `value` as pretty JSON to `path` atomically, mode 0600.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let body = serde_json::to_vec_pretty(value).expect("state types always serialize");
    write_atomic(path, &body)
}

/// Writes `body` to `path` atomically (a temporary file in the same directory, fsynced,
/// renamed into place, then the directory fsynced), mode 0600: after a crash `path` holds the
/// old content or the new, never a mix.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_private_dir(dir)?;
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}.{}",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    file.write_all(body).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    sync_dir(dir)
}

/// Makes the directory's entries (renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Reads JSON from `path`; `Ok(None)` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Decode {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io("reading", path)(err)),
    }
}

/// Reads every `*.json` file in `dir` (a missing directory has none).
pub fn read_json_dir<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io("listing", dir)(err)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io("listing", dir))?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(value) = read_json(&path)?
        {
            out.push(value);
        }
    }
    Ok(out)
}

/// Prefix of the temporary files [`write_atomic`] renames into place.
pub const TMP_PREFIX: &str = ".tmp.";

/// Removes the temporary files a killed [`write_json`] left in `dir` and returns how many. Only
/// for callers that know no write into `dir` is in progress (they hold the lock its writers
/// hold). A missing directory has none.
pub fn remove_temp_files(dir: &Path) -> Result<usize, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(io("listing", dir)(err)),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(io("listing", dir))?.path();
        let is_tmp = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(TMP_PREFIX));
        if is_tmp && remove_file(&path)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes `path`; `Ok(false)` if it was already gone.
pub fn remove_file(path: &Path) -> Result<bool, StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io("removing", path)(err)),
    }
}

/// An exclusive advisory lock on a file, held until dropped. Serialises node-wide operations
/// (node init, pod add/del) between concurrent `podnet` processes.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Exclusive: node-wide changes (node init, reset).
    pub fn exclusive(path: &Path) -> Result<Self, StateError> {
        Self::acquire(path, Mode::Exclusive)
    }

    /// Shared: per-pod changes, which may run in parallel with each other but not with a node
    /// init that is replacing the programs they attach.
    pub fn shared(path: &Path) -> Result<Self, StateError> {
        Self::acquire(path, Mode::Shared)
    }

    /// Exclusive if nobody holds the lock now; `None` if somebody does.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>, StateError> {
        let file = Self::open(path)?;
        let taken = flock::try_lock(&file, Mode::Exclusive).map_err(io("locking", path))?;
        Ok(taken.then_some(Self { file }))
    }

    fn open(path: &Path) -> Result<File, StateError> {
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        // A fresh open file description per lock: flock locks belong to it, so two holders in
        // one process exclude each other just like two processes do.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io("opening lock", path))
    }

    fn acquire(path: &Path, mode: Mode) -> Result<Self, StateError> {
        let file = Self::open(path)?;
        flock::lock(&file, mode).map_err(io("locking", path))?;
        Ok(Self { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        flock::unlock(&self.file);
    }
}
