//! podnet: an eBPF pod network datapath. This library holds everything the `podnet` binary
//! (CLI and CNI plugin) does; the binary parses arguments, calls one operation and prints.
//!
//! Every import points down this list (checked by `cargo xtask test`):
//!
//! ```text
//! cni                      front end: the CNI protocol -> operations  (cli, demo: the binary)
//! ops                      use cases: the only layer combining records, maps and the kernel
//! store | datapath         files under the state dir | programs, pins and maps
//! sys                      netns, netlink, locks, /proc: the kernel interfaces besides BPF
//! config | model           settings | records and naming rules: pure types
//! ```

#![deny(unreachable_pub, clippy::print_stdout, clippy::too_many_lines)]

pub mod agent;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod model;
pub mod ops;
pub mod store;
pub mod sys;
