//! The kernel side as userspace sees it, split by mechanism: which object is loaded
//! ([`object`]), loading and pinning programs and maps ([`loader`]), where they are pinned
//! ([`pins`]), attaching classifiers to interfaces ([`attach`]) and socket programs to cgroups
//! ([`cgroup`]), the debug log ([`log`]), and typed access to the pinned maps, one module per
//! map ([`maps`]; the service maps, written in batches, in [`services_map`], with the Maglev
//! tables and affinity entries in [`selection`]; the raw `bpf(2)` commands aya lacks in `batch`). No records and no use cases: the operations layer combines these.
//! ([`cgroup`]; whose they are: [`cgroup_owners`]), the debug log ([`log`]), and typed access to the pinned maps, one module per
//! map ([`maps`]; the service maps, written in batches, in [`services_map`]). No records and no use cases: the operations layer combines these.
//!
//! Inside, imports point one way: `loader` uses `object`, `attach`, `cgroup` and `pins`;
//! `cgroup_owners` uses `cgroup`; `monitor` (the drop events' ring buffer, decoded) uses `maps`;
//! `object`, `attach` and `log` use `pins`.

pub mod attach;
mod batch;
pub mod cgroup;
pub mod cgroup_owners;
pub mod loader;
pub mod log;
pub mod maps;
pub mod monitor;
pub mod object;
pub mod pins;
pub mod selection;
pub mod services_map;

use std::path::PathBuf;

/// The compiled eBPF object, embedded at build time (see `build.rs`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podnet.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "bpffs is not mounted at {path}: mount it with `mount -t bpf bpf /sys/fs/bpf` (or `cargo xtask setup`)"
    )]
    NoBpffs { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "pinned map {path} does not match this podnet's ABI ({what}); it was made by another podnet version: remove the node's pin directory (`podnet node reset`) and run `podnet node init` again"
    )]
    IncompatibleMap { path: PathBuf, what: String },
    #[error("reading the debug log (was the node initialised with --debug?): {source}")]
    Log {
        #[source]
        source: aya_log::Error,
    },
    #[error("{path} cannot be loaded as podnet's eBPF object: {what}")]
    BadObject { path: PathBuf, what: String },
    #[error(
        "{path} is the root of a bpffs mount, shared by everything on the machine: give the node a directory of its own below it (e.g. {path}/podnet)",
        path = .path.display()
    )]
    PinDirIsBpffsRoot { path: PathBuf },
    #[error("the node's maps are not pinned under {path}: run `podnet node init` first")]
    NotInitialised { path: PathBuf },
}
