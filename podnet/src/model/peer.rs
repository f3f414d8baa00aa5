//! The other nodes of the cluster, as records: a name, a node IP and a pod CIDR.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerNode {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
}

/// A cluster description: every node, this one included (it is recognised by its node IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub nodes: Vec<PeerNode>,
}
