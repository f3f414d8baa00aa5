//! `from_pod` on crafted frames through `BPF_PROG_TEST_RUN`: what it redirects, what it hands to
//! the kernel unchanged, and what it counts, with no interfaces involved. The object is loaded
//! with private (unpinned) maps.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use podnet_ebpf::abi::{
    Counter, Endpoint, EndpointKey, NodeConfig, config_flag, map_name, program_name, reason,
};
use podnet_tests::{packet::*, require_root};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1];

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    fn new(ready: bool) -> Self {
        Self::with_flags(if ready { config_flag::READY } else { 0 })
    }

    fn with_flags(flags: u32) -> Self {
        // from_pod tail-calls from_pod6 for IPv6: both loaded, the program array filled.
        let mut ebpf = podnet_tests::testrun::load_classifiers();
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
        let mut endpoints: HashMap<_, EndpointKey, Endpoint> =
            HashMap::try_from(ebpf.map_mut(map_name::ENDPOINTS).expect("ENDPOINTS")).expect("hash");
        endpoints
            .insert(
                EndpointKey {
                    addr: POD_B.octets(),
                },
                Endpoint {
                    ifindex: 42,
                    mac: MAC_B,
                    ..Endpoint::default()
                },
                0,
            )
            .expect("endpoint");
        Self { ebpf }
    }

    /// Runs the program; returns the verdict and the frame as it left.
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

fn tcp_a_to(dst: Ipv4Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    let seg = tcp(POD_A, dst, 40000, 80, 0x02, b"");
    eth(dst_mac, MAC_A, ETH_P_IP, &ipv4(POD_A, dst, 6, &[], &seg))
}

#[test]
fn ipv4_to_a_local_pod_is_redirected_with_its_mac() {
    require_root!();
    let h = Harness::new(true);
    // Sent to the gateway's MAC (routed) or to B's own (switched): either way B's MAC on exit.
    // The source MAC becomes the gateway's, as after any routed hop.
    for dst_mac in [GW_MAC, MAC_B] {
        let frame = tcp_a_to(POD_B, dst_mac);
        let (verdict, out) = h.run(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out[..6], MAC_B, "destination MAC rewritten to the pod's");
        assert_eq!(
            out[6..12],
            GW_MAC,
            "source MAC is the gateway's (a routed hop)"
        );
        assert_eq!(out[12..], frame[12..], "nothing else changes");
        assert!(ipv4_header_ok(&out) && l4_ok(&out));
    }
    assert_eq!(h.count(reason::FORWARD_LOCAL_PEER), 2);
}

#[test]
fn traffic_the_datapath_does_not_own_passes_unchanged() {
    require_root!();
    let h = Harness::new(true);
    let elsewhere = tcp_a_to(Ipv4Addr::new(198, 18, 0, 1), GW_MAC);
    let arp = eth([0xff; 6], MAC_A, ETH_P_ARP, &[0u8; 28]);
    let ipv6 = eth(MAC_B, MAC_A, ETH_P_IPV6, &[0x60; 48]);
    let broadcast = eth(
        [0xff; 6],
        MAC_A,
        ETH_P_IP,
        &ipv4(POD_A, POD_B, 17, &[], &udp(POD_A, POD_B, 1, 2, b"x", false)),
    );
    let with_options = eth(
        MAC_B,
        MAC_A,
        ETH_P_IP,
        &ipv4(
            POD_A,
            Ipv4Addr::new(1, 2, 3, 4),
            6,
            &[1, 1, 1, 0],
            &tcp(POD_A, Ipv4Addr::new(1, 2, 3, 4), 1, 2, 0x10, b""),
        ),
    );
    for (frame, why) in [
        (&elsewhere, reason::PASS_NOT_LOCAL),
        (&arp, reason::PASS_NOT_IPV4),
        (&ipv6, reason::PASS_NOT_IPV4),
        (&broadcast, reason::PASS_BROADCAST),
        (&with_options, reason::PASS_NOT_LOCAL),
    ] {
        let before = h.count(why);
        let (verdict, out) = h.run(frame);
        assert_eq!(verdict, TC_ACT_OK, "{}", reason::NAMES[why as usize]);
        assert_eq!(
            &out,
            frame,
            "{} must be unchanged",
            reason::NAMES[why as usize]
        );
        assert_eq!(
            h.count(why),
            before + 1,
            "counted as {}",
            reason::NAMES[why as usize]
        );
    }
}

#[test]
fn malformed_packets_are_never_rewritten() {
    require_root!();
    let h = Harness::new(true);
    let good = tcp_a_to(POD_B, GW_MAC);
    let mut bad_version = good.clone();
    bad_version[ETH_HLEN] = 0x65;
    let mut bad_ihl = good.clone();
    bad_ihl[ETH_HLEN] = 0x44;
    let mut long_total = good.clone();
    long_total[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&2000u16.to_be_bytes());
    let mut short_total = good.clone();
    short_total[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&10u16.to_be_bytes());
    // A frame whose IPv4 header is cut short cannot be injected: BPF_PROG_TEST_RUN itself
    // refuses IPv4 frames without a full fixed header (EINVAL), so truncation is covered by
    // "total length past the end" (the header is complete, the packet is not).
    for (name, frame) in [
        ("IPv4 version 6", &bad_version),
        ("IHL 4", &bad_ihl),
        ("total length past the end", &long_total),
        ("total length under the header", &short_total),
    ] {
        let before = h.count(reason::PASS_MALFORMED);
        let (verdict, out) = h.run(frame);
        assert_eq!(verdict, TC_ACT_OK, "{name}");
        assert_eq!(&out, frame, "{name} unchanged");
        assert_eq!(
            h.count(reason::PASS_MALFORMED),
            before + 1,
            "{name} counted"
        );
    }
}

#[test]
fn nothing_is_forwarded_before_the_node_is_configured() {
    require_root!();
    let h = Harness::new(false);
    let frame = tcp_a_to(POD_B, GW_MAC);
    let (verdict, out) = h.run(&frame);
    assert_eq!((verdict, out), (TC_ACT_OK, frame));
    assert_eq!(h.count(reason::PASS_NOT_READY), 1);
}

/// BPF_PROG_TEST_RUN hands the program an skb on the loopback device of the calling thread's
/// namespace: ifindex 1 in every namespace.
const TEST_RUN_IFINDEX: u32 = 1;

#[test]
fn with_anti_spoofing_a_pod_sends_only_as_itself() {
    require_root!();
    let mut h = Harness::with_flags(config_flag::READY | config_flag::ANTI_SPOOF);
    // Pod A lives behind the interface the test packets "arrive" on.
    let mut endpoints: HashMap<_, EndpointKey, Endpoint> =
        HashMap::try_from(h.ebpf.map_mut(map_name::ENDPOINTS).expect("ENDPOINTS")).expect("hash");
    endpoints
        .insert(
            EndpointKey {
                addr: POD_A.octets(),
            },
            Endpoint {
                ifindex: TEST_RUN_IFINDEX,
                mac: MAC_A,
                ..Endpoint::default()
            },
            0,
        )
        .expect("endpoint");
    // As itself: forwarded.
    let (verdict, _) = h.run(&tcp_a_to(POD_B, GW_MAC));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // Another pod's address (B, which lives elsewhere), or the node's, or A's address with
    // another MAC: dropped and counted.
    let as_b = {
        let seg = tcp(POD_B, POD_A, 40000, 80, 0x02, b"");
        eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_B, POD_A, 6, &[], &seg))
    };
    let as_node = {
        let node = Ipv4Addr::new(198, 18, 0, 10);
        let seg = tcp(node, POD_B, 40000, 80, 0x02, b"");
        eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(node, POD_B, 6, &[], &seg))
    };
    let other_mac = {
        let seg = tcp(POD_A, POD_B, 40000, 80, 0x02, b"");
        eth(GW_MAC, MAC_B, ETH_P_IP, &ipv4(POD_A, POD_B, 6, &[], &seg))
    };
    for frame in [as_b, as_node, other_mac] {
        let (verdict, _) = h.run(&frame);
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    assert_eq!(h.count(reason::DROP_SPOOFED), 3);
    assert_eq!(h.count(reason::FORWARD_LOCAL_PEER), 1);
    // ARP that is not for IPv4 over Ethernet is left to the bridge.
    let arp = eth([0xff; 6], MAC_A, ETH_P_ARP, &[0u8; 28]);
    assert_eq!(h.run(&arp).0, TC_ACT_OK);
    // ARP for IPv4 teaches the node's neighbour table: A may announce only itself. A probe
    // (sender 0.0.0.0) announces nothing and passes.
    let gateway = Ipv4Addr::new(10, 244, 0, 1);
    for (eth_src, sha, spa, passes) in [
        (MAC_A, MAC_A, POD_A, true),
        (MAC_A, MAC_A, Ipv4Addr::UNSPECIFIED, true),
        (MAC_A, MAC_A, POD_B, false),
        (MAC_A, MAC_A, Ipv4Addr::new(198, 18, 0, 10), false),
        (MAC_A, MAC_B, POD_A, false),
        (MAC_B, MAC_A, POD_A, false),
    ] {
        let frame = eth(
            [0xff; 6],
            eth_src,
            ETH_P_ARP,
            &arp_request(sha, spa, gateway),
        );
        let before = h.count(reason::DROP_SPOOFED);
        let (verdict, out) = h.run(&frame);
        if passes {
            assert_eq!(
                (verdict, out),
                (TC_ACT_OK, frame),
                "ARP from {spa} as {sha:x?}"
            );
        } else {
            assert_eq!(verdict, TC_ACT_SHOT, "ARP claiming {spa} as {sha:x?}");
            assert_eq!(h.count(reason::DROP_SPOOFED), before + 1);
        }
    }
}

/// An ARP request for IPv4 over Ethernet from `sha`/`spa` asking for `tpa`.
fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    a
}
