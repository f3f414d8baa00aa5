//! `<state_dir>/conntrack-gc.lock`: serialises conntrack collection passes and the removal of a
//! deleted pod's flows, so the usage counters they adjust stay exact.

use std::path::Path;

use super::file::{self, FileLock, StateError};

const LOCK: &str = "conntrack-gc.lock";

pub fn lock(state_dir: &Path) -> Result<FileLock, StateError> {
    FileLock::exclusive(&state_dir.join(LOCK))
}

pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    file::remove_file(&state_dir.join(LOCK)).map(drop)
}
