//! Masquerade exclusions (`node init --non-masquerade-cidr`, ip-masq-agent's
//! `nonMasqueradeCIDRs`), end to end in namespaces the tests make: the "outside" namespace plays
//! a peered network that routes the pod CIDR back to the node, with one server at an excluded
//! address (198.51.100.7) and one at an address that is not (203.0.113.7).
//!
//! What a user depends on: a pod reaches an excluded destination with its own address (TCP,
//! UDP and ping get their replies) and everything else as the node IP; the list follows the
//! node's settings on every `node init`; a bad list is refused whole, changing nothing.

use std::net::{IpAddr, Ipv4Addr};

use podnet_tests::{
    NODE_IP, Node, PodInfo, addr, connect_tcp, connect_udp, describe, peer_ip_of, require_root,
    route, serve_tcp, serve_udp,
};

const EXCLUDED_NET: &str = "198.51.100.0/24";
const EXCLUDED_SERVER: &str = "198.51.100.7";
const MASQUERADED_SERVER: &str = "203.0.113.7";
const NODE: IpAddr = IpAddr::V4(NODE_IP);

/// A node with `pod_cidr` and `extra` init arguments, one pod, and an outside that serves TCP
/// and UDP on both servers and routes `pod_cidr` back through the node.
fn peered_node(pod_cidr: &str, extra: &[&str]) -> (Node, PodInfo, Vec<podnet_tests::ChildGuard>) {
    let node = Node::with_args(pod_cidr, extra);
    let pod = node.add_pod("client");
    let outside = &node.topo.outside;
    for server in [EXCLUDED_SERVER, MASQUERADED_SERVER] {
        addr(outside, &node.topo.outside_if, &format!("{server}/32"));
    }
    route(outside, &[pod_cidr, "via", &NODE_IP.to_string()]);
    let servers = [EXCLUDED_SERVER, MASQUERADED_SERVER]
        .iter()
        .flat_map(|ip| {
            [
                serve_tcp(outside, &format!("{ip}:8080")),
                serve_udp(outside, &format!("{ip}:8081")),
            ]
        })
        .collect();
    (node, pod, servers)
}

/// The source address the server at `server` sees for TCP and for UDP from `pod`.
fn seen_by(pod: &PodInfo, server: &str) -> (Option<IpAddr>, Option<IpAddr>) {
    let tcp = connect_tcp(&pod.ns, &format!("{server}:8080"))
        .unwrap_or_else(|e| panic!("TCP pod -> {server}: {e}"));
    let udp = connect_udp(&pod.ns, &format!("{server}:8081"))
        .unwrap_or_else(|e| panic!("UDP pod -> {server}: {e}"));
    (peer_ip_of(&tcp), peer_ip_of(&udp))
}

fn pod_addr(pod: &PodInfo) -> Option<IpAddr> {
    Some(IpAddr::V4(pod.ip.parse::<Ipv4Addr>().expect("pod IP")))
}

#[test]
fn an_excluded_destination_sees_the_pod_address_and_others_the_node_ip() {
    require_root!();
    let (node, pod, _servers) =
        peered_node("10.244.61.0/24", &["--non-masquerade-cidr", EXCLUDED_NET]);
    let before = node.stats();

    let (tcp, udp) = seen_by(&pod, EXCLUDED_SERVER);
    assert_eq!((tcp, udp), (pod_addr(&pod), pod_addr(&pod)), "excluded");
    let ping = pod.ping(EXCLUDED_SERVER, 2);
    assert!(ping.status.success(), "ping: {}", describe(&ping));

    let (tcp, udp) = seen_by(&pod, MASQUERADED_SERVER);
    assert_eq!((tcp, udp), (Some(NODE), Some(NODE)), "not excluded");

    let after = node.stats();
    let delta = |reason: &str| after[reason] - before[reason];
    // TCP (SYN and at least the ACK), a UDP datagram, two echo requests.
    let (tcp, udp, echo) = (2, 1, 2);
    assert!(
        delta("pass_non_masquerade") >= tcp + udp + echo,
        "{after:?}"
    );
    assert!(delta("snat") >= tcp + udp, "{after:?}");
    let flows = node.json(&["conntrack", "list"]);
    let flows = flows.as_array().expect("list");
    assert!(
        flows
            .iter()
            .all(|f| !f.to_string().contains(EXCLUDED_SERVER)),
        "no NAT state for the excluded destination: {flows:?}"
    );
    // Recorded with the node's settings.
    let status = node.json(&["node", "status"]);
    assert_eq!(
        status["settings"]["non_masquerade_cidrs"],
        serde_json::json!([EXCLUDED_NET]),
        "{status}"
    );
}

#[test]
fn the_exclusions_follow_node_init_and_a_bad_list_changes_nothing() {
    require_root!();
    let pod_cidr = "10.244.62.0/24";
    let (node, pod, _servers) = peered_node(pod_cidr, &["--non-masquerade-cidr", EXCLUDED_NET]);
    let init = |extra: &[&str]| {
        let mut args = node.init_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        node.podnet(&refs)
    };
    let settings_file = node.state_dir.join("node.json");
    let recorded = std::fs::read_to_string(&settings_file).expect("node.json");

    for (bad, says) in [
        ("198.51.100.7/24", "host bits"),
        ("198.51.100.0/33", "non-masquerade-cidr"),
        ("not-a-cidr", "non-masquerade-cidr"),
    ] {
        let out = init(&[
            "--non-masquerade-cidr",
            "192.0.2.0/24",
            "--non-masquerade-cidr",
            bad,
        ]);
        assert!(!out.status.success(), "{bad} accepted: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: unclear error: {err}");
        assert_eq!(
            std::fs::read_to_string(&settings_file).expect("node.json"),
            recorded,
            "{bad}: the recorded settings changed"
        );
        assert_eq!(
            seen_by(&pod, EXCLUDED_SERVER).0,
            pod_addr(&pod),
            "{bad}: the exclusion is still in force"
        );
    }
    let too_many: Vec<String> = (0..=256)
        .flat_map(|i| {
            [
                "--non-masquerade-cidr".to_owned(),
                format!("172.{}.{}.0/24", 16 + i / 256, i % 256),
            ]
        })
        .collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let out = init(&refs);
    assert!(!out.status.success(), "257 exclusions accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 256"),
        "{}",
        describe(&out)
    );

    // A re-init without the list removes it: the excluded server now sees the node IP.
    let out = init(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(seen_by(&pod, EXCLUDED_SERVER), (Some(NODE), Some(NODE)));
    // And one with another list puts only that one in force.
    let out = init(&["--non-masquerade-cidr", "203.0.113.0/28"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        seen_by(&pod, MASQUERADED_SERVER),
        (pod_addr(&pod), pod_addr(&pod))
    );
    assert_eq!(seen_by(&pod, EXCLUDED_SERVER).0, Some(NODE));
}
