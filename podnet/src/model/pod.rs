//! The record of a pod podnet made (`<state_dir>/pods/<name>.json`, kept by
//! [`crate::store::pods`]).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::names::POD_IFNAME;

/// Everything podnet made for one pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    pub name: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// Whether podnet created the namespace (and so deletes it).
    pub owns_netns: bool,
    pub netns_ino: u64,
    /// The host-side veth, in the node's namespace.
    pub host_if: String,
    pub host_ifindex: u32,
    /// MAC of the host-side veth.
    #[serde(default)]
    pub host_mac: String,
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Network>,
    /// The pod's IPv6 gateway (the bridge's address) on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    pub mac: String,
    /// The pod's interface inside its namespace.
    #[serde(default = "default_ifname")]
    pub ifname: String,
}

fn default_ifname() -> String {
    POD_IFNAME.to_owned()
}
