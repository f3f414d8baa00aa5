//! The kernel side as userspace sees it: which object is loaded ([`object`]), loading and
//! pinning the programs and maps ([`loader`]), attaching programs to interfaces from their pins ([`attach`]), and typed access
//! to the pinned maps ([`maps`]; the service maps in [`services_map`]).
//!
//! Pin layout under a node's pin directory (default `/sys/fs/bpf/podnet`):
//!
//! ```text
//! <pin_dir>/CONFIG, ENDPOINTS, STATS, CONNTRACK, CT_USAGE, SERVICES, BACKENDS, REV_NAT,
//!           SOCK_REV_NAT, POD_NETNS, PEERS
//!                                      maps (bpftool map dump pinned <pin_dir>/<MAP>)
//! <pin_dir>/progs/<program>            programs, e.g. progs/from_pod
//! ```

pub mod attach;
pub mod cgroup;
pub mod loader;
pub mod log;
pub mod maps;
pub mod object;
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
    #[error("the node's maps are not pinned under {path}: run `podnet node init` first")]
    NotInitialised { path: PathBuf },
}
