//! IPv6 between nodes on crafted frames through `BPF_PROG_TEST_RUN` (the rewrites of
//! `forward6`, `fib6` and `tunnel6`): from a pod to another node's pod, natively routed (FIB
//! lookup towards the node's IPv6 address in a namespace the test makes: MACs of the way out,
//! one hop less) and into the overlay (one hop less, nothing else changed, over either
//! underlay); from another node to a local pod (MACs rewritten, one hop less); and what goes to
//! the kernel unchanged (a hop limit of 1, a hop-by-hop options header, an address of no
//! peer, a link-local or unspecified source, a source outside the cluster, a way the FIB does
//! not know). The object is loaded with
//! private maps.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use podnet_ebpf::abi::{
    Counter, Endpoint, EndpointKey6, NodeConfig, Peer6, config_flag, map_name, peer_flag,
    program_name, reason,
};
use podnet_tests::{packet::*, require_root, testrun::in_uplink_netns};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x11];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x12];
/// BPF_PROG_TEST_RUN hands the program an skb on the loopback device: pod A "lives" there
/// (and in overlay mode the loopback stands for the tunnel device: a test run redirects
/// nowhere).
const TEST_RUN_IFINDEX: u32 = 1;
const UDP: u8 = 17;
const HOP_BY_HOP: u8 = 0;
const HOP_LIMIT_OFF: usize = ETH_HLEN + 7;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6")
}
/// Pod A, on this node.
fn a6() -> Ipv6Addr {
    v6("fd00:10:244:1::2")
}
/// A pod of the peer.
fn remote6() -> Ipv6Addr {
    v6("fd00:10:244:2::5")
}
fn peer_cidr6() -> Ipv6Addr {
    v6("fd00:10:244:2::")
}
fn node_ip6() -> Ipv6Addr {
    v6("fd00:198:18::11")
}
fn peer_ip6() -> Ipv6Addr {
    v6("fd00:198:18::12")
}

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    /// A node whose peer has IPv6 pod CIDR fd00:10:244:2::/64 and IPv6 address
    /// fd00:198:18::12: natively routed (`tunnel` 0), or over the tunnel device `tunnel`
    /// (`peer_flags`: `UNDERLAY6` for the IPv6 underlay).
    fn new(tunnel: u32, peer_flags: u32) -> Self {
        // The classifiers tail-call the IPv6 programs: all loaded, the program array filled.
        let mut ebpf = podnet_tests::testrun::load_classifiers();
        let mut config: Array<_, NodeConfig> =
            Array::try_from(ebpf.map_mut(map_name::CONFIG).expect("CONFIG")).expect("array");
        config
            .set(
                0,
                NodeConfig {
                    flags: config_flag::READY | config_flag::ANTI_SPOOF,
                    gateway_mac: GW_MAC,
                    tunnel_ifindex: tunnel,
                    ..NodeConfig::default()
                },
                0,
            )
            .expect("config");
        let mut endpoints: HashMap<_, EndpointKey6, Endpoint> =
            HashMap::try_from(ebpf.map_mut(map_name::ENDPOINTS6).expect("ENDPOINTS6"))
                .expect("hash");
        endpoints
            .insert(
                EndpointKey6 {
                    addr: a6().octets(),
                },
                Endpoint {
                    ifindex: TEST_RUN_IFINDEX,
                    mac: MAC_A,
                    ..Endpoint::default()
                },
                0,
            )
            .expect("endpoint");
        let mut peers: LpmTrie<_, [u8; 16], Peer6> =
            LpmTrie::try_from(ebpf.map_mut(map_name::PEERS6).expect("PEERS6")).expect("lpm");
        let peer = Peer6 {
            node_ip6: peer_ip6().octets(),
            node_ip: PEER_IP.octets(),
            flags: peer_flags,
        };
        peers
            .insert(&Key::new(64, peer_cidr6().octets()), peer, 0)
            .expect("peer pod CIDR");
        peers
            .insert(
                &Key::new(128, peer_ip6().octets()),
                Peer6 {
                    flags: peer_flags | peer_flag::NODE_IP,
                    ..peer
                },
                0,
            )
            .expect("peer node address");
        Self { ebpf }
    }

    fn run_from_pod(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        podnet_tests::testrun::run_classifier(&self.ebpf, program_name::FROM_POD, frame)
    }

    fn run_from_uplink(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        podnet_tests::testrun::run_classifier(&self.ebpf, program_name::FROM_UPLINK, frame)
    }

    fn count(&self, why: u32) -> u64 {
        let stats: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(map_name::STATS).expect("STATS")).expect("percpu");
        stats
            .get(&why, 0)
            .expect("slot")
            .iter()
            .map(|c| c.packets)
            .sum()
    }
}

/// A UDP frame (first next header `next`, the payload may start with extension headers).
fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&u16::try_from(payload.len()).expect("small").to_be_bytes());
    ip.extend_from_slice(&[next, hop_limit]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(payload);
    eth(macs.0, macs.1, ETH_P_IPV6, &ip)
}

const UDP_PAYLOAD: [u8; 12] = [0x9c, 0x40, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4];

fn udp(macs: ([u8; 6], [u8; 6]), src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    frame(macs, src, dst, hop_limit, UDP, &UDP_PAYLOAD)
}

/// UDP behind a hop-by-hop options header (8 bytes of padding options).
fn udp_with_hop_by_hop(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut payload = vec![UDP, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&UDP_PAYLOAD);
    frame((GW_MAC, MAC_A), src, dst, 64, HOP_BY_HOP, &payload)
}

/// The offsets at which `out` differs from `frame`.
fn changed(frame: &[u8], out: &[u8]) -> Vec<usize> {
    assert_eq!(frame.len(), out.len(), "the frame keeps its length");
    (0..frame.len()).filter(|&i| frame[i] != out[i]).collect()
}

/// What a pod's IPv6 to another node does not get: the program's attention.
fn assert_kernel_keeps_what_is_not_routable(h: &Harness) {
    for f in [
        udp((GW_MAC, MAC_A), a6(), remote6(), 1),
        udp((GW_MAC, MAC_A), a6(), remote6(), 0),
        udp_with_hop_by_hop(a6(), remote6()),
        udp((GW_MAC, MAC_A), a6(), v6("2001:db8::1"), 64),
        // Sources a router never forwards: link-local, unspecified.
        udp((GW_MAC, MAC_A), v6("fe80::a"), remote6(), 64),
        udp((GW_MAC, MAC_A), Ipv6Addr::UNSPECIFIED, remote6(), 64),
    ] {
        assert_eq!(h.run_from_pod(&f), (TC_ACT_OK, f.clone()), "{f:02x?}");
    }
}

#[test]
fn a_pods_ipv6_to_another_nodes_pod_enters_the_overlay_one_hop_less_over_either_underlay() {
    require_root!();
    for flags in [0, peer_flag::UNDERLAY6] {
        let h = Harness::new(TEST_RUN_IFINDEX, flags);
        for dst in [remote6(), peer_ip6()] {
            let f = udp((GW_MAC, MAC_A), a6(), dst, 64);
            let (verdict, out) = h.run_from_pod(&f);
            assert_eq!(verdict, TC_ACT_REDIRECT, "underlay flags {flags}, to {dst}");
            assert_eq!(changed(&f, &out), [HOP_LIMIT_OFF]);
            assert_eq!(out[HOP_LIMIT_OFF], 63);
        }
        assert_eq!(h.count(reason::FORWARD_REMOTE_NODE6), 2);
        assert_kernel_keeps_what_is_not_routable(&h);
        assert_eq!(h.count(reason::FORWARD_REMOTE_NODE6), 2);
    }
}

#[test]
fn a_pods_ipv6_to_another_nodes_pod_is_routed_by_the_fib_towards_the_nodes_ipv6_address() {
    require_root!();
    // A namespace with the uplink (up0) on the fabric's IPv6 prefix and the peer's neighbour
    // entry: the FIB names up0 and the peer's MAC.
    let setup = format!(
        "sysctl -qw net.ipv6.conf.all.forwarding=1 \
         && ip -6 addr add {}/64 dev up0 nodad \
         && ip -6 neigh replace {} lladdr 02:00:00:00:10:12 dev up0 nud permanent",
        node_ip6(),
        peer_ip6()
    );
    in_uplink_netns("v6fib", UPLINK_MAC, NODE_IP, &[], &setup, || {
        let h = Harness::new(0, 0);
        let f = udp((GW_MAC, MAC_A), a6(), remote6(), 64);
        let (verdict, out) = h.run_from_pod(&f);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!((&out[..6], &out[6..12]), (&PEER_MAC[..], &UPLINK_MAC[..]));
        assert_eq!(changed(&f[12..], &out[12..]), [HOP_LIMIT_OFF - 12]);
        assert_eq!(out[HOP_LIMIT_OFF], 63);
        assert_eq!(h.count(reason::FORWARD_REMOTE_NODE6), 1);
        assert_kernel_keeps_what_is_not_routable(&h);
    });
    // Where the FIB knows no way to the node (a namespace without IPv6 on the uplink): the
    // kernel's, unchanged (it answers as a router).
    in_uplink_netns("v6fib", UPLINK_MAC, NODE_IP, &[], "true", || {
        let h = Harness::new(0, 0);
        let f = udp((GW_MAC, MAC_A), a6(), remote6(), 64);
        assert_eq!(h.run_from_pod(&f), (TC_ACT_OK, f.clone()));
        assert_eq!(h.count(reason::FORWARD_REMOTE_NODE6), 0);
    });
}

#[test]
fn ipv6_from_another_node_to_a_local_pod_is_delivered_one_hop_less() {
    require_root!();
    for tunnel in [0, TEST_RUN_IFINDEX] {
        let h = Harness::new(tunnel, 0);
        // From the peer's pod and from the peer itself.
        for src in [remote6(), peer_ip6()] {
            let f = udp((UPLINK_MAC, PEER_MAC), src, a6(), 64);
            let (verdict, out) = h.run_from_uplink(&f);
            assert_eq!(verdict, TC_ACT_REDIRECT, "from {src}, tunnel {tunnel}");
            assert_eq!((&out[..6], &out[6..12]), (&MAC_A[..], &GW_MAC[..]));
            assert_eq!(changed(&f[12..], &out[12..]), [HOP_LIMIT_OFF - 12]);
            assert_eq!(out[HOP_LIMIT_OFF], 63);
        }
        assert_eq!(h.count(reason::FORWARD_UPLINK_TO_POD6), 2);
        // To the kernel unchanged: a hop limit the node must answer, a hop-by-hop header, a
        // source outside the cluster, an address of no local pod.
        let mut hop_by_hop = udp_with_hop_by_hop(remote6(), a6());
        hop_by_hop[..12].copy_from_slice(&[UPLINK_MAC, PEER_MAC].concat());
        for f in [
            udp((UPLINK_MAC, PEER_MAC), remote6(), a6(), 1),
            hop_by_hop,
            udp((UPLINK_MAC, PEER_MAC), v6("2001:db8::1"), a6(), 64),
            udp(
                (UPLINK_MAC, PEER_MAC),
                remote6(),
                v6("fd00:10:244:1::9"),
                64,
            ),
        ] {
            assert_eq!(h.run_from_uplink(&f), (TC_ACT_OK, f.clone()), "{f:02x?}");
        }
        assert_eq!(h.count(reason::FORWARD_UPLINK_TO_POD6), 2);
    }
}
