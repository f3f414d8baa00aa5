//! `<state_dir>/node.json` (the settings `node init` recorded) and `<state_dir>/lock`, the node
//! lock: pod adds and deletes hold it shared; `node init`, `node reset` and `gc` exclusively.

use std::path::{Path, PathBuf};

use super::file::{self, FileLock, StateError};
use crate::config::NodeSettings;

/// Where `node init` records the settings.
pub fn settings_file(state_dir: &Path) -> PathBuf {
    state_dir.join("node.json")
}

fn lock_file(state_dir: &Path) -> PathBuf {
    state_dir.join("lock")
}

/// The recorded settings, or `None` if the node is not initialised.
pub fn load(state_dir: &Path) -> Result<Option<NodeSettings>, StateError> {
    file::read_json(&settings_file(state_dir))
}

/// Whether the node is initialised (its settings are recorded).
pub fn exists(state_dir: &Path) -> bool {
    settings_file(state_dir).exists()
}

/// Records `settings` (in their own state directory).
pub fn save(settings: &NodeSettings) -> Result<(), StateError> {
    file::ensure_private_dir(&settings.state_dir)?;
    file::write_json(&settings_file(&settings.state_dir), settings)
}

/// The node lock, shared: per-pod changes.
pub fn lock_shared(state_dir: &Path) -> Result<FileLock, StateError> {
    FileLock::shared(&lock_file(state_dir))
}

/// The node lock, exclusive: node-wide changes.
pub fn lock_exclusive(state_dir: &Path) -> Result<FileLock, StateError> {
    file::ensure_private_dir(state_dir)?;
    FileLock::exclusive(&lock_file(state_dir))
}

/// Forgets the node (its settings); the lock file stays, held by the caller.
pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    file::remove_file(&settings_file(state_dir)).map(drop)
}
