//! `<state_dir>/pods/<name>.json`: the record of every pod podnet made. A record is written
//! last on add and removed first on delete, so a pod with a record is complete.

use std::path::{Path, PathBuf};

use super::file::{self, StateError};
use crate::model::pod::PodRecord;

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pods")
}

fn path(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!("{name}.json"))
}

/// Pod `name`'s record, if it exists. `name` must be a valid pod name (the caller checks).
pub fn read(state_dir: &Path, name: &str) -> Result<Option<PodRecord>, StateError> {
    file::read_json(&path(state_dir, name))
}

/// Whether pod `name` has a record.
pub fn exists(state_dir: &Path, name: &str) -> bool {
    path(state_dir, name).exists()
}

pub fn write(state_dir: &Path, record: &PodRecord) -> Result<(), StateError> {
    file::write_json(&path(state_dir, &record.name), record)
}

/// Removes pod `name`'s record; whether there was one.
pub fn remove(state_dir: &Path, name: &str) -> Result<bool, StateError> {
    file::remove_file(&path(state_dir, name))
}

/// Every record, by name.
pub fn list(state_dir: &Path) -> Result<Vec<PodRecord>, StateError> {
    let mut pods: Vec<PodRecord> = file::read_json_dir(&dir(state_dir))?;
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pods)
}

/// Removes temporary files of killed writes; the caller holds the node lock exclusively.
pub fn remove_temp_files(state_dir: &Path) -> Result<usize, StateError> {
    file::remove_temp_files(&dir(state_dir))
}

/// Removes the (empty) records directory after `node reset` deleted every pod.
pub fn clear(state_dir: &Path) {
    super::remove_dir_if_empty(&dir(state_dir));
}
