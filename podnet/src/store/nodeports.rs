//! `<state_dir>/nodeports.json`: every NodePort and CNI host port with its backends (what the
//! services map cannot hold: pod names, owners, policies), under `<state_dir>/nodeports.lock`.

use std::path::{Path, PathBuf};

use super::file::{self, FileLock, StateError};
use crate::model::nodeport::NodePort;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("nodeports.json")
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("nodeports.lock")
}

/// Held while a change reads, programs and saves the table.
pub fn lock(state_dir: &Path) -> Result<FileLock, StateError> {
    FileLock::exclusive(&lock_path(state_dir))
}

pub fn load(state_dir: &Path) -> Result<Vec<NodePort>, StateError> {
    Ok(file::read_json(&path(state_dir))?.unwrap_or_default())
}

/// Saves `ports`, sorted by port and protocol.
pub fn save(state_dir: &Path, ports: &mut [NodePort]) -> Result<(), StateError> {
    ports.sort_by_key(|np| (np.port, np.proto));
    file::write_json(&path(state_dir), &ports)
}

pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    file::remove_file(&path(state_dir))?;
    file::remove_file(&lock_path(state_dir)).map(drop)
}
