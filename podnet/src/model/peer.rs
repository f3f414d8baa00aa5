//! The other nodes of the cluster, as records: a name, a node IP and a pod CIDR, and on a
//! dual-stack cluster an IPv6 pod CIDR and the IPv6 node address it is routed to.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerNode {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
    /// The node's IPv6 pod CIDR (dual-stack clusters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Network>,
    /// The node's IPv6 address: where its IPv6 pod CIDR is routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip6: Option<Ipv6Addr>,
}

/// A cluster description: every node, this one included (it is recognised by its node IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub nodes: Vec<PeerNode>,
}
