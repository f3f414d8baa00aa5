//! `<state_dir>/cni/`: one record per CNI attachment (named after the attachment's derived
//! pod name), and `<state_dir>/cni-init.lock`, which serialises the first ADDs that initialise
//! the node.

use std::path::{Path, PathBuf};

use super::file::{self, FileLock, StateError};
use crate::model::{attachment::Attachment, names::cni_pod_name};

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cni")
}

fn path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir(state_dir).join(format!("{}.json", cni_pod_name(container_id, ifname)))
}

pub fn read(
    state_dir: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Attachment>, StateError> {
    file::read_json(&path(state_dir, container_id, ifname))
}

pub fn write(state_dir: &Path, a: &Attachment) -> Result<(), StateError> {
    file::ensure_private_dir(&dir(state_dir))?;
    file::write_json(&path(state_dir, &a.container_id, &a.ifname), a)
}

/// Removes the record; whether there was one.
pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> Result<bool, StateError> {
    file::remove_file(&path(state_dir, container_id, ifname))
}

/// Every record, by container and interface.
pub fn list(state_dir: &Path) -> Result<Vec<Attachment>, StateError> {
    let mut out: Vec<Attachment> = file::read_json_dir(&dir(state_dir))?;
    out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    Ok(out)
}

/// The lock the first ADDs take to initialise the node once.
pub fn init_lock(state_dir: &Path) -> Result<FileLock, StateError> {
    file::ensure_private_dir(state_dir)?;
    FileLock::exclusive(&state_dir.join("cni-init.lock"))
}

/// Removes temporary files of killed writes; the caller holds the node lock exclusively.
pub fn remove_temp_files(state_dir: &Path) -> Result<usize, StateError> {
    file::remove_temp_files(&dir(state_dir))
}

/// Removes every record and the init lock (the node is being reset, its pods with it);
/// returns how many records went.
pub fn clear(state_dir: &Path) -> Result<usize, StateError> {
    let mut removed = 0;
    for a in list(state_dir)? {
        if remove(state_dir, &a.container_id, &a.ifname)? {
            removed += 1;
        }
    }
    super::remove_dir_if_empty(&dir(state_dir));
    file::remove_file(&state_dir.join("cni-init.lock"))?;
    Ok(removed)
}
