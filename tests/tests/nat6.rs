//! IPv6 masquerade end to end, on a dual-stack node (`podnet_tests::dual_stack`): a pod's IPv6
//! to the outside leaves as the node's IPv6 address with a port from the SNAT range (TCP, UDP,
//! ping6) and the replies come back; an ICMPv6 port unreachable from the outside reaches the
//! pod's socket; cluster-internal IPv6 and masquerade exclusions keep the pod's address;
//! `conntrack list` shows the IPv6 flows and `conntrack gc` collects them; nothing is left after
//! `node reset`. Every node init is a process that has exited before the traffic starts, so
//! these tests also show that the IPv6 programs stay reachable by tail call afterwards (the
//! pinned `IPV6_PROGS`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use podnet_tests::{
    InNetns as _, addr_field, connect_tcp, connect_udp, describe,
    dual_stack::{
        CLUSTER_CIDR6, NODE_IP6, OUTSIDE_IP6, addr6, address6_of, dual_stack_node,
        dual_stack_node_with, ping6, tcp_sees,
    },
    netprobe, peer_ip_of, require_root, serve_tcp, serve_udp,
};
use serde_json::Value;

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, reason: &str) -> u64 {
    after.get(reason).copied().unwrap_or(0) - before.get(reason).copied().unwrap_or(0)
}

/// The IPv6 entries of `conntrack list --json` (source or destination with a ':').
fn ipv6_flows(node: &podnet_tests::Node) -> Vec<Value> {
    node.json(&["conntrack", "list"])
        .as_array()
        .expect("a list of flows")
        .iter()
        .filter(|f| f["src"].as_str().is_some_and(|s| s.starts_with('[')))
        .cloned()
        .collect()
}

/// Instructions the verifier processed for the pinned program `name`, for the record.
fn verified_insns(node: &podnet_tests::Node, name: &str) -> Option<u32> {
    let pin = node.pin_dir.join("progs").join(name);
    aya::programs::ProgramInfo::from_pin(pin)
        .ok()?
        .verified_instruction_count()
}

#[test]
fn pods_reach_the_outside_over_ipv6_as_the_node_ipv6_address_and_conntrack_shows_and_collects_it() {
    require_root!();
    // UDP and ICMP flows expire after a second, so collection can be shown.
    let node = dual_stack_node_with(
        "10.244.61.0/24",
        "fd00:10:244:61::/64",
        &[
            "--ct-timeout",
            "udp=1",
            "--ct-timeout",
            "udp_stream=1",
            "--ct-timeout",
            "icmp=1",
        ],
    );
    for prog in podnet_ebpf::abi::program_name::ALL {
        eprintln!(
            "verified instructions of {prog}: {:?}",
            verified_insns(&node, prog)
        );
    }
    let pod = node.add_pod("client");
    let pod6 = address6_of(&node, "client");
    let outside = &node.topo.outside;
    let _tcp = serve_tcp(outside, &format!("[{OUTSIDE_IP6}]:8080"));
    let _udp = serve_udp(outside, &format!("[{OUTSIDE_IP6}]:8081"));
    let before = node.stats();

    let reply = connect_tcp(&pod.ns, &format!("[{OUTSIDE_IP6}]:8080")).expect("TCP pod -> outside");
    assert_eq!(
        peer_ip_of(&reply),
        Some(IpAddr::V6(NODE_IP6)),
        "TCP source: {reply}"
    );
    let port = addr_field(&reply, "peer").expect("peer").port();
    assert!((1_024..=29_999).contains(&port), "SNAT port {port}");

    let reply = connect_udp(&pod.ns, &format!("[{OUTSIDE_IP6}]:8081")).expect("UDP pod -> outside");
    assert_eq!(
        peer_ip_of(&reply),
        Some(IpAddr::V6(NODE_IP6)),
        "UDP source: {reply}"
    );

    let out = ping6(&pod.ns, &OUTSIDE_IP6.to_string());
    assert!(
        out.status.success(),
        "ping6 pod -> outside: {}",
        describe(&out)
    );

    let after = node.stats();
    assert!(delta(&before, &after, "snat6") >= 3 + 1 + 3, "{after:?}");
    assert!(
        delta(&before, &after, "snat6_reply") >= 2 + 1 + 3,
        "{after:?}"
    );
    assert_eq!(delta(&before, &after, "pass_ipv6_no_prog"), 0, "{after:?}");
    // The outside never learned a pod address: its neighbours are the node only.
    let neigh = outside.ok("ip -6 neigh show");
    assert!(
        !neigh.contains("fd00:10:244:"),
        "outside saw a pod address: {neigh}"
    );

    // conntrack list shows the IPv6 flows, translated to the node's IPv6 address.
    let flows = ipv6_flows(&node);
    let node6 = NODE_IP6.to_string();
    for proto in ["tcp", "udp"] {
        let flow = flows
            .iter()
            .find(|f| f["proto"] == proto && f["dir"] == "original" && f["kind"] == "snat")
            .unwrap_or_else(|| panic!("no IPv6 {proto} snat flow in {flows:?}"));
        assert!(
            flow["src"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("[{pod6}]:"))),
            "{flow}"
        );
        assert!(
            flow["nat_src"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("[{node6}]:"))),
            "{flow}"
        );
    }
    eprintln!("{}", node.ok(&["conntrack", "list"]));
    let stats = node.json(&["stats"]);
    assert!(
        stats["conntrack6"]["live"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );
    let text = node.ok(&["stats"]);
    assert!(text.contains("conntrack6: "), "{text}");
    eprintln!("{text}");

    // After their timeouts the UDP and ICMP flows are dead, and gc removes them.
    std::thread::sleep(Duration::from_millis(2_200));
    let gc = node.json(&["conntrack", "gc"]);
    assert!(gc["removed"].as_u64().unwrap_or(0) >= 4, "{gc}");
    let left = ipv6_flows(&node);
    assert!(
        left.iter().all(|f| f["proto"] == "tcp"),
        "dead IPv6 flows left after gc: {left:?}"
    );

    // Re-initialising (a new program version, the same maps) keeps IPv6 masquerade working,
    // and the programs load fast.
    let node6_arg = NODE_IP6.to_string();
    let mut args = node.init_args();
    args.extend(
        [
            "--pod-cidr",
            "fd00:10:244:61::/64",
            "--cluster-cidr",
            CLUSTER_CIDR6,
            "--node-ip6",
            &node6_arg,
            "--gc-interval",
            "0",
            "--ct-timeout",
            "udp=1",
            "--ct-timeout",
            "udp_stream=1",
            "--ct-timeout",
            "icmp=1",
        ]
        .map(str::to_owned),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let init = node.json(&refs);
    let load_ms = init["load"]["load_time_ms"].as_u64().expect("load time");
    eprintln!("node init load time: {load_ms} ms");
    tcp_sees(
        &pod.ns,
        IpAddr::V6(NODE_IP6),
        outside,
        IpAddr::V6(OUTSIDE_IP6),
        8082,
    );

    // Nothing of it is left after node reset.
    node.ok(&["node", "reset"]);
    assert!(!node.pin_dir.exists(), "pins left: {:?}", node.pin_dir);
}

#[test]
fn an_icmpv6_port_unreachable_from_outside_reaches_the_pods_connected_udp_socket() {
    require_root!();
    let node = dual_stack_node("10.244.62.0/24", "fd00:10:244:62::/64");
    let pod = node.add_pod("client");
    let before = node.stats();
    let started = Instant::now();
    // Nothing listens on the outside's port 5999: its kernel answers port unreachable to the
    // node's IPv6 address, which podnet translates back to the pod.
    let out = netprobe(
        &pod.ns,
        &[
            "connect",
            "udp",
            &format!("[{OUTSIDE_IP6}]:5999"),
            "--timeout-ms",
            "2000",
        ],
    );
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "nothing listens: {}", describe(&out));
    let text = describe(&out).to_lowercase();
    assert!(
        text.contains("refused"),
        "ECONNREFUSED from the ICMPv6 error: {text}"
    );
    assert!(
        elapsed < Duration::from_millis(1_500),
        "at once, not a timeout: {elapsed:?}"
    );
    let after = node.stats();
    assert!(
        delta(&before, &after, "icmp6_error_translated") >= 1,
        "{after:?}"
    );
}

#[test]
fn cluster_internal_ipv6_and_masquerade_exclusions_keep_the_pods_address() {
    require_root!();
    // fd00:99::/48 is a masquerade exclusion (a network routing pod addresses back).
    let node = dual_stack_node_with(
        "10.244.63.0/24",
        "fd00:10:244:63::/64",
        &["--non-masquerade-cidr", "fd00:99::/48"],
    );
    let status = node.json(&["node", "status"]);
    assert_eq!(
        status["settings"]["non_masquerade_cidrs6"],
        serde_json::json!(["fd00:99::/48"]),
        "{status}"
    );
    let pod = node.add_pod("client");
    let pod6 = address6_of(&node, "client");
    let outside = &node.topo.outside;
    // The outside stands in for another node's pod (in the cluster's IPv6 CIDR) and for a
    // host of the excluded network; the node routes both to it.
    let other_pod: Ipv6Addr = "fd00:10:244:99::5".parse().expect("IPv6");
    let excluded: Ipv6Addr = "fd00:99::1".parse().expect("IPv6");
    addr6(outside, "lo", &format!("{other_pod}/128"));
    addr6(outside, "lo", &format!("{excluded}/128"));
    node.topo.node.ok(&format!(
        "ip -6 route add fd00:10:244:99::/64 via {OUTSIDE_IP6} && ip -6 route add fd00:99::/48 via {OUTSIDE_IP6}"
    ));
    let before = node.stats();
    tcp_sees(
        &pod.ns,
        IpAddr::V6(pod6),
        outside,
        IpAddr::V6(other_pod),
        7100,
    );
    tcp_sees(
        &pod.ns,
        IpAddr::V6(pod6),
        outside,
        IpAddr::V6(excluded),
        7101,
    );
    let after = node.stats();
    assert!(
        delta(&before, &after, "pass_non_masquerade6") >= 1,
        "{after:?}"
    );
    assert_eq!(delta(&before, &after, "snat6"), 0, "{after:?}");
    // Anything else still leaves as the node.
    tcp_sees(
        &pod.ns,
        IpAddr::V6(NODE_IP6),
        outside,
        IpAddr::V6(OUTSIDE_IP6),
        7102,
    );
}
