//! Several nodes (native routing): three nodes on one fabric that knows nothing about pod
//! CIDRs, plus an outside host. Pods reach pods on every other node by IP with their source
//! preserved, straight out of the uplink and straight into the pod on the other side; pods
//! reach the outside as their own node's IP; peers change live; NodePorts reach backends on
//! any node (policy cluster) or only local ones with the client preserved (policy local).

use podnet_tests::{
    Cluster, FABRIC_GATEWAY, InNetns as _, connect_tcp, describe, peer_ip_of, require_root,
    serve_tcp,
};

#[test]
fn pods_reach_pods_on_every_other_node_by_ip_with_the_source_preserved_native() {
    require_root!();
    pods_reach_pods_on_every_other_node_by_ip_with_the_source_preserved(&[]);
}

#[test]
fn pods_reach_pods_on_every_other_node_by_ip_with_the_source_preserved_overlay() {
    require_root!();
    pods_reach_pods_on_every_other_node_by_ip_with_the_source_preserved(&["--mode", "vxlan"]);
}

fn pods_reach_pods_on_every_other_node_by_ip_with_the_source_preserved(mode: &[&str]) {
    let cluster = Cluster::new(3, mode);
    let pods: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.add_pod(&format!("p{}", &n.name[5..])))
        .collect();
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| serve_tcp(&p.ns, &format!("{}:8080", p.ip)))
        .collect();
    let before: Vec<_> = cluster.nodes.iter().map(|n| n.cli.stats()).collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let reply = connect_tcp(&from.ns, &format!("{}:8080", to.ip))
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.ip, to.ip));
            assert_eq!(
                peer_ip_of(&reply).map(|ip| ip.to_string()),
                Some(from.ip.clone()),
                "{} -> {}: the server sees the client pod's own address",
                from.ip,
                to.ip
            );
        }
        let ping = from.ping(&pods[(i + 1) % pods.len()].ip, 2);
        assert!(ping.status.success(), "ping: {}", describe(&ping));
    }
    for (node, before) in cluster.nodes.iter().zip(&before) {
        let after = node.stats();
        for reason in ["forward_remote_node", "forward_uplink_to_pod"] {
            assert!(
                after[reason] >= before[reason] + 10,
                "{}: {reason} {after:?}",
                node.name
            );
        }
    }
    let fabric_routes = cluster.fabric.ok("ip route show");
    assert!(!fabric_routes.contains("10.244."), "{fabric_routes}");
}

#[test]
fn a_pod_reaches_the_outside_as_its_own_nodes_ip_native() {
    require_root!();
    a_pod_reaches_the_outside_as_its_own_nodes_ip(&[]);
}

#[test]
fn a_pod_reaches_the_outside_as_its_own_nodes_ip_overlay() {
    require_root!();
    a_pod_reaches_the_outside_as_its_own_nodes_ip(&["--mode", "vxlan"]);
}

fn a_pod_reaches_the_outside_as_its_own_nodes_ip(mode: &[&str]) {
    let cluster = Cluster::new(2, mode);
    let _server = serve_tcp(&cluster.outside, &format!("{FABRIC_GATEWAY}:8080"));
    for node in &cluster.nodes {
        let pod = node.add_pod("client");
        let reply = connect_tcp(&pod.ns, &format!("{FABRIC_GATEWAY}:8080")).expect("to outside");
        assert_eq!(
            peer_ip_of(&reply).map(|ip| ip.to_string()),
            Some(node.ip.to_string())
        );
    }
}

#[test]
fn peers_change_live_and_bad_peers_are_refused_native() {
    require_root!();
    peers_change_live_and_bad_peers_are_refused(&[]);
}

#[test]
fn peers_change_live_and_bad_peers_are_refused_overlay() {
    require_root!();
    peers_change_live_and_bad_peers_are_refused(&["--mode", "vxlan"]);
}

fn peers_change_live_and_bad_peers_are_refused(mode: &[&str]) {
    let cluster = Cluster::new(2, mode);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let pa = a.add_pod("pa");
    let pb = b.add_pod("pb");
    let _server = serve_tcp(&pb.ns, &format!("{}:8080", pb.ip));
    let target = format!("{}:8080", pb.ip);
    connect_tcp(&pa.ns, &target).expect("a -> b with the peer known");

    let list = a.json(&["node", "peer", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    a.ok(&["node", "peer", "del", "--name", &b.name]);
    assert!(
        connect_tcp(&pa.ns, &target).is_err(),
        "without the peer, node b's pods are unknown to node a"
    );
    a.ok(&[
        "node",
        "peer",
        "add",
        "--name",
        &b.name,
        "--node-ip",
        &b.ip.to_string(),
        "--pod-cidr",
        &b.pod_cidr,
    ]);
    connect_tcp(&pa.ns, &target).expect("a -> b once the peer is back, nothing restarted");

    let before = a.json(&["node", "peer", "list"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--name",
                "x",
                "--node-ip",
                "198.18.0.99",
                "--pod-cidr",
                &b.pod_cidr,
            ],
            "overlaps",
        ),
        (
            &[
                "--name",
                "x",
                "--node-ip",
                "198.18.0.99",
                "--pod-cidr",
                &a.pod_cidr,
            ],
            "overlaps",
        ),
        (
            &[
                "--name",
                "x",
                "--node-ip",
                "198.18.0.99",
                "--pod-cidr",
                "10.9.0.0/24",
            ],
            "not inside the cluster CIDR",
        ),
        (
            &[
                "--name",
                "x",
                "--node-ip",
                "198.18.0.99",
                "--pod-cidr",
                "10.244.200.1/24",
            ],
            "host bits",
        ),
        (
            &[
                "--name",
                &b.name,
                "--node-ip",
                "198.18.0.99",
                "--pod-cidr",
                "10.244.201.0/24",
            ],
            "already exists",
        ),
        (
            &[
                "--name",
                "x",
                "--node-ip",
                &b.ip.to_string(),
                "--pod-cidr",
                "10.244.202.0/24",
            ],
            "already node",
        ),
    ];
    for (args, message) in cases {
        let mut argv = vec!["node", "peer", "add"];
        argv.extend_from_slice(args);
        let out = a.podnet(&argv);
        assert!(!out.status.success(), "{argv:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{argv:?}: {stderr}");
    }
    assert_eq!(a.json(&["node", "peer", "list"]), before);
}

#[test]
fn the_outside_reaches_every_backend_through_any_nodes_nodeport_native() {
    require_root!();
    the_outside_reaches_every_backend_through_any_nodes_nodeport(&[]);
}

#[test]
fn the_outside_reaches_every_backend_through_any_nodes_nodeport_overlay() {
    require_root!();
    the_outside_reaches_every_backend_through_any_nodes_nodeport(&["--mode", "vxlan"]);
}

fn the_outside_reaches_every_backend_through_any_nodes_nodeport(mode: &[&str]) {
    let cluster = Cluster::new(3, mode);
    // Web pods on nodes 1 and 2; node 0 has none.
    let webs: Vec<_> = cluster.nodes[1..]
        .iter()
        .map(|n| n.add_pod("web"))
        .collect();
    let _servers: Vec<_> = webs
        .iter()
        .map(|p| serve_tcp(&p.ns, "0.0.0.0:80"))
        .collect();
    let backends: Vec<String> = webs.iter().map(|p| format!("{}:80", p.ip)).collect();
    for node in &cluster.nodes {
        let mut args = vec!["nodeport", "add", "--port", "30080"];
        for b in &backends {
            args.extend(["--backend", b.as_str()]);
        }
        node.ok(&args);
    }
    for node in &cluster.nodes {
        let target = format!("{}:30080", node.ip);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let reply = connect_tcp(&cluster.outside, &target)
                .unwrap_or_else(|e| panic!("outside -> {target}: {e}"));
            seen.insert(
                podnet_tests::local_ip_of(&reply)
                    .expect("local")
                    .to_string(),
            );
            let client = peer_ip_of(&reply).expect("peer").to_string();
            // A local backend sees the real client; a remote one sees the forwarding node.
            let local_backend = webs
                .iter()
                .zip(&cluster.nodes[1..])
                .any(|(w, n)| n.name == node.name && reply.contains(&format!("local={}:", w.ip)));
            let expected = if local_backend {
                FABRIC_GATEWAY.to_string()
            } else {
                node.ip.to_string()
            };
            assert_eq!(client, expected, "via {}: {reply}", node.name);
        }
        let all: std::collections::BTreeSet<String> = webs.iter().map(|w| w.ip.clone()).collect();
        assert_eq!(seen, all, "via {}: every backend", node.name);
    }
    // Policy local: only this node's pods, and the client's address is preserved.
    let n1 = &cluster.nodes[1];
    let out = n1.podnet(&[
        "nodeport",
        "add",
        "--port",
        "30081",
        "--policy",
        "local",
        "--backend",
        &backends[1],
    ]);
    assert!(!out.status.success(), "a remote backend under policy local");
    n1.ok(&[
        "nodeport",
        "add",
        "--port",
        "30081",
        "--policy",
        "local",
        "--backend",
        &backends[0],
    ]);
    let reply = connect_tcp(&cluster.outside, &format!("{}:30081", n1.ip)).expect("local policy");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(FABRIC_GATEWAY.to_string())
    );
}

#[test]
fn pods_and_nodes_reach_each_other_across_nodes_native() {
    require_root!();
    pods_and_nodes_reach_each_other_across_nodes(&[]);
}

/// Overlay mode: the node's own traffic to another node's pod (kubelet probes, host-network
/// pods) goes through the tunnel too, and the replies come back out of it to the node.
#[test]
fn pods_and_nodes_reach_each_other_across_nodes_overlay() {
    require_root!();
    pods_and_nodes_reach_each_other_across_nodes(&["--mode", "vxlan"]);
}

fn pods_and_nodes_reach_each_other_across_nodes(mode: &[&str]) {
    let cluster = Cluster::new(2, mode);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let pb = b.add_pod("pb");
    // A server on node a itself, reached by a pod on node b: no NAT inside the cluster.
    let _node_server = serve_tcp(&a.ns, &format!("{}:9000", a.ip));
    let reply = connect_tcp(&pb.ns, &format!("{}:9000", a.ip)).expect("pod b -> node a");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(pb.ip.clone())
    );
    // And node a reaches pod b (a kernel route to its pod CIDR, kept by podnet: via node b, or
    // through the tunnel to node b), seen from node a's own IP; and node b reaches a pod of a.
    let _pod_server = serve_tcp(&pb.ns, &format!("{}:9001", pb.ip));
    let reply = connect_tcp(&a.ns, &format!("{}:9001", pb.ip)).expect("node a -> pod b");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(a.ip.to_string())
    );
    let pa = a.add_pod("pa");
    let _pa_server = serve_tcp(&pa.ns, &format!("{}:9002", pa.ip));
    let reply = connect_tcp(&b.ns, &format!("{}:9002", pa.ip)).expect("node b -> pod a");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(b.ip.to_string())
    );
    let ping = a.ns.sh(&format!("ping -c 1 -W 1 {}", pb.ip));
    assert!(
        ping.status.success(),
        "node a pings pod b: {}",
        describe(&ping)
    );
    // Without the peer the route goes; with it back, it returns.
    a.ok(&["node", "peer", "del", "--name", &b.name]);
    assert!(!a.ns.ok("ip route show").contains(&b.pod_cidr));
    assert!(connect_tcp(&a.ns, &format!("{}:9001", pb.ip)).is_err());
}

#[test]
fn overlay_mode_carries_pods_between_nodes_in_vxlan() {
    require_root!();
    let cluster = Cluster::new(3, &["--mode", "vxlan"]);
    let pods: Vec<_> = cluster.nodes.iter().map(|n| n.add_pod("p")).collect();
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| serve_tcp(&p.ns, &format!("{}:8080", p.ip)))
        .collect();
    for (i, from) in pods.iter().enumerate() {
        // Pods leave room for the encapsulation.
        // (`ip`, not /sys: sysfs shows the namespace that mounted it, not the caller's.)
        let mtu_of = |ns: &dyn podnet_tests::InNetns, dev: &str| -> u32 {
            let line = ns.ok(&format!("ip -o link show dev {dev}"));
            let after = line.split(" mtu ").nth(1).expect("mtu in ip link output");
            after
                .split_whitespace()
                .next()
                .expect("mtu")
                .parse()
                .expect("number")
        };
        let uplink = mtu_of(&cluster.nodes[i].ns, "uplink0");
        assert_eq!(
            mtu_of(&from.ns, "eth0"),
            uplink - 50,
            "pod MTU in overlay mode"
        );
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                let reply = connect_tcp(&from.ns, &format!("{}:8080", to.ip))
                    .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.ip, to.ip));
                assert_eq!(
                    peer_ip_of(&reply).map(|ip| ip.to_string()),
                    Some(from.ip.clone())
                );
            }
        }
    }
    for node in &cluster.nodes {
        // The node's own routes to other pod CIDRs go through the tunnel device, each with
        // its tunnel key (the fabric knows no pod CIDR), and the VXLAN device counted the
        // packets.
        let routes = node.ns.ok("ip route show");
        for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
            let route = routes
                .lines()
                .find(|l| l.starts_with(&other.pod_cidr))
                .unwrap_or_else(|| {
                    panic!("{}: no route to {}: {routes}", node.name, other.pod_cidr)
                });
            assert!(
                route.contains("encap ip id 1")
                    && route.contains(&format!("dst {}", other.ip))
                    && route.contains("dev podnet-vxlan"),
                "{}: {route}",
                node.name
            );
        }
        let stats = node.ns.ok("ip -s -j link show dev podnet-vxlan");
        let parsed: serde_json::Value = serde_json::from_str(&stats).expect("ip -j");
        let tx = parsed[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no TX counters in {stats}"));
        assert!(tx >= 10, "{}: {tx} packets encapsulated", node.name);
    }
    // A NodePort on node 0 whose backend is on node 2, reached from the outside: forwarded
    // through the overlay, replies back through node 0.
    cluster.nodes[0].ok(&[
        "nodeport",
        "add",
        "--port",
        "30080",
        "--backend",
        &format!("{}:8080", pods[2].ip),
    ]);
    let reply = connect_tcp(&cluster.outside, &format!("{}:30080", cluster.nodes[0].ip))
        .expect("outside -> node 0 NodePort -> pod on node 2");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(cluster.nodes[0].ip.to_string())
    );
    // SNAT to the outside still uses the node's own IP.
    let _server = serve_tcp(&cluster.outside, &format!("{FABRIC_GATEWAY}:8081"));
    let reply = connect_tcp(&pods[0].ns, &format!("{FABRIC_GATEWAY}:8081")).expect("to outside");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(cluster.nodes[0].ip.to_string())
    );
}

/// The demo with two nodes on different subnets behind a router that knows no pod CIDRs: only
/// the overlay can carry pod to pod there. It also checks the whole single-node demo.
#[test]
fn the_two_node_demo_runs_over_a_routed_fabric() {
    require_root!();
    let name = podnet_tests::unique("dm");
    let mut cmd = std::process::Command::new(podnet_tests::podnet_bin());
    cmd.args(["demo", "--name", &name, "--nodes", "2"]);
    let out = podnet_tests::run_bounded(cmd, std::time::Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo: {}", describe(&out));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("far saw a connection from"))
        .unwrap_or_else(|| panic!("no cross-node exchange in:\n{stdout}"));
    assert!(line.contains("(client's pod IP is"), "{line}");
    let ns = podnet_tests::netns_list();
    assert!(
        !ns.iter().any(|n| n.starts_with(&name)),
        "the demo cleaned up: {ns:?}"
    );
}
