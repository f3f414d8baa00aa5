//! IPv6 and dual-stack Services end to end, in namespaces (issue 19): a dual-stack node
//! (`--service-cidr` of each family) is given its service table through `podnet service apply`,
//! and its pods' and its own sockets are balanced at the socket (`connect6`, `sendmsg6`,
//! `recvmsg6`, `getpeername6`, and the IPv4 programs for the IPv4 half).
//!
//! One test body per behaviour, run for each family on the same dual-stack Service: a pod
//! reaches the ClusterIP over TCP, connected UDP and unconnected UDP (DNS-like); the backend
//! sees the client pod's own address of that family; the client's `getpeername()` and
//! `recvfrom()` show the ClusterIP it used; a ClusterIP without backends (or a port its
//! services do not have) refuses at once (ECONNREFUSED). An IPv6 socket reaches the IPv4
//! ClusterIP by its IPv4-mapped address; IPv6 NodePorts and externalIPs are reached from a pod
//! and from the node; IPv6 sockets (and IPv6 sockets talking IPv4 through mapped addresses)
//! balanced to a backend that leaves are destroyed. Bad IPv6 input is refused with a clear
//! error and changes nothing; `node reset` leaves none of the eight socket programs attached.
//!
//! Addresses: the IPv6 service CIDR is fd00:10:96::/112, pods' IPv6 addresses come from
//! fd00:10:244::/48, the fabric's from fd00:198:18::/64 (unique-local: nothing here can be a real
//! network).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use podnet::datapath::{cgroup::cgroup2_root, cgroup_owners::attached_sock_programs};
use podnet_ebpf::abi::program_name;
use podnet_tests::{
    InNetns, Node, PodInfo, SERVICE_CIDR, addr_field, connect_probe as probe, describe,
    dual_stack::{NODE_IP6, dual_stack_node_with},
    require_root, serve_tcp, serve_udp,
};
use serde_json::{Value, json};

/// The IPv6 service CIDR of the test nodes.
const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// The dual-stack Service's ClusterIPs.
const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";
/// A ClusterIP of each family whose Service has no endpoints.
const EMPTY_VIP4: &str = "10.96.0.11";
const EMPTY_VIP6: &str = "fd00:10:96::11";

/// An address family, for the test bodies run once per family.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Self; 2] = [Self::V4, Self::V6];

    fn vip(self) -> IpAddr {
        match self {
            Self::V4 => VIP4,
            Self::V6 => VIP6,
        }
        .parse()
        .expect("an address")
    }

    fn empty_vip(self) -> IpAddr {
        match self {
            Self::V4 => EMPTY_VIP4,
            Self::V6 => EMPTY_VIP6,
        }
        .parse()
        .expect("an address")
    }

    /// The pod's address of this family.
    fn of(self, pod: &Pod6) -> IpAddr {
        match self {
            Self::V4 => pod.info.ip.parse().expect("an IPv4 address"),
            Self::V6 => pod.ip6,
        }
    }
}

/// A pod of a dual-stack node, with both addresses.
struct Pod6 {
    info: PodInfo,
    ip6: IpAddr,
}

fn add_pod(node: &Node, name: &str) -> Pod6 {
    let info = node.add_pod(name);
    let pods = node.json(&["pod", "list"]);
    let ip6 = pods
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .and_then(|p| p["address6"].as_str())
        .and_then(|c| c.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("pod {name} has no IPv6 address: {pods}"));
    Pod6 { info, ip6 }
}

/// A dual-stack node with a service CIDR of each family (socket balancing on, the default).
fn node(pod_cidr: &str, pod_cidr6: &str) -> Node {
    dual_stack_node_with(
        pod_cidr,
        pod_cidr6,
        &[
            "--service-cidr",
            SERVICE_CIDR,
            "--service-cidr",
            SERVICE_CIDR6,
        ],
    )
}

/// The service table: `web`, dual-stack (IPv6 first, as `ipFamilies` says), TCP 80 -> 8080 and
/// UDP 53 -> 5353 on `backend`'s two addresses; `empty`, dual-stack without endpoints.
fn table(backend: &Pod6) -> Value {
    json!({"services": [
        {"metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIPs": [VIP6, VIP4], "ipFamilies": ["IPv6", "IPv4"],
                  "ipFamilyPolicy": "RequireDualStack",
                  "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}]},
         "endpoints": [{"addresses": [backend.info.ip, backend.ip6.to_string()],
                        "nodeName": "n1"}]},
        {"metadata": {"name": "empty", "namespace": "default"},
         "spec": {"clusterIPs": [EMPTY_VIP6, EMPTY_VIP4], "ipFamilyPolicy": "PreferDualStack",
                  "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}]}}
    ]})
}

/// `podnet service apply -f FILE` with `table` (written into the node's state directory).
fn apply(node: &Node, table: &Value) -> std::process::Output {
    let file = node.state_dir.join("services6-test.json");
    std::fs::write(&file, table.to_string()).expect("write the table");
    node.podnet(&["service", "apply", "-f", file.to_str().expect("UTF-8 path")])
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, reason: &str) -> u64 {
    after[reason] - before[reason]
}

/// A pod reaches the ClusterIP of `family` over TCP, connected UDP and unconnected UDP: the
/// backend sees the client's own address of that family, the client sees the ClusterIP.
fn pod_reaches_the_clusterip(node: &Node, client: &Pod6, backend: &Pod6, family: Family) {
    let vip = family.vip();
    let before = node.stats();
    let tcp = SocketAddr::new(vip, 80);
    let reply = probe(&client.info.ns, "tcp", tcp, &[]).unwrap_or_else(|e| panic!("{tcp}: {e}"));
    assert_eq!(
        addr_field(&reply, "peer").map(|a| a.ip()),
        Some(family.of(client)),
        "{family:?}: the backend sees the client pod's own address: {reply}"
    );
    assert_eq!(
        addr_field(&reply, "local").map(|a| a.ip()),
        Some(family.of(backend)),
        "{family:?}: the connection arrived at the backend: {reply}"
    );
    assert_eq!(
        addr_field(&reply, "sockpeer"),
        Some(tcp),
        "{family:?}: getpeername() shows the ClusterIP the client used: {reply}"
    );
    let udp = SocketAddr::new(vip, 53);
    for mode in [&[][..], &["--unconnected"][..]] {
        let reply = probe(&client.info.ns, "udp", udp, mode)
            .unwrap_or_else(|e| panic!("{udp} {mode:?}: {e}"));
        assert_eq!(
            addr_field(&reply, "peer").map(|a| a.ip()),
            Some(family.of(client)),
            "{family:?} UDP {mode:?}: the backend sees the client: {reply}"
        );
        assert_eq!(
            addr_field(&reply, "sockpeer"),
            Some(udp),
            "{family:?} UDP {mode:?}: the reply comes from the ClusterIP: {reply}"
        );
    }
    let after = node.stats();
    assert!(
        delta(&before, &after, "sock_service") >= 3,
        "balanced at the socket: {after:?}"
    );
    assert!(
        delta(&before, &after, "sock_rev_nat") >= 3,
        "translated back at the socket: {after:?}"
    );
    assert_eq!(
        delta(&before, &after, "service_dnat"),
        0,
        "no per-packet translation: {after:?}"
    );
}

/// A ClusterIP without endpoints, and a port the ClusterIP's services do not have, refuse at
/// once with ECONNREFUSED.
fn refused_at_once(node: &Node, client: &Pod6, family: Family) {
    let before = node.stats();
    for (proto, addr) in [
        ("tcp", SocketAddr::new(family.empty_vip(), 80)),
        ("udp", SocketAddr::new(family.empty_vip(), 53)),
        ("tcp", SocketAddr::new(family.vip(), 81)),
    ] {
        let started = Instant::now();
        let err = probe(&client.info.ns, proto, addr, &[])
            .expect_err("a frontend without backends refuses");
        assert!(
            err.contains("refused"),
            "{family:?} {proto} {addr}: ECONNREFUSED: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{family:?} {proto} {addr}: refused at once, not after the timeout"
        );
    }
    let after = node.stats();
    assert!(delta(&before, &after, "sock_reject") >= 3, "{after:?}");
}

#[test]
fn pods_reach_an_ipv6_and_dual_stack_clusterip_at_the_socket_and_empty_ones_refuse() {
    require_root!();
    let node = node("10.244.61.0/24", "fd00:10:244:61::/64");
    let web = add_pod(&node, "web");
    let client = add_pod(&node, "client");
    let _tcp4 = serve_tcp(&web.info.ns, &format!("{}:8080", web.info.ip));
    let _tcp6 = serve_tcp(&web.info.ns, &format!("[{}]:8080", web.ip6));
    let _udp4 = serve_udp(&web.info.ns, &format!("{}:5353", web.info.ip));
    let _udp6 = serve_udp(&web.info.ns, &format!("[{}]:5353", web.ip6));
    let out = apply(&node, &table(&web));
    assert!(out.status.success(), "service apply: {}", describe(&out));

    // What the node shows: both families' frontends, and the IPv6 half in its own maps.
    let list = node.json(&["service", "list"]);
    let frontends = list.to_string();
    for shown in [
        format!("\"{VIP6}\""),
        format!("\"{VIP4}\""),
        format!("\"{EMPTY_VIP6}\""),
    ] {
        assert!(frontends.contains(&shown), "{shown} in {list}");
    }
    let text = node.ok(&["service", "list"]);
    assert!(text.contains(&format!("[{VIP6}]:80/tcp")), "{text}");
    let maps = node.ok(&["maps"]);
    assert!(maps.contains(&format!("node_ip6={NODE_IP6}")), "{maps}");
    let status = node.json(&["node", "status"]);
    assert_eq!(
        status["settings"]["service_cidr6"], SERVICE_CIDR6,
        "{status}"
    );

    for family in Family::BOTH {
        pod_reaches_the_clusterip(&node, &client, &web, family);
        refused_at_once(&node, &client, family);
    }

    // An IPv6 socket given the IPv4 ClusterIP in its mapped form (`::ffff:10.96.0.10`, as
    // dual-stack programs write IPv4) talks IPv4: balanced by the IPv6 programs from the IPv4
    // maps, the mapped ClusterIP shown back.
    let mapped: IpAddr = format!("::ffff:{VIP4}").parse().expect("an address");
    for (proto, port, extra) in [("tcp", 80, &[][..]), ("udp", 53, &["--unconnected"][..])] {
        let target = SocketAddr::new(mapped, port);
        let reply = probe(&client.info.ns, proto, target, extra)
            .unwrap_or_else(|e| panic!("{proto} {target}: {e}"));
        assert_eq!(
            addr_field(&reply, "peer").map(|a| a.ip()),
            Some(Family::V4.of(&client)),
            "{proto} {target}: the backend sees the client's IPv4 address: {reply}"
        );
        assert_eq!(
            addr_field(&reply, "sockpeer"),
            Some(target),
            "{proto} {target}: the socket shows the mapped ClusterIP: {reply}"
        );
    }

    // The node's own sockets too (its namespace): balanced to the backend, and the peer shown
    // is the ClusterIP.
    let tcp = SocketAddr::new(Family::V6.vip(), 80);
    let reply = probe(&node.topo.node, "tcp", tcp, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(addr_field(&reply, "sockpeer"), Some(tcp), "{reply}");
    assert_eq!(
        addr_field(&reply, "local").map(|a| a.ip()),
        Some(web.ip6),
        "{reply}"
    );
}

#[test]
fn pods_and_the_node_reach_an_ipv6_nodeport_and_external_ip_at_the_socket() {
    require_root!();
    let node = node("10.244.65.0/24", "fd00:10:244:65::/64");
    let web = add_pod(&node, "web");
    let client = add_pod(&node, "client");
    let _tcp6 = serve_tcp(&web.info.ns, &format!("[{}]:8080", web.ip6));
    let external: IpAddr = "2001:db8::50".parse().expect("an address");
    let table = json!({"services": [
        {"metadata": {"name": "web", "namespace": "default"},
         "spec": {"type": "NodePort", "clusterIPs": [VIP6], "externalIPs": [external],
                  "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080,
                             "nodePort": 30080}]},
         "endpoints": [{"addresses": [web.ip6.to_string()]}]}
    ]});
    let out = apply(&node, &table);
    assert!(out.status.success(), "service apply: {}", describe(&out));
    let nodeport = SocketAddr::new(IpAddr::V6(NODE_IP6), 30080);
    let external = SocketAddr::new(external, 80);
    for (who, ns) in [
        ("pod", &client.info.ns as &dyn InNetns),
        ("node", &node.topo.node as &dyn InNetns),
    ] {
        for target in [nodeport, external] {
            let before = node.stats();
            let reply =
                probe(ns, "tcp", target, &[]).unwrap_or_else(|e| panic!("{who} -> {target}: {e}"));
            assert_eq!(
                addr_field(&reply, "local").map(|a| a.ip()),
                Some(web.ip6),
                "{who} -> {target} reaches the backend: {reply}"
            );
            assert_eq!(
                addr_field(&reply, "sockpeer"),
                Some(target),
                "{who} -> {target}: the socket shows what it connected to: {reply}"
            );
            let after = node.stats();
            let reason = if target == nodeport {
                "sock_nodeport"
            } else {
                "sock_service"
            };
            assert_eq!(
                delta(&before, &after, reason),
                1,
                "{who} -> {target}: {after:?}"
            );
        }
    }
    let reply = probe(&client.info.ns, "tcp", nodeport, &[]).expect("NodePort from the pod");
    assert_eq!(
        addr_field(&reply, "peer").map(|a| a.ip()),
        Some(client.ip6),
        "the backend sees the client pod's IPv6 address: {reply}"
    );
}

/// The node's service state a refused apply must leave as it was.
fn service_state(node: &Node) -> (Value, String) {
    let mut maps = String::new();
    for map in ["SERVICES6", "BACKENDS6", "REV_NAT6", "SERVICES", "BACKENDS"] {
        let out = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(node.pin_dir.join(map))
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool: {}", describe(&out));
        maps.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    (node.json(&["service", "list"]), maps)
}

#[test]
fn bad_ipv6_service_input_is_refused_saying_why_and_changes_nothing() {
    require_root!();
    let node = node("10.244.62.0/24", "fd00:10:244:62::/64");
    let web = add_pod(&node, "web");
    let good = table(&web);
    let out = apply(&node, &good);
    assert!(out.status.success(), "service apply: {}", describe(&out));
    let before = service_state(&node);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut t = good.clone();
        f(&mut t);
        t
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|t| t["services"][0]["spec"]["clusterIPs"] = json!(["fd00:99::10", VIP4])),
            "clusterIP fd00:99::10 is outside the IPv6 service CIDR fd00:10:96::/112",
        ),
        (
            with(&|t| {
                t["services"][0]["spec"]["clusterIPs"] = json!([VIP4]);
                t["services"][0]["spec"]["ipFamilies"] = json!(["IPv4"]);
                t["services"][0]["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }),
            "is IPv6 but the service has no IPv6 ClusterIP",
        ),
        (
            with(&|t| t["services"][0]["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"])),
            "do not match the families of clusterIPs",
        ),
        (
            with(&|t| t["services"][0]["spec"]["clusterIPs"] = json!([VIP6, "fd00:10:96::12"])),
            "at most one IPv4 and one IPv6 ClusterIP",
        ),
        (
            with(&|t| t["services"][0]["spec"]["externalIPs"] = json!(["2001:db8::zz"])),
            "",
        ),
        (
            with(&|t| t["serviceCIDRs"] = json!([SERVICE_CIDR, "fd00:10:97::/112"])),
            "service CIDR fd00:10:97::/112 is not the node's fd00:10:96::/112",
        ),
    ];
    for (bad, wanted) in cases {
        let out = apply(&node, &bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused: {bad}");
        assert!(stderr.contains(wanted), "says why ({wanted}): {stderr}");
        assert_eq!(
            service_state(&node),
            before,
            "a refused table changes nothing"
        );
    }
    // A node without an IPv6 service CIDR refuses an IPv6 ClusterIP, saying how to set one.
    let v4_only = dual_stack_node_with(
        "10.244.63.0/24",
        "fd00:10:244:63::/64",
        &["--service-cidr", SERVICE_CIDR],
    );
    let out = apply(&v4_only, &good);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no IPv6 service CIDR"),
        "{stderr}"
    );
}

#[test]
fn node_reset_leaves_no_socket_program_of_either_family_attached() {
    require_root!();
    let cgroup = cgroup2_root().expect("a cgroup2 hierarchy");
    let node = node("10.244.64.0/24", "fd00:10:244:64::/64");
    let cookie = |node: &Node| -> u64 {
        node.json(&["maps"])["config"]["netns_cookie"]
            .as_u64()
            .expect("netns cookie")
    };
    let ours = cookie(&node);
    let attached = |cookie: u64| -> Vec<&'static str> {
        attached_sock_programs(&cgroup)
            .expect("query the cgroup")
            .into_iter()
            .filter(|p| p.netns_cookie == Some(cookie))
            .map(|p| p.name)
            .collect()
    };
    let mut names = attached(ours);
    names.sort_unstable();
    let mut all = program_name::SOCK.to_vec();
    all.sort_unstable();
    assert_eq!(names, all, "all eight socket programs attached, each once");
    node.ok(&["node", "reset"]);
    assert_eq!(
        attached(ours),
        Vec::<&str>::new(),
        "node reset detached every socket program"
    );
}

/// A dual-stack UDP Service on `backend`'s two addresses (53 -> 5353).
fn udp_table(backend: &Pod6) -> Value {
    json!({"services": [
        {"metadata": {"name": "dns", "namespace": "default"},
         "spec": {"clusterIPs": [VIP6, VIP4], "ipFamilyPolicy": "RequireDualStack",
                  "ports": [{"protocol": "UDP", "port": 53, "targetPort": 5353}]},
         "endpoints": [{"addresses": [backend.info.ip, backend.ip6.to_string()]}]}
    ]})
}

#[test]
fn ipv6_sockets_balanced_to_a_backend_that_leaves_are_destroyed() {
    require_root!();
    let node = node("10.244.66.0/24", "fd00:10:244:66::/64");
    let old = add_pod(&node, "old");
    let new = add_pod(&node, "new");
    let client = add_pod(&node, "client");
    let _servers: Vec<_> = [&old, &new]
        .iter()
        .flat_map(|p| {
            [
                serve_udp(&p.info.ns, &format!("{}:5353", p.info.ip)),
                serve_udp(&p.info.ns, &format!("[{}]:5353", p.ip6)),
            ]
        })
        .collect();
    let out = apply(&node, &udp_table(&old));
    assert!(out.status.success(), "service apply: {}", describe(&out));
    // Two connected IPv6 sockets in the client pod: one to the IPv6 ClusterIP, one to the IPv4
    // ClusterIP by its mapped address; each gets a reply from the old backend, then waits.
    let targets: Vec<SocketAddr> = [VIP6.to_owned(), format!("::ffff:{VIP4}")]
        .iter()
        .map(|ip| SocketAddr::new(ip.parse().expect("an address"), 53))
        .collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let netns = client.info.ns.path();
    let thread_targets = targets.clone();
    let clients = std::thread::spawn(move || {
        podnet::sys::netns::Netns::open(&netns)
            .expect("open netns")
            .enter()
            .expect("enter netns");
        let sockets: Vec<std::net::UdpSocket> = thread_targets
            .iter()
            .map(|target| {
                let sock = std::net::UdpSocket::bind("[::]:0").expect("bind");
                sock.connect(target).expect("connect");
                sock.set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                sock
            })
            .collect();
        // Each socket answered by the old backend first.
        let replies: Vec<String> = sockets
            .iter()
            .map(|sock| {
                sock.send(b"ping\n").expect("send");
                let mut buf = [0u8; 512];
                let n = sock.recv(&mut buf).expect("a reply");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
            .collect();
        ready_tx.send(replies).expect("report");
        go_rx.recv().expect("go");
        sockets
            .iter()
            .map(|sock| {
                // A destroyed socket holds ECONNABORTED for its owner's next receive.
                let mut buf = [0u8; 512];
                sock.recv(&mut buf).map(|_| ()).map_err(|e| e.kind())
            })
            .collect::<Vec<_>>()
    });
    let replies = ready_rx.recv().expect("the client's first replies");
    for (reply, family) in replies.iter().zip(Family::BOTH.iter().rev()) {
        assert_eq!(
            addr_field(reply, "local").map(|a| a.ip()),
            Some(family.of(&old)),
            "answered by the old backend: {reply}"
        );
    }
    let file = node.state_dir.join("services6-udp.json");
    std::fs::write(&file, udp_table(&new).to_string()).expect("write the table");
    let report = node.json(&["service", "apply", "-f", file.to_str().expect("UTF-8 path")]);
    assert_eq!(
        report["stale"]["sockets_destroyed"], 2,
        "both balanced sockets found and destroyed: {report}"
    );
    go_tx.send(()).expect("go");
    let after = clients.join().expect("the client thread");
    for (target, result) in targets.iter().zip(&after) {
        assert_eq!(
            *result,
            Err(std::io::ErrorKind::ConnectionAborted),
            "{target}: the socket balanced to the backend that left is destroyed ({report})"
        );
    }
}
