//! The conntrack collector: one long-running loop per node that removes dead flows every few
//! seconds. Without it, flows that end without their tuple ever being seen again (most short
//! connections) would hold their entries until the table reached its limit and refused new
//! flows. `node init` starts it as a background `podnet` process ([`start`]); the process runs
//! [`run`], which claims the node's collector lock for its whole life, so [`running`] is a lock
//! test, and ends by itself when its node is gone (no recorded settings). `node reset` stops it.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde::Serialize;

use super::{
    Ctx, conntrack,
    error::{Error, Result},
};
use crate::{config::NodeSettings, store, sys::process};

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

/// The collector's pid, if one is running for this node.
pub fn running(settings: &NodeSettings) -> Result<Option<u32>> {
    Ok(store::collector::running(&settings.state_dir)?)
}

/// Starts the collector for `settings` (running `exe`, the podnet binary) unless one runs.
pub fn start(settings: &NodeSettings, exe: &Path) -> Result<Collector> {
    if settings.gc_interval == 0 {
        return Ok(Collector::Disabled);
    }
    if let Some(pid) = running(settings)? {
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
        .map_err(|source| store::file::StateError::Io {
            op: "starting the conntrack collector",
            path: exe.to_path_buf(),
            source,
        })?;
    Ok(Collector::Started { pid: child.id() })
}

/// A collection pass, as the loop reports it.
pub type Pass = conntrack::GcReport;

/// The collector loop: claims the node's collector role, then collects every `every` until
/// the node is gone, calling `report` after each pass. Refused if another collector runs.
pub fn run(ctx: &Ctx, every: Duration, mut report: impl FnMut(&Pass)) -> Result<()> {
    let state_dir = &ctx.settings.state_dir;
    let Some(_claim) = store::collector::claim(state_dir)? else {
        return Err(Error::CollectorRunning {
            pid: store::collector::running(state_dir)?.unwrap_or(0),
        });
    };
    let every = every.max(Duration::from_secs(1));
    // The node was reset: a collector ends with it.
    while store::node::exists(state_dir) {
        report(&conntrack::gc(ctx)?);
        std::thread::sleep(every);
    }
    Ok(())
}

/// Stops the node's collector, if one runs. Returns whether one was stopped.
pub fn stop(settings: &NodeSettings) -> Result<bool> {
    let stopped = running(settings)?.is_some_and(process::terminate);
    store::collector::clear(&settings.state_dir)?;
    Ok(stopped)
}
