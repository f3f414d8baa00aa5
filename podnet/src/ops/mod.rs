//! The use cases: the only layer that combines records (store), maps and programs (datapath)
//! and the kernel (sys). A front end builds one [`Ctx`] per command (settings, maps opened
//! once, one netlink connection) and calls one operation; every operation returns the one
//! [`Error`] type.
//!
//! - [`node`]: init (checked first), status, reset (asks every owner to clear);
//! - [`pod`]: standalone pods; [`endpoint`]: plugging a host veth into the datapath, shared by
//!   pods and chained CNI attachments; [`attachment`]: the CNI use cases;
//! - [`service`]: the service table (ClusterIPs, NodePorts, LoadBalancer IPs, externalIPs);
//! - [`nodeport`], [`peer`], [`conntrack`], [`collector`] (the collection loop), [`gc`],
//!   [`stats`].

pub mod attachment;
pub mod collector;
pub mod conntrack;
mod ctx;
pub mod endpoint;
pub mod error;
pub mod gc;
pub mod node;
pub mod nodeport;
pub mod peer;
pub mod pod;
pub mod service;
pub mod stats;

pub use ctx::Ctx;
pub use error::{Error, ErrorKind, Result};
