//! The use cases: the only layer that combines records (store), maps and programs (datapath)
//! and the kernel (sys). A front end builds one [`Ctx`] per command (settings, maps opened
//! once, one netlink connection) and calls one operation; every operation returns the one
//! [`Error`] type.
//!
//! - [`node`]: init (checked first), status, reset (asks every owner to clear);
//! - [`pod`]: standalone pods ([`dual_stack`]: their IPv6 half, and the node's); [`endpoint`]: plugging a host veth into the datapath, shared by
//!   pods and chained CNI attachments; [`attachment`]: the CNI use cases;
//! - [`service`]: the service table (ClusterIPs, NodePorts, LoadBalancer IPs, externalIPs);
//!   [`stale`]: the flows and sockets of backends that left it;
//! - [`nodeport`], [`peer`] ([`peer6`]: IPv6 pod CIDRs of peers), [`conntrack`], [`collector`] (the collection loop), [`gc`]
//!   (with [`dead_nodes`]: socket programs of nodes whose namespace is gone), [`stats`],
//!   [`monitor`] (the live view of drops).

pub mod attachment;
pub mod collector;
pub mod conntrack;
mod ctx;
pub mod dead_nodes;
pub mod dual_stack;
pub mod endpoint;
pub mod error;
pub mod gc;
pub mod monitor;
pub mod node;
pub mod nodeport;
pub mod peer;
pub mod peer6;
pub mod pod;
pub mod service;
pub mod stale;
pub mod stats;

pub use ctx::Ctx;

/// Reads a JSON file a user gives a command (`-`: standard input) as `T`; `expected` says what
/// shape a bad file should have had.
pub fn read_json_input<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    expected: &str,
) -> Result<T> {
    let bad = |reason: String| Error::File {
        path: path.display().to_string(),
        reason,
    };
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| bad(e.to_string()))?
    } else {
        std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?
    };
    serde_json::from_str(&text).map_err(|e| bad(format!("{e} (expected {expected})")))
}
pub use error::{Error, ErrorKind, Result};
