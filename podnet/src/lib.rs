//! podnet: an eBPF pod network datapath. This library holds everything the `podnet` binary
//! (CLI and CNI plugin) does; the binary only parses arguments and prints.

pub mod cni;
pub mod collector;
pub mod conntrack;
pub mod datapath;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod node;
pub mod nodeport;
pub mod peers;
pub mod pod;
pub mod state;
