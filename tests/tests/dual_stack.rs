//! Dual-stack addressing: a node with an IPv4 and an IPv6 pod CIDR gives each pod an address
//! and a default route of each family (CLI and CNI, standalone and chained after the reference
//! `bridge` + `host-local`); IPv6 leaving the cluster is masqueraded to the node's IPv6
//! address (the rest of IPv6 NAT is tested in `nat6`);
//! peers carry IPv6 pod CIDRs routed via their IPv6 node address; deletion and GC leave nothing
//! of either family; bad IPv6 input is refused with a clear message and changes nothing.
//!
//! The test nodes and addresses are `podnet_tests::dual_stack`'s.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use podnet_tests::dual_stack::{
    CLUSTER_CIDR6, NODE_IP6, OUTSIDE_IP6, addr6, address6_of, dual_stack_node, ping6, tcp_sees,
};
use podnet_tests::{
    AddResult, Cluster, CniNode, InNetns, NETNS_RUN_DIR, NODE_IP, Netns, Node, OUTSIDE_IP,
    PodnetCli, RuntimeConf, Snapshot, Topology, UPLINK, Watch, describe, mac, ping, require_root,
    unique, wait_until,
};
use serde_json::{Value, json};

/// The IPv6 records (file names with a ':') in an IPAM directory.
fn ipv6_records(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(':') && !n.starts_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts the pod namespace `ns` has `ip6` on eth0 and an IPv6 default route via `gateway6`.
fn assert_pod_has_ipv6(ns: &(impl InNetns + ?Sized), ip6: &str, prefix: u8, gateway6: &str) {
    let addrs = ns.ok("ip -6 -o addr show dev eth0 scope global");
    assert!(addrs.contains(&format!("{ip6}/{prefix}")), "eth0: {addrs}");
    let default = ns.ok("ip -6 route show default");
    assert!(
        default.contains(&format!("via {gateway6}")),
        "IPv6 default route: {default}"
    );
}

#[test]
fn dual_stack_pods_reach_each_other_and_the_outside_from_their_own_addresses() {
    require_root!();
    let node = dual_stack_node("10.244.31.0/24", "fd00:10:244:31::/64");
    let status = node.json(&["node", "status"]);
    assert_eq!(status["settings"]["pod_cidr"], "10.244.31.0/24", "{status}");
    assert_eq!(status["settings"]["pod_cidr6"], "fd00:10:244:31::/64");
    assert_eq!(status["settings"]["cluster_cidr6"], CLUSTER_CIDR6);
    assert_eq!(status["settings"]["node_ip6"], NODE_IP6.to_string());
    let text = node.ok(&["node", "status"]);
    assert!(
        text.contains("IPv6: pod CIDR fd00:10:244:31::/64 (gateway fd00:10:244:31::1 on podnet0)"),
        "{text}"
    );
    // The gateway on the bridge, IPv6 forwarding on in the node's namespace.
    let bridge = node
        .topo
        .node
        .ok("ip -6 -o addr show dev podnet0 scope global");
    assert!(bridge.contains("fd00:10:244:31::1/64"), "{bridge}");
    let forwarding = node
        .topo
        .node
        .ok("cat /proc/sys/net/ipv6/conf/all/forwarding");
    assert_eq!(forwarding.trim(), "1");

    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let (a6, b6) = (address6_of(&node, "a"), address6_of(&node, "b"));
    assert_ne!(a6, b6);
    for (pod, ip6) in [(&a, a6), (&b, b6)] {
        assert!(ip6.to_string().starts_with("fd00:10:244:31::"), "{ip6}");
        assert_pod_has_ipv6(&pod.ns, &ip6.to_string(), 64, "fd00:10:244:31::1");
        let v4 = pod.ns.ok("ip -4 route show default");
        assert!(v4.contains("via 10.244.31.1"), "IPv4 default route: {v4}");
    }
    let ipam = node.state_dir.join("ipam");
    assert_eq!(ipv6_records(&ipam), [a6.to_string(), b6.to_string()]);

    // Pod to pod over both families, each from the pod's own address.
    let out = ping6(&a.ns, &b6.to_string());
    assert!(out.status.success(), "ping -6 a -> b: {}", describe(&out));
    let out = a.ping(&b.ip, 3);
    assert!(out.status.success(), "ping a -> b: {}", describe(&out));
    tcp_sees(&a.ns, IpAddr::V6(a6), &b.ns, IpAddr::V6(b6), 8080);
    let a4: Ipv4Addr = a.ip.parse().expect("IPv4");
    let b4: Ipv4Addr = b.ip.parse().expect("IPv4");
    tcp_sees(&a.ns, IpAddr::V4(a4), &b.ns, IpAddr::V4(b4), 8081);
    // To the outside: both families are masqueraded, IPv6 to the node's IPv6 address.
    let out = ping6(&b.ns, &OUTSIDE_IP6.to_string());
    assert!(
        out.status.success(),
        "ping -6 b -> outside: {}",
        describe(&out)
    );
    tcp_sees(
        &b.ns,
        IpAddr::V6(NODE_IP6),
        &node.topo.outside,
        IpAddr::V6(OUTSIDE_IP6),
        7000,
    );
    tcp_sees(
        &b.ns,
        IpAddr::V4(NODE_IP),
        &node.topo.outside,
        IpAddr::V4(OUTSIDE_IP),
        7001,
    );

    // pod del releases both families and forgets the pod's neighbours (ND and ARP).
    let mac_a = mac(&a.ns, "eth0");
    let del = node.json(&["pod", "del", "a"]);
    assert_eq!(del["released"], json!([a.ip]), "{del}");
    assert_eq!(del["released6"], json!([a6.to_string()]), "{del}");
    assert_eq!(ipv6_records(&ipam), [b6.to_string()]);
    let neigh = node.topo.node.ok("ip neigh show");
    assert!(
        !neigh.contains(&a6.to_string()) && !neigh.contains(&mac_a),
        "neighbours of a left: {neigh}"
    );
    let routes = node.topo.node.ok("ip -6 route show");
    assert!(!routes.contains(&a6.to_string()), "{routes}");
    assert!(!a.ns.exists(), "a's namespace left");
    let again = node.json(&["pod", "del", "a"]);
    assert_eq!(again["existed"], false, "{again}");
    node.ok(&["pod", "del", "b"]);
    assert_eq!(ipv6_records(&ipam), Vec::<String>::new());
    let status = node.json(&["node", "status"]);
    assert_eq!(status["ipam_allocated6"], 0, "{status}");
}

#[test]
fn ipv6_reservations_left_by_killed_adds_are_collected() {
    require_root!();
    let node = dual_stack_node("10.244.38.0/24", "fd00:10:244:38::/64");
    let kept = node.add_pod("kept");
    let kept6 = address6_of(&node, "kept");
    // What a `pod add` killed after reserving its IPv6 address leaves (a record, no pod), and
    // what a write killed half-way leaves (an empty record, a temporary file).
    let ipam = node.state_dir.join("ipam");
    std::fs::write(ipam.join("fd00:10:244:38::99"), "pod:ghost\n").expect("record");
    std::fs::write(ipam.join("fd00:10:244:38::98"), "").expect("torn record");
    std::fs::write(ipam.join(".tmp.fd00:10:244:38::97.4242"), "pod:half\n").expect("temp file");
    let report = node.json(&["gc"]);
    assert_eq!(report["pods"], json!(["ghost"]), "{report}");
    assert_eq!(
        report["addresses6"],
        json!(["fd00:10:244:38::99"]),
        "{report}"
    );
    assert!(report["temp_files"].as_u64() >= Some(2), "{report}");
    assert_eq!(
        ipv6_records(&ipam),
        [kept6.to_string()],
        "only the live pod's address stays"
    );
    assert!(
        std::fs::read_dir(&ipam)
            .expect("IPAM dir")
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")),
        "temporary files left"
    );
    // The live pod kept both its addresses and works.
    let out = ping6(&kept.ns, &OUTSIDE_IP6.to_string());
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn ipv4_only_nodes_are_unchanged() {
    require_root!();
    let node = Node::new("10.244.34.0/24");
    let status = node.json(&["node", "status"]);
    assert!(status["settings"].get("pod_cidr6").is_none(), "{status}");
    assert!(status["settings"].get("node_ip6").is_none(), "{status}");
    let pod = node.add_pod("a");
    let record = node.json(&["pod", "list"]);
    assert!(record[0].get("address6").is_none(), "{record}");
    let global6 = pod.ns.ok("ip -6 -o addr show dev eth0 scope global");
    assert!(global6.trim().is_empty(), "no IPv6 address: {global6}");
    let bridge = node
        .topo
        .node
        .ok("ip -6 -o addr show dev podnet0 scope global");
    assert!(bridge.trim().is_empty(), "no IPv6 gateway: {bridge}");
    assert_eq!(
        ipv6_records(&node.state_dir.join("ipam")),
        Vec::<String>::new()
    );
}

#[test]
fn peers_ipv6_pod_cidrs_are_routed_via_their_ipv6_node_address() {
    require_root!();
    let node = dual_stack_node("10.244.35.0/24", "fd00:10:244:35::/64");
    let pod = node.add_pod("a");
    let pod6 = address6_of(&node, "a");
    // The outside namespace stands in for the peer: its IPv6 node address on the fabric and an
    // address of its IPv6 pod CIDR on lo.
    let peer_ip6 = "fd00:198:18::11";
    let remote_pod6: Ipv6Addr = "fd00:10:244:36::5".parse().expect("IPv6");
    addr6(
        &node.topo.outside,
        &node.topo.outside_if,
        &format!("{peer_ip6}/64"),
    );
    addr6(&node.topo.outside, "lo", &format!("{remote_pod6}/128"));
    let unreachable = ping6(&pod.ns, &remote_pod6.to_string());
    assert!(
        !unreachable.status.success(),
        "no route to the peer's pods yet: {}",
        describe(&unreachable)
    );

    let added = node.json(&[
        "node",
        "peer",
        "add",
        "--name",
        "n2",
        "--node-ip",
        "198.18.0.11",
        "--pod-cidr",
        "10.244.36.0/24",
        "--pod-cidr6",
        "fd00:10:244:36::/64",
        "--node-ip6",
        peer_ip6,
    ]);
    assert_eq!(added["pod_cidr6"], "fd00:10:244:36::/64", "{added}");
    let route = node.topo.node.ok("ip -6 route show fd00:10:244:36::/64");
    assert!(route.contains(&format!("via {peer_ip6}")), "{route}");
    let listed = node.json(&["node", "peer", "list"]);
    assert_eq!(listed[0]["node_ip6"], peer_ip6, "{listed}");
    assert!(
        node.ok(&["node", "peer", "list"])
            .contains("fd00:10:244:36::/64"),
        "peer list shows the IPv6 pod CIDR"
    );
    // A pod reaches the peer's pod through the route, from its own address.
    tcp_sees(
        &pod.ns,
        IpAddr::V6(pod6),
        &node.topo.outside,
        IpAddr::V6(remote_pod6),
        7100,
    );

    // Bad IPv6 peers are refused and change nothing.
    let routes_before = node.topo.node.ok("ip -6 route show");
    for (args, message) in [
        (
            vec![
                "--pod-cidr6",
                "fd00:10:244:35::/64",
                "--node-ip6",
                "fd00:198:18::12",
            ],
            "overlaps this node's",
        ),
        (
            vec!["--pod-cidr6", "fd00:10:244:37::/64", "--node-ip6", peer_ip6],
            "already n2's",
        ),
        (
            vec![
                "--pod-cidr6",
                "fd00:99::/64",
                "--node-ip6",
                "fd00:198:18::12",
            ],
            "not inside the IPv6 cluster CIDR",
        ),
    ] {
        let mut all = vec![
            "node",
            "peer",
            "add",
            "--name",
            "n3",
            "--node-ip",
            "198.18.0.12",
            "--pod-cidr",
            "10.244.37.0/24",
        ];
        all.extend(args);
        let out = node.podnet(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{all:?} must be refused with {message:?}: {}",
            describe(&out)
        );
    }
    assert_eq!(node.topo.node.ok("ip -6 route show"), routes_before);
    assert_eq!(
        node.json(&["node", "peer", "list"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    node.ok(&["node", "peer", "del", "--name", "n2"]);
    let route = node.topo.node.ok("ip -6 route show fd00:10:244:36::/64");
    assert!(
        route.trim().is_empty(),
        "the IPv6 peer route must go: {route}"
    );
}

#[test]
fn pods_on_two_dual_stack_nodes_reach_each_other_over_ipv6_by_native_routing() {
    require_root!();
    // Two podnet nodes on one fabric (IPv4 first, as `Cluster` makes them), then made dual-stack:
    // IPv6 on the fabric, each node's IPv6 pod CIDR and IPv6 node address in the cluster file,
    // and `node init` again (no pods yet, so the pod CIDRs may change).
    let cluster = Cluster::new(2, &["--gc-interval", "0"]);
    let pod_cidr6 = |i: usize| format!("fd00:10:244:{}::/64", 110 + i);
    let node_ip6 = |i: usize| format!("fd00:198:18::{}", 11 + i);
    for (i, node) in cluster.nodes.iter().enumerate() {
        addr6(&node.ns, "uplink0", &format!("{}/64", node_ip6(i)));
    }
    let settings: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.nodes[0].state_dir.join("node.json")).expect("node.json"),
    )
    .expect("JSON");
    let cluster_file = PathBuf::from(settings["cluster"].as_str().expect("cluster file"));
    let nodes: Vec<Value> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({"name": n.name, "node_ip": n.ip.to_string(), "pod_cidr": n.pod_cidr,
                   "pod_cidr6": pod_cidr6(i), "node_ip6": node_ip6(i)})
        })
        .collect();
    std::fs::write(&cluster_file, json!({ "nodes": nodes }).to_string()).expect("cluster file");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let config = node.state_dir.join("node.json");
        let (cidr6, ip6) = (pod_cidr6(i), node_ip6(i));
        node.ok(&[
            "node",
            "init",
            "--config",
            config.to_str().expect("UTF-8"),
            "--pod-cidr",
            &cidr6,
            "--cluster-cidr",
            CLUSTER_CIDR6,
            "--node-ip6",
            &ip6,
        ]);
        let other = 1 - i;
        let route = node
            .ns
            .ok(&format!("ip -6 route show {}", pod_cidr6(other)));
        assert!(
            route.contains(&format!("via {}", node_ip6(other))),
            "node-{i}'s route to node-{other}'s IPv6 pods: {route}"
        );
    }
    let a = cluster.nodes[0].add_pod("a");
    let b = cluster.nodes[1].add_pod("b");
    let address6 = |node: &podnet_tests::ClusterNode, name: &str| -> Ipv6Addr {
        let pods = node.json(&["pod", "list"]);
        pods.as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .and_then(|p| p["address6"].as_str())
            .and_then(|c| c.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no IPv6 address for {name}: {pods}"))
    };
    let (a6, b6) = (
        address6(&cluster.nodes[0], "a"),
        address6(&cluster.nodes[1], "b"),
    );
    assert!(a6.to_string().starts_with("fd00:10:244:110::"), "{a6}");
    assert!(b6.to_string().starts_with("fd00:10:244:111::"), "{b6}");
    let out = ping6(&a.ns, &b6.to_string());
    assert!(
        out.status.success(),
        "ping -6 a -> b across nodes: {}",
        describe(&out)
    );
    tcp_sees(&a.ns, IpAddr::V6(a6), &b.ns, IpAddr::V6(b6), 8090);
    tcp_sees(&b.ns, IpAddr::V6(b6), &a.ns, IpAddr::V6(a6), 8091);
    // IPv4 between the nodes still takes podnet's path, with the source preserved.
    let a4: Ipv4Addr = a.ip.parse().expect("IPv4");
    let b4: Ipv4Addr = b.ip.parse().expect("IPv4");
    tcp_sees(&a.ns, IpAddr::V4(a4), &b.ns, IpAddr::V4(b4), 8092);
}

/// Settings, IPAM, pins, links, IPv4 addresses and routes (the [`Snapshot`]), plus the node
/// namespace's IPv6 addresses and routes.
struct NodeState {
    snapshot: Snapshot,
    ipv6: String,
}

fn node_state(watch: &Watch<'_>, ns: &(impl InNetns + ?Sized)) -> NodeState {
    NodeState {
        snapshot: Snapshot::take(watch),
        // Global addresses and the main table: link-local addresses finish duplicate address
        // detection by themselves.
        ipv6: ns.ok("ip -6 -o addr show scope global; ip -6 route show"),
    }
}

fn assert_unchanged(what: &str, before: &NodeState, after: &NodeState) {
    let diff = after.snapshot.diff(&before.snapshot);
    assert!(diff.is_empty(), "{what} left state behind: {diff:?}");
    assert_eq!(after.ipv6, before.ipv6, "{what} changed IPv6 state");
}

fn assert_refused(what: &str, out: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} must fail: {}", describe(out));
    assert!(
        stderr.contains(message),
        "{what}: the message should say {message:?}: {}",
        describe(out)
    );
    assert!(!stderr.contains("panicked"), "{what}: {}", describe(out));
}

#[test]
fn bad_ipv6_input_is_refused_with_a_reason_and_changes_nothing() {
    require_root!();
    // A node not initialised yet: refused inits leave nothing.
    let topo = Topology::new();
    let id = unique("d6");
    let cli = PodnetCli {
        state_dir: std::env::temp_dir().join(format!("podnet-test-{id}")),
    };
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/podnet-test-{id}"));
    let watch = Watch {
        dirs: vec![cli.state_dir.clone(), pin_dir.clone()],
        node: &topo.node,
        netns_dir: PathBuf::from(NETNS_RUN_DIR),
        netns_prefix: format!("podnet-podnet-test-{id}-"),
        volatile: Vec::new(),
    };
    let pin = pin_dir.to_str().expect("UTF-8").to_owned();
    let base = [
        "node",
        "init",
        "--netns",
        topo.node.name(),
        "--uplink",
        UPLINK,
        "--cluster-cidr",
        "10.244.0.0/16",
        "--pin-dir",
        pin.as_str(),
        "--gc-interval",
        "0",
    ];
    let rows: [(&[&str], &str); 6] = [
        (
            &[
                "--pod-cidr",
                "10.244.32.0/24",
                "--pod-cidr",
                "fd00:10:244:32::/127",
            ],
            "/126 or larger",
        ),
        (
            &[
                "--pod-cidr",
                "10.244.32.0/24",
                "--pod-cidr",
                "fd00:10:244:32::/64",
                "--pod-cidr",
                "fd00:10:244:33::/64",
            ],
            "two IPv6 CIDRs (fd00:10:244:32::/64 and fd00:10:244:33::/64)",
        ),
        (
            &["--pod-cidr", "10.244.32.0/24", "--pod-cidr", "fe80::/64"],
            "link-local",
        ),
        (
            &[
                "--pod-cidr",
                "10.244.32.0/24",
                "--pod-cidr",
                "fd00:10:244:32::1/64",
            ],
            "host bits",
        ),
        (
            &[
                "--pod-cidr",
                "10.244.32.0/24",
                "--pod-cidr",
                "fd00:10:244:32::/64",
                "--cluster-cidr",
                "fd00:99::/48",
            ],
            "is not inside IPv6 cluster CIDR fd00:99::/48",
        ),
        (
            &["--pod-cidr", "fd00:10:244:32::/64"],
            "IPv6-only nodes are not supported yet",
        ),
    ];
    for (extra, message) in rows {
        let before = node_state(&watch, &topo.node);
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        let out = cli.podnet(&args);
        assert_refused(&format!("node init {extra:?}"), &out, message);
        assert_unchanged(
            &format!("node init {extra:?}"),
            &before,
            &node_state(&watch, &topo.node),
        );
        assert!(
            !cli.state_dir.exists(),
            "a refused init made {}",
            cli.state_dir.display()
        );
        assert!(
            !topo.node.ok("ip -o link show").contains("podnet0"),
            "a refused init made the bridge"
        );
    }

    // A working dual-stack node without an IPv6 service CIDR: an IPv6 ClusterIP is refused,
    // saying how to set one; the table stays as it was (services6.rs serves IPv6 ClusterIPs on
    // a node that has one).
    let node = dual_stack_node("10.244.33.0/24", "fd00:10:244:33::/64");
    let watch = Watch {
        dirs: vec![node.state_dir.clone(), node.pin_dir.clone()],
        node: &node.topo.node,
        netns_dir: PathBuf::from(NETNS_RUN_DIR),
        netns_prefix: format!(
            "podnet-{}-",
            node.state_dir.file_name().expect("name").to_string_lossy()
        ),
        volatile: vec!["STATS".to_owned()],
    };
    let pod = node.add_pod("web");
    let table = std::env::temp_dir().join(format!("podnet-test-{}.json", unique("svc6")));
    // An empty table first: the table's own files (and lock) exist, as on a node in use.
    std::fs::write(&table, json!({"services": []}).to_string()).expect("writing the table");
    node.ok(&["service", "apply", "-f", table.to_str().expect("UTF-8")]);
    for cluster_ips in [json!(["fd00:96::10"]), json!(["10.96.0.10", "fd00:96::10"])] {
        std::fs::write(
            &table,
            json!({"services": [{
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIPs": cluster_ips, "ports": [{"port": 80}]},
                "endpoints": [{"addresses": [pod.ip]}]
            }]})
            .to_string(),
        )
        .expect("writing the table");
        let before = node_state(&watch, &node.topo.node);
        let out = node.podnet(&["service", "apply", "-f", table.to_str().expect("UTF-8")]);
        let _ = std::fs::remove_file(&table);
        assert_refused(
            &format!("an IPv6 ClusterIP in {cluster_ips}"),
            &out,
            "is IPv6 but the node has no IPv6 service CIDR (set one with `node init --service-cidr",
        );
        assert_unchanged(
            "service apply",
            &before,
            &node_state(&watch, &node.topo.node),
        );
        let services = node.json(&["service", "list"]);
        assert_eq!(services.as_array().map(Vec::len), Some(0), "{services}");
    }
}

/// The CNI result's IPs as (address, gateway, interface index, version if any).
fn result_ips(result: &Value) -> Vec<(String, String, u64, Option<String>)> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {result}"))
        .iter()
        .map(|ip| {
            (
                ip["address"].as_str().unwrap_or_default().to_owned(),
                ip["gateway"].as_str().unwrap_or_default().to_owned(),
                ip["interface"].as_u64().unwrap_or(u64::MAX),
                ip["version"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The index of the container interface `ifname` (the one with a sandbox) in a result.
fn container_index(result: &Value, ifname: &str) -> u64 {
    result["interfaces"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .position(|i| i["name"] == ifname && i["sandbox"].as_str().is_some())
        })
        .and_then(|i| u64::try_from(i).ok())
        .unwrap_or_else(|| panic!("no container interface {ifname} in {result}"))
}

fn add_ok(node: &CniNode, conf: &Value, rt: &RuntimeConf) -> AddResult {
    node.cni.add(conf, rt).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn cni_standalone_lists_both_families_and_del_and_gc_free_both() {
    require_root!();
    let node = CniNode::new("10.244.67.0/24");
    let mut conf = node.standalone_conflist();
    conf["plugins"][0]["node"]["pod_cidr6"] = json!("fd00:10:244:67::/64");
    conf["plugins"][0]["node"]["cluster_cidr6"] = json!(CLUSTER_CIDR6);
    let mut conf04 = node.standalone_conflist_v("0.4.0");
    conf04["plugins"][0]["node"] = conf["plugins"][0]["node"].clone();
    let (a, b, c) = (Netns::new("da"), Netns::new("db"), Netns::new("dc"));
    let rt_a = RuntimeConf::new(&unique("ctr"), a.path());
    let rt_b = RuntimeConf::new(&unique("ctr"), b.path());
    let rt_c = RuntimeConf::new(&unique("ctr"), c.path());
    let result_a = add_ok(&node, &conf, &rt_a).result().clone();
    let result_b = add_ok(&node, &conf, &rt_b).result().clone();
    let result_c = add_ok(&node, &conf04, &rt_c).result().clone();

    let mut v6_of = Vec::new();
    for (pod, result, old) in [
        (&a, &result_a, false),
        (&b, &result_b, false),
        (&c, &result_c, true),
    ] {
        let eth0 = container_index(result, "eth0");
        assert_eq!(eth0, 1, "{result}");
        let ips = result_ips(result);
        assert_eq!(ips.len(), 2, "one address per family: {result}");
        let (v4, v6) = (&ips[0], &ips[1]);
        assert!(
            v4.0.starts_with("10.244.67.") && v4.0.ends_with("/24"),
            "{result}"
        );
        assert_eq!(v4.1, "10.244.67.1");
        assert!(
            v6.0.starts_with("fd00:10:244:67::") && v6.0.ends_with("/64"),
            "{result}"
        );
        assert_eq!(v6.1, "fd00:10:244:67::1");
        assert_eq!((v4.2, v6.2), (eth0, eth0), "both on eth0: {result}");
        if old {
            assert_eq!(
                (v4.3.as_deref(), v6.3.as_deref()),
                (Some("4"), Some("6")),
                "0.4.0 results carry ips[].version: {result}"
            );
        } else {
            assert_eq!((v4.3.as_deref(), v6.3.as_deref()), (None, None), "{result}");
        }
        let routes = result["routes"].as_array().expect("routes");
        assert!(
            routes.contains(&json!({"dst": "0.0.0.0/0", "gw": "10.244.67.1"}))
                && routes.contains(&json!({"dst": "::/0", "gw": "fd00:10:244:67::1"})),
            "a default route per family: {result}"
        );
        let ip6 = v6.0.split('/').next().expect("CIDR").to_owned();
        assert_pod_has_ipv6(pod, &ip6, 64, "fd00:10:244:67::1");
        v6_of.push(ip6);
    }
    node.cni
        .check(&conf, &rt_a, &result_a)
        .unwrap_or_else(|e| panic!("CHECK: {e}"));
    // CHECK notices a container that lost its IPv6 address, and passes again once it is back.
    c.ok(&format!("ip -6 addr del {}/64 dev eth0", v6_of[2]));
    let err = node
        .cni
        .check(&conf04, &rt_c, &result_c)
        .expect_err("CHECK must report the missing IPv6 address");
    assert!(
        err.to_string()
            .contains(&format!("IPv6 address {} is missing from eth0", v6_of[2])),
        "{err}"
    );
    addr6(&c, "eth0", &format!("{}/64", v6_of[2]));
    node.cni
        .check(&conf04, &rt_c, &result_c)
        .unwrap_or_else(|e| panic!("CHECK after the address is back: {e}"));
    let out = ping6(&a, &v6_of[1]);
    assert!(out.status.success(), "ping -6 a -> b: {}", describe(&out));
    let out = ping(
        &a,
        result_ips(&result_b)[0].0.split('/').next().expect("ip"),
        3,
    );
    assert!(out.status.success(), "ping a -> b: {}", describe(&out));
    let ipam = node.state_dir.join("ipam");
    let mut want = v6_of.clone();
    want.sort();
    assert_eq!(ipv6_records(&ipam), want);

    // DEL frees both families; GC frees what the runtime no longer lists (c).
    node.cni
        .del(&conf, &rt_a, Some(&result_a))
        .unwrap_or_else(|e| panic!("DEL: {e}"));
    node.cni
        .del(&conf, &rt_a, None)
        .unwrap_or_else(|e| panic!("repeated DEL: {e}"));
    assert!(!ipv6_records(&ipam).contains(&v6_of[0]));
    assert!(
        node.podnet_ip_records().len() == 2,
        "{:?}",
        node.podnet_ip_records()
    );
    let b_id = rt_b.container_id.clone();
    node.cni
        .gc(&conf, &[(b_id.as_str(), "eth0")])
        .unwrap_or_else(|e| panic!("GC: {e}"));
    assert_eq!(
        ipv6_records(&ipam),
        [v6_of[1].clone()],
        "GC freed c's IPv6 address"
    );
    assert_eq!(node.podnet_ip_records().len(), 1);
    node.cni
        .del(&conf, &rt_b, Some(&result_b))
        .unwrap_or_else(|e| panic!("DEL: {e}"));
    assert_eq!(ipv6_records(&ipam), Vec::<String>::new());
    let neigh = node.topo.node.ok("ip -6 neigh show");
    for ip6 in &v6_of {
        assert!(
            !neigh.contains(ip6.as_str()),
            "neighbour {ip6} left: {neigh}"
        );
    }
    for pod in [&a, &b, &c] {
        let eth0 = pod.exec(&["ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(!eth0.status.success(), "eth0 left in {}", pod.name());
    }
}

/// `bridge` + `host-local` with an IPv4 and an IPv6 range, then podnet chained, whose node is
/// dual-stack with `pod_cidr6`.
fn dual_stack_chained_conflist(node: &CniNode, range6: &str, pod_cidr6: &str) -> Value {
    let mut conf = node.chained_conflist();
    let ipam = &mut conf["plugins"][0]["ipam"];
    ipam.as_object_mut().expect("ipam object").remove("subnet");
    ipam["ranges"] = json!([[{"subnet": node.pod_cidr}], [{"subnet": range6}]]);
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    conf["plugins"][1]["node"]["pod_cidr6"] = json!(pod_cidr6);
    conf["plugins"][1]["node"]["cluster_cidr6"] = json!(CLUSTER_CIDR6);
    conf
}

#[test]
fn cni_chained_takes_both_families_from_prev_result_and_passes_them_through() {
    require_root!();
    let node = CniNode::new("10.244.68.0/24");
    let conf = dual_stack_chained_conflist(&node, "fd00:10:244:68::/64", "fd00:10:244:68::/64");
    let (a, b) = (Netns::new("ca6"), Netns::new("cb6"));
    let rt_a = RuntimeConf::new(&unique("ctr"), a.path());
    let rt_b = RuntimeConf::new(&unique("ctr"), b.path());
    let added_a = add_ok(&node, &conf, &rt_a);
    let added_b = add_ok(&node, &conf, &rt_b);
    let mut v6_of = Vec::new();
    for added in [&added_a, &added_b] {
        assert_eq!(
            added.per_plugin[1], added.per_plugin[0],
            "podnet must print bridge's dual-stack result unchanged"
        );
        let result = added.result();
        let eth0 = container_index(result, "eth0");
        let ips = result_ips(result);
        let v6 = ips
            .iter()
            .find(|ip| ip.0.contains(':'))
            .unwrap_or_else(|| panic!("no IPv6 address: {result}"));
        assert!(v6.0.starts_with("fd00:10:244:68::"), "{result}");
        assert!(ips.iter().all(|ip| ip.2 == eth0), "{result}");
        assert!(
            ips.iter().any(|ip| ip.0.starts_with("10.244.68.")),
            "{result}"
        );
        v6_of.push(v6.0.split('/').next().expect("CIDR").to_owned());
    }
    // podnet recorded the IPv6 address with the attachment.
    let recorded: Vec<Value> = std::fs::read_dir(node.state_dir.join("cni"))
        .expect("attachment records")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect();
    for ip6 in &v6_of {
        assert!(
            recorded.iter().any(|r| r["ip6"] == ip6.as_str()),
            "{ip6} in {recorded:?}"
        );
    }
    // podnet registered both IPv6 endpoints; IPv6 between the containers goes by podnet's
    // fast path (once their addresses left duplicate address detection), as IPv4 does.
    let mut want = v6_of.clone();
    want.sort();
    assert_eq!(endpoints6(&node.pin_dir), want);
    let before = node.stats()["forward_local6"];
    wait_until(Duration::from_secs(10), "IPv6 a -> b", || {
        ping6(&a, &v6_of[1]).status.success()
    });
    assert!(node.stats()["forward_local6"] >= before + 6);
    let ip_b = result_ips(added_b.result())
        .into_iter()
        .find(|ip| !ip.0.contains(':'))
        .map(|ip| ip.0.split('/').next().unwrap_or_default().to_owned())
        .expect("IPv4");
    let out = ping(&a, &ip_b, 3);
    assert!(out.status.success(), "ping a -> b: {}", describe(&out));

    for (rt, added) in [(&rt_a, &added_a), (&rt_b, &added_b)] {
        node.cni
            .del(&conf, rt, Some(added.result()))
            .unwrap_or_else(|e| panic!("DEL: {e}"));
    }
    let host_local = ipv6_records(
        &node
            .host_local_dir
            .join(conf["name"].as_str().expect("name")),
    );
    assert_eq!(
        host_local,
        Vec::<String>::new(),
        "host-local's IPv6 records left"
    );
    assert_eq!(node.pod_links(), Vec::<String>::new(), "no veth left");
    assert_eq!(
        endpoints6(&node.pin_dir),
        Vec::<String>::new(),
        "IPv6 endpoints left"
    );

    // A container address outside the node's IPv6 pod CIDR is refused (host-local and the
    // node disagree), with the spec's invalid-configuration code.
    let other = CniNode::new("10.244.69.0/24");
    let conf = dual_stack_chained_conflist(&other, "fd00:10:244:70::/64", "fd00:10:244:69::/64");
    let c = Netns::new("cc6");
    let rt_c = RuntimeConf::new(&unique("ctr"), c.path());
    let err = other
        .cni
        .add(&conf, &rt_c)
        .expect_err("an IPv6 address outside pod_cidr6 must be refused");
    let text = err.to_string();
    assert!(
        text.contains("outside the node's IPv6 pod CIDR fd00:10:244:69::/64"),
        "{text}"
    );
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte"))
        .collect();
    bytes.try_into().expect("six MAC bytes")
}

/// An Ethernet frame carrying IPv6 (hop limit 255, as Neighbor Discovery requires) with the
/// ICMPv6 message `icmp`, whose checksum (bytes 2..4) is filled in here.
fn icmp6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    const IPPROTO_ICMPV6: u8 = 58;
    const ND_HOP_LIMIT: u8 = 255;
    let len = u32::try_from(icmp.len()).expect("small message");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    pseudo.extend_from_slice(&icmp);
    let sum = podnet_tests::packet::csum(&pseudo, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&u16::try_from(icmp.len()).expect("small").to_be_bytes());
    ip.extend_from_slice(&[IPPROTO_ICMPV6, ND_HOP_LIMIT]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&icmp);
    podnet_tests::packet::eth(dst_mac, src_mac, podnet_tests::packet::ETH_P_IPV6, &ip)
}

/// An unsolicited Neighbor Advertisement (override flag set) for `target` at `mac`.
fn neighbor_advert(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    const ND_NEIGHBOR_ADVERT: u8 = 136;
    const OVERRIDE: u8 = 0x20;
    let mut icmp = vec![ND_NEIGHBOR_ADVERT, 0, 0, 0, OVERRIDE, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    icmp
}

/// A Router Advertisement: a default router for 30 minutes, at `mac`.
fn router_advert(mac: [u8; 6]) -> Vec<u8> {
    const ND_ROUTER_ADVERT: u8 = 134;
    let mut icmp = vec![ND_ROUTER_ADVERT, 0, 0, 0, 64, 0, 0x07, 0x08];
    icmp.extend_from_slice(&[0; 8]);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac);
    icmp
}

/// Sends `frame` out of eth0 of `ns` twice, as it is (a raw packet socket).
fn send_raw(ns: &(impl InNetns + ?Sized), frame: &[u8]) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    ns.ok(&format!(
        "python3 -c 'import socket,sys; s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
         s.bind((\"eth0\", 0)); [s.send(bytes.fromhex(sys.argv[1])) for _ in range(2)]' {hex}"
    ));
}

/// The MAC pod namespace `ns` holds for `ip` on eth0, if any.
fn pod_neighbour(ns: &(impl InNetns + ?Sized), ip: Ipv6Addr) -> Option<String> {
    let out = ns.ok(&format!("ip -j -6 neigh show {ip} dev eth0"));
    let v: Value = serde_json::from_str(&out).expect("ip -j neigh");
    v.as_array()?
        .iter()
        .find_map(|n| n["lladdr"].as_str().map(str::to_owned))
}

/// The link-local address of eth0 in `ns`.
fn link_local(ns: &(impl InNetns + ?Sized)) -> Ipv6Addr {
    link_local_of(ns, "eth0")
}

/// The link-local address of `ifname` in `ns`.
fn link_local_of(ns: &(impl InNetns + ?Sized), ifname: &str) -> Ipv6Addr {
    let out = ns.ok(&format!("ip -6 -o addr show dev {ifname} scope link"));
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address: {out}"))
}

#[test]
fn ipv6_between_pods_of_one_node_is_delivered_by_podnet_and_pods_cannot_spoof_or_advertise() {
    require_root!();
    let node = dual_stack_node("10.244.41.0/24", "fd00:10:244:41::/64");
    let gateway6: Ipv6Addr = "fd00:10:244:41::1".parse().expect("IPv6");
    let (a, b, c) = (node.add_pod("a"), node.add_pod("b"), node.add_pod("c"));
    let (a6, b6, c6) = (
        address6_of(&node, "a"),
        address6_of(&node, "b"),
        address6_of(&node, "c"),
    );
    // The pods' own link-local addresses must be usable before anything is sent from them.
    for pod in [&a, &b, &c] {
        wait_until(Duration::from_secs(5), "eth0 leaves tentative", || {
            !pod.ns
                .ok("ip -6 -o addr show dev eth0 tentative")
                .contains("inet6")
        });
    }

    // Pod to pod: podnet delivers it (both directions), from the pod's own address.
    let before = node.stats();
    let out = ping6(&a.ns, &b6.to_string());
    assert!(out.status.success(), "ping -6 a -> b: {}", describe(&out));
    tcp_sees(&a.ns, IpAddr::V6(a6), &b.ns, IpAddr::V6(b6), 8080);
    let after = node.stats();
    assert!(
        after["forward_local6"] >= before["forward_local6"] + 6,
        "IPv6 pod to pod goes by podnet: {before:?} -> {after:?}"
    );

    // Hop limit: a pod sending straight to its neighbour (on-link, one link as with the
    // bridge) keeps its hop limit, so 1 arrives; sent through the gateway (routed), a hop
    // limit of 1 goes to the node's kernel, which answers time exceeded as a router does,
    // and 2 is forwarded by podnet.
    let out = a.ns.sh(&format!("ping -6 -c 2 -i 0.1 -W 1 -t 1 {b6}"));
    assert!(
        out.status.success(),
        "on-link, hop limit 1: {}",
        describe(&out)
    );
    a.ns.ok(&format!("ip -6 route add {c6}/128 via {gateway6}"));
    let out = a.ns.sh(&format!("ping -6 -c 1 -W 1 -t 1 {c6}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && text.contains("Time exceeded")
            && text.contains(&gateway6.to_string()),
        "routed, hop limit 1: time exceeded from the gateway: {}",
        describe(&out)
    );
    let before = node.stats()["forward_local6"];
    let out = a.ns.sh(&format!("ping -6 -c 2 -i 0.1 -W 1 -t 2 {c6}"));
    assert!(
        out.status.success(),
        "routed, hop limit 2: {}",
        describe(&out)
    );
    assert!(node.stats()["forward_local6"] >= before + 2);
    a.ns.ok(&format!("ip -6 route del {c6}/128 via {gateway6}"));

    // A pod sending from another pod's address is dropped and counted.
    a.ns.ok(&format!("ip -6 addr add {b6}/128 dev eth0 nodad"));
    let before = node.stats()["drop_spoofed"];
    let out = a.ns.sh(&format!("ping -6 -c 2 -i 0.1 -W 1 -I {b6} {c6}"));
    assert!(!out.status.success(), "a spoofed b: {}", describe(&out));
    let after = node.stats()["drop_spoofed"];
    assert!(
        after >= before + 2,
        "spoofed IPv6 counted: {before} -> {after}"
    );
    a.ns.ok(&format!("ip -6 addr del {b6}/128 dev eth0"));

    // Neighbor Discovery spoofing: c knows b; a advertises b's address as its own MAC (from
    // its own address, and from its link-local one). c's entry must still be b's MAC.
    let out = ping6(&c.ns, &b6.to_string());
    assert!(out.status.success(), "{}", describe(&out));
    let (mac_a, mac_b) = (parse_mac(&mac(&a.ns, "eth0")), mac(&b.ns, "eth0"));
    assert_eq!(pod_neighbour(&c.ns, b6).as_deref(), Some(mac_b.as_str()));
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("IPv6");
    let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
    let before = node.stats()["drop_nd_spoofed"];
    for src in [a6, link_local(&a.ns)] {
        send_raw(
            &a.ns,
            &icmp6_frame(
                all_nodes_mac,
                mac_a,
                src,
                all_nodes,
                neighbor_advert(b6, mac_a),
            ),
        );
    }
    let after = node.stats()["drop_nd_spoofed"];
    assert!(
        after >= before + 4,
        "spoofed NAs counted: {before} -> {after}"
    );
    assert_eq!(
        pod_neighbour(&c.ns, b6).as_deref(),
        Some(mac_b.as_str()),
        "c's neighbour entry for b was poisoned"
    );
    let out = ping6(&c.ns, &b6.to_string());
    assert!(
        out.status.success(),
        "c still reaches b: {}",
        describe(&out)
    );
    // An advertisement of its own address passes (the node and c learn it as usual).
    send_raw(
        &a.ns,
        &icmp6_frame(
            all_nodes_mac,
            mac_a,
            a6,
            all_nodes,
            neighbor_advert(a6, mac_a),
        ),
    );
    assert_eq!(node.stats()["drop_nd_spoofed"], after);

    // A Router Advertisement from a pod is dropped: c gets no default route through a.
    let before = node.stats()["drop_router_advert"];
    send_raw(
        &a.ns,
        &icmp6_frame(
            all_nodes_mac,
            mac_a,
            link_local(&a.ns),
            all_nodes,
            router_advert(mac_a),
        ),
    );
    let after = node.stats()["drop_router_advert"];
    assert!(after >= before + 2, "RAs counted: {before} -> {after}");
    std::thread::sleep(Duration::from_millis(200));
    let routes = c.ns.ok("ip -6 route show default");
    assert!(
        routes.contains(&format!("via {gateway6}")) && !routes.contains("fe80"),
        "c's default routes: {routes}"
    );

    // The node's and the pods' own IPv6 still work: ND with the gateway, link-local between
    // pods, the node reaching a pod, a pod reaching the outside (masqueraded).
    let out = ping6(&a.ns, &gateway6.to_string());
    assert!(out.status.success(), "a -> gateway: {}", describe(&out));
    let out = ping6(&a.ns, &format!("{}%eth0", link_local(&b.ns)));
    assert!(
        out.status.success(),
        "a -> b link-local: {}",
        describe(&out)
    );
    let out = ping6(&node.topo.node, &a6.to_string());
    assert!(out.status.success(), "node -> a: {}", describe(&out));
    let out = ping6(&b.ns, &OUTSIDE_IP6.to_string());
    assert!(out.status.success(), "b -> outside: {}", describe(&out));
    tcp_sees(
        &b.ns,
        IpAddr::V6(NODE_IP6),
        &node.topo.outside,
        IpAddr::V6(OUTSIDE_IP6),
        7000,
    );
    let neigh = node.topo.node.ok(&format!("ip -6 neigh show {a6}"));
    assert!(
        neigh.contains(&mac(&a.ns, "eth0")),
        "the node resolved a: {neigh}"
    );

    // A node whose pods were made before IPv6 endpoints existed (a's entry gone): a's IPv6 is
    // dropped as spoofed until `node init` registers it again from a's IPv4 endpoint.
    let key: Vec<String> = a6.octets().iter().map(|b| format!("0x{b:02x}")).collect();
    let out = std::process::Command::new("bpftool")
        .args(["map", "delete", "pinned"])
        .arg(node.pin_dir.join("ENDPOINTS6"))
        .arg("key")
        .args(&key)
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    let out = a.ns.sh(&format!("ping -6 -c 1 -W 1 {c6}"));
    assert!(
        !out.status.success(),
        "without its endpoint: {}",
        describe(&out)
    );
    let mut init = node.init_args();
    let node6 = NODE_IP6.to_string();
    init.extend(
        [
            "--pod-cidr",
            "fd00:10:244:41::/64",
            "--cluster-cidr",
            CLUSTER_CIDR6,
            "--node-ip6",
            &node6,
            "--gc-interval",
            "0",
        ]
        .map(str::to_owned),
    );
    node.ok(&init.iter().map(String::as_str).collect::<Vec<_>>());
    let out = ping6(&a.ns, &c6.to_string());
    assert!(out.status.success(), "after node init: {}", describe(&out));

    // `podnet gc` removes an IPv6 endpoint no pod holds (a removal cut short), and only it.
    let stale: Ipv6Addr = "fd00:10:244:41::99".parse().expect("IPv6");
    let hex =
        |bytes: &[u8]| -> Vec<String> { bytes.iter().map(|b| format!("0x{b:02x}")).collect() };
    let out = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(node.pin_dir.join("ENDPOINTS6"))
        .arg("key")
        .args(hex(&stale.octets()))
        .arg("value")
        .args(hex(&[0u8; 24]))
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    let report = node.json(&["gc"]);
    assert_eq!(report["endpoints6"], json!([stale.to_string()]), "{report}");

    // pod del removes the pod's IPv6 endpoint, and only its own.
    assert_eq!(
        endpoints6(&node.pin_dir),
        [a6, b6, c6].map(|a| a.to_string())
    );
    node.ok(&["pod", "del", "b"]);
    assert_eq!(endpoints6(&node.pin_dir), [a6, c6].map(|a| a.to_string()));
    let out = a.ns.sh(&format!("ping -6 -c 1 -W 1 {b6}"));
    assert!(!out.status.success(), "b is gone: {}", describe(&out));
    node.ok(&["pod", "del", "a"]);
    node.ok(&["pod", "del", "c"]);
    assert_eq!(endpoints6(&node.pin_dir), Vec::<String>::new());
}

/// The addresses in the node's `ENDPOINTS6` map, sorted (`bpftool` prints the BTF key).
fn endpoints6(pin_dir: &Path) -> Vec<String> {
    // From the host's mount namespace: `ip netns exec` would show an empty bpffs.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("ENDPOINTS6"))
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut addrs: Vec<String> = v
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let key = if e["formatted"].is_null() {
                &e["key"]
            } else {
                &e["formatted"]["key"]
            };
            let bytes: Vec<u8> = key["addr"]
                .as_array()
                .unwrap_or_else(|| panic!("no addr in {e}"))
                .iter()
                .map(|b| u8::try_from(b.as_u64().expect("byte")).expect("byte"))
                .collect();
            let octets: [u8; 16] = bytes.try_into().expect("16 bytes");
            Ipv6Addr::from(octets).to_string()
        })
        .collect();
    addrs.sort();
    addrs
}

/// A Router Advertisement (router lifetime 30 minutes) with one Prefix Information option:
/// `prefix`/64, on-link and for autoconfiguration (SLAAC).
fn router_advert_with_prefix(mac: [u8; 6], prefix: Ipv6Addr) -> Vec<u8> {
    const OPT_PREFIX_INFO: u8 = 3;
    const PREFIX_INFO_UNITS: u8 = 4;
    const PREFIX_LEN: u8 = 64;
    const ON_LINK_AUTONOMOUS: u8 = 0xc0;
    const LIFETIME: [u8; 4] = 3600u32.to_be_bytes();
    let mut icmp = router_advert(mac);
    icmp.extend_from_slice(&[
        OPT_PREFIX_INFO,
        PREFIX_INFO_UNITS,
        PREFIX_LEN,
        ON_LINK_AUTONOMOUS,
    ]);
    icmp.extend_from_slice(&LIFETIME); // valid
    icmp.extend_from_slice(&LIFETIME); // preferred
    icmp.extend_from_slice(&[0; 4]);
    icmp.extend_from_slice(&prefix.octets());
    icmp
}

/// podnet's drop counters (every reason named `drop_*`), summed.
fn drops(node: &Node) -> u64 {
    node.stats()
        .iter()
        .filter(|(reason, _)| reason.starts_with("drop_"))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn the_nodes_own_ipv6_on_the_uplink_keeps_working_with_the_programs_attached() {
    require_root!();
    let node = dual_stack_node("10.244.43.0/24", "fd00:10:244:43::/64");
    let _pod = node.add_pod("a");
    let (host, outside) = (&node.topo.node, &node.topo.outside);
    let attached = host.ok(&format!("tc filter show dev {UPLINK} ingress"));
    assert!(attached.contains("from_uplink"), "{attached}");
    let drops_before = drops(&node);

    // Link-local addresses both ways, and Neighbor Discovery for the global ones.
    let node_ll = link_local_of(host, UPLINK);
    let outside_ll = link_local_of(outside, &node.topo.outside_if);
    let out = ping6(host, &format!("{outside_ll}%{UPLINK}"));
    assert!(
        out.status.success(),
        "node -> outside link-local: {}",
        describe(&out)
    );
    let out = ping6(outside, &format!("{node_ll}%{}", node.topo.outside_if));
    assert!(
        out.status.success(),
        "outside -> node link-local: {}",
        describe(&out)
    );
    let out = ping6(host, &OUTSIDE_IP6.to_string());
    assert!(out.status.success(), "node -> outside: {}", describe(&out));
    let out = ping6(outside, &NODE_IP6.to_string());
    assert!(out.status.success(), "outside -> node: {}", describe(&out));
    let outside_mac = mac(outside, &node.topo.outside_if);
    let neigh = host.ok(&format!("ip -6 neigh show {OUTSIDE_IP6} dev {UPLINK}"));
    assert!(
        neigh.contains(&outside_mac),
        "the node resolved the outside: {neigh}"
    );

    // A Router Advertisement from the fabric's router reaches the node's kernel: it takes the
    // default route and an address of the advertised prefix (SLAAC; a forwarding node
    // accepts RAs with accept_ra=2).
    host.ok(&format!("sysctl -q -w net.ipv6.conf.{UPLINK}.accept_ra=2"));
    let prefix: Ipv6Addr = "fd00:198:99::".parse().expect("prefix");
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("all-nodes");
    let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
    let frame = icmp6_frame(
        all_nodes_mac,
        parse_mac(&outside_mac),
        outside_ll,
        all_nodes,
        router_advert_with_prefix(parse_mac(&outside_mac), prefix),
    );
    send_raw(outside, &frame);
    wait_until(
        Duration::from_secs(5),
        "an address from the RA's prefix",
        || {
            host.ok(&format!("ip -6 -o addr show dev {UPLINK}"))
                .contains("fd00:198:99:")
        },
    );
    let default = host.ok("ip -6 route show default");
    assert!(
        default.contains(&format!("via {outside_ll}")) && default.contains("proto ra"),
        "the node's IPv6 default route: {default}"
    );
    assert_eq!(
        drops(&node),
        drops_before,
        "podnet dropped the node's own IPv6"
    );
}
