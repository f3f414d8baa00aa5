//! The conntrack collector: a small background `podnet conntrack gc --every N` process per
//! node, started by `node init` and stopped by `node reset`. Without it, flows that end without
//! their tuple ever being seen again (most short connections) would hold their entries until
//! the table reached its limit and refused new flows. The collector exits by itself when its
//! node is gone (no `node.json`), so it never outlives the node even if `node reset` never ran.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Serialize;

use crate::{
    node::NodeSettings,
    state::{self, StateError},
};

/// What `start` found or did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum Collector {
    /// Collection is switched off (`--gc-interval 0`).
    Disabled,
    /// A collector for this node was already running.
    Running {
        pid: u32,
    },
    Started {
        pid: u32,
    },
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => f.write_str("conntrack collector off (--gc-interval 0)"),
            Self::Running { pid } => write!(f, "conntrack collector already running (pid {pid})"),
            Self::Started { pid } => write!(f, "conntrack collector started (pid {pid})"),
        }
    }
}

fn pid_file(settings: &NodeSettings) -> PathBuf {
    settings.state_dir.join("conntrack-gc.pid")
}

/// The collector's pid, if one is running for this node: the pid file names a live process
/// whose command line is a `conntrack gc` for this state directory.
pub fn running(settings: &NodeSettings) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(settings))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let state_dir = settings.state_dir.as_os_str().as_encoded_bytes();
    let ours = args
        .windows(2)
        .any(|w| w == [b"conntrack".as_slice(), b"gc"])
        && args.contains(&state_dir);
    ours.then_some(pid)
}

/// Starts the collector for `settings` (running `exe`, the podnet binary) unless one runs.
pub fn start(settings: &NodeSettings, exe: &Path) -> Result<Collector, StateError> {
    if settings.gc_interval == 0 {
        return Ok(Collector::Disabled);
    }
    if let Some(pid) = running(settings) {
        return Ok(Collector::Running { pid });
    }
    let child = Command::new(exe)
        .arg("--state-dir")
        .arg(&settings.state_dir)
        .args(["conntrack", "gc", "--every"])
        .arg(settings.gc_interval.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C meant for the shell that ran `node init` does not
        // reach it.
        .process_group(0)
        .spawn()
        .map_err(|source| StateError::Io {
            op: "starting the conntrack collector",
            path: exe.to_path_buf(),
            source,
        })?;
    let pid = child.id();
    state::write_json(&pid_file(settings), &pid)?;
    Ok(Collector::Started { pid })
}

/// Stops the node's collector, if one runs. Returns whether one was stopped.
pub fn stop(settings: &NodeSettings) -> Result<bool, StateError> {
    let stopped = match running(settings) {
        Some(pid) => {
            let pid = libc::pid_t::try_from(pid).unwrap_or(0);
            // SAFETY: kill(2) on a pid just checked to be this node's collector.
            pid > 0 && unsafe { libc::kill(pid, libc::SIGTERM) } == 0
        }
        None => false,
    };
    state::remove_file(&pid_file(settings))?;
    Ok(stopped)
}
