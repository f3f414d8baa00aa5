//! NAT end to end, in namespaces the tests make: a node whose uplink is a veth to an "outside"
//! namespace that plays client and server. The outside has no route to any pod CIDR, so a reply
//! reaches a pod only if the node translated the flow.
//!
//! What a user depends on: pods reach the outside as the node IP and get the replies (TCP, UDP,
//! ping); NodePorts reach every backend from outside, from pods (hairpin included) and from the
//! node itself; pod-to-pod and the node's own traffic are never translated; no iptables or nft
//! rule is involved; a stream survives `node init`; and a full table refuses new flows visibly
//! while established ones keep working.

use std::{collections::BTreeSet, net::IpAddr, thread, time::Duration};

use podnet_tests::{
    InNetns as _, NODE_IP, Node, OUTSIDE_IP, addr, addr_field, churn_tcp, connect_tcp, connect_udp,
    describe, http_get, local_ip_of, netprobe, netprobe_bin, peer_ip_of, require_root, route,
    serve_http, serve_tcp, serve_tcp_echo, serve_udp,
};

const NODE: IpAddr = IpAddr::V4(NODE_IP);

fn nodeport(node: &Node, port: u16, proto: &str, backends: &[&str]) -> String {
    let port = port.to_string();
    let mut args = vec!["nodeport", "add", "--port", &port, "--proto", proto];
    for b in backends {
        args.extend(["--backend", b]);
    }
    node.ok(&args)
}

fn delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    reason: &str,
) -> u64 {
    after[reason] - before[reason]
}

#[test]
fn pods_reach_the_outside_as_the_node_ip_and_get_replies() {
    require_root!();
    let node = Node::new("10.244.41.0/24");
    let pod = node.add_pod("client");
    let outside = &node.topo.outside;
    let _tcp = serve_tcp(outside, &format!("{OUTSIDE_IP}:8080"));
    let _udp = serve_udp(outside, &format!("{OUTSIDE_IP}:8081"));
    let before = node.stats();

    let reply = connect_tcp(&pod.ns, &format!("{OUTSIDE_IP}:8080")).expect("TCP pod -> outside");
    assert_eq!(peer_ip_of(&reply), Some(NODE), "TCP source: {reply}");
    let port = addr_field(&reply, "peer").expect("peer").port();
    assert!((1_024..=29_999).contains(&port), "SNAT port {port}");

    let reply = connect_udp(&pod.ns, &format!("{OUTSIDE_IP}:8081")).expect("UDP pod -> outside");
    assert_eq!(peer_ip_of(&reply), Some(NODE), "UDP source: {reply}");

    let ping = pod.ping(&OUTSIDE_IP.to_string(), 3);
    assert!(
        ping.status.success(),
        "ping pod -> outside: {}",
        describe(&ping)
    );

    let after = node.stats();
    assert!(delta(&before, &after, "snat") >= 3 + 1 + 3, "{after:?}");
    assert!(
        delta(&before, &after, "snat_reply") >= 2 + 1 + 3,
        "{after:?}"
    );
    // The outside never learned a pod address: its neighbour table holds only the node.
    let neigh = outside.ok("ip -4 neigh show");
    assert!(
        !neigh.contains("10.244."),
        "outside saw a pod address: {neigh}"
    );

    let flows = node.json(&["conntrack", "list"]);
    let flows = flows.as_array().expect("list");
    assert!(
        flows.iter().any(|f| f["kind"] == "snat"
            && f["proto"] == "tcp"
            && f["nat_src"]
                .as_str()
                .is_some_and(|s| s.starts_with("198.18.0.10:"))),
        "conntrack list shows the TCP flow: {flows:?}"
    );
    let text = node.ok(&["conntrack", "list"]);
    assert!(text.contains("snat") && text.contains("entries"), "{text}");
}

#[test]
fn two_pods_with_the_same_source_port_do_not_collide() {
    require_root!();
    let node = Node::new("10.244.42.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let _udp = serve_udp(&node.topo.outside, &format!("{OUTSIDE_IP}:5353"));
    let mut seen = BTreeSet::new();
    for pod in [&a, &b] {
        let out = netprobe(
            &pod.ns,
            &[
                "connect",
                "udp",
                &format!("{OUTSIDE_IP}:5353"),
                "--source-port",
                "40000",
            ],
        );
        assert!(out.status.success(), "{}: {}", pod.name, describe(&out));
        let reply = String::from_utf8_lossy(&out.stdout).to_string();
        let peer = addr_field(&reply, "peer").expect("peer");
        assert_eq!(peer.ip(), NODE);
        seen.insert(peer.port());
    }
    assert_eq!(
        seen.len(),
        2,
        "each pod got its own translated port: {seen:?}"
    );
}

#[test]
fn pod_to_pod_other_nodes_pods_and_the_nodes_own_traffic_are_not_translated() {
    require_root!();
    let node = Node::new("10.244.43.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let outside = &node.topo.outside;
    // The outside also plays another node's pod (10.244.99.5) with a route back to our pods.
    addr(outside, "eth0", "10.244.99.5/32");
    route(outside, &["10.244.43.0/24", "via", &NODE_IP.to_string()]);
    route(
        &node.topo.node,
        &["10.244.99.0/24", "via", &OUTSIDE_IP.to_string()],
    );
    let _remote_pod = serve_tcp(outside, "10.244.99.5:8080");
    let _outside = serve_tcp(outside, &format!("{OUTSIDE_IP}:8080"));
    let _b = serve_tcp(&b.ns, &format!("{}:8080", b.ip));

    let reply = connect_tcp(&a.ns, &format!("{}:8080", b.ip)).expect("a -> b");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(a.ip.clone())
    );

    let reply = connect_tcp(&a.ns, "10.244.99.5:8080").expect("a -> remote pod");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(a.ip.clone()),
        "traffic to another node's pod CIDR keeps the pod's source"
    );

    let before = node.stats();
    let reply = connect_tcp(&node.topo.node, &format!("{OUTSIDE_IP}:8080")).expect("node -> out");
    assert_eq!(peer_ip_of(&reply), Some(NODE));
    let after = node.stats();
    assert!(
        delta(&before, &after, "pass_not_nat") >= 2,
        "the node's own replies pass untouched: {after:?}"
    );
    assert_eq!(delta(&before, &after, "snat_reply"), 0);
}

/// Two web pods behind NodePort 30080, plus a UDP NodePort.
fn web_node(
    cidr: &str,
) -> (
    Node,
    Vec<podnet_tests::PodInfo>,
    Vec<podnet_tests::ChildGuard>,
) {
    let node = Node::new(cidr);
    let pods = vec![node.add_pod("web-a"), node.add_pod("web-b")];
    let servers = pods
        .iter()
        .map(|p| serve_tcp(&p.ns, "0.0.0.0:80"))
        .collect();
    nodeport(&node, 30080, "tcp", &["web-a:80", "web-b:80"]);
    (node, pods, servers)
}

/// The backends seen by `tries` connections from `ns` to `target`.
fn backends_seen(ns: &impl podnet_tests::InNetns, target: &str, tries: u32) -> BTreeSet<String> {
    (0..tries)
        .map(|_| {
            let reply = connect_tcp(ns, target).expect("NodePort connection");
            local_ip_of(&reply).expect("local").to_string()
        })
        .collect()
}

#[test]
fn nodeport_reaches_every_backend_from_outside_and_follows_backend_changes() {
    require_root!();
    let (node, pods, _servers) = web_node("10.244.44.0/24");
    let outside = &node.topo.outside;
    let target = format!("{NODE_IP}:30080");

    let reply = connect_tcp(outside, &target).expect("outside -> NodePort");
    assert_eq!(
        peer_ip_of(&reply),
        Some(IpAddr::V4(OUTSIDE_IP)),
        "the backend sees the real client"
    );
    let seen = backends_seen(outside, &target, 40);
    let all: BTreeSet<String> = pods.iter().map(|p| p.ip.clone()).collect();
    assert_eq!(seen, all, "new connections spread over both backends");

    // Removing a backend stops new connections to it.
    node.ok(&[
        "nodeport",
        "set",
        "--port",
        "30080",
        "--backend",
        "web-b:80",
    ]);
    let seen = backends_seen(outside, &target, 20);
    assert_eq!(seen, BTreeSet::from([pods[1].ip.clone()]));

    let list = node.json(&["nodeport", "list"]);
    assert_eq!(list[0]["port"], 30080);
    assert_eq!(
        list[0]["backends"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );

    // Deleting the pod removes it from the NodePort; with no backend left, nothing answers.
    node.ok(&["pod", "del", "web-b"]);
    let list = node.json(&["nodeport", "list"]);
    assert_eq!(
        list[0]["backends"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    assert!(connect_tcp(outside, &target).is_err());
    node.ok(&["nodeport", "del", "--port", "30080"]);
    assert_eq!(node.json(&["nodeport", "list"]), serde_json::json!([]));
    assert!(connect_tcp(outside, &target).is_err());
}

#[test]
fn udp_nodeport_answers_from_the_node_ip() {
    require_root!();
    let node = Node::new("10.244.45.0/24");
    let dns = node.add_pod("dns");
    let _server = serve_udp(&dns.ns, &format!("{}:53", dns.ip));
    nodeport(&node, 30053, "udp", &["dns:53"]);
    // The client's socket is connected to nodeIP:30053: the reply arrives only if its source
    // was translated back.
    let reply = connect_udp(&node.topo.outside, &format!("{NODE_IP}:30053")).expect("UDP");
    assert_eq!(peer_ip_of(&reply), Some(IpAddr::V4(OUTSIDE_IP)));
    assert_eq!(
        local_ip_of(&reply).map(|ip| ip.to_string()),
        Some(dns.ip.clone())
    );
}

/// A backend's ICMP error about a translated flow goes back out translated: a NodePort
/// client whose datagram reaches a pod with nothing listening learns it at once (the pod's
/// port unreachable, from the node IP it sent to, quoting its own datagram), instead of
/// waiting for a reply that never comes.
#[test]
fn a_backends_port_unreachable_reaches_the_nodeport_client_translated() {
    require_root!();
    let node = Node::new("10.244.46.0/24");
    let _idle = node.add_pod("idle");
    nodeport(&node, 30054, "udp", &["idle:5353"]);
    let before = node.stats();
    let started = std::time::Instant::now();
    let out = netprobe(
        &node.topo.outside,
        &[
            "connect",
            "udp",
            &format!("{NODE_IP}:30054"),
            "--timeout-ms",
            "2000",
        ],
    );
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "nothing listens: {}", describe(&out));
    let text = describe(&out).to_lowercase();
    assert!(
        text.contains("refused"),
        "ECONNREFUSED from the ICMP error: {text}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "at once, not a timeout: {elapsed:?}"
    );
    let after = node.stats();
    assert!(
        delta(&before, &after, "icmp_error_translated") >= 1,
        "{after:?}"
    );
    assert_eq!(
        delta(&before, &after, "drop_nat_unsupported"),
        0,
        "{after:?}"
    );
}

/// The node is a router hop wherever podnet routes: a packet whose TTL would run out there is
/// answered with ICMP time exceeded from the node's address facing the sender (what
/// traceroute shows), and one with a TTL left goes on.
#[test]
fn ttl_runs_out_at_the_node_with_time_exceeded_both_ways() {
    require_root!();
    let node = Node::new("10.244.47.0/24");
    let pod = node.add_pod("client");
    let gateway = "10.244.47.1";
    let ping = |ns: &dyn podnet_tests::InNetns, ttl: u8, to: &str| {
        let out = ns.sh(&format!("ping -n -c 1 -W 1 -t {ttl} {to}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = node.stats();
    // Pod -> outside (SNAT): TTL 1 dies at the node, from the pod network's gateway.
    let out = ping(&pod.ns, 1, &OUTSIDE_IP.to_string());
    assert!(
        out.contains(&format!("From {gateway}")) && out.contains("Time to live exceeded"),
        "{out}"
    );
    assert!(ping(&pod.ns, 2, &OUTSIDE_IP.to_string()).contains("1 received"));
    // Outside -> pod (routed through the node to the pod): TTL 1 dies at the node IP.
    let outside = &node.topo.outside;
    outside.ok(&format!("ip route add 10.244.47.0/24 via {NODE_IP}"));
    let out = ping(outside, 1, &pod.ip);
    assert!(
        out.contains(&format!("From {NODE_IP}")) && out.contains("Time to live exceeded"),
        "{out}"
    );
    // (A TTL left over arrives one lower: `services_unit` checks that byte by byte.)
    let after = node.stats();
    assert_eq!(delta(&before, &after, "drop_ttl_exceeded"), 2, "{after:?}");
}

/// A host outside the cluster that routes the pod CIDR to the node (pod IPs advertised into a
/// VPC or by BGP) reaches a pod by its own address: the pod sees the client, and its replies
/// go back as they are, not SNATed as if the pod had started something (TCP would break).
#[test]
fn the_outside_reaches_a_pod_ip_routed_to_the_node_and_the_replies_are_not_snated() {
    require_root!();
    let node = Node::new("10.244.44.0/24");
    let web = node.add_pod("web");
    let _tcp = serve_tcp(&web.ns, "0.0.0.0:8080");
    let _udp = serve_udp(&web.ns, &format!("{}:8081", web.ip));
    let outside = &node.topo.outside;
    outside.ok(&format!("ip route add 10.244.44.0/24 via {NODE_IP}"));
    let before = node.stats();
    let reply = connect_tcp(outside, &format!("{}:8080", web.ip)).expect("TCP outside -> pod IP");
    assert_eq!(peer_ip_of(&reply), Some(IpAddr::V4(OUTSIDE_IP)), "{reply}");
    let reply = connect_udp(outside, &format!("{}:8081", web.ip)).expect("UDP outside -> pod IP");
    assert_eq!(peer_ip_of(&reply), Some(IpAddr::V4(OUTSIDE_IP)), "{reply}");
    let ping = outside.sh(&format!("ping -n -c 1 -W 1 {}", web.ip));
    assert!(ping.status.success(), "{}", describe(&ping));
    let after = node.stats();
    assert_eq!(
        delta(&before, &after, "snat"),
        0,
        "replies never SNATed: {after:?}"
    );
    assert!(
        delta(&before, &after, "forward_routed_reply") >= 3,
        "{after:?}"
    );
}

#[test]
fn nodeport_bad_input_is_refused_and_changes_nothing() {
    require_root!();
    let (node, _pods, _servers) = web_node("10.244.46.0/24");
    let before = node.json(&["nodeport", "list"]);
    let services = node.topo.node.ok(&format!(
        "bpftool map dump pinned {}/SERVICES | md5sum",
        node.pin_dir.display()
    ));
    let cases: &[(&[&str], &str)] = &[
        (
            &["--port", "30080", "--backend", "web-a:80"],
            "already a NodePort",
        ),
        (
            &["--port", "80", "--backend", "web-a:80"],
            "outside the NodePort range",
        ),
        (
            &["--port", "30081", "--backend", "nosuchpod:80"],
            "no pod named nosuchpod",
        ),
        (
            &["--port", "30081", "--backend", "10.9.9.9:80"],
            "neither in this node's pod CIDR",
        ),
        (&["--port", "30081", "--backend", "web-a:0"], "not a port"),
        (
            &[
                "--port",
                "30081",
                "--proto",
                "sctp",
                "--backend",
                "web-a:80",
            ],
            "not tcp or udp",
        ),
        (
            &[
                "--port",
                "30081",
                "--backend",
                "web-a:80",
                "--backend",
                "web-a:80",
            ],
            "given twice",
        ),
    ];
    for (args, message) in cases {
        let mut argv = vec!["nodeport", "add"];
        argv.extend_from_slice(args);
        let out = node.podnet(&argv);
        assert!(!out.status.success(), "{argv:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{argv:?}: {stderr}");
    }
    let out = node.podnet(&["nodeport", "del", "--port", "30999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tcp NodePort 30999"));
    assert_eq!(node.json(&["nodeport", "list"]), before);
    let after = node.topo.node.ok(&format!(
        "bpftool map dump pinned {}/SERVICES | md5sum",
        node.pin_dir.display()
    ));
    assert_eq!(services, after, "the services map is unchanged");
}

/// Writes `json` to a file that is removed on drop, for `nodeport apply -f`.
struct SpecFile(std::path::PathBuf);

impl SpecFile {
    fn new(json: &serde_json::Value) -> Self {
        let path = std::env::temp_dir().join(format!("{}.json", podnet_tests::unique("np")));
        std::fs::write(&path, json.to_string()).expect("write the NodePort file");
        Self(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn nodeport_apply_syncs_the_whole_table_and_refuses_a_bad_file_whole() {
    require_root!();
    let (node, pods, _servers) = web_node("10.244.47.0/24");
    let outside = &node.topo.outside;
    let services = || {
        node.topo.node.ok(&format!(
            "bpftool map dump pinned {}/SERVICES | md5sum",
            node.pin_dir.display()
        ))
    };
    // 30080 loses web-b, 30081 and a UDP NodePort are new.
    let first = SpecFile::new(&serde_json::json!([
        {"port": 30080, "backends": ["web-a:80"]},
        {"port": 30081, "proto": "tcp", "backends": [format!("{}:80", pods[1].ip)], "policy": "local"},
        {"port": 30082, "proto": "udp", "backends": ["web-a:53"]},
    ]));
    let summary = node.json(&["nodeport", "apply", "-f", first.arg()]);
    assert_eq!(
        summary,
        serde_json::json!({"added": 2, "updated": 1, "removed": 0, "unchanged": 0})
    );
    assert_eq!(
        backends_seen(outside, &format!("{NODE_IP}:30080"), 6),
        BTreeSet::from([pods[0].ip.clone()])
    );
    assert_eq!(
        backends_seen(outside, &format!("{NODE_IP}:30081"), 2),
        BTreeSet::from([pods[1].ip.clone()])
    );
    let listed = node.json(&["nodeport", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    assert_eq!(listed[1]["backends"][0]["pod"], "web-b", "{listed}");

    // Applying only 30081 removes the other two and leaves 30081 as it is.
    let second = SpecFile::new(&serde_json::json!([
        {"port": 30081, "backends": [format!("{}:80", pods[1].ip)], "policy": "local"},
    ]));
    let summary = node.json(&["nodeport", "apply", "-f", second.arg()]);
    assert_eq!(
        summary,
        serde_json::json!({"added": 0, "updated": 0, "removed": 2, "unchanged": 1})
    );
    assert!(connect_tcp(outside, &format!("{NODE_IP}:30080")).is_err());
    connect_tcp(outside, &format!("{NODE_IP}:30081")).expect("30081 kept");

    // A bad entry anywhere refuses the whole file: nothing changes.
    let before = (node.json(&["nodeport", "list"]), services());
    let bad: &[(serde_json::Value, &str)] = &[
        (
            serde_json::json!([{"port": 30090, "backends": ["web-a:80"]}, {"port": 30091, "backends": ["nosuchpod:80"]}]),
            "entry 2 of the file): backend nosuchpod:80: no pod named nosuchpod",
        ),
        (
            serde_json::json!([{"port": 80, "backends": ["web-a:80"]}]),
            "outside the NodePort range",
        ),
        (
            serde_json::json!([{"port": 30090, "backends": ["web-a:80"]}, {"port": 30090, "backends": ["web-b:80"]}]),
            "tcp port 30090 is listed twice",
        ),
        (
            serde_json::json!([{"port": 30090, "backends": ["web-a:0"]}]),
            "not a port",
        ),
        (
            serde_json::json!([{"port": 30090, "backends": []}]),
            "at least one --backend",
        ),
        (
            serde_json::json!([{"port": 30090, "backend": ["web-a:80"]}]),
            "unknown field `backend`",
        ),
        (serde_json::json!({"port": 30090}), "expected a JSON array"),
    ];
    for (json, message) in bad {
        let file = SpecFile::new(json);
        let out = node.podnet(&["nodeport", "apply", "-f", file.arg()]);
        assert!(!out.status.success(), "{json} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{json}: {stderr}");
    }
    let out = node.podnet(&["nodeport", "apply", "-f", "/nonexistent/nodeports.json"]);
    assert!(!out.status.success());
    assert_eq!((node.json(&["nodeport", "list"]), services()), before);
}

#[test]
fn hairpin_pod_to_nodeport_and_node_local_access_work() {
    require_root!();
    let node = Node::new("10.244.47.0/24");
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    let _server = serve_tcp(&web.ns, "0.0.0.0:80");
    nodeport(&node, 30080, "tcp", &["web:80"]);
    let target = format!("{NODE_IP}:30080");

    // A pod reaching a NodePort whose backend is itself.
    let reply = connect_tcp(&web.ns, &target).expect("hairpin");
    assert_eq!(
        peer_ip_of(&reply),
        Some(NODE),
        "hairpin is seen from the node IP"
    );

    // Another pod on the same node keeps its own address.
    let reply = connect_tcp(&client.ns, &target).expect("pod -> NodePort");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone())
    );

    // The node itself, as seed 000 does with curl.
    let before = node.stats();
    let reply = connect_tcp(&node.topo.node, &target).expect("node -> NodePort");
    assert_eq!(
        local_ip_of(&reply).map(|ip| ip.to_string()),
        Some(web.ip.clone())
    );
    let after = node.stats();
    assert_eq!(delta(&before, &after, "sock_nodeport"), 1, "{after:?}");
}

#[test]
fn http_through_a_nodeport_from_outside_and_from_the_node() {
    require_root!();
    let node = Node::new("10.244.48.0/24");
    let web = node.add_pod("web");
    let _http = serve_http(&web.ns, "0.0.0.0:80");
    nodeport(&node, 30080, "tcp", &["web:80"]);
    let target = format!("{NODE_IP}:30080");
    for ns in [&node.topo.outside, &node.topo.node] {
        let body = http_get(ns, &target).expect("HTTP GET via the NodePort");
        assert!(!body.is_empty());
    }
}

#[test]
fn a_thousand_short_connections_through_nodeport_and_snat_all_succeed() {
    require_root!();
    let (node, _pods, _servers) = web_node("10.244.49.0/24");
    let client = node.add_pod("client");
    let outside = &node.topo.outside;
    let _server = serve_tcp(outside, &format!("{OUTSIDE_IP}:8080"));
    let via_nodeport = churn_tcp(outside, &format!("{NODE_IP}:30080"), 1000);
    assert_eq!(via_nodeport.as_deref(), Ok("ok=1000 failed=0"));
    let via_snat = churn_tcp(&client.ns, &format!("{OUTSIDE_IP}:8080"), 1000);
    assert_eq!(via_snat.as_deref(), Ok("ok=1000 failed=0"));
    let stats = node.stats();
    for reason in [
        "drop_ct_full",
        "drop_nat_no_port",
        "drop_no_route",
        "drop_redirect_failed",
    ] {
        assert_eq!(stats[reason], 0, "{reason}: {stats:?}");
    }
}

#[test]
fn no_iptables_or_nft_rule_is_involved() {
    require_root!();
    let (node, _pods, _servers) = web_node("10.244.50.0/24");
    let client = node.add_pod("client");
    let _server = serve_tcp(&node.topo.outside, &format!("{OUTSIDE_IP}:8080"));
    connect_tcp(&node.topo.outside, &format!("{NODE_IP}:30080")).expect("NodePort");
    connect_tcp(&client.ns, &format!("{OUTSIDE_IP}:8080")).expect("SNAT");
    connect_tcp(&node.topo.node, &format!("{NODE_IP}:30080")).expect("node-local");
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
fn a_long_lived_stream_survives_node_init() {
    require_root!();
    let (node, pods, _servers) = web_node("10.244.51.0/24");
    let client = node.add_pod("client");
    let _echo_out = serve_tcp_echo(&node.topo.outside, &format!("{OUTSIDE_IP}:7000"));
    let _echo_pod = serve_tcp_echo(&pods[0].ns, "0.0.0.0:7000");
    nodeport(&node, 30700, "tcp", &["web-a:7000"]);
    let bin = netprobe_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let secs = "4";
    let mut via_snat = client.ns.spawn(&[
        bin,
        "stream",
        "tcp",
        &format!("{OUTSIDE_IP}:7000"),
        "--seconds",
        secs,
    ]);
    let mut via_nodeport = node.topo.outside.spawn(&[
        bin,
        "stream",
        "tcp",
        &format!("{NODE_IP}:30700"),
        "--seconds",
        secs,
    ]);
    thread::sleep(Duration::from_millis(1500));
    let args = node.init_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = node.json(&refs);
    assert!(
        report["load"]["maps_reused"]
            .as_array()
            .is_some_and(|m| m.iter().any(|n| n == "CONNTRACK")),
        "{report}"
    );
    for (what, child) in [("SNAT", &mut via_snat), ("NodePort", &mut via_nodeport)] {
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("stream ends");
        let out = child.stdout();
        assert!(status.success(), "{what} stream: {out} {}", child.stderr());
        let sent = out.split_whitespace().find_map(|w| w.strip_prefix("sent="));
        let echoed = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("echoed="));
        assert!(sent.is_some() && sent == echoed, "{what} stream: {out}");
    }
}

#[test]
fn a_full_table_refuses_new_flows_visibly_and_keeps_established_ones() {
    require_root!();
    let mut s = podnet_tests::Scenario::new(
        "conntrack table full (6 entries): new SNAT and NodePort flows refused, established kept, collection frees room",
    );
    // Room for 3 flows; UDP flows expire after a second so collection can be shown.
    let node = Node::with_args(
        "10.244.52.0/24",
        &[
            "--conntrack-max",
            "6",
            "--ct-timeout",
            "udp=1",
            "--ct-timeout",
            "udp_stream=1",
            // Collection is shown explicitly below.
            "--gc-interval",
            "0",
        ],
    );
    let pod = node.add_pod("client");
    let web = node.add_pod("web");
    let _web = serve_tcp(&web.ns, "0.0.0.0:80");
    nodeport(&node, 30080, "tcp", &["web:80"]);
    let outside = &node.topo.outside;
    let _echo = serve_tcp_echo(outside, &format!("{OUTSIDE_IP}:7000"));
    let _udp = serve_udp(outside, &format!("{OUTSIDE_IP}:5353"));
    let _tcp = serve_tcp(outside, &format!("{OUTSIDE_IP}:8080"));
    let bin = netprobe_bin();
    let bin = bin.to_str().expect("utf-8 path");
    // One established flow that must keep working throughout.
    let mut stream = pod.ns.spawn(&[
        bin,
        "stream",
        "tcp",
        &format!("{OUTSIDE_IP}:7000"),
        "--seconds",
        "5",
    ]);
    thread::sleep(Duration::from_millis(300));
    // Two more flows fill the table.
    for port in ["41001", "41002"] {
        let out = netprobe(
            &pod.ns,
            &[
                "connect",
                "udp",
                &format!("{OUTSIDE_IP}:5353"),
                "--source-port",
                port,
            ],
        );
        assert!(out.status.success(), "flow {port}: {}", describe(&out));
    }
    let live = || {
        node.json(&["stats"])["conntrack"]["live"]
            .as_u64()
            .expect("live")
    };
    s.number("entries_limit", 6)
        .number("entries_in_use", live());
    // A new flow is refused, from a pod (SNAT)...
    let refused = connect_tcp(&pod.ns, &format!("{OUTSIDE_IP}:8080"));
    assert!(
        refused.is_err(),
        "a new flow got through a full table: {refused:?}"
    );
    let stats = node.stats();
    assert!(stats["drop_ct_full"] >= 1, "{stats:?}");
    // ...and from the outside to a NodePort.
    let refused = netprobe(
        outside,
        &[
            "connect",
            "tcp",
            &format!("{NODE_IP}:30080"),
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(
        !refused.status.success(),
        "a NodePort flow got through a full table: {}",
        describe(&refused)
    );
    let after = node.stats();
    assert!(
        after["drop_ct_full"] > stats["drop_ct_full"],
        "the NodePort flow was not counted: {after:?}"
    );
    assert_eq!(after["dnat"], stats["dnat"], "{after:?}");
    s.number("packets_refused_ct_full", after["drop_ct_full"]);
    let text = node.ok(&["stats"]);
    assert!(text.contains("conntrack table full"), "{text}");
    assert!(text.contains("6 of 6 entries in use"), "{text}");
    // ...while the established one carried on.
    let status = stream
        .wait_timeout(Duration::from_secs(30))
        .expect("stream ends");
    let out = stream.stdout();
    assert!(status.success(), "stream: {out} {}", stream.stderr());
    s.number("stream", out.trim());
    // Once the UDP flows expire, collection frees their entries and new flows work again.
    thread::sleep(Duration::from_millis(2200));
    let gc = node.json(&["conntrack", "gc"]);
    assert!(gc["removed"].as_u64().is_some_and(|n| n >= 4), "{gc}");
    s.number("entries_collected", &gc["removed"])
        .number("entries_in_use_after_gc", live());
    connect_tcp(&pod.ns, &format!("{OUTSIDE_IP}:8080")).expect("new flow after gc");
    connect_tcp(outside, &format!("{NODE_IP}:30080")).expect("new NodePort flow after gc");
    s.number("new_flows_after_gc", 2);
}

#[test]
fn icmp_errors_about_a_translated_flow_reach_the_pod() {
    require_root!();
    let node = Node::new("10.244.53.0/24");
    let pod = node.add_pod("client");
    let before = node.stats();
    // Nothing listens on the outside's port 9: it answers with ICMP port unreachable, sent to
    // the node IP and quoting the translated datagram. Only if the datapath translates it back
    // does the pod's connected socket see "connection refused" (instead of a timeout).
    let err = connect_udp(&pod.ns, &format!("{OUTSIDE_IP}:9")).expect_err("nothing listens");
    assert!(err.contains("refused"), "{err}");
    let after = node.stats();
    assert!(
        delta(&before, &after, "icmp_error_translated") >= 1,
        "{after:?}"
    );
}

#[test]
fn the_collector_reclaims_finished_flows_and_stops_with_the_node() {
    require_root!();
    let node = Node::with_args(
        "10.244.54.0/24",
        &[
            "--gc-interval",
            "1",
            "--ct-timeout",
            "tcp_closing=1",
            "--ct-timeout",
            "tcp_time_wait=1",
        ],
    );
    let pod = node.add_pod("client");
    let _server = serve_tcp(&node.topo.outside, &format!("{OUTSIDE_IP}:8080"));
    assert_eq!(
        churn_tcp(&pod.ns, &format!("{OUTSIDE_IP}:8080"), 50).as_deref(),
        Ok("ok=50 failed=0")
    );
    let live = || {
        node.json(&["stats"])["conntrack"]["live"]
            .as_u64()
            .expect("live")
    };
    assert!(live() >= 2, "finished flows wait for collection");
    podnet_tests::wait_until(
        Duration::from_secs(15),
        "the collector empties the table",
        || live() == 0,
    );
    let pid_file = node.state_dir.join("conntrack-gc.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let pid = pid.trim();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let reset = node.json(&["node", "reset"]);
    assert_eq!(reset["collector_stopped"], true, "{reset}");
    podnet_tests::wait_until(Duration::from_secs(5), "the collector exits", || {
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
    });
    assert!(!pid_file.exists());
}

#[test]
fn deleting_a_pod_forgets_its_flows() {
    require_root!();
    let node = Node::new("10.244.55.0/24");
    let pod = node.add_pod("client");
    let _udp = serve_udp(&node.topo.outside, &format!("{OUTSIDE_IP}:5353"));
    connect_udp(&pod.ns, &format!("{OUTSIDE_IP}:5353")).expect("UDP pod -> outside");
    let involves_pod = |flows: &serde_json::Value| {
        flows.as_array().expect("list").iter().any(|f| {
            ["src", "dst", "nat_src", "nat_dst"].iter().any(|k| {
                f[k].as_str()
                    .is_some_and(|a| a.starts_with(&format!("{}:", pod.ip)))
            })
        })
    };
    assert!(involves_pod(&node.json(&["conntrack", "list"])));
    let del = node.json(&["pod", "del", "client"]);
    assert_eq!(del["conntrack_entries_removed"], 2, "{del}");
    assert!(!involves_pod(&node.json(&["conntrack", "list"])));
    assert_eq!(node.json(&["stats"])["conntrack"]["live"], 0);
}
