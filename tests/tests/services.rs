//! Kubernetes Services end to end, in namespaces: ClusterIPs from pods (per packet at the pod's
//! veth, and at the socket), from the node (at the socket), across nodes (native routing and
//! VXLAN), hairpin, DNS-like unconnected UDP whose replies come from the ClusterIP, LoadBalancer
//! IPs and externalIPs from outside, refusal of frontends without backends, the service CIDR
//! left to the kernel, and 1,000 short connections. The service maps are programmed through
//! podnet's own accessor (`podnet::datapath::services_map`), as `service apply` will.
//!
//! Every test states which path carries the traffic: `Path::Tc` initialises the node with
//! `--no-socket-lb` (pods' traffic through `from_pod` alone), `Path::Socket` with socket-level
//! balancing (pods' and the node's sockets are connected straight to a backend), and checks the
//! counters of that path moved and those of the other did not.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use podnet::datapath::services_map::{Frontend, ServicesMap};
use podnet_ebpf::abi::{
    endpoint_flag,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    svc_flag,
};
use podnet_tests::ServicePath as Path;
use podnet_tests::{
    Cluster, InNetns, NODE_IP, Node, OUTSIDE_IP, addr_field, churn_tcp, connect_probe as probe,
    describe, peer_ip_of, require_root, serve_tcp, serve_udp, testrun::service_spec,
};

/// A ClusterIP with backends.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A ClusterIP whose services have no backends.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// In the service CIDR, but no service.
const NOT_A_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const EMPTY_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);

fn frontend(addr: Ipv4Addr, port: u16, proto: u8) -> Frontend {
    Frontend {
        addr: addr.into(),
        port,
        proto,
    }
}

/// Writes a ClusterIP service `vip:port/proto` -> `backends` into the node's maps.
fn cluster_ip(
    maps: &mut ServicesMap,
    vip: Ipv4Addr,
    port: u16,
    proto: u8,
    backends: &[(Ipv4Addr, u16)],
) {
    let spec = service_spec(frontend(vip, port, proto), backends, svc_flag::CLUSTER_IP);
    maps.write(&spec).expect("write service");
}

/// `bpftool --json map dump pinned <pin_dir>/<map>`, run from the test's own mount namespace
/// (where bpffs is: `ip netns exec` would hide it).
fn bpftool_dump(node: &Node, map: &str) -> String {
    let out = std::process::Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(node.pin_dir.join(map))
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sockpeer(reply: &str) -> Option<SocketAddr> {
    addr_field(reply, "sockpeer")
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, reason: &str) -> u64 {
    after[reason] - before[reason]
}

fn vip(port: u16) -> String {
    format!("{VIP}:{port}")
}

/// Asserts the counters of `path` moved by at least `n` service translations and those of the
/// other path not at all.
fn assert_path(path: Path, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, n: u64) {
    let (taken, other) = match path {
        Path::Tc => ("service_dnat", "sock_service"),
        Path::Socket => ("sock_service", "service_dnat"),
    };
    assert!(delta(before, after, taken) >= n, "{taken}: {after:?}");
    assert_eq!(delta(before, after, other), 0, "{other}: {after:?}");
}

fn pod_to_clusterip_with_a_local_backend(path: Path, pod_cidr: &str) {
    let node = Node::with_args(pod_cidr, &path.init_args());
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let _udp = serve_udp(&web.ns, &format!("{}:5353", web.ip));
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    cluster_ip(
        &mut maps,
        VIP,
        80,
        IPPROTO_TCP,
        &[(web.ip.parse().expect("ip"), 8080)],
    );
    cluster_ip(
        &mut maps,
        VIP,
        53,
        IPPROTO_UDP,
        &[(web.ip.parse().expect("ip"), 5353)],
    );
    let before = node.stats();

    let reply = probe(&client.ns, "tcp", vip(80), &[]).expect("pod -> ClusterIP tcp");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone()),
        "{reply}"
    );
    assert_eq!(
        sockpeer(&reply),
        Some(vip(80).parse().expect("addr")),
        "getpeername: {reply}"
    );

    let reply = probe(&client.ns, "udp", vip(53), &[]).expect("pod -> ClusterIP connected udp");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone()),
        "{reply}"
    );

    // DNS-like: sendto() on an unconnected socket; the reply must come from the ClusterIP.
    let reply =
        probe(&client.ns, "udp", vip(53), &["--unconnected"]).expect("pod -> ClusterIP sendto");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone()),
        "{reply}"
    );
    assert_eq!(
        sockpeer(&reply),
        Some(vip(53).parse().expect("addr")),
        "recvfrom: {reply}"
    );

    let after = node.stats();
    assert_path(path, &before, &after, 3);
    assert_eq!(delta(&before, &after, "snat"), 0, "never SNATed: {after:?}");

    if path == Path::Tc {
        // The backend's packets to local pods are looked up in conntrack (its replies are
        // translated back); the client's skip it. Re-plugging the pods keeps that.
        let nat_replies = |ip: &str| endpoint_flags(&node, ip) & endpoint_flag::NAT_REPLIES != 0;
        assert!(nat_replies(&web.ip), "the backend is marked");
        assert!(!nat_replies(&client.ip), "the client is not");
        let mut init = node.init_args();
        init.extend(path.init_args().iter().map(|a| (*a).to_owned()));
        node.ok(&init.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(nat_replies(&web.ip), "node init keeps the mark");
        let reply = probe(&client.ns, "tcp", vip(80), &[]).expect("again, after node init");
        assert_eq!(
            sockpeer(&reply),
            Some(vip(80).parse().expect("addr")),
            "{reply}"
        );
    }
}

/// The `flags` of the `ENDPOINTS` entry of `ip`.
fn endpoint_flags(node: &Node, ip: &str) -> u32 {
    let dump: serde_json::Value =
        serde_json::from_str(&bpftool_dump(node, "ENDPOINTS")).expect("bpftool JSON");
    let octets: Vec<serde_json::Value> = ip
        .parse::<Ipv4Addr>()
        .expect("IPv4")
        .octets()
        .iter()
        .map(|o| serde_json::Value::from(*o))
        .collect();
    dump.as_array()
        .expect("entries")
        .iter()
        // `bpftool --json` shows a BTF map's fields under "formatted".
        .map(|e| e.get("formatted").unwrap_or(e))
        .find(|e| e["key"]["addr"].as_array() == Some(&octets))
        .and_then(|e| e["value"]["flags"].as_u64())
        .and_then(|f| u32::try_from(f).ok())
        .unwrap_or_else(|| panic!("no endpoint {ip} in {dump}"))
}

#[test]
fn pod_reaches_a_clusterip_with_a_local_backend_tc_path() {
    require_root!();
    pod_to_clusterip_with_a_local_backend(Path::Tc, "10.244.60.0/24");
}

#[test]
fn pod_reaches_a_clusterip_with_a_local_backend_socket_path() {
    require_root!();
    pod_to_clusterip_with_a_local_backend(Path::Socket, "10.244.61.0/24");
}

fn hairpin(path: Path, pod_cidr: &str) {
    let node = Node::with_args(pod_cidr, &path.init_args());
    let web = node.add_pod("web");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    cluster_ip(
        &mut maps,
        VIP,
        80,
        IPPROTO_TCP,
        &[(web.ip.parse().expect("ip"), 8080)],
    );
    let reply = probe(&web.ns, "tcp", vip(80), &[]).expect("a pod reaches itself via its service");
    assert_eq!(
        sockpeer(&reply),
        Some(vip(80).parse().expect("addr")),
        "{reply}"
    );
    let seen_from = peer_ip_of(&reply).map(|ip| ip.to_string());
    match path {
        // Per packet, the pod must not see a packet from itself: the node IP stands in.
        Path::Tc => assert_eq!(seen_from, Some(NODE_IP.to_string()), "{reply}"),
        // At the socket the pod simply connects to itself.
        Path::Socket => assert_eq!(seen_from, Some(web.ip.clone()), "{reply}"),
    }
}

#[test]
fn a_pod_reaches_itself_through_its_clusterip_tc_path() {
    require_root!();
    hairpin(Path::Tc, "10.244.62.0/24");
}

#[test]
fn a_pod_reaches_itself_through_its_clusterip_socket_path() {
    require_root!();
    hairpin(Path::Socket, "10.244.63.0/24");
}

#[test]
fn the_node_reaches_a_clusterip_over_tcp_and_dns_like_udp_at_the_socket() {
    require_root!();
    let node = Node::with_args("10.244.64.0/24", &Path::Tc.init_args());
    let web = node.add_pod("web");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let _udp = serve_udp(&web.ns, &format!("{}:5353", web.ip));
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    cluster_ip(
        &mut maps,
        VIP,
        80,
        IPPROTO_TCP,
        &[(web.ip.parse().expect("ip"), 8080)],
    );
    cluster_ip(
        &mut maps,
        VIP,
        53,
        IPPROTO_UDP,
        &[(web.ip.parse().expect("ip"), 5353)],
    );
    let before = node.stats();
    // Even with socket balancing off for pods, the node's own sockets are balanced.
    let reply = probe(&node.topo.node, "tcp", vip(80), &[]).expect("node -> ClusterIP");
    assert_eq!(
        sockpeer(&reply),
        Some(vip(80).parse().expect("addr")),
        "{reply}"
    );
    let reply = probe(&node.topo.node, "udp", vip(53), &["--unconnected"]).expect("node sendto");
    assert_eq!(
        sockpeer(&reply),
        Some(vip(53).parse().expect("addr")),
        "recvfrom: {reply}"
    );
    let reply = probe(&node.topo.node, "udp", vip(53), &[]).expect("node connected udp");
    assert_eq!(
        sockpeer(&reply),
        Some(vip(53).parse().expect("addr")),
        "{reply}"
    );
    let after = node.stats();
    assert_eq!(delta(&before, &after, "sock_service"), 3, "{after:?}");
    assert!(delta(&before, &after, "sock_rev_nat") >= 2, "{after:?}");
}

fn refused_at_once(path: Path, pod_cidr: &str) {
    let node = Node::with_args(pod_cidr, &path.init_args());
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    cluster_ip(
        &mut maps,
        VIP,
        80,
        IPPROTO_TCP,
        &[(web.ip.parse().expect("ip"), 8080)],
    );
    cluster_ip(&mut maps, EMPTY_VIP, 80, IPPROTO_TCP, &[]);
    cluster_ip(&mut maps, EMPTY_VIP, 53, IPPROTO_UDP, &[]);
    let before = node.stats();
    let cases = [
        ("tcp", format!("{EMPTY_VIP}:80"), "no backends"),
        ("udp", format!("{EMPTY_VIP}:53"), "no backends"),
        ("tcp", vip(81), "a port the ClusterIP does not have"),
    ];
    for (proto, target, what) in &cases {
        let started = Instant::now();
        let err = probe(&client.ns, proto, target, &[]).expect_err(what);
        let took = started.elapsed();
        assert!(
            err.to_lowercase().contains("refused"),
            "{proto} {target} ({what}): not refused: {err}"
        );
        assert!(
            took < Duration::from_millis(900),
            "{target}: refused only after {took:?}"
        );
    }
    let after = node.stats();
    match path {
        Path::Tc => {
            assert!(
                delta(&before, &after, "reject_no_backend") >= 2,
                "{after:?}"
            );
            assert!(
                delta(&before, &after, "reject_unknown_port") >= 1,
                "{after:?}"
            );
        }
        Path::Socket => assert!(delta(&before, &after, "sock_reject") >= 3, "{after:?}"),
    }
    // The service with backends still works.
    probe(&client.ns, "tcp", vip(80), &[]).expect("the other service");
}

#[test]
fn a_clusterip_without_backends_or_port_is_refused_at_once_tc_path() {
    require_root!();
    refused_at_once(Path::Tc, "10.244.65.0/24");
}

#[test]
fn a_clusterip_without_backends_or_port_is_refused_at_once_socket_path() {
    require_root!();
    refused_at_once(Path::Socket, "10.244.66.0/24");
}

#[test]
fn the_service_cidr_without_a_service_is_left_to_the_kernel_unsnated() {
    require_root!();
    let node = Node::with_args("10.244.67.0/24", &Path::Tc.init_args());
    let client = node.add_pod("client");
    let before = node.stats();
    let _ = probe(&client.ns, "udp", format!("{NOT_A_SERVICE}:53"), &[]);
    let _ = probe(&client.ns, "tcp", format!("{NOT_A_SERVICE}:80"), &[]);
    let after = node.stats();
    assert!(
        delta(&before, &after, "pass_service_cidr") >= 2,
        "{after:?}"
    );
    assert_eq!(delta(&before, &after, "snat"), 0, "{after:?}");
    let ct = node.json(&["conntrack", "list"]);
    assert!(
        !ct.to_string().contains(&NOT_A_SERVICE.to_string()),
        "no NAT state for it: {ct}"
    );
}

fn a_thousand_connections(path: Path, pod_cidr: &str) {
    let node = Node::with_args(pod_cidr, &path.init_args());
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    cluster_ip(
        &mut maps,
        VIP,
        80,
        IPPROTO_TCP,
        &[(web.ip.parse().expect("ip"), 8080)],
    );
    let before = node.stats();
    let out = churn_tcp(&client.ns, &vip(80), 1000).expect("1,000 connections");
    assert!(out.contains("ok=1000 failed=0"), "{out}");
    let after = node.stats();
    assert_path(path, &before, &after, 1000);
}

#[test]
fn a_thousand_short_connections_through_a_clusterip_all_succeed_tc_path() {
    require_root!();
    a_thousand_connections(Path::Tc, "10.244.68.0/24");
}

#[test]
fn a_thousand_short_connections_through_a_clusterip_all_succeed_socket_path() {
    require_root!();
    a_thousand_connections(Path::Socket, "10.244.69.0/24");
}

fn across_nodes(path: Path, mode: &[&str]) {
    let mut args = path.init_args();
    args.extend_from_slice(mode);
    let cluster = Cluster::new(2, &args);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let web = b.add_pod("web");
    let client = a.add_pod("client");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let _udp = serve_udp(&web.ns, &format!("{}:5353", web.ip));
    let web_ip: Ipv4Addr = web.ip.parse().expect("ip");
    let mut maps = ServicesMap::open(&a.pin_dir).expect("service maps");
    cluster_ip(&mut maps, VIP, 80, IPPROTO_TCP, &[(web_ip, 8080)]);
    cluster_ip(&mut maps, VIP, 53, IPPROTO_UDP, &[(web_ip, 5353)]);
    let before = a.stats();
    let reply = probe(&client.ns, "tcp", vip(80), &[]).expect("pod -> ClusterIP on another node");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone()),
        "{reply}"
    );
    assert_eq!(
        sockpeer(&reply),
        Some(vip(80).parse().expect("addr")),
        "{reply}"
    );
    let reply = probe(&client.ns, "udp", vip(53), &["--unconnected"]).expect("udp");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone()),
        "{reply}"
    );
    assert_eq!(
        sockpeer(&reply),
        Some(vip(53).parse().expect("addr")),
        "{reply}"
    );
    let after = a.stats();
    assert_path(path, &before, &after, 2);
    assert_eq!(delta(&before, &after, "snat"), 0, "{after:?}");
}

#[test]
fn pod_reaches_a_clusterip_backend_on_another_node_native_tc_path() {
    require_root!();
    across_nodes(Path::Tc, &[]);
}

#[test]
fn pod_reaches_a_clusterip_backend_on_another_node_vxlan_tc_path() {
    require_root!();
    across_nodes(Path::Tc, &["--mode", "vxlan"]);
}

#[test]
fn pod_reaches_a_clusterip_backend_on_another_node_native_socket_path() {
    require_root!();
    across_nodes(Path::Socket, &[]);
}

#[test]
fn pod_reaches_a_clusterip_backend_on_another_node_vxlan_socket_path() {
    require_root!();
    across_nodes(Path::Socket, &["--mode", "vxlan"]);
}

#[test]
fn the_outside_reaches_loadbalancer_ips_and_external_ips_and_no_iptables_rule_exists() {
    require_root!();
    let node = Node::with_args("10.244.70.0/24", &Path::Socket.init_args());
    let web = node.add_pod("web");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let _udp = serve_udp(&web.ns, &format!("{}:5353", web.ip));
    let web_ip: Ipv4Addr = web.ip.parse().expect("ip");
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    for (addr, flags) in [
        (LB_IP, svc_flag::LOAD_BALANCER),
        (EXTERNAL_IP, svc_flag::EXTERNAL_IP),
    ] {
        for (port, proto, backend_port) in [(80, IPPROTO_TCP, 8080), (53, IPPROTO_UDP, 5353)] {
            let spec = service_spec(
                frontend(addr, port, proto),
                &[(web_ip, backend_port)],
                flags,
            );
            maps.write(&spec).expect("write");
        }
    }
    let spec = service_spec(
        frontend(EMPTY_LB_IP, 80, IPPROTO_TCP),
        &[],
        svc_flag::LOAD_BALANCER,
    );
    maps.write(&spec).expect("write");
    // The outside routes the service addresses to the node, as a load balancer would.
    node.topo
        .outside
        .ok(&format!("ip route add 198.51.100.0/24 via {NODE_IP}"));
    let before = node.stats();
    for addr in [LB_IP, EXTERNAL_IP] {
        let reply = probe(&node.topo.outside, "tcp", format!("{addr}:80"), &[])
            .unwrap_or_else(|e| panic!("outside -> {addr}:80: {e}"));
        assert_eq!(
            peer_ip_of(&reply),
            Some(OUTSIDE_IP.into()),
            "client kept: {reply}"
        );
        let reply = probe(
            &node.topo.outside,
            "udp",
            format!("{addr}:53"),
            &["--unconnected"],
        )
        .unwrap_or_else(|e| panic!("outside -> {addr}:53: {e}"));
        assert_eq!(peer_ip_of(&reply), Some(OUTSIDE_IP.into()), "{reply}");
        assert_eq!(
            sockpeer(&reply),
            Some(format!("{addr}:53").parse().expect("addr")),
            "the reply comes from the address the client used: {reply}"
        );
    }
    let started = Instant::now();
    let err = probe(&node.topo.outside, "tcp", format!("{EMPTY_LB_IP}:80"), &[])
        .expect_err("no backends");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(900));
    // The node's own sockets reach the LoadBalancer IP too.
    let reply = probe(&node.topo.node, "tcp", format!("{LB_IP}:80"), &[]).expect("node -> LB");
    assert_eq!(
        sockpeer(&reply),
        Some(format!("{LB_IP}:80").parse().expect("addr"))
    );
    let after = node.stats();
    assert!(delta(&before, &after, "dnat") >= 4, "{after:?}");
    assert!(
        delta(&before, &after, "reject_no_backend") >= 1,
        "{after:?}"
    );

    let ns = &node.topo.node;
    for cmd in ["iptables-save", "iptables-legacy-save"] {
        let out = ns.sh(&format!("command -v {cmd} >/dev/null && {cmd} || true"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.lines().any(|l| l.starts_with("-A")),
            "{cmd} shows rules: {text}"
        );
    }
    let nft = ns.ok("nft list ruleset");
    assert!(nft.trim().is_empty(), "nft ruleset: {nft}");
}

#[test]
fn the_accessor_replaces_lists_and_deletes_services() {
    require_root!();
    let node = Node::with_args("10.244.71.0/24", &Path::Tc.init_args());
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    let a: Ipv4Addr = "10.244.71.2".parse().expect("ip");
    let b: Ipv4Addr = "10.244.71.3".parse().expect("ip");
    let fe = frontend(VIP, 80, IPPROTO_TCP);
    maps.write(&service_spec(fe, &[(a, 1), (b, 2)], svc_flag::CLUSTER_IP))
        .expect("write");
    maps.write(&service_spec(fe, &[(b, 3)], svc_flag::CLUSTER_IP))
        .expect("replace");
    let other = frontend(VIP, 53, IPPROTO_UDP);
    maps.write(&service_spec(other, &[(a, 53)], svc_flag::CLUSTER_IP))
        .expect("write");
    // A second accessor sees exactly what the first wrote (read back from the maps).
    let reopened = ServicesMap::open(&node.pin_dir).expect("reopen");
    let list = reopened.list().expect("list");
    assert_eq!(list.len(), 2, "{list:?}");
    let svc = reopened.get(&fe).expect("get").expect("exists");
    assert_eq!(svc.backends.len(), 1);
    assert_eq!((svc.backends[0].addr, svc.backends[0].port), (b.into(), 3));
    let dump = bpftool_dump(&node, "BACKENDS");
    assert_eq!(
        dump.matches("\"port\"").count(),
        2,
        "old backends are gone, field names shown: {dump}"
    );
    assert!(maps.delete(&fe).expect("delete"));
    assert!(!maps.delete(&fe).expect("delete twice"));
    assert_eq!(maps.clear().expect("clear"), 1);
    for map in ["SERVICES", "BACKENDS", "REV_NAT"] {
        let dump = bpftool_dump(&node, map);
        assert_eq!(dump.trim(), "[]", "{map} is empty: {dump}");
    }
}

#[test]
fn thirty_thousand_services_with_300_000_backends_fit_the_default_maps() {
    require_root!();
    let node = Node::with_args("10.244.72.0/24", &Path::Tc.init_args());
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    let backends: Vec<(Ipv4Addr, u16)> = (1..=10)
        .map(|i| (Ipv4Addr::new(10, 244, 72, 100 + i), 8080))
        .collect();
    let table: Vec<_> = (0..30_000u32)
        .map(|i| {
            let [_, _, hi, lo] = i.to_be_bytes();
            let vip = Ipv4Addr::new(10, 97, hi, lo);
            service_spec(
                frontend(vip, 80, IPPROTO_TCP),
                &backends,
                svc_flag::CLUSTER_IP,
            )
        })
        .collect();
    let started = Instant::now();
    maps.write_many(&table).expect("30,000 services");
    let written = started.elapsed();
    // Written again: every frontend replaced (its backends under the other generation of ids).
    let started = Instant::now();
    maps.write_many(&table).expect("replaced");
    let replaced = started.elapsed();
    // One more, real, among them: the datapath finds it.
    cluster_ip(
        &mut maps,
        VIP,
        80,
        IPPROTO_TCP,
        &[(web.ip.parse().expect("ip"), 8080)],
    );
    let reply = probe(&client.ns, "tcp", vip(80), &[]).expect("a ClusterIP among 30,001");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone())
    );
    let started = Instant::now();
    let reopened = ServicesMap::open(&node.pin_dir).expect("reopen");
    let opened = started.elapsed();
    assert_eq!(reopened.len(), 30_001);
    let started = Instant::now();
    let listed = reopened.list().expect("list");
    let list_time = started.elapsed();
    assert_eq!(listed.len(), 30_001);
    assert!(
        listed
            .iter()
            .filter(|svc| svc.frontend.addr != VIP)
            .all(|svc| svc.backends.len() == 10),
        "every service has its 10 backends"
    );
    assert_eq!(
        bpftool_dump(&node, "BACKENDS").matches("\"port\"").count(),
        300_001,
        "the replaced generation is gone"
    );
    drop(reopened);
    let memory: u64 = ["SERVICES", "BACKENDS", "REV_NAT"]
        .iter()
        .map(|map| {
            let out = std::process::Command::new("bpftool")
                .args(["--json", "map", "show", "pinned"])
                .arg(node.pin_dir.join(map))
                .output()
                .expect("bpftool");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            v["bytes_memlock"].as_u64().expect("bytes_memlock")
        })
        .sum();
    eprintln!(
        "service maps with 30,001 services: {} MiB (bytes_memlock)",
        memory >> 20
    );
    let started = Instant::now();
    assert_eq!(maps.clear().expect("clear"), 30_001);
    let cleared = started.elapsed();
    eprintln!(
        "30,000 services x 10 backends: written in {written:?}, replaced in {replaced:?}, index read back in {opened:?}, listed in {list_time:?}, cleared in {cleared:?}"
    );
    assert!(written < Duration::from_secs(5), "writing took {written:?}");
    assert_eq!(bpftool_dump(&node, "REV_NAT").trim(), "[]");
}
