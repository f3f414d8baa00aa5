//! The process-level calls the operations need: the monotonic clock the datapath's
//! `bpf_ktime_get_ns()` uses, signals to processes podnet started, and SIGINT/SIGTERM turned
//! into a flag a loop can check.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by [`on_stop_signal`] when SIGINT or SIGTERM arrives.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn note_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// From now on SIGINT and SIGTERM no longer kill the process but set a flag, read with
/// [`stop_requested`] (for a loop that finishes cleanly; it must check the flag at least every
/// bounded wait).
pub fn on_stop_signal() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `note_stop` only stores to an atomic, which is async-signal-safe; the
        // handler stays valid for the life of the process.
        unsafe { libc::signal(signal, note_stop as *const () as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived since [`on_stop_signal`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid and writable; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Sends SIGTERM to `pid`; whether it was delivered.
pub fn terminate(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    pid > 0 && unsafe { libc::kill(pid, libc::SIGTERM) } == 0
}
