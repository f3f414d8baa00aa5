//! Follows the programs' per-packet debug log. The log lines exist only when `node init --debug`
//! compiled them in; they reach userspace through aya-log's ring buffer, which this reads from
//! the pinned program, so any `podnet log` process can attach at any time.

use std::{
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::SchedClassifier;
use aya_log::EbpfLogger;

use super::{DatapathError, pins};

/// Hands each record as `LEVEL message` to the caller's line sink.
struct LineLogger<F>(F);

impl<F: Fn(String) + Send + Sync> log::Log for LineLogger<F> {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        (self.0)(format!("{} {}", record.level(), record.args()));
    }

    fn flush(&self) {}
}

/// Follows the log of `program` until `duration` has passed (or forever without one), giving
/// each line to `line`.
pub fn follow(
    pin_dir: &Path,
    program: &str,
    duration: Option<Duration>,
    line: impl Fn(String) + Send + Sync + 'static,
) -> Result<(), DatapathError> {
    let prog_err = |source| DatapathError::Program {
        name: program.to_owned(),
        source,
    };
    let prog = SchedClassifier::from_pin(pins::program_pin(pin_dir, program)).map_err(prog_err)?;
    let id = prog.info().map_err(prog_err)?.id();
    let mut logger = EbpfLogger::init_from_id_with_logger(id, LineLogger(line))
        .map_err(|source| DatapathError::Log { source })?;
    let deadline = duration.map(|d| Instant::now() + d);
    while deadline.is_none_or(|d| Instant::now() < d) {
        let mut fd = libc::pollfd {
            fd: logger.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a descriptor `logger` keeps open; bounded 200 ms wait.
        unsafe { libc::poll(&mut fd, 1, 200) };
        logger.flush();
    }
    Ok(())
}
