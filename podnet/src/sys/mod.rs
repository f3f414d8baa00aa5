//! The kernel interfaces podnet uses that are not BPF: network namespaces ([`netns`], and
//! which are alive: [`live_netns`]),
//! rtnetlink and sysctls ([`link`]), file locks ([`flock`]), `/proc` ([`procfs`]), clocks and
//! signals ([`process`]), sockets by netlink sock_diag ([`sockdiag`]). With `datapath`'s BPF syscalls, the only `unsafe` outside
//! podnet-ebpf lives here.

pub mod flock;
pub mod link;
pub mod live_netns;
pub mod netns;
pub mod process;
pub mod procfs;
pub mod sockdiag;
