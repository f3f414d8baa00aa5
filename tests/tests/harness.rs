//! Smoke tests of the harness itself: fixtures, netprobe, and cleanup (also after a panic).

use std::{net::IpAddr, path::Path, process::Command, sync::Mutex, time::Duration};

use podnet_tests::{
    InNetns as _, NODE_IP, Netns, OUTSIDE_IP, Pod, Topology, addr, churn_tcp, connect_tcp,
    connect_udp, http_get, is_own_netns, local_ip_of, mac, netns_list, netprobe_bin, peer_ip_of,
    require_root, same_file, serve_http, serve_tcp, serve_tcp_echo, serve_udp, stream_tcp, veth,
    wait_until,
};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn netprobe_bin_is_the_one_cargo_built() {
    let built = Path::new(env!("CARGO_BIN_EXE_netprobe"));
    assert_eq!(
        netprobe_bin().canonicalize().expect("netprobe_bin exists"),
        built.canonicalize().expect("CARGO_BIN_EXE_netprobe exists")
    );
}

#[test]
fn outside_sees_the_node_ip() {
    require_root!();
    let topo = Topology::new();
    let _server = serve_tcp(&topo.outside, "198.18.0.1:7000");
    let reply = connect_tcp(&topo.node, "198.18.0.1:7000").expect("connect from the node");
    assert_eq!(peer_ip_of(&reply), Some(IpAddr::V4(NODE_IP)), "{reply}");
    assert_eq!(local_ip_of(&reply), Some(IpAddr::V4(OUTSIDE_IP)), "{reply}");
    assert!(reply.ends_with("bytes=6"), "{reply}");
    // The node's default route points at the outside namespace.
    assert!(
        topo.node
            .ok("ip route show default")
            .contains("via 198.18.0.1 dev uplink0"),
    );
}

#[test]
fn veth_pair_pings() {
    require_root!();
    let a = Netns::new("a");
    let b = Netns::new("b");
    let pair = veth(&a, "va", &b, "vb");
    assert_eq!((pair.a_ns.as_str(), pair.b_if.as_str()), (a.name(), "vb"));
    addr(&a, "va", "10.1.0.1/24");
    addr(&b, "vb", "10.1.0.2/24");
    let ping = a.exec(&["ping", "-c1", "-W1", "-n", "10.1.0.2"]);
    assert!(ping.status.success(), "{}", podnet_tests::describe(&ping));
    b.ok("ping -c1 -W1 -n 10.1.0.1");
    assert_eq!(mac(&a, "va").len(), 17);
}

#[test]
fn netns_is_deleted_on_drop() {
    require_root!();
    let ns = Netns::new("drop");
    let name = ns.name().to_owned();
    assert!(netns_list().contains(&name));
    assert!(ns.path().exists());
    drop(ns);
    assert!(!netns_list().contains(&name));
}

#[test]
fn netns_and_children_are_cleaned_up_after_a_panic() {
    require_root!();
    let recorded: Mutex<Option<(String, u32)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("pnc");
        let child = ns.spawn(&["sleep", "30"]);
        *recorded.lock().expect("not poisoned") = Some((ns.name().to_owned(), child.pid()));
        panic!("deliberate panic inside a fixture");
    });
    assert!(result.is_err());
    let (name, pid) = recorded
        .into_inner()
        .expect("not poisoned")
        .expect("closure ran");
    assert!(!netns_list().contains(&name), "{name} leaked");
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!pid_alive(pid), "child {pid} survived");
}

#[test]
fn processes_left_in_a_netns_are_killed_on_drop() {
    require_root!();
    let ns = Netns::new("orph");
    // A background process the harness does not track (sh exits right away).
    ns.ok("sleep 30 >/dev/null 2>&1 & echo $! > /dev/null");
    let out = Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
        .expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!pids.is_empty());
    drop(ns);
    wait_until(Duration::from_secs(5), "orphans to die", || {
        pids.iter().all(|&p| !pid_alive(p))
    });
}

#[test]
fn exec_is_bounded() {
    require_root!();
    let ns = Netns::new("tmo");
    let out = ns.exec_timeout(&["sleep", "30"], Duration::from_millis(200));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("killed after"));
}

#[test]
fn udp_tcp_echo_http_and_churn_across_the_topology() {
    require_root!();
    let topo = Topology::new();
    let _udp = serve_udp(&topo.outside, "198.18.0.1:7001");
    let _echo = serve_tcp_echo(&topo.outside, "198.18.0.1:7002");
    let _http = serve_http(&topo.outside, "198.18.0.1:8080");
    let _tcp = serve_tcp(&topo.outside, "198.18.0.1:7000");

    let reply = connect_udp(&topo.node, "198.18.0.1:7001").expect("udp");
    assert_eq!(peer_ip_of(&reply), Some(IpAddr::V4(NODE_IP)), "{reply}");

    let body = http_get(&topo.node, "198.18.0.1:8080").expect("http");
    assert!(
        body.starts_with("hello from 198.18.0.1 to 198.18.0.10:"),
        "{body}"
    );

    assert_eq!(
        churn_tcp(&topo.node, "198.18.0.1:7000", 50).expect("churn"),
        "ok=50 failed=0"
    );

    let streamed = stream_tcp(&topo.node, "198.18.0.1:7002", 0.5).expect("stream");
    let field = |key: &str| {
        streamed
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {streamed}"))
    };
    assert_eq!(field("sent="), field("echoed="), "{streamed}");

    // Nothing listens on 7003: connecting fails fast and reports an error.
    assert!(connect_tcp(&topo.node, "198.18.0.1:7003").is_err());
}

#[test]
fn pod_enters_a_netns_by_path() {
    require_root!();
    let topo = Topology::new();
    // A process parked in the outside namespace gives a path outside /run/netns.
    let holder = topo.outside.spawn(&["sleep", "30"]);
    let ns_path = format!("/proc/{}/ns/net", holder.pid());
    // `ip netns exec` enters the namespace just after it starts: wait until it has.
    wait_until(
        Duration::from_secs(5),
        "the holder to enter the netns",
        || same_file(Path::new(&ns_path), &topo.outside.path()),
    );
    let pod = Pod::new("holder", &ns_path);
    assert!(pod.ok("ip -o addr show dev eth0").contains("198.18.0.1/24"));
    let _server = serve_tcp(&pod, "198.18.0.1:7000");
    let reply = connect_tcp(&topo.node, "198.18.0.1:7000").expect("connect");
    assert_eq!(peer_ip_of(&reply), Some(IpAddr::V4(NODE_IP)));

    // A Pod naming a /run/netns entry goes through `ip netns exec`, and is not deleted.
    let named = Pod::named(topo.node.name());
    assert!(
        named
            .ok("ip -o addr show dev uplink0")
            .contains("198.18.0.10/24")
    );
    drop(named);
    assert!(topo.node.path().exists());
}

#[test]
fn pod_refuses_the_root_netns() {
    let pod = Pod::new("root", "/proc/self/ns/net");
    assert!(is_own_netns(&pod.path()));
    let attempt = std::panic::catch_unwind(|| pod.command(&["true"]));
    assert!(
        attempt.is_err(),
        "a Pod must never run commands in the root netns"
    );
}

#[test]
fn adopted_pod_is_deleted_on_drop() {
    require_root!();
    let name = podnet_tests::unique("adp");
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .expect("ip netns add");
    assert!(out.status.success());
    drop(Pod::adopt(&name));
    assert!(!netns_list().contains(&name));
}
