//! Dual-stack test nodes shared by the IPv6 tests (`dual_stack`, `nat6`): a node with an IPv4
//! and an IPv6 pod CIDR and IPv6 on the fabric, and small IPv6 probes.
//!
//! The fabric's IPv6 addresses come from fd00:198:18::/64 (unique-local, like the IPv4
//! fabric's benchmarking range: nothing here can be a real network), the pods' from
//! fd00:10:244::/48.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    process::Output,
};

use crate::{InNetns, Node, PodnetCli, UPLINK, connect_tcp, peer_ip_of, serve_tcp};

/// The node's IPv6 address on the fabric (uplink0).
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x10);
/// The outside namespace's IPv6 address on the fabric.
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x1);
/// The IPv6 cluster CIDR every test node's IPv6 pod CIDR comes from.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";

/// `ip -6 addr add CIDR dev IF nodad` inside `ns` (usable at once: no duplicate address
/// detection on links the test made).
pub fn addr6(ns: &(impl InNetns + ?Sized), ifname: &str, cidr: &str) {
    ns.ok(&format!("ip -6 addr add {cidr} dev {ifname} nodad"));
}

/// A dual-stack node: `node init` with both pod CIDRs (and the IPv6 cluster CIDR), and IPv6 on
/// the fabric; the outside routes the node's IPv6 pod CIDR back to the node, as a router of the
/// fabric would (for traffic that keeps the pod's address: masquerade exclusions).
pub fn dual_stack_node(pod_cidr: &str, pod_cidr6: &str) -> Node {
    dual_stack_node_with(pod_cidr, pod_cidr6, &[])
}

/// [`dual_stack_node`] with more `node init` arguments.
pub fn dual_stack_node_with(pod_cidr: &str, pod_cidr6: &str, extra: &[&str]) -> Node {
    let node6 = NODE_IP6.to_string();
    let mut args = vec![
        "--pod-cidr",
        pod_cidr6,
        "--cluster-cidr",
        CLUSTER_CIDR6,
        "--node-ip6",
        &node6,
        "--gc-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    let node = Node::with_args(pod_cidr, &args);
    addr6(&node.topo.node, UPLINK, &format!("{NODE_IP6}/64"));
    addr6(
        &node.topo.outside,
        &node.topo.outside_if,
        &format!("{OUTSIDE_IP6}/64"),
    );
    node.topo
        .outside
        .ok(&format!("ip -6 route add {pod_cidr6} via {NODE_IP6}"));
    node
}

/// The IPv6 address (without prefix) of pod `name`, from `pod list --json`.
pub fn address6_of(node: &PodnetCli, name: &str) -> Ipv6Addr {
    let pods = node.json(&["pod", "list"]);
    let pod = pods
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no pod {name} in {pods}"));
    let cidr = pod["address6"]
        .as_str()
        .unwrap_or_else(|| panic!("pod {name} has no IPv6 address: {pod}"));
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad address6 {cidr}"))
}

/// TCP from `from` to a server in `to_ns` on `to:port`: the server must see `from_ip`.
pub fn tcp_sees(
    from: &(impl InNetns + ?Sized),
    from_ip: IpAddr,
    to_ns: &(impl InNetns + ?Sized),
    to: IpAddr,
    port: u16,
) {
    let addr = SocketAddr::new(to, port).to_string();
    let _server = serve_tcp(to_ns, &addr);
    let reply = connect_tcp(from, &addr).unwrap_or_else(|e| panic!("TCP -> {addr}: {e}"));
    assert_eq!(
        peer_ip_of(&reply),
        Some(from_ip),
        "the server at {addr} must see {from_ip} as the source: {reply}"
    );
}

/// Pings `ip` (IPv6) from `ns`: 3 echoes 50 ms apart, 1 s per reply at most.
pub fn ping6(ns: &(impl InNetns + ?Sized), ip: &str) -> Output {
    ns.sh(&format!("ping -6 -c 3 -i 0.05 -W 1 {ip}"))
}
