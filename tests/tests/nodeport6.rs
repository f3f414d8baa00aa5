//! IPv6 service traffic from outside the node, translated per packet at tc (issue 19,
//! `from_uplink6_dnat`): the outside namespace reaches a NodePort on the node's IPv6 address
//! and an IPv6 externalIP routed to the node, over TCP, connected UDP and unconnected UDP; the
//! local backend pod sees the client's own address (no SNAT for a local backend, as for IPv4);
//! the replies come from the address the client used; `conntrack list` shows the `dnat` flows,
//! which go when their backend leaves the Service; a NodePort without backends drops
//! (`drop_no_backend`), one whose backends are all on other nodes too
//! (`drop_dnat6_remote_backend`); nothing is left after `node reset`.
//!
//! Addresses: the IPv6 service CIDR is fd00:10:96::/112, the externalIP 2001:db8::50
//! (documentation range), the pods' from fd00:10:244::/48, the fabric's from fd00:198:18::/64.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use podnet_tests::{
    InNetns, NODE_IP6, Node, OUTSIDE_IP6, SERVICE_CIDR, addr_field, connect_probe as probe,
    describe, dual_stack, require_root, serve_tcp, serve_udp,
};
use serde_json::{Value, json};

/// The IPv6 service CIDR of the test node.
const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// The Service's IPv6 ClusterIP.
const VIP6: &str = "fd00:10:96::20";
/// The Service's IPv6 externalIP (routed to the node by the outside).
const EXTERNAL6: &str = "2001:db8::50";
/// The ClusterIP of a NodePort Service without endpoints.
const EMPTY_VIP6: &str = "fd00:10:96::21";
/// NodePorts.
const NODEPORT_TCP: u16 = 30_080;
const NODEPORT_UDP: u16 = 30_053;
const NODEPORT_EMPTY: u16 = 30_081;

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, reason: &str) -> u64 {
    after.get(reason).copied().unwrap_or(0) - before.get(reason).copied().unwrap_or(0)
}

/// `podnet service apply -f FILE` with `table`.
fn apply(node: &Node, table: &Value) {
    let file = node.state_dir.join("nodeport6-test.json");
    std::fs::write(&file, table.to_string()).expect("write the table");
    let out = node.podnet(&["service", "apply", "-f", file.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "service apply: {}", describe(&out));
}

/// The IPv6 entries of `conntrack list --json`.
fn ipv6_flows(node: &Node) -> Vec<Value> {
    node.json(&["conntrack", "list"])
        .as_array()
        .expect("a list of flows")
        .iter()
        .filter(|f| f["src"].as_str().is_some_and(|s| s.starts_with('[')))
        .cloned()
        .collect()
}

#[test]
fn the_outside_reaches_an_ipv6_nodeport_and_external_ip_at_tc_keeping_its_address() {
    require_root!();
    let node = dual_stack::dual_stack_node_with(
        "10.244.66.0/24",
        "fd00:10:244:66::/64",
        &[
            "--service-cidr",
            SERVICE_CIDR,
            "--service-cidr",
            SERVICE_CIDR6,
        ],
    );
    let web = node.add_pod("web");
    let web6 = IpAddr::V6(dual_stack::address6_of(&node, "web"));
    let _tcp = serve_tcp(&web.ns, &format!("[{web6}]:8080"));
    let _udp = serve_udp(&web.ns, &format!("[{web6}]:5353"));
    apply(
        &node,
        &json!({"services": [
            {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"type": "NodePort", "clusterIPs": [VIP6], "externalIPs": [EXTERNAL6],
                      "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                 "targetPort": 8080, "nodePort": NODEPORT_TCP},
                                {"name": "dns", "protocol": "UDP", "port": 53,
                                 "targetPort": 5353, "nodePort": NODEPORT_UDP}]},
             "endpoints": [{"addresses": [web6.to_string()]}]},
            {"metadata": {"name": "empty", "namespace": "default"},
             "spec": {"type": "NodePort", "clusterIPs": [EMPTY_VIP6],
                      "ports": [{"protocol": "TCP", "port": 80,
                                 "nodePort": NODEPORT_EMPTY}]}}
        ]}),
    );
    let outside = &node.topo.outside;
    // The outside routes the externalIP to the node, as a router of the fabric would.
    outside.ok(&format!("ip -6 route add {EXTERNAL6}/128 via {NODE_IP6}"));
    let node6 = IpAddr::V6(NODE_IP6);
    let external: IpAddr = EXTERNAL6.parse().expect("an address");
    let client = IpAddr::V6(OUTSIDE_IP6);

    let before = node.stats();
    let targets = [
        ("tcp", SocketAddr::new(node6, NODEPORT_TCP), &[][..]),
        ("udp", SocketAddr::new(node6, NODEPORT_UDP), &[][..]),
        (
            "udp",
            SocketAddr::new(node6, NODEPORT_UDP),
            &["--unconnected"][..],
        ),
        ("tcp", SocketAddr::new(external, 80), &[][..]),
        ("udp", SocketAddr::new(external, 53), &[][..]),
    ];
    for (proto, target, extra) in targets {
        let reply = probe(outside, proto, target, extra).unwrap_or_else(|e| {
            panic!(
                "outside -> {proto} {target} {extra:?}: {e}\n{}",
                node.ok(&["stats"])
            )
        });
        assert_eq!(
            addr_field(&reply, "peer").map(|a| a.ip()),
            Some(client),
            "{proto} {target}: the local backend sees the client's own address: {reply}"
        );
        assert_eq!(
            addr_field(&reply, "local").map(|a| a.ip()),
            Some(web6),
            "{proto} {target}: the connection arrived at the backend: {reply}"
        );
        assert_eq!(
            addr_field(&reply, "sockpeer"),
            Some(target),
            "{proto} {target} {extra:?}: the reply comes from the address the client used: \
             {reply}"
        );
    }
    let after = node.stats();
    eprintln!("{}", node.ok(&["stats"]));
    // Five connections, at least one packet each way (TCP: SYN, ACK, data, FIN).
    assert!(delta(&before, &after, "dnat6") >= 5, "{after:?}");
    assert!(delta(&before, &after, "dnat6_reply") >= 5, "{after:?}");
    assert_eq!(delta(&before, &after, "drop_dnat6_remote_backend"), 0);

    // conntrack shows the flows: the client kept, the backend as the translated destination.
    let flows = ipv6_flows(&node);
    let original = |proto: &str, port: u16| {
        flows.iter().any(|f| {
            f["proto"] == proto
                && f["kind"] == "dnat"
                && f["dir"] == "original"
                && f["dst"] == format!("[{NODE_IP6}]:{port}")
                && f["src"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("[{OUTSIDE_IP6}]:")))
                && f["nat_dst"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("[{web6}]:")))
        })
    };
    assert!(original("tcp", NODEPORT_TCP), "{flows:#?}");
    assert!(original("udp", NODEPORT_UDP), "{flows:#?}");

    // The backend leaves the Service: its IPv6 per-packet flows go with it.
    apply(
        &node,
        &json!({"services": [
            {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"type": "NodePort", "clusterIPs": [VIP6], "externalIPs": [EXTERNAL6],
                      "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                 "targetPort": 8080, "nodePort": NODEPORT_TCP},
                                {"name": "dns", "protocol": "UDP", "port": 53,
                                 "targetPort": 5353, "nodePort": NODEPORT_UDP}]},
             "endpoints": []},
            {"metadata": {"name": "empty", "namespace": "default"},
             "spec": {"type": "NodePort", "clusterIPs": [EMPTY_VIP6],
                      "ports": [{"protocol": "TCP", "port": 80,
                                 "nodePort": NODEPORT_EMPTY}]}}
        ]}),
    );
    let left: Vec<Value> = ipv6_flows(&node)
        .into_iter()
        .filter(|f| f["kind"] == "dnat")
        .collect();
    assert!(left.is_empty(), "flows to a backend that left: {left:#?}");

    // A NodePort without backends: dropped, counted.
    let before = node.stats();
    let err = probe(outside, "tcp", SocketAddr::new(node6, NODEPORT_EMPTY), &[])
        .expect_err("a NodePort without backends is not reached");
    eprintln!("empty NodePort: {err}");
    let after = node.stats();
    assert!(delta(&before, &after, "drop_no_backend") >= 1, "{after:?}");

    // Nothing of it is left after node reset.
    node.ok(&["node", "reset"]);
    assert!(!node.pin_dir.exists(), "pins left: {:?}", node.pin_dir);
}

#[test]
fn ipv6_service_traffic_from_outside_goes_to_a_local_backend_and_a_remote_only_one_drops_counted() {
    require_root!();
    let node = dual_stack::dual_stack_node_with(
        "10.244.67.0/24",
        "fd00:10:244:67::/64",
        &[
            "--service-cidr",
            SERVICE_CIDR,
            "--service-cidr",
            SERVICE_CIDR6,
        ],
    );
    let web = node.add_pod("web");
    let web6 = IpAddr::V6(dual_stack::address6_of(&node, "web"));
    let _tcp = serve_tcp(&web.ns, &format!("[{web6}]:8080"));
    // A backend of another node's pod CIDR (in the cluster CIDR, not this node's).
    let remote = "fd00:10:244:99::5";
    apply(
        &node,
        &json!({"services": [
            {"metadata": {"name": "mixed", "namespace": "default"},
             "spec": {"type": "NodePort", "clusterIPs": [VIP6],
                      "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080,
                                 "nodePort": NODEPORT_TCP}]},
             "endpoints": [{"addresses": [web6.to_string()]},
                           {"addresses": [remote], "nodeName": "n2"}]},
            {"metadata": {"name": "remote", "namespace": "default"},
             "spec": {"type": "NodePort", "clusterIPs": [EMPTY_VIP6],
                      "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080,
                                 "nodePort": NODEPORT_EMPTY}]},
             "endpoints": [{"addresses": [remote], "nodeName": "n2"}]}
        ]}),
    );
    let outside = &node.topo.outside;
    let node6 = IpAddr::V6(NODE_IP6);
    let before = node.stats();
    // Backends on other nodes are not forwarded to yet: every connection reaches the local one.
    for _ in 0..6 {
        let target = SocketAddr::new(node6, NODEPORT_TCP);
        let reply = probe(outside, "tcp", target, &[])
            .unwrap_or_else(|e| panic!("outside -> {target}: {e}\n{}", node.ok(&["stats"])));
        assert_eq!(addr_field(&reply, "local").map(|a| a.ip()), Some(web6));
        assert_eq!(
            addr_field(&reply, "peer").map(|a| a.ip()),
            Some(IpAddr::V6(OUTSIDE_IP6))
        );
    }
    let after = node.stats();
    assert_eq!(
        delta(&before, &after, "drop_dnat6_remote_backend"),
        0,
        "{after:?}"
    );
    // Only a backend on another node: dropped, counted.
    let before = node.stats();
    let err = probe(outside, "tcp", SocketAddr::new(node6, NODEPORT_EMPTY), &[])
        .expect_err("not forwarded to another node");
    eprintln!("remote-only NodePort: {err}");
    let after = node.stats();
    assert!(
        delta(&before, &after, "drop_dnat6_remote_backend") >= 1,
        "{after:?}"
    );
    node.ok(&["node", "reset"]);
    assert!(!node.pin_dir.exists(), "pins left: {:?}", node.pin_dir);
}
