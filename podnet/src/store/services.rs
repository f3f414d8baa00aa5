//! `<state_dir>/services.json`: the service table `service apply` (or the agent) made the
//! node's, under `<state_dir>/services.lock`. The source of truth the services maps follow.

use std::path::{Path, PathBuf};

use super::file::{self, FileLock, StateError};
use crate::model::service::ServiceTable;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("services.json")
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("services.lock")
}

/// Held while a change reads, programs and saves the table.
pub fn lock(state_dir: &Path) -> Result<FileLock, StateError> {
    FileLock::exclusive(&lock_path(state_dir))
}

pub fn load(state_dir: &Path) -> Result<ServiceTable, StateError> {
    Ok(file::read_json(&path(state_dir))?.unwrap_or_default())
}

pub fn save(state_dir: &Path, table: &ServiceTable) -> Result<(), StateError> {
    file::write_json(&path(state_dir), table)
}

pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    file::remove_file(&path(state_dir))?;
    file::remove_file(&lock_path(state_dir)).map(drop)
}
