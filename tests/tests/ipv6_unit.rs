//! `from_pod`'s IPv6 path on crafted frames through `BPF_PROG_TEST_RUN`: delivery to a local
//! pod (MACs rewritten, hop limit kept on-link and taken down by one when routed), what goes
//! to the kernel unchanged (Neighbor Discovery, multicast, no local pod, a routed hop limit of
//! 1), and, with anti-spoofing, what is dropped and under which reason (a source that is not
//! the pod's, a Neighbor Advertisement for another address or MAC, even behind extension
//! headers, a Router Advertisement or Redirect). The object is loaded with private maps.

use std::net::Ipv6Addr;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use podnet_ebpf::abi::{
    Counter, Endpoint, EndpointKey6, NodeConfig, config_flag, map_name, program_name, reason,
};
use podnet_tests::{packet::*, require_root};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// BPF_PROG_TEST_RUN hands the program an skb on the loopback device: pod A "lives" there.
const TEST_RUN_IFINDEX: u32 = 1;
/// Pod B's host veth (anywhere else).
const B_IFINDEX: u32 = 42;
const ICMPV6: u8 = 58;
const UDP: u8 = 17;
const HOP_LIMIT_OFF: usize = ETH_HLEN + 7;

fn a6() -> Ipv6Addr {
    "fd00:10:244:1::2".parse().expect("IPv6")
}
fn b6() -> Ipv6Addr {
    "fd00:10:244:1::3".parse().expect("IPv6")
}
fn link_local_a() -> Ipv6Addr {
    "fe80::a".parse().expect("IPv6")
}
fn all_nodes() -> Ipv6Addr {
    "ff02::1".parse().expect("IPv6")
}

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    fn new(anti_spoof: bool) -> Self {
        // from_pod tail-calls from_pod6 for IPv6: both loaded, the program array filled.
        let mut ebpf = podnet_tests::testrun::load_classifiers();
        let flags = config_flag::READY
            | if anti_spoof {
                config_flag::ANTI_SPOOF
            } else {
                0
            };
        let mut config: Array<_, NodeConfig> =
            Array::try_from(ebpf.map_mut(map_name::CONFIG).expect("CONFIG")).expect("array");
        config
            .set(
                0,
                NodeConfig {
                    flags,
                    gateway_mac: GW_MAC,
                    ..NodeConfig::default()
                },
                0,
            )
            .expect("config");
        let mut endpoints: HashMap<_, EndpointKey6, Endpoint> =
            HashMap::try_from(ebpf.map_mut(map_name::ENDPOINTS6).expect("ENDPOINTS6"))
                .expect("hash");
        for (addr, ifindex, mac) in [(a6(), TEST_RUN_IFINDEX, MAC_A), (b6(), B_IFINDEX, MAC_B)] {
            endpoints
                .insert(
                    EndpointKey6 {
                        addr: addr.octets(),
                    },
                    Endpoint {
                        ifindex,
                        mac,
                        ..Endpoint::default()
                    },
                    0,
                )
                .expect("endpoint");
        }
        Self { ebpf }
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        podnet_tests::testrun::run_classifier(&self.ebpf, program_name::FROM_POD, frame)
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

/// An IPv6 frame with upper-layer `next` and `payload` (which may start with extension
/// headers).
fn ipv6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
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
    eth(dst_mac, src_mac, ETH_P_IPV6, &ip)
}

fn udp_a_to_b(dst_mac: [u8; 6], hop_limit: u8) -> Vec<u8> {
    ipv6_frame(
        dst_mac,
        MAC_A,
        a6(),
        b6(),
        hop_limit,
        UDP,
        &[0x9c, 0x40, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4],
    )
}

/// A Neighbor Advertisement for `target`, with a target link-layer address option `ll`.
fn neighbor_advert(target: Ipv6Addr, ll: [u8; 6]) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&ll);
    m
}

/// Extension headers (destination options, 8 bytes each) in front of `upper` (`next`).
fn behind_dest_options(count: usize, next: u8, upper: &[u8]) -> (u8, Vec<u8>) {
    const DEST_OPTS: u8 = 60;
    let (mut next, mut body) = (next, upper.to_vec());
    for _ in 0..count {
        let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
        h.extend_from_slice(&body);
        body = h;
        next = DEST_OPTS;
    }
    (next, body)
}

#[test]
fn ipv6_to_a_local_pod_is_redirected_keeping_its_hop_limit_on_link_and_losing_one_routed() {
    require_root!();
    let h = Harness::new(true);
    // Sent to B's own MAC (switched on the pods' link): the hop limit stays, even at 1.
    for hop_limit in [64, 1] {
        let frame = udp_a_to_b(MAC_B, hop_limit);
        let (verdict, out) = h.run(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "on-link, hop limit {hop_limit}");
        assert_eq!(out[..6], MAC_B);
        assert_eq!(out[6..12], GW_MAC);
        assert_eq!(out[12..], frame[12..], "nothing else changes");
    }
    // Sent to the gateway's MAC (routed): one hop less, nothing else.
    let frame = udp_a_to_b(GW_MAC, 64);
    let (verdict, out) = h.run(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[..6], &out[6..12]), (&MAC_B[..], &GW_MAC[..]));
    assert_eq!(out[HOP_LIMIT_OFF], 63);
    let changed: Vec<usize> = (12..out.len()).filter(|&i| out[i] != frame[i]).collect();
    assert_eq!(changed, [HOP_LIMIT_OFF]);
    assert_eq!(h.count(reason::FORWARD_LOCAL6), 3);
    // Routed with a hop limit of 1 (or 0): to the kernel unchanged, which answers time
    // exceeded as a router.
    for hop_limit in [1, 0] {
        let frame = udp_a_to_b(GW_MAC, hop_limit);
        assert_eq!(h.run(&frame), (TC_ACT_OK, frame));
    }
    assert_eq!(h.count(reason::FORWARD_LOCAL6), 3);
}

#[test]
fn ipv6_that_is_not_pod_to_pod_goes_to_the_kernel_unchanged() {
    require_root!();
    let h = Harness::new(true);
    let gone: Ipv6Addr = "fd00:10:244:1::9".parse().expect("IPv6");
    let outside: Ipv6Addr = "2001:db8::1".parse().expect("IPv6");
    let udp = [0x9c, 0x40, 0, 53, 0, 8, 0, 0];
    let ns = {
        let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&b6().octets());
        m
    };
    let frames = [
        // No local pod there.
        ipv6_frame(GW_MAC, MAC_A, a6(), gone, 64, UDP, &udp),
        ipv6_frame(GW_MAC, MAC_A, a6(), outside, 64, UDP, &udp),
        // Multicast.
        ipv6_frame(ALL_NODES_MAC, MAC_A, a6(), all_nodes(), 1, UDP, &udp),
        // Neighbor Discovery, even unicast to a local pod.
        ipv6_frame(MAC_B, MAC_A, a6(), b6(), 255, ICMPV6, &ns),
        // A fixed header cut short by its payload length.
        {
            let mut f = udp_a_to_b(MAC_B, 64);
            f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&100u16.to_be_bytes());
            f
        },
    ];
    for frame in frames {
        assert_eq!(h.run(&frame), (TC_ACT_OK, frame.clone()), "{frame:02x?}");
    }
    assert_eq!(h.count(reason::FORWARD_LOCAL6), 0);
}

#[test]
fn with_anti_spoofing_a_pod_sends_ipv6_only_from_its_own_link_local_or_unspecified_address() {
    require_root!();
    let h = Harness::new(true);
    let udp = [0x9c, 0x40, 0, 53, 0, 8, 0, 0];
    // B's address from A's veth, A's address with B's MAC, a global address of no pod.
    let spoofed = [
        ipv6_frame(MAC_B, MAC_A, b6(), b6(), 64, UDP, &udp),
        ipv6_frame(MAC_B, MAC_B, a6(), b6(), 64, UDP, &udp),
        ipv6_frame(
            GW_MAC,
            MAC_A,
            "2001:db8::7".parse().expect("IPv6"),
            b6(),
            64,
            UDP,
            &udp,
        ),
    ];
    for frame in spoofed {
        assert_eq!(h.run(&frame).0, TC_ACT_SHOT);
    }
    assert_eq!(h.count(reason::DROP_SPOOFED), 3);
    // Duplicate address detection (from ::) and a link-local Router Solicitation pass.
    let dad = {
        let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&a6().octets());
        ipv6_frame(
            ALL_NODES_MAC,
            MAC_A,
            Ipv6Addr::UNSPECIFIED,
            "ff02::1:ff00:2".parse().expect("IPv6"),
            255,
            ICMPV6,
            &m,
        )
    };
    let rs = ipv6_frame(
        ALL_NODES_MAC,
        MAC_A,
        link_local_a(),
        "ff02::2".parse().expect("IPv6"),
        255,
        ICMPV6,
        &[133, 0, 0, 0, 0, 0, 0, 0],
    );
    for frame in [dad, rs] {
        assert_eq!(h.run(&frame), (TC_ACT_OK, frame.clone()));
    }
    // Without anti-spoofing, another pod's source is not the datapath's business.
    let open = Harness::new(false);
    let frame = ipv6_frame(MAC_B, MAC_A, b6(), b6(), 64, UDP, &udp);
    assert_eq!(open.run(&frame).0, TC_ACT_REDIRECT);
}

#[test]
fn with_anti_spoofing_neighbor_advertisements_must_be_the_pods_own_and_router_messages_are_dropped()
{
    require_root!();
    let h = Harness::new(true);
    let send = |src: Ipv6Addr, next: u8, icmp: &[u8]| {
        h.run(&ipv6_frame(
            ALL_NODES_MAC,
            MAC_A,
            src,
            all_nodes(),
            255,
            next,
            icmp,
        ))
    };
    // Its own address, or a link-local one, with its own MAC: to the kernel unchanged.
    for (src, target) in [(a6(), a6()), (link_local_a(), link_local_a())] {
        let (verdict, _) = send(src, ICMPV6, &neighbor_advert(target, MAC_A));
        assert_eq!(verdict, TC_ACT_OK, "NA for {target} from {src}");
    }
    // Another pod's address (from its own or a link-local source), its own address naming
    // another MAC, and another pod's address behind two destination options headers.
    let cases = [
        send(a6(), ICMPV6, &neighbor_advert(b6(), MAC_A)),
        send(link_local_a(), ICMPV6, &neighbor_advert(b6(), MAC_A)),
        send(a6(), ICMPV6, &neighbor_advert(a6(), MAC_B)),
        {
            let (next, body) = behind_dest_options(2, ICMPV6, &neighbor_advert(b6(), MAC_A));
            send(a6(), next, &body)
        },
        // ICMPv6 behind more extension headers than the program follows.
        {
            let (next, body) = behind_dest_options(5, ICMPV6, &neighbor_advert(a6(), MAC_A));
            send(a6(), next, &body)
        },
    ];
    for (verdict, _) in cases {
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    assert_eq!(h.count(reason::DROP_ND_SPOOFED), 5);
    // Router Advertisement and Redirect: a pod is no router.
    let ra = [134, 0, 0, 0, 64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut redirect = vec![137, 0, 0, 0, 0, 0, 0, 0];
    redirect.extend_from_slice(&b6().octets());
    redirect.extend_from_slice(&a6().octets());
    for icmp in [&ra[..], &redirect] {
        assert_eq!(send(link_local_a(), ICMPV6, icmp).0, TC_ACT_SHOT);
    }
    assert_eq!(h.count(reason::DROP_ROUTER_ADVERT), 2);
    // Without anti-spoofing they go to the kernel, as before.
    let open = Harness::new(false);
    let frame = ipv6_frame(
        ALL_NODES_MAC,
        MAC_A,
        link_local_a(),
        all_nodes(),
        255,
        ICMPV6,
        &ra,
    );
    assert_eq!(open.run(&frame), (TC_ACT_OK, frame.clone()));
}
