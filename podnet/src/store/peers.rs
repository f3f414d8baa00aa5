//! `<state_dir>/peers.json`: the other nodes of the cluster, the source of truth the PEERS map
//! and the peer routes follow, under `<state_dir>/peers.lock`.

use std::path::{Path, PathBuf};

use super::file::{self, FileLock, StateError};
use crate::model::peer::PeerNode;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("peers.json")
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("peers.lock")
}

pub fn lock(state_dir: &Path) -> Result<FileLock, StateError> {
    FileLock::exclusive(&lock_path(state_dir))
}

/// The peers, by name.
pub fn load(state_dir: &Path) -> Result<Vec<PeerNode>, StateError> {
    Ok(file::read_json(&path(state_dir))?.unwrap_or_default())
}

pub fn save(state_dir: &Path, peers: &[PeerNode]) -> Result<(), StateError> {
    file::write_json(&path(state_dir), &peers)
}

pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    file::remove_file(&path(state_dir))?;
    file::remove_file(&lock_path(state_dir)).map(drop)
}
