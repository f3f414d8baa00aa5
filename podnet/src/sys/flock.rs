//! `flock(2)` on an open file: the one lock primitive every on-disk store uses.

use std::{fs::File, io, os::fd::AsRawFd as _};

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// Blocks until `file` holds the lock in `mode` (retrying when a signal interrupts the wait).
pub fn lock(file: &File, mode: Mode) -> io::Result<()> {
    let op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    };
    loop {
        // SAFETY: flock takes a plain descriptor and touches no memory of ours; the descriptor
        // is open and owned by `file`, which outlives the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes the lock in `mode` if it is free now; `Ok(false)` if another holder has it.
pub fn try_lock(file: &File, mode: Mode) -> io::Result<bool> {
    let op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    // SAFETY: as in `lock`.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Releases the lock (closing the file would release it too).
pub fn unlock(file: &File) {
    // SAFETY: as in `lock`; a failure only means the lock was not held.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}
