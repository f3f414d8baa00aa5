//! IP fragments through every translated path, end to end in namespaces: UDP datagrams of 1 KB
//! to 60 KB (the larger ones leave in up to 42 fragments at the 1,500-byte MTU) echoed byte for
//! byte through SNAT (pod -> outside) and its replies, a NodePort from outside to a local pod,
//! a NodePort from outside to a backend on another node (the remote-backend flow, SNATed to the
//! node IP), and a ClusterIP from a pod on the per-packet path (`--no-socket-lb`). The echo
//! (`netprobe serve udp --echo`) sends each datagram back as it came, so the reply is
//! fragmented too; `netprobe connect udp --payload-bytes N` fails unless exactly that datagram
//! comes back. Nothing is ever dropped as untranslatable or out of order on the way.

use std::collections::BTreeMap;

use podnet::datapath::services_map::{Frontend, ServicesMap};
use podnet_ebpf::abi::{proto::IPPROTO_UDP, svc_flag};
use podnet_tests::{
    Cluster, InNetns, NODE_IP, Node, OUTSIDE_IP, describe, netprobe, require_root, serve,
    testrun::service_spec,
};

/// Datagram sizes: one that fits a frame, then 3, 8, 30 and 60 KB.
const SIZES: [usize; 5] = [1_000, 3_000, 8_000, 30_000, 60_000];
/// The echo server's port everywhere.
const ECHO_PORT: u16 = 7_001;
/// Fragments of a `len`-byte UDP payload at MTU 1,500: 1,480 bytes of IP payload each.
fn fragments(len: usize) -> u64 {
    let ip_payload = len + 8;
    u64::try_from(ip_payload.div_ceil(1_480)).expect("small")
}

/// Sends a datagram of every size in [`SIZES`] from `ns` to `target` and expects each echoed
/// whole; returns how many IP packets the datagrams (one way) took.
fn echo_every_size(ns: &(impl InNetns + ?Sized), target: &str) -> u64 {
    let mut packets = 0;
    for size in SIZES {
        let bytes = size.to_string();
        let out = netprobe(
            ns,
            &[
                "connect",
                "udp",
                target,
                "--payload-bytes",
                &bytes,
                "--timeout-ms",
                "3000",
            ],
        );
        assert!(
            out.status.success(),
            "{size}-byte datagram to {target}: {}",
            describe(&out)
        );
        let reply = String::from_utf8_lossy(&out.stdout);
        assert_eq!(reply.trim(), format!("echoed={size}"), "to {target}");
        packets += fragments(size);
    }
    packets
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, reason: &str) -> u64 {
    after[reason] - before[reason]
}

/// Asserts nothing was dropped for want of ports between `before` and `after`.
fn assert_no_fragment_lost(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) {
    for reason in [
        "drop_nat_unsupported",
        "drop_frag_out_of_order",
        "drop_ct_no_state",
        "pass_fragment",
    ] {
        assert_eq!(delta(before, after, reason), 0, "{reason}: {after:?}");
    }
}

/// `netprobe serve udp --echo` on `listen` inside `ns`.
fn serve_udp_echo(ns: &(impl InNetns + ?Sized), listen: &str) -> podnet_tests::ChildGuard {
    serve(ns, &["serve", "udp", "--echo", "--listen", listen])
}

#[test]
fn udp_fragments_from_a_pod_to_the_outside_are_snated_both_ways() {
    require_root!();
    let node = Node::new("10.244.171.0/24");
    let pod = node.add_pod("client");
    let _echo = serve_udp_echo(&node.topo.outside, &format!("{OUTSIDE_IP}:{ECHO_PORT}"));
    let before = node.stats();

    // The outside has no route to the pod CIDR: replies reach the pod only translated back.
    let packets = echo_every_size(&pod.ns, &format!("{OUTSIDE_IP}:{ECHO_PORT}"));

    let after = node.stats();
    assert!(delta(&before, &after, "snat") >= packets, "{after:?}");
    assert!(delta(&before, &after, "snat_reply") >= packets, "{after:?}");
    assert_no_fragment_lost(&before, &after);
}

#[test]
fn udp_fragments_from_the_outside_through_a_nodeport_reach_the_pod_and_come_back() {
    require_root!();
    let node = Node::new("10.244.172.0/24");
    let echo = node.add_pod("echo");
    let _echo = serve_udp_echo(&echo.ns, &format!("{}:{ECHO_PORT}", echo.ip));
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30071",
        "--proto",
        "udp",
        "--backend",
        &format!("echo:{ECHO_PORT}"),
    ]);
    let before = node.stats();

    let packets = echo_every_size(&node.topo.outside, &format!("{NODE_IP}:30071"));

    let after = node.stats();
    assert!(delta(&before, &after, "dnat") >= packets, "{after:?}");
    assert!(delta(&before, &after, "dnat_reply") >= packets, "{after:?}");
    assert_no_fragment_lost(&before, &after);
}

#[test]
fn udp_fragments_from_a_pod_to_a_clusterip_tc_path() {
    require_root!();
    let node = Node::with_args(
        "10.244.173.0/24",
        &["--service-cidr", "10.96.0.0/12", "--no-socket-lb"],
    );
    let echo = node.add_pod("echo");
    let client = node.add_pod("client");
    let _echo = serve_udp_echo(&echo.ns, &format!("{}:{ECHO_PORT}", echo.ip));
    let vip = std::net::Ipv4Addr::new(10, 96, 0, 71);
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    let spec = service_spec(
        Frontend {
            addr: vip.into(),
            port: 53,
            proto: IPPROTO_UDP,
        },
        &[(echo.ip.parse().expect("ip"), ECHO_PORT)],
        svc_flag::CLUSTER_IP,
    );
    maps.write(&spec).expect("write service");
    let before = node.stats();

    // Connected: the reply is accepted only from the ClusterIP itself.
    let packets = echo_every_size(&client.ns, &format!("{vip}:53"));

    let after = node.stats();
    // A flow's first packet counts as service_dnat, the rest as dnat.
    let service_flows = u64::try_from(SIZES.len()).expect("small");
    assert!(
        delta(&before, &after, "service_dnat") >= service_flows,
        "{after:?}"
    );
    let forward = delta(&before, &after, "service_dnat") + delta(&before, &after, "dnat");
    assert!(forward >= packets, "{after:?}");
    assert!(delta(&before, &after, "dnat_reply") >= packets, "{after:?}");
    assert_eq!(delta(&before, &after, "sock_service"), 0, "{after:?}");
    assert_eq!(delta(&before, &after, "snat"), 0, "{after:?}");
    assert_no_fragment_lost(&before, &after);
}

#[test]
fn udp_fragments_through_a_nodeport_to_a_backend_on_another_node() {
    require_root!();
    let cluster = Cluster::new(2, &[]);
    let (entry, remote) = (&cluster.nodes[0], &cluster.nodes[1]);
    let echo = remote.add_pod("echo");
    let _echo = serve_udp_echo(&echo.ns, &format!("{}:{ECHO_PORT}", echo.ip));
    entry.ok(&[
        "nodeport",
        "add",
        "--port",
        "30072",
        "--proto",
        "udp",
        "--backend",
        &format!("{}:{ECHO_PORT}", echo.ip),
    ]);

    let before = entry.stats();

    // In through node 0, SNATed to node 0's IP towards the pod on node 1; the replies come
    // back to node 0 and leave translated back to node 0's NodePort.
    let packets = echo_every_size(&cluster.outside, &format!("{}:30072", entry.ip));

    let after = entry.stats();
    assert!(delta(&before, &after, "dnat") >= packets, "{after:?}");
    assert!(delta(&before, &after, "dnat_reply") >= packets, "{after:?}");
    assert_no_fragment_lost(&before, &after);
}

/// The pods' MTU (1400) is below the uplink's (1500), as in overlay mode. A packet from outside
/// too big for the pod it is for is never dropped without a word: with "don't fragment" the
/// sender gets ICMP fragmentation needed with the pod's MTU from the node IP (and its kernel
/// learns the path MTU, so the datagram goes through on the next try, in fragments); without it
/// the kernel forwards it in fragments. Through a NodePort (translated) and to a pod IP routed
/// to the node (untranslated).
#[test]
fn packets_too_big_for_a_pod_get_frag_needed_or_go_in_fragments() {
    require_root!();
    let node = Node::with_args("10.244.174.0/24", &["--mtu", "1400"]);
    let echo = node.add_pod("echo");
    let pod_mtu = echo.ns.ok("cat /sys/class/net/eth0/mtu");
    assert_eq!(pod_mtu.trim(), "1400");
    let _echo = serve_udp_echo(&echo.ns, &format!("{}:{ECHO_PORT}", echo.ip));
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30074",
        "--proto",
        "udp",
        "--backend",
        &format!("echo:{ECHO_PORT}"),
    ]);
    let outside = &node.topo.outside;
    let target = format!("{NODE_IP}:30074");
    let echo_1472 = || {
        netprobe(
            outside,
            &[
                "connect",
                "udp",
                &target,
                "--payload-bytes",
                "1472",
                "--timeout-ms",
                "1000",
            ],
        )
    };
    let before = node.stats();
    // 1,500 bytes with DF (Linux's default for UDP): refused with the pod's MTU...
    let first = echo_1472();
    let after = node.stats();
    assert_eq!(delta(&before, &after, "reject_frag_needed"), 1, "{after:?}");
    let cached = outside.ok(&format!("ip route get {NODE_IP}"));
    assert!(
        cached.contains("mtu 1400"),
        "the sender learnt the MTU: {cached}"
    );
    // ... and the next try goes in fragments and comes back whole.
    let out = if first.status.success() {
        first
    } else {
        echo_1472()
    };
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echoed=1472");

    // Routed straight to the pod IP: DF set -> frag needed from the node IP; DF clear -> the
    // kernel forwards it in fragments.
    outside.ok(&format!("ip route add 10.244.174.0/24 via {NODE_IP}"));
    outside.ok("ip route flush cache");
    let before = node.stats();
    let df = outside.sh(&format!("ping -n -c 1 -W 1 -M do -s 1472 {}", echo.ip));
    let text = String::from_utf8_lossy(&df.stdout);
    assert!(
        text.contains(&format!("From {NODE_IP}")) && text.contains("mtu = 1400"),
        "{}",
        describe(&df)
    );
    let after = node.stats();
    assert!(
        delta(&before, &after, "reject_frag_needed") >= 1,
        "{after:?}"
    );
    // Forget the learnt MTU, or the sender fragments to fit by itself.
    outside.ok("ip route flush cache");
    let before = node.stats();
    let no_df = outside.sh(&format!("ping -n -c 1 -W 2 -M dont -s 1472 {}", echo.ip));
    assert!(no_df.status.success(), "{}", describe(&no_df));
    let after = node.stats();
    assert_eq!(delta(&before, &after, "reject_frag_needed"), 0, "{after:?}");
    assert!(delta(&before, &after, "pass_too_big") >= 1, "{after:?}");
}
