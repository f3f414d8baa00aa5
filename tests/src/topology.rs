//! The standard node fixture: a "node" namespace (where podnet runs) and an "outside"
//! namespace standing in for the rest of the world, joined by an uplink veth.
//!
//! ```text
//!   node netns                                outside netns
//!   uplink0 198.18.0.10/24  <--- veth --->  eth0 198.18.0.1/24
//!   default via 198.18.0.1                  (connected route only)
//! ```
//!
//! Addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544), so nothing here can
//! ever be confused with a real network; the outside namespace has no default route, so
//! nothing leaves the test's namespaces.

use std::net::Ipv4Addr;

use crate::netns::{InNetns as _, Netns, addr, route, veth};

/// The node's address on the fabric (uplink0).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The outside namespace's address on the fabric (eth0); the node's default gateway.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix length of the fabric 198.18.0.0/24.
pub const FABRIC_PREFIX_LEN: u8 = 24;
/// The node's uplink interface.
pub const UPLINK: &str = "uplink0";
/// The outside namespace's end of the uplink.
pub const OUTSIDE_IF: &str = "eth0";

/// The node + outside fixture. Dropping it deletes both namespaces (and with them every
/// interface, pod veth and attached program inside the node).
#[derive(Debug)]
pub struct Topology {
    /// Where podnet runs; pods hang off this namespace.
    pub node: Netns,
    /// "The world" as seen from the node.
    pub outside: Netns,
    /// [`NODE_IP`].
    pub node_ip: Ipv4Addr,
    /// [`OUTSIDE_IP`].
    pub outside_ip: Ipv4Addr,
    /// [`UPLINK`] (in `node`).
    pub uplink: String,
    /// [`OUTSIDE_IF`] (in `outside`).
    pub outside_if: String,
}

impl Topology {
    /// Builds the fixture; panics (cleaning up what was built) if any step fails.
    pub fn new() -> Self {
        let node = Netns::new("node");
        let outside = Netns::new("out");
        veth(&node, UPLINK, &outside, OUTSIDE_IF);
        addr(&node, UPLINK, &format!("{NODE_IP}/{FABRIC_PREFIX_LEN}"));
        addr(
            &outside,
            OUTSIDE_IF,
            &format!("{OUTSIDE_IP}/{FABRIC_PREFIX_LEN}"),
        );
        route(
            &node,
            &["default", "via", &OUTSIDE_IP.to_string(), "dev", UPLINK],
        );
        Self {
            node,
            outside,
            node_ip: NODE_IP,
            outside_ip: OUTSIDE_IP,
            uplink: UPLINK.to_owned(),
            outside_if: OUTSIDE_IF.to_owned(),
        }
    }

    /// `ping -c1 -W1 ip` from the node; true if it answered.
    pub fn node_pings(&self, ip: &str) -> bool {
        self.node
            .exec(&["ping", "-c1", "-W1", "-n", ip])
            .status
            .success()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
