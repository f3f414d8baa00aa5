//! `<state_dir>/collector.lock` and `collector.pid`: the node's conntrack collector holds the
//! lock exclusively for as long as it runs and records its pid, so whether one runs is a lock
//! test, not a guess from a process's command line, and a pid reused by another process is
//! never taken for it.

use std::path::{Path, PathBuf};

use super::file::{self, FileLock, StateError};

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("collector.lock")
}

fn pid_path(state_dir: &Path) -> PathBuf {
    state_dir.join("conntrack-gc.pid")
}

/// Claims the collector role for the calling process: `None` if a collector already holds it.
/// The claim lasts as long as the returned lock.
pub fn claim(state_dir: &Path) -> Result<Option<FileLock>, StateError> {
    let Some(lock) = FileLock::try_exclusive(&lock_path(state_dir))? else {
        return Ok(None);
    };
    file::write_json(&pid_path(state_dir), &std::process::id())?;
    Ok(Some(lock))
}

/// The running collector's pid, if one holds the claim.
pub fn running(state_dir: &Path) -> Result<Option<u32>, StateError> {
    if !lock_path(state_dir).exists() {
        return Ok(None);
    }
    if FileLock::try_exclusive(&lock_path(state_dir))?.is_some() {
        return Ok(None);
    }
    file::read_json(&pid_path(state_dir))
}

pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    file::remove_file(&pid_path(state_dir))?;
    file::remove_file(&lock_path(state_dir)).map(drop)
}
