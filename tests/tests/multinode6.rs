//! IPv6 between pods of different nodes, carried by the datapath: two dual-stack nodes on one
//! fabric (a plain bridge that knows no pod CIDR), natively routed, over VXLAN inside the IPv4
//! underlay, and over VXLAN on the IPv6 underlay (`--ipv6-underlay`). One test body per mode:
//! pods reach each other over TCP, UDP and ping6 (the underlay the mode must not use is cut
//! meanwhile), the receiver sees the sending pod's own address, the datapath's reasons count
//! (`forward_remote_node6` on the sending node, `forward_uplink_to_pod6` on the receiving one:
//! the kernel did not route them), each node
//! takes one hop (a hop limit of 1 gets time exceeded from the first node, 2 from the second),
//! the nodes' own IPv6 reaches the other node's pods and back, IPv4 still works, and `node
//! reset` leaves no IPv6 route, pin or tunnel device behind.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use podnet_tests::{
    Cluster, ClusterNode, InNetns as _, connect_tcp, connect_udp, describe, peer_ip_of,
    require_root, serve_tcp, serve_udp,
};

/// How the nodes carry pods' IPv6 between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Native,
    /// VXLAN between the nodes' IPv4 addresses.
    Vxlan4,
    /// VXLAN between the nodes' IPv6 addresses.
    Vxlan6,
}

impl Mode {
    fn init_args(self) -> &'static [&'static str] {
        match self {
            Self::Native => &["--gc-interval", "0"],
            Self::Vxlan4 => &["--gc-interval", "0", "--mode", "vxlan"],
            Self::Vxlan6 => &["--gc-interval", "0", "--mode", "vxlan", "--ipv6-underlay"],
        }
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_ipv6_in_the_datapath_native() {
    require_root!();
    pods_on_two_nodes_reach_each_other_over_ipv6(Mode::Native);
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_ipv6_in_the_datapath_vxlan_ipv4_underlay() {
    require_root!();
    pods_on_two_nodes_reach_each_other_over_ipv6(Mode::Vxlan4);
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_ipv6_in_the_datapath_vxlan_ipv6_underlay() {
    require_root!();
    pods_on_two_nodes_reach_each_other_over_ipv6(Mode::Vxlan6);
}

/// The IPv6 address of pod `name` on `node` (`pod list --json`).
fn address6(node: &ClusterNode, name: &str) -> Ipv6Addr {
    let pods = node.json(&["pod", "list"]);
    pods.as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .and_then(|p| p["address6"].as_str())
        .and_then(|c| c.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 address for {name}: {pods}"))
}

/// `addr`:`port` as a socket address string (`[addr]:port`).
fn sock(addr: Ipv6Addr, port: u16) -> String {
    SocketAddr::new(IpAddr::V6(addr), port).to_string()
}

/// Asserts a netprobe reply names `from` as the peer.
fn assert_peer(what: &str, reply: &Result<String, String>, from: Ipv6Addr) {
    let reply = reply
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: no reply: {e}"));
    assert_eq!(
        peer_ip_of(reply),
        Some(IpAddr::V6(from)),
        "{what}: the receiver must see {from}: {reply}"
    );
}

/// Packets counted under `reason` on `node`.
fn count(node: &ClusterNode, reason: &str) -> u64 {
    node.stats().get(reason).copied().unwrap_or(0)
}

fn pods_on_two_nodes_reach_each_other_over_ipv6(mode: Mode) {
    let cluster = Cluster::dual_stack(2, mode.init_args());
    let (na, nb) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (a, b) = (na.add_pod("a"), nb.add_pod("b"));
    let (a6, b6) = (address6(na, "a"), address6(nb, "b"));
    let (na6, nb6) = (na.ip6.expect("dual-stack"), nb.ip6.expect("dual-stack"));
    if mode == Mode::Vxlan6 {
        // Pods leave room for the outer IPv6 header.
        let mtu = a.ns.ok("ip -o link show dev eth0");
        assert!(
            mtu.contains(" mtu 1430 "),
            "pod MTU on the IPv6 underlay: {mtu}"
        );
    }
    // The underlay IPv6 pods must not use is cut between the nodes, so only the right one can
    // carry them: IPv4 for native routing (by IPv6 node address) and the IPv6 underlay, IPv6
    // node addresses for the IPv4 underlay.
    let cut = |on: &ClusterNode, other: &ClusterNode, add: bool| {
        let verb = if add { "add" } else { "del" };
        let (family, dst) = match mode {
            Mode::Native | Mode::Vxlan6 => ("-4", format!("{}/32", other.ip)),
            Mode::Vxlan4 => ("-6", format!("{}/128", other.ip6.expect("dual-stack"))),
        };
        on.ns
            .ok(&format!("ip {family} route {verb} blackhole {dst}"));
    };
    cut(na, nb, true);
    cut(nb, na, true);
    let _servers = [
        serve_tcp(&a.ns, &sock(a6, 8080)),
        serve_tcp(&b.ns, &sock(b6, 8080)),
        serve_udp(&b.ns, &sock(b6, 8081)),
    ];
    let before = [
        (
            count(na, "forward_remote_node6"),
            count(na, "forward_uplink_to_pod6"),
        ),
        (
            count(nb, "forward_remote_node6"),
            count(nb, "forward_uplink_to_pod6"),
        ),
    ];
    assert_peer("TCP a -> b", &connect_tcp(&a.ns, &sock(b6, 8080)), a6);
    assert_peer("TCP b -> a", &connect_tcp(&b.ns, &sock(a6, 8080)), b6);
    assert_peer("UDP a -> b", &connect_udp(&a.ns, &sock(b6, 8081)), a6);
    // Each node takes one hop: b's replies reach a with a hop limit of 64 - 2.
    let ping = a.ns.sh(&format!("ping -6 -c 3 -i 0.05 -W 1 {b6}"));
    let text = describe(&ping);
    assert!(ping.status.success(), "ping6 a -> b: {text}");
    assert!(text.contains("ttl=62"), "two hops on the way: {text}");
    for (i, (node, (sent, received))) in cluster.nodes.iter().zip(before).enumerate() {
        let (sent_now, received_now) = (
            count(node, "forward_remote_node6"),
            count(node, "forward_uplink_to_pod6"),
        );
        assert!(
            sent_now >= sent + 8 && received_now >= received + 8,
            "{mode:?} node {i}: the datapath forwarded the IPv6 (sent {sent} -> {sent_now}, received {received} -> {received_now})"
        );
    }

    // A hop limit of 1 expires at the first node, 2 at the second: time exceeded, as from routers.
    for (hops, node) in [(1, "a's"), (2, "b's")] {
        let out = a.ns.sh(&format!("ping -6 -c 1 -W 1 -t {hops} {b6}"));
        let text = describe(&out);
        assert!(
            text.contains("Time exceeded"),
            "{mode:?}: hop limit {hops} gets time exceeded from node {node}: {text}"
        );
        // Node a answers from its IPv6 gateway (towards pod a), node b from its IPv6 node
        // address (its way back to pod a leaves through the uplink or the tunnel).
        let from = if hops == 1 {
            "fd00:10:244:110::1".to_owned()
        } else {
            nb6.to_string()
        };
        assert!(
            text.contains(&format!("From {from} ")),
            "{mode:?}: hop limit {hops} expires at node {node} ({from}): {text}"
        );
    }

    // The nodes' own IPv6: node a reaches pod b (through a route podnet keeps), pod b reaches
    // node a, each seen from its own address.
    assert_peer(
        "TCP node a -> pod b",
        &connect_tcp(&na.ns, &sock(b6, 8080)),
        na6,
    );
    let _node_server = serve_tcp(&na.ns, &sock(na6, 9000));
    assert_peer(
        "TCP pod b -> node a",
        &connect_tcp(&b.ns, &sock(na6, 9000)),
        b6,
    );
    let routes = na.ns.ok("ip -6 route show fd00:10:244:111::/64");
    let wanted = match mode {
        Mode::Native => vec![format!("via {nb6}")],
        Mode::Vxlan4 => vec!["encap ip ".to_owned(), format!("dst {} ", nb.ip)],
        Mode::Vxlan6 => vec!["encap ip6 ".to_owned(), format!("dst {nb6} ")],
    };
    assert!(
        wanted.iter().all(|w| routes.contains(w.as_str())),
        "{mode:?}: node a's route must have {wanted:?}: {routes}"
    );
    if mode != Mode::Native {
        let stats = na.ns.ok("ip -s -j link show dev podnet-vxlan");
        let parsed: serde_json::Value = serde_json::from_str(&stats).expect("ip -j");
        let tx = parsed[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0);
        assert!(tx >= 8, "{mode:?}: {tx} packets encapsulated");
    }
    cut(na, nb, false);
    cut(nb, na, false);
    // IPv4 between the nodes still takes the datapath, the source preserved.
    let _server4 = serve_tcp(&b.ns, &format!("{}:8082", b.ip));
    let reply = connect_tcp(&a.ns, &format!("{}:8082", b.ip)).expect("IPv4 a -> b");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(a.ip.clone())
    );
    let fabric = cluster.fabric.ok("ip -6 route show");
    assert!(!fabric.contains("fd00:10:244:"), "{fabric}");

    // Reset leaves nothing of it: no IPv6 route to the other node's pods, no pins, no tunnel.
    for node in &cluster.nodes {
        node.ok(&["node", "reset"]);
        let routes = node.ns.ok("ip -6 route show");
        assert!(!routes.contains("fd00:10:244:"), "{}: {routes}", node.name);
        let links = node.ns.ok("ip -o link show");
        assert!(!links.contains("podnet-vxlan"), "{}: {links}", node.name);
        let pins = std::fs::read_dir(&node.pin_dir).map_or(0, Iterator::count);
        assert_eq!(
            pins,
            0,
            "{}: pins left in {}",
            node.name,
            node.pin_dir.display()
        );
    }
}
