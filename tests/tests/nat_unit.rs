//! NAT in `from_pod` and `from_uplink` on crafted frames through `BPF_PROG_TEST_RUN`: SNAT of
//! traffic leaving the cluster, NodePort DNAT, hairpin, ICMP echo identifiers and ICMP errors,
//! conntrack admission, and what is dropped instead of leaked. Every rewritten frame is compared
//! field by field with one built from scratch, and its checksums are verified independently
//! (`podnet_tests::packet`), never by trusting the datapath's incremental updates.
//!
//! SNAT and replies leaving the node call `bpf_fib_lookup`, which routes in the network
//! namespace of the thread running the test (the skb's device is that namespace's loopback). So
//! each test runs on a thread inside a private namespace wired like a node's uplink: `up0` with
//! the node IP and a permanent neighbour entry for the outside host, and forwarding on. Nothing
//! touches the root namespace. Both programs come from one `Ebpf`, so they share their maps
//! (private, unpinned), as on a node.
//!
//! Limitation: `BPF_PROG_TEST_RUN` hands the programs an skb with `CHECKSUM_NONE`, so only full
//! checksums are exercised here. How the rewrites treat `CHECKSUM_PARTIAL` skbs (pods with
//! checksum offload, where only the pseudo-header sum is in the packet, which is what
//! `BPF_F_PSEUDO_HDR` is for) is not observable this way: only traffic over real interfaces
//! exercises it.

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use podnet::datapath::services_map::{Frontend, ServicesMap};
use podnet_ebpf::abi::{
    CT_USAGE_PROGRAMS, Counter, CtEntry, CtKey, CtNat, CtTimeouts, CtUsage, Endpoint, EndpointKey,
    NON_MASQUERADE_PRESENT, NodeConfig, config_flag, ct_dir, ct_kind, ct_state, map_name,
    program_name, reason, svc_flag,
};
use podnet_tests::{
    packet::*,
    require_root,
    testrun::{in_uplink_netns, load_classifiers},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = SYN | ACK;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// A host outside the cluster, on the uplink's subnet.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// A router on the uplink's subnet that sends ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
/// A pod of another node: inside the cluster CIDR, outside this node's pod CIDR.
const OTHER_NODE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 9);

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC of `up0`, the uplink in the test namespace: the source MAC of routed packets.
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
/// MAC of `OUTSIDE` (a permanent neighbour entry): the destination MAC of routed packets.
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

const PORT_MIN: u16 = 61_000;
const PORT_MAX: u16 = 65_535;

/// Offset of L4 in frames built here (Ethernet + IPv4 without options).
const L4: usize = ETH_HLEN + 20;

/// Runs `test` in a namespace set up as a node's uplink side.
fn in_node_netns(test: impl FnOnce() + Send) {
    in_uplink_netns(
        "nat",
        UPLINK_MAC,
        NODE_IP,
        &[(OUTSIDE, NEXT_HOP_MAC)],
        "",
        test,
    );
}

struct Harness {
    ebpf: Ebpf,
    services: ServicesMap,
}

impl Harness {
    fn new() -> Self {
        Self::with_ct_limit(1024)
    }

    /// Loads both classifiers from one object (shared, private maps) and configures a node
    /// with pods A and B.
    fn with_ct_limit(ct_limit: u32) -> Self {
        Self::with(ct_limit, PORT_MIN..=PORT_MAX)
    }

    fn with(ct_limit: u32, snat_ports: std::ops::RangeInclusive<u16>) -> Self {
        let mut ebpf = load_classifiers();
        let mut config: Array<_, NodeConfig> =
            Array::try_from(ebpf.map_mut(map_name::CONFIG).expect("CONFIG")).expect("array");
        config
            .set(
                0,
                NodeConfig {
                    flags: config_flag::READY,
                    node_ip: NODE_IP.octets(),
                    gateway_ip: [10, 244, 0, 1],
                    pod_cidr: [10, 244, 0, 0],
                    pod_prefix_len: 24,
                    cluster_prefix_len: 16,
                    cluster_cidr: [10, 244, 0, 0],
                    gateway_mac: GW_MAC,
                    snat_port_min: *snat_ports.start(),
                    snat_port_max: *snat_ports.end(),
                    ct_limit,
                    ct_timeouts: CtTimeouts::DEFAULT,
                    ..NodeConfig::default()
                },
                0,
            )
            .expect("config");
        let mut endpoints: HashMap<_, EndpointKey, Endpoint> =
            HashMap::try_from(ebpf.map_mut(map_name::ENDPOINTS).expect("ENDPOINTS")).expect("hash");
        for (addr, ifindex, mac) in [(POD_A, 41, MAC_A), (POD_B, 42, MAC_B)] {
            endpoints
                .insert(
                    EndpointKey {
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
        let services = podnet_tests::testrun::services_map(&mut ebpf);
        Self { ebpf, services }
    }

    /// Adds NodePort `port`/`proto` with `backends`, through the node's own accessor.
    fn service(&mut self, port: u16, proto: u8, backends: &[Addr]) {
        let spec = podnet_tests::testrun::service_spec(
            Frontend::nodeport(port, proto),
            backends,
            svc_flag::NODE_PORT,
        );
        self.services.write(&spec).expect("service");
    }

    /// Runs `program`; returns the verdict and the frame as it left.
    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        podnet_tests::testrun::run_classifier(&self.ebpf, program, frame)
    }

    /// Runs `from_pod` (ingress of a pod's host-side veth).
    fn pod_sends(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_name::FROM_POD, frame)
    }

    /// Runs `from_uplink` (ingress of the node's uplink).
    fn uplink_receives(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_name::FROM_UPLINK, frame)
    }

    /// Every non-zero packet counter, by reason name.
    fn counted(&self) -> Vec<(&'static str, u64)> {
        let stats: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(map_name::STATS).expect("STATS")).expect("percpu");
        (0..reason::COUNT)
            .map(|why| {
                let packets = stats
                    .get(&why, 0)
                    .expect("slot")
                    .iter()
                    .map(|c| c.packets)
                    .sum();
                (reason::NAMES[why as usize], packets)
            })
            .filter(|(_, packets)| *packets > 0)
            .collect()
    }

    /// Asserts the packet counters are exactly `expected` (reason, packets), all others 0.
    fn assert_counted(&self, expected: &[(u32, u64)]) {
        let mut expected: Vec<(&str, u64)> = expected
            .iter()
            .map(|(why, n)| (reason::NAMES[*why as usize], *n))
            .collect();
        expected.sort_unstable();
        let mut counted = self.counted();
        counted.sort_unstable();
        assert_eq!(counted, expected, "packet counters");
    }

    fn conntrack(&self) -> StdHashMap<CtKey, CtEntry> {
        let ct: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map(map_name::CONNTRACK).expect("CONNTRACK"))
                .expect("hash");
        ct.iter().map(|r| r.expect("conntrack entry")).collect()
    }

    fn ct_usage(&self) -> CtUsage {
        let usage: Array<&MapData, CtUsage> =
            Array::try_from(self.ebpf.map(map_name::CT_USAGE).expect("CT_USAGE")).expect("array");
        usage.get(&CT_USAGE_PROGRAMS, 0).expect("usage slot")
    }
}

fn ct_key(src: Addr, dst: Addr, proto: u8) -> CtKey {
    CtKey {
        saddr: src.0.octets(),
        daddr: dst.0.octets(),
        sport: src.1,
        dport: dst.1,
        proto,
        _pad: [0; 3],
    }
}

fn ct_nat(src: Addr, dst: Addr) -> CtNat {
    CtNat {
        saddr: src.0.octets(),
        daddr: dst.0.octets(),
        sport: src.1,
        dport: dst.1,
    }
}

/// Asserts `ct` holds the entry `key` -> (`nat`, `kind`, `dir`, `state`), still alive.
fn assert_entry(
    ct: &StdHashMap<CtKey, CtEntry>,
    key: &CtKey,
    nat: CtNat,
    kind: u8,
    dir: u8,
    state: u8,
) {
    let entry = ct
        .get(key)
        .unwrap_or_else(|| panic!("no conntrack entry for {key:?} in {ct:#?}"));
    assert_eq!(
        (entry.nat, entry.kind, entry.dir, entry.state),
        (nat, kind, dir, state),
        "conntrack entry for {key:?}"
    );
    assert!(entry.expires_ns > 0, "entry for {key:?} has a lifetime");
}

/// An ICMP echo request or reply.
fn echo(request: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut m = icmp_echo(id, seq, b"podnet echo");
    if !request {
        m[0] = 0;
        m[2..4].copy_from_slice(&[0, 0]);
        let check = csum(&m, 0);
        m[2..4].copy_from_slice(&check.to_be_bytes());
    }
    m
}

fn echo_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    request: bool,
    id: u16,
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &ipv4(src, dst, ICMP, &[], &echo(request, id, 7)),
    )
}

/// An ICMP error message: `rest` is the second word of the header (e.g. the next-hop MTU of a
/// "fragmentation needed"), `quoted` the start of the packet it is about.
fn icmp_error(icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let check = csum(&m, 0);
    m[2..4].copy_from_slice(&check.to_be_bytes());
    m
}

/// What an ICMP error quotes of `ip_packet`: its IPv4 header and the first 8 bytes after it.
fn quote(ip_packet: &[u8]) -> Vec<u8> {
    ip_packet[..28].to_vec()
}

fn ip_at(frame: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(frame[off], frame[off + 1], frame[off + 2], frame[off + 3])
}

fn u16_at(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

/// Source address and port of a TCP or UDP frame.
fn src_of(frame: &[u8]) -> Addr {
    (ip_at(frame, ETH_HLEN + 12), u16_at(frame, L4))
}

/// Offset of the quoted IPv4 header in an ICMP error frame, if `frame` is one.
fn quoted_ip_off(frame: &[u8]) -> Option<usize> {
    let l4 = ETH_HLEN + usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    (frame[ETH_HLEN + 9] == ICMP && matches!(frame[l4], 3 | 11 | 12)).then_some(l4 + 8)
}

/// `frame` with the checksums [`assert_translated`] verifies on their own zeroed: the IPv4
/// header's, the L4 one (TCP, UDP, ICMP) and an ICMP error's quoted IPv4 header's.
fn without_checksums(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let l4 = ETH_HLEN + usize::from(f[ETH_HLEN] & 0x0f) * 4;
    let l4_check = match f[ETH_HLEN + 9] {
        TCP => Some(l4 + 16),
        UDP => Some(l4 + 6),
        ICMP => Some(l4 + 2),
        _ => None,
    };
    let quoted_check = quoted_ip_off(frame).map(|q| q + 10);
    for off in [Some(ETH_HLEN + 10), l4_check, quoted_check]
        .into_iter()
        .flatten()
    {
        f[off..off + 2].copy_from_slice(&[0, 0]);
    }
    f
}

/// Asserts `out` is `expected` (a frame built from scratch with the translated fields) byte
/// for byte, except checksums, which must each be valid when recomputed independently; a UDP
/// checksum must be "none" (0) exactly when `expected`'s is.
/// Every translated frame crossed the node, a routed hop: `expected` (built with the TTL the
/// sender used) arrives with its TTL one lower.
fn assert_translated(out: &[u8], expected: &[u8]) {
    let mut routed = expected.to_vec();
    routed[ETH_HLEN + 8] -= 1;
    assert_eq!(
        without_checksums(out),
        without_checksums(&routed),
        "translated frame\n   got: {out:02x?}\nexpect: {expected:02x?}"
    );
    assert!(ipv4_header_ok(out), "IPv4 header checksum: {out:02x?}");
    assert!(l4_ok(out), "L4 checksum: {out:02x?}");
    if out[ETH_HLEN + 9] == UDP {
        assert_eq!(
            u16_at(out, L4 + 6) == 0,
            u16_at(expected, L4 + 6) == 0,
            "UDP checksum present exactly when it was: {out:02x?}"
        );
    }
    if let Some(q) = quoted_ip_off(out) {
        assert_eq!(csum(&out[q..q + 20], 0), 0, "quoted IPv4 header checksum");
    }
}

fn assert_in_snat_range(port: u16) {
    assert!(
        (PORT_MIN..=PORT_MAX).contains(&port),
        "translated port {port} outside the SNAT range {PORT_MIN}-{PORT_MAX}"
    );
}

/// Sends pod A's SYN `A:40000 -> OUTSIDE:80` through `from_pod`; returns the SNAT port.
fn snat_syn_from_a(h: &Harness) -> u16 {
    let syn = tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 80), SYN, b"");
    let (verdict, out) = h.pod_sends(&syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "SNATed SYN is redirected out");
    let (_, port) = src_of(&out);
    assert_in_snat_range(port);
    assert_translated(
        &out,
        &tcp_frame(
            NEXT_HOP_MAC,
            UPLINK_MAC,
            (NODE_IP, port),
            (OUTSIDE, 80),
            SYN,
            b"",
        ),
    );
    port
}

#[test]
fn snat_tcp_rewrites_the_source_and_the_reply_destination() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let port = snat_syn_from_a(&h);
        h.assert_counted(&[(reason::SNAT, 1)]);

        let ct = h.conntrack();
        assert_eq!(ct.len(), 2, "one flow, two entries: {ct:#?}");
        let original = ct_key((POD_A, 40000), (OUTSIDE, 80), TCP);
        let reply = ct_key((OUTSIDE, 80), (NODE_IP, port), TCP);
        assert_entry(
            &ct,
            &original,
            ct_nat((NODE_IP, port), (OUTSIDE, 80)),
            ct_kind::SNAT,
            ct_dir::ORIGINAL,
            ct_state::NEW,
        );
        assert_entry(
            &ct,
            &reply,
            ct_nat((OUTSIDE, 80), (POD_A, 40000)),
            ct_kind::SNAT,
            ct_dir::REPLY,
            ct_state::NEW,
        );
        assert_eq!(
            h.ct_usage(),
            CtUsage {
                inserted: 2,
                removed: 0
            }
        );

        let syn_ack = tcp_frame(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            (OUTSIDE, 80),
            (NODE_IP, port),
            SYN_ACK,
            b"",
        );
        let (verdict, out) = h.uplink_receives(&syn_ack);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "the reply is redirected to the pod"
        );
        assert_translated(
            &out,
            &tcp_frame(MAC_A, GW_MAC, (OUTSIDE, 80), (POD_A, 40000), SYN_ACK, b""),
        );
        h.assert_counted(&[(reason::SNAT, 1), (reason::SNAT_REPLY, 1)]);

        // The reply established the flow, in both entries.
        let ct = h.conntrack();
        assert_eq!(ct.len(), 2);
        assert_eq!(ct[&original].state, ct_state::ESTABLISHED);
        assert_eq!(ct[&reply].state, ct_state::ESTABLISHED);

        // Further segments of the flow keep the same translation.
        let ack = tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 80), ACK, b"");
        let (verdict, out) = h.pod_sends(&ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &tcp_frame(
                NEXT_HOP_MAC,
                UPLINK_MAC,
                (NODE_IP, port),
                (OUTSIDE, 80),
                ACK,
                b"",
            ),
        );
        h.assert_counted(&[(reason::SNAT, 2), (reason::SNAT_REPLY, 1)]);
        assert_eq!(h.conntrack().len(), 2);
    });
}

#[test]
fn snat_udp_keeps_a_zero_checksum_zero_and_fixes_a_real_one() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        for (sport, zero_checksum) in [(5353, false), (5354, true)] {
            let what = if zero_checksum {
                "no checksum"
            } else {
                "checksum"
            };
            let out_frame = udp_frame(
                GW_MAC,
                MAC_A,
                (POD_A, sport),
                (OUTSIDE, 53),
                b"query",
                zero_checksum,
            );
            let (verdict, out) = h.pod_sends(&out_frame);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
            let (_, port) = src_of(&out);
            assert_in_snat_range(port);
            assert_translated(
                &out,
                &udp_frame(
                    NEXT_HOP_MAC,
                    UPLINK_MAC,
                    (NODE_IP, port),
                    (OUTSIDE, 53),
                    b"query",
                    zero_checksum,
                ),
            );
            assert_eq!(u16_at(&out, L4 + 6) == 0, zero_checksum, "{what}");

            let reply = udp_frame(
                UPLINK_MAC,
                NEXT_HOP_MAC,
                (OUTSIDE, 53),
                (NODE_IP, port),
                b"answer",
                zero_checksum,
            );
            let (verdict, out) = h.uplink_receives(&reply);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what} reply");
            assert_translated(
                &out,
                &udp_frame(
                    MAC_A,
                    GW_MAC,
                    (OUTSIDE, 53),
                    (POD_A, sport),
                    b"answer",
                    zero_checksum,
                ),
            );
            assert_eq!(u16_at(&out, L4 + 6) == 0, zero_checksum, "{what} reply");
        }
        h.assert_counted(&[(reason::SNAT, 2), (reason::SNAT_REPLY, 2)]);
        assert_eq!(h.conntrack().len(), 4);
    });
}

/// A UDP checksum that works out to 0 after translation must be sent as 0xffff: 0 would mean
/// "no checksum" (RFC 768), so the receiver would no longer verify the datagram.
#[test]
fn udp_checksum_translated_to_zero_is_sent_as_all_ones() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let (verdict, out) = h.pod_sends(&udp_frame(
            GW_MAC,
            MAC_A,
            (POD_A, 5355),
            (OUTSIDE, 53),
            b"query",
            false,
        ));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, port) = src_of(&out);

        // Pick the reply's 2-byte payload so the translated datagram (to A:5355) sums to
        // 0xffff: the payload word is the checksum the translated datagram has with a zero
        // payload word.
        let probe = udp(OUTSIDE, POD_A, 53, 5355, &[0, 0], false);
        let word = [probe[6], probe[7]];
        let translated = udp(OUTSIDE, POD_A, 53, 5355, &word, false);
        assert_eq!(translated[6..8], [0xff, 0xff], "the test's own arithmetic");

        let reply = udp_frame(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            (OUTSIDE, 53),
            (NODE_IP, port),
            &word,
            false,
        );
        assert_ne!(u16_at(&reply, L4 + 6), 0, "sent with a checksum");
        let (verdict, out) = h.uplink_receives(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &udp_frame(MAC_A, GW_MAC, (OUTSIDE, 53), (POD_A, 5355), &word, false),
        );
        assert_eq!(u16_at(&out, L4 + 6), 0xffff, "all ones, never 0");
        h.assert_counted(&[(reason::SNAT, 1), (reason::SNAT_REPLY, 1)]);
    });
}

#[test]
fn snat_icmp_echo_rewrites_the_identifier_both_ways() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let request = echo_frame(GW_MAC, MAC_A, POD_A, OUTSIDE, true, 0x1234);
        let (verdict, out) = h.pod_sends(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let id = u16_at(&out, L4 + 4);
        assert_in_snat_range(id);
        assert_translated(
            &out,
            &echo_frame(NEXT_HOP_MAC, UPLINK_MAC, NODE_IP, OUTSIDE, true, id),
        );
        h.assert_counted(&[(reason::SNAT, 1)]);

        let ct = h.conntrack();
        assert_eq!(ct.len(), 2, "{ct:#?}");
        assert_entry(
            &ct,
            &ct_key((POD_A, 0x1234), (OUTSIDE, 0), ICMP),
            ct_nat((NODE_IP, id), (OUTSIDE, 0)),
            ct_kind::SNAT,
            ct_dir::ORIGINAL,
            ct_state::NEW,
        );
        assert_entry(
            &ct,
            &ct_key((OUTSIDE, 0), (NODE_IP, id), ICMP),
            ct_nat((OUTSIDE, 0), (POD_A, 0x1234)),
            ct_kind::SNAT,
            ct_dir::REPLY,
            ct_state::NEW,
        );

        let reply = echo_frame(UPLINK_MAC, NEXT_HOP_MAC, OUTSIDE, NODE_IP, false, id);
        let (verdict, out) = h.uplink_receives(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &echo_frame(MAC_A, GW_MAC, OUTSIDE, POD_A, false, 0x1234),
        );
        h.assert_counted(&[(reason::SNAT, 1), (reason::SNAT_REPLY, 1)]);
    });
}

#[test]
fn two_pods_with_the_same_source_port_get_different_ports() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        // 62000 lies inside the SNAT range (the first flow keeps it, the second must not get it
        // too); 40000 outside it (ports are allocated at random). 62000 goes first, while the
        // table is empty: a random allocation made before could have taken it.
        for sport in [62000, 40000] {
            let mut ports = Vec::new();
            for (pod, mac) in [(POD_A, MAC_A), (POD_B, MAC_B)] {
                let syn = tcp_frame(GW_MAC, mac, (pod, sport), (OUTSIDE, 80), SYN, b"");
                let (verdict, out) = h.pod_sends(&syn);
                assert_eq!(verdict, TC_ACT_REDIRECT, "{pod}:{sport}");
                let (_, port) = src_of(&out);
                assert_in_snat_range(port);
                assert_translated(
                    &out,
                    &tcp_frame(
                        NEXT_HOP_MAC,
                        UPLINK_MAC,
                        (NODE_IP, port),
                        (OUTSIDE, 80),
                        SYN,
                        b"",
                    ),
                );
                ports.push(port);
            }
            assert_ne!(ports[0], ports[1], "two flows from source port {sport}");
            if sport == 62000 {
                assert_eq!(ports[0], 62000, "a free port in the range is kept");
            }
            // Each reply reaches the pod its port was allocated to.
            for (port, pod, mac) in [(ports[0], POD_A, MAC_A), (ports[1], POD_B, MAC_B)] {
                let syn_ack = tcp_frame(
                    UPLINK_MAC,
                    NEXT_HOP_MAC,
                    (OUTSIDE, 80),
                    (NODE_IP, port),
                    SYN_ACK,
                    b"",
                );
                let (verdict, out) = h.uplink_receives(&syn_ack);
                assert_eq!(verdict, TC_ACT_REDIRECT);
                assert_translated(
                    &out,
                    &tcp_frame(mac, GW_MAC, (OUTSIDE, 80), (pod, sport), SYN_ACK, b""),
                );
            }
        }
        h.assert_counted(&[(reason::SNAT, 4), (reason::SNAT_REPLY, 4)]);
        assert_eq!(h.conntrack().len(), 8);
    });
}

/// A TCP flow closed by a FIN keeps its translated tuple (the server may hold it in
/// TIME_WAIT), reopens for the same client tuple, and with no free port is taken over only
/// after flows closed by RST, and only then; open flows never are.
#[test]
fn closed_flows_keep_their_ports_and_give_them_up_only_under_pressure() {
    require_root!();
    const FIN_ACK: u8 = 0x11;
    const RST: u8 = 0x04;
    in_node_netns(|| {
        let h = Harness::with(1024, 62000..=62001);
        let send = |sport: u16, flags: u8| -> (u32, Option<u16>) {
            let frame = tcp_frame(GW_MAC, MAC_A, (POD_A, sport), (OUTSIDE, 80), flags, b"");
            let (verdict, out) = h.pod_sends(&frame);
            (
                verdict,
                (verdict == TC_ACT_REDIRECT).then(|| src_of(&out).1),
            )
        };
        let state = |sport: u16| {
            h.conntrack()
                .get(&ct_key((POD_A, sport), (OUTSIDE, 80), TCP))
                .map(|e| e.state)
        };
        let (_, first) = send(40000, SYN);
        let first = first.expect("first flow translated");
        send(40000, FIN_ACK);
        assert_eq!(state(40000), Some(ct_state::TIME_WAIT));
        // The same client tuple reopens its flow, with its translation.
        assert_eq!(send(40000, SYN).1, Some(first), "reopened on the same port");
        assert_eq!(state(40000), Some(ct_state::NEW));
        send(40000, FIN_ACK);
        // Another client port gets the other port: the closed flow's is still held.
        let (_, second) = send(40001, SYN);
        let second = second.expect("second flow translated");
        assert_ne!(second, first);
        send(40001, RST);
        assert_eq!(state(40001), Some(ct_state::CLOSING));
        // No port free: the flow whose entry expires first (closed by RST, 10 s, before the
        // FIN-closed one's 120 s) gives its port up.
        assert_eq!(
            send(40002, SYN).1,
            Some(second),
            "took over the RST-closed flow"
        );
        assert_eq!(state(40001), None, "the RST-closed flow is gone");
        assert_eq!(state(40000), Some(ct_state::TIME_WAIT));
        // Then the FIN-closed one, once it is the only closed flow left.
        assert_eq!(
            send(40003, SYN).1,
            Some(first),
            "took over the FIN-closed flow"
        );
        assert_eq!(state(40000), None);
        // Both ports held by open flows: refused, nothing taken over.
        assert_eq!(send(40004, SYN).0, TC_ACT_SHOT);
        assert_eq!(state(40002), Some(ct_state::NEW));
        assert_eq!(state(40003), Some(ct_state::NEW));
        let counted: StdHashMap<_, _> = h.counted().into_iter().collect();
        assert_eq!(counted.get("drop_nat_no_port"), Some(&1), "{counted:?}");
        assert_eq!(h.conntrack().len(), 4, "two open flows, two entries each");
        let usage = h.ct_usage();
        assert_eq!(
            usage.inserted - usage.removed,
            4,
            "evictions counted: {usage:?}"
        );
    });
}

#[test]
fn traffic_that_stays_in_the_cluster_or_the_node_is_not_translated() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        // Pod to pod on this node: delivered as is (only the MACs of the routed hop change).
        let to_b = tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (POD_B, 80), SYN, b"");
        let (verdict, out) = h.pod_sends(&to_b);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            out,
            tcp_frame(MAC_B, GW_MAC, (POD_A, 40000), (POD_B, 80), SYN, b""),
            "pod-to-pod keeps its addresses, ports and checksums"
        );
        h.assert_counted(&[(reason::FORWARD_LOCAL_PEER, 1)]);

        // To another node's pod, to the node's own non-NodePort port, and to a destination the
        // node has no route to: to the kernel, untouched.
        for (what, frame) in [
            (
                "another node's pod",
                tcp_frame(
                    GW_MAC,
                    MAC_A,
                    (POD_A, 40000),
                    (OTHER_NODE_POD, 80),
                    SYN,
                    b"",
                ),
            ),
            (
                "another node's pod, UDP",
                udp_frame(
                    GW_MAC,
                    MAC_A,
                    (POD_A, 40000),
                    (OTHER_NODE_POD, 53),
                    b"q",
                    false,
                ),
            ),
            (
                "another node's pod, echo",
                echo_frame(GW_MAC, MAC_A, POD_A, OTHER_NODE_POD, true, 0x1234),
            ),
            (
                "the node itself, not a NodePort",
                tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (NODE_IP, 22), SYN, b""),
            ),
            (
                "an unroutable destination",
                tcp_frame(
                    GW_MAC,
                    MAC_A,
                    (POD_A, 40000),
                    (Ipv4Addr::new(203, 0, 113, 1), 80),
                    SYN,
                    b"",
                ),
            ),
        ] {
            let (verdict, out) = h.pod_sends(&frame);
            assert_eq!(verdict, TC_ACT_OK, "{what}");
            assert_eq!(out, frame, "{what} is unchanged");
        }
        h.assert_counted(&[(reason::FORWARD_LOCAL_PEER, 1), (reason::PASS_NOT_LOCAL, 5)]);
        assert!(h.conntrack().is_empty(), "nothing tracked");
    });
}

#[test]
fn nodeport_dnat_to_a_local_backend_and_back() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        h.service(30080, TCP, &[(POD_B, 80)]);
        let client = (OUTSIDE, 50000);

        let syn = tcp_frame(UPLINK_MAC, NEXT_HOP_MAC, client, (NODE_IP, 30080), SYN, b"");
        let (verdict, out) = h.uplink_receives(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &tcp_frame(MAC_B, GW_MAC, client, (POD_B, 80), SYN, b""),
        );
        h.assert_counted(&[(reason::DNAT, 1)]);

        let ct = h.conntrack();
        assert_eq!(ct.len(), 2, "{ct:#?}");
        assert_entry(
            &ct,
            &ct_key(client, (NODE_IP, 30080), TCP),
            ct_nat(client, (POD_B, 80)),
            ct_kind::DNAT,
            ct_dir::ORIGINAL,
            ct_state::NEW,
        );
        assert_entry(
            &ct,
            &ct_key((POD_B, 80), client, TCP),
            ct_nat((NODE_IP, 30080), client),
            ct_kind::DNAT,
            ct_dir::REPLY,
            ct_state::NEW,
        );

        let syn_ack = tcp_frame(GW_MAC, MAC_B, (POD_B, 80), client, SYN_ACK, b"");
        let (verdict, out) = h.pod_sends(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT, "the reply is routed out");
        assert_translated(
            &out,
            &tcp_frame(
                NEXT_HOP_MAC,
                UPLINK_MAC,
                (NODE_IP, 30080),
                client,
                SYN_ACK,
                b"",
            ),
        );
        h.assert_counted(&[(reason::DNAT, 1), (reason::DNAT_REPLY, 1)]);

        // The client's next segment follows the flow to the same backend.
        let ack = tcp_frame(UPLINK_MAC, NEXT_HOP_MAC, client, (NODE_IP, 30080), ACK, b"");
        let (verdict, out) = h.uplink_receives(&ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &tcp_frame(MAC_B, GW_MAC, client, (POD_B, 80), ACK, b""),
        );
        h.assert_counted(&[(reason::DNAT, 2), (reason::DNAT_REPLY, 1)]);
        assert_eq!(h.conntrack().len(), 2);
    });
}

#[test]
fn nodeport_without_backends_drops_and_stray_segments_pass() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        h.service(30080, TCP, &[(POD_B, 80)]);
        h.service(30090, TCP, &[]);

        let syn = tcp_frame(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            (OUTSIDE, 50000),
            (NODE_IP, 30090),
            SYN,
            b"",
        );
        let (verdict, _) = h.uplink_receives(&syn);
        assert_eq!(verdict, TC_ACT_SHOT, "a NodePort with no backend");
        h.assert_counted(&[(reason::DROP_NO_BACKEND, 1)]);

        // Not a new connection and no state: the node's own business (it answers with a RST).
        let ack = tcp_frame(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            (OUTSIDE, 50001),
            (NODE_IP, 30080),
            ACK,
            b"",
        );
        let (verdict, out) = h.uplink_receives(&ack);
        assert_eq!(verdict, TC_ACT_OK, "a mid-stream segment without state");
        assert_eq!(out, ack, "passed unchanged");
        h.assert_counted(&[(reason::DROP_NO_BACKEND, 1), (reason::PASS_NOT_NAT, 1)]);
        assert!(h.conntrack().is_empty(), "nothing tracked");
    });
}

#[test]
fn hairpin_nodeport_to_the_client_pod_itself() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        h.service(30081, TCP, &[(POD_A, 80)]);

        let syn = tcp_frame(GW_MAC, MAC_A, (POD_A, 41000), (NODE_IP, 30081), SYN, b"");
        let (verdict, out) = h.pod_sends(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (src, port) = src_of(&out);
        assert_eq!(src, NODE_IP, "the pod must not see a packet from itself");
        assert_in_snat_range(port);
        assert_translated(
            &out,
            &tcp_frame(MAC_A, GW_MAC, (NODE_IP, port), (POD_A, 80), SYN, b""),
        );
        h.assert_counted(&[(reason::DNAT, 1)]);
        let ct = h.conntrack();
        assert_entry(
            &ct,
            &ct_key((POD_A, 41000), (NODE_IP, 30081), TCP),
            ct_nat((NODE_IP, port), (POD_A, 80)),
            ct_kind::HAIRPIN,
            ct_dir::ORIGINAL,
            ct_state::NEW,
        );

        let syn_ack = tcp_frame(GW_MAC, MAC_A, (POD_A, 80), (NODE_IP, port), SYN_ACK, b"");
        let (verdict, out) = h.pod_sends(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &tcp_frame(
                MAC_A,
                GW_MAC,
                (NODE_IP, 30081),
                (POD_A, 41000),
                SYN_ACK,
                b"",
            ),
        );
        h.assert_counted(&[(reason::DNAT, 1), (reason::DNAT_REPLY, 1)]);

        // Another local pod reaching the same NodePort: DNAT only, its own source is kept.
        let syn = tcp_frame(GW_MAC, MAC_B, (POD_B, 42000), (NODE_IP, 30081), SYN, b"");
        let (verdict, out) = h.pod_sends(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &tcp_frame(MAC_A, GW_MAC, (POD_B, 42000), (POD_A, 80), SYN, b""),
        );
        let syn_ack = tcp_frame(GW_MAC, MAC_A, (POD_A, 80), (POD_B, 42000), SYN_ACK, b"");
        let (verdict, out) = h.pod_sends(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_translated(
            &out,
            &tcp_frame(
                MAC_B,
                GW_MAC,
                (NODE_IP, 30081),
                (POD_B, 42000),
                SYN_ACK,
                b"",
            ),
        );
        h.assert_counted(&[(reason::DNAT, 2), (reason::DNAT_REPLY, 2)]);
        assert_eq!(h.conntrack().len(), 4);
    });
}

#[test]
fn icmp_error_about_a_snat_flow_is_translated_back() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let port = snat_syn_from_a(&h);

        // "Fragmentation needed, next-hop MTU 1200" about the SYN as it left the node.
        let left = tcp(NODE_IP, OUTSIDE, port, 80, SYN, b"");
        let quoted = quote(&ipv4(NODE_IP, OUTSIDE, TCP, &[], &left));
        let mtu = [0, 0, 0x04, 0xb0];
        let error = eth(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(ROUTER, NODE_IP, ICMP, &[], &icmp_error(3, 4, mtu, &quoted)),
        );
        let (verdict, out) = h.uplink_receives(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the pod");

        // As the pod sent it: source A:40000 (the sequence number and all else unchanged).
        let sent = tcp(POD_A, OUTSIDE, 40000, 80, SYN, b"");
        let expected_quote = quote(&ipv4(POD_A, OUTSIDE, TCP, &[], &sent));
        let expected = eth(
            MAC_A,
            GW_MAC,
            ETH_P_IP,
            &ipv4(
                ROUTER,
                POD_A,
                ICMP,
                &[],
                &icmp_error(3, 4, mtu, &expected_quote),
            ),
        );
        assert_translated(&out, &expected);
        let icmp = &out[L4..];
        assert_eq!(csum(icmp, 0), 0, "ICMP checksum over the whole message");
        assert_eq!(csum(&icmp[8..28], 0), 0, "quoted IPv4 header checksum");
        assert_eq!(ip_at(&out, ETH_HLEN + 16), POD_A, "outer destination");
        assert_eq!(
            (ip_at(icmp, 8 + 12), u16_at(icmp, 28)),
            (POD_A, 40000),
            "quoted source"
        );
        h.assert_counted(&[(reason::SNAT, 1), (reason::ICMP_ERROR_TRANSLATED, 1)]);

        // An error about a flow nobody tracks is the node's own business.
        let other = quote(&ipv4(
            NODE_IP,
            OUTSIDE,
            TCP,
            &[],
            &tcp(NODE_IP, OUTSIDE, 33333, 80, SYN, b""),
        ));
        let stray = eth(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(ROUTER, NODE_IP, ICMP, &[], &icmp_error(3, 4, mtu, &other)),
        );
        let (verdict, out) = h.uplink_receives(&stray);
        assert_eq!((verdict, &out), (TC_ACT_OK, &stray), "untracked: unchanged");
        h.assert_counted(&[
            (reason::SNAT, 1),
            (reason::ICMP_ERROR_TRANSLATED, 1),
            (reason::PASS_NOT_NAT, 1),
        ]);
    });
}

#[test]
fn icmp_error_about_an_echo_request_restores_the_identifier() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let (verdict, out) = h.pod_sends(&echo_frame(GW_MAC, MAC_A, POD_A, OUTSIDE, true, 0x1234));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let id = u16_at(&out, L4 + 4);

        // "Time exceeded" quoting the request as it left.
        let quoted = quote(&out[ETH_HLEN..]);
        let error = eth(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(
                ROUTER,
                NODE_IP,
                ICMP,
                &[],
                &icmp_error(11, 0, [0; 4], &quoted),
            ),
        );
        let (verdict, out) = h.uplink_receives(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT);

        // The quoted source and identifier are the pod's; the quoted echo checksum is left as
        // it was (receivers do not check it, and the quote may be cut short).
        let mut expected_quote = quoted.clone();
        expected_quote[12..16].copy_from_slice(&POD_A.octets());
        expected_quote[20 + 4..20 + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        let expected = eth(
            MAC_A,
            GW_MAC,
            ETH_P_IP,
            &ipv4(
                ROUTER,
                POD_A,
                ICMP,
                &[],
                &icmp_error(11, 0, [0; 4], &expected_quote),
            ),
        );
        assert_translated(&out, &expected);
        assert_ne!(id, 0x1234, "the identifier really was translated");
        h.assert_counted(&[(reason::SNAT, 1), (reason::ICMP_ERROR_TRANSLATED, 1)]);
    });
}

#[test]
fn a_full_conntrack_table_refuses_new_flows_but_keeps_old_ones() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::with_ct_limit(2);
        let port = snat_syn_from_a(&h);

        let second = tcp_frame(GW_MAC, MAC_A, (POD_A, 40001), (OUTSIDE, 80), SYN, b"");
        let (verdict, out) = h.pod_sends(&second);
        assert_eq!(verdict, TC_ACT_SHOT, "no room for a second flow");
        assert_eq!(out, second, "refused before any rewrite");
        h.assert_counted(&[(reason::SNAT, 1), (reason::DROP_CT_FULL, 1)]);
        assert_eq!(h.conntrack().len(), 2, "only the first flow");

        let ack = tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 80), ACK, b"");
        let (verdict, out) = h.pod_sends(&ack);
        assert_eq!(verdict, TC_ACT_REDIRECT, "the admitted flow goes on");
        assert_translated(
            &out,
            &tcp_frame(
                NEXT_HOP_MAC,
                UPLINK_MAC,
                (NODE_IP, port),
                (OUTSIDE, 80),
                ACK,
                b"",
            ),
        );
        h.assert_counted(&[(reason::SNAT, 2), (reason::DROP_CT_FULL, 1)]);
    });
}

#[test]
fn untranslatable_traffic_leaving_the_cluster_is_dropped_not_leaked() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let udp_out = udp(POD_A, OUTSIDE, 5353, 53, &[0x55; 32], false);
        let fragment = |frag_off: u16| {
            let mut ip = ipv4(POD_A, OUTSIDE, UDP, &[], &udp_out);
            ip[6..8].copy_from_slice(&frag_off.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let check = csum(&ip[..20], 0);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            eth(GW_MAC, MAC_A, ETH_P_IP, &ip)
        };
        let port_unreachable = icmp_error(
            3,
            3,
            [0; 4],
            &quote(&ipv4(
                OUTSIDE,
                POD_A,
                UDP,
                &[],
                &udp(OUTSIDE, POD_A, 53, 9, b"x", false),
            )),
        );
        let cases = [
            (
                "a later fragment (offset 8) whose first fragment was never seen",
                fragment(1),
                reason::DROP_FRAG_OUT_OF_ORDER,
            ),
            (
                "a protocol without ports (GRE)",
                eth(
                    GW_MAC,
                    MAC_A,
                    ETH_P_IP,
                    &ipv4(POD_A, OUTSIDE, 47, &[], &[0; 8]),
                ),
                reason::DROP_NAT_UNSUPPORTED,
            ),
            (
                "an ICMP error from a pod",
                eth(
                    GW_MAC,
                    MAC_A,
                    ETH_P_IP,
                    &ipv4(POD_A, OUTSIDE, ICMP, &[], &port_unreachable),
                ),
                reason::DROP_NAT_UNSUPPORTED,
            ),
            (
                "a mid-stream ACK without state",
                tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 80), ACK, b""),
                reason::DROP_CT_NO_STATE,
            ),
            (
                "a SYN-ACK without state",
                tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 80), SYN_ACK, b""),
                reason::DROP_CT_NO_STATE,
            ),
            (
                "an echo reply without state",
                echo_frame(GW_MAC, MAC_A, POD_A, OUTSIDE, false, 0x1234),
                reason::DROP_CT_NO_STATE,
            ),
        ];
        let mut drops = StdHashMap::<u32, u64>::new();
        for (what, frame, why) in cases {
            let (verdict, out) = h.pod_sends(&frame);
            assert_eq!(verdict, TC_ACT_SHOT, "{what}");
            assert_eq!(out, frame, "{what}: dropped before any rewrite");
            *drops.entry(why).or_default() += 1;
            let expected: Vec<(u32, u64)> = drops.iter().map(|(w, n)| (*w, *n)).collect();
            h.assert_counted(&expected);
        }
        assert!(h.conntrack().is_empty(), "nothing tracked");
    });
}

#[test]
fn a_masquerade_exclusion_keeps_the_pod_address() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        let mut exclusions: aya::maps::LpmTrie<_, [u8; 4], u32> = aya::maps::LpmTrie::try_from(
            h.ebpf
                .map_mut(map_name::NON_MASQUERADE)
                .expect("NON_MASQUERADE"),
        )
        .expect("LPM trie");
        let outside_net = aya::maps::lpm_trie::Key::new(24, [198, 18, 0, 0]);
        exclusions
            .insert(&outside_net, NON_MASQUERADE_PRESENT, 0)
            .expect("exclusion");
        // TCP, UDP and ICMP echo to an excluded destination: to the kernel as the pod sent
        // them, with no NAT state.
        for frame in [
            tcp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 80), SYN, b""),
            udp_frame(GW_MAC, MAC_A, (POD_A, 40000), (OUTSIDE, 53), b"q", true),
            echo_frame(GW_MAC, MAC_A, POD_A, OUTSIDE, true, 0x1234),
        ] {
            let (verdict, out) = h.pod_sends(&frame);
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(out, frame, "an excluded destination's packet is unchanged");
        }
        h.assert_counted(&[(reason::PASS_NON_MASQUERADE, 3)]);
        assert!(h.conntrack().is_empty(), "nothing tracked");

        // Another exclusion that does not hold the destination: SNATed as before.
        let mut exclusions: aya::maps::LpmTrie<_, [u8; 4], u32> = aya::maps::LpmTrie::try_from(
            h.ebpf
                .map_mut(map_name::NON_MASQUERADE)
                .expect("NON_MASQUERADE"),
        )
        .expect("LPM trie");
        exclusions.remove(&outside_net).expect("removed");
        exclusions
            .insert(
                &aya::maps::lpm_trie::Key::new(32, [198, 18, 0, 2]),
                NON_MASQUERADE_PRESENT,
                0,
            )
            .expect("exclusion");
        snat_syn_from_a(&h);
        h.assert_counted(&[(reason::PASS_NON_MASQUERADE, 3), (reason::SNAT, 1)]);
    });
}

// ---------------------------------------------------------------------------------------
// IP fragments: the first fragment carries the ports and is translated by its flow; later
// fragments take the ports from the fragment map and get their addresses rewritten.

/// IPv4 `frag_off` "more fragments" bit.
const IP_MF: u16 = 0x2000;
/// L4 bytes per fragment in these tests (a multiple of 8, as offsets count 8-byte units).
const FRAG_CHUNK: usize = 64;

/// The fragments of an L4 `datagram` of protocol `proto` from `src` to `dst` with IP id `id`,
/// [`FRAG_CHUNK`] L4 bytes each, as Ethernet frames (header checksums filled in).
fn fragment_frames(
    macs: ([u8; 6], [u8; 6]),
    (src, dst): (Ipv4Addr, Ipv4Addr),
    proto: u8,
    id: u16,
    datagram: &[u8],
) -> Vec<Vec<u8>> {
    let count = datagram.len().div_ceil(FRAG_CHUNK);
    datagram
        .chunks(FRAG_CHUNK)
        .enumerate()
        .map(|(i, part)| {
            let mut ip = ipv4(src, dst, proto, &[], part);
            let offset = u16::try_from(i * FRAG_CHUNK / 8).expect("offset fits");
            let more = if i + 1 < count { IP_MF } else { 0 };
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[6..8].copy_from_slice(&(offset | more).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let check = csum(&ip[..20], 0);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            eth(macs.0, macs.1, ETH_P_IP, &ip)
        })
        .collect()
}

/// Asserts `out` are `expected`'s fragments (built with the TTL the sender used; each crossed
/// the node, a routed hop, so arrives with its TTL one lower) byte for byte except the IPv4
/// header checksums (each verified on its own) and the first fragment's UDP checksum, which is
/// verified over the reassembled datagram with the translated addresses' pseudo-header.
fn assert_fragments_translated(out: &[Vec<u8>], expected: &[Vec<u8>]) {
    assert_eq!(out.len(), expected.len(), "fragment count");
    let expected: Vec<Vec<u8>> = expected
        .iter()
        .map(|f| {
            let mut routed = f.clone();
            routed[ETH_HLEN + 8] -= 1;
            routed
        })
        .collect();
    let mask = |i: usize, f: &[u8]| {
        let mut f = f.to_vec();
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
        if i == 0 {
            f[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
        }
        f
    };
    for (i, (o, e)) in out.iter().zip(&expected).enumerate() {
        assert_eq!(
            mask(i, o),
            mask(i, e),
            "fragment {i}\n   got: {o:02x?}\nexpect: {e:02x?}"
        );
        assert!(ipv4_header_ok(o), "fragment {i}: IPv4 header checksum");
    }
    let l4: Vec<u8> = out.iter().flat_map(|f| f[L4..].to_vec()).collect();
    let whole = eth(
        out[0][..6].try_into().expect("mac"),
        out[0][6..12].try_into().expect("mac"),
        ETH_P_IP,
        &ipv4(
            ip_at(&out[0], ETH_HLEN + 12),
            ip_at(&out[0], ETH_HLEN + 16),
            out[0][ETH_HLEN + 9],
            &[],
            &l4,
        ),
    );
    assert!(l4_ok(&whole), "checksum of the reassembled datagram");
}

/// A UDP payload long enough for several fragments, different at every offset.
fn big_payload() -> Vec<u8> {
    (0..200u16)
        .map(|i| (i % 251).to_le_bytes()[0] ^ 0x5a)
        .collect()
}

#[test]
fn snat_udp_fragments_follow_the_first_fragments_flow_both_ways() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let data = big_payload();
        let out_dgram = udp(POD_A, OUTSIDE, 5353, 53, &data, false);
        let frags = fragment_frames((GW_MAC, MAC_A), (POD_A, OUTSIDE), UDP, 0x1001, &out_dgram);
        assert_eq!(frags.len(), 4, "208 bytes in 64-byte fragments");
        let mut sent = Vec::new();
        for f in &frags {
            let (verdict, out) = h.pod_sends(f);
            assert_eq!(verdict, TC_ACT_REDIRECT, "every fragment is SNATed out");
            sent.push(out);
        }
        let (_, port) = src_of(&sent[0]);
        assert_in_snat_range(port);
        let expected = fragment_frames(
            (NEXT_HOP_MAC, UPLINK_MAC),
            (NODE_IP, OUTSIDE),
            UDP,
            0x1001,
            &udp(NODE_IP, OUTSIDE, port, 53, &data, false),
        );
        assert_fragments_translated(&sent, &expected);
        h.assert_counted(&[(reason::SNAT, 4)]);
        assert_eq!(h.conntrack().len(), 2, "one flow for the whole datagram");

        // The reply, fragmented too, reaches the pod translated back.
        let reply = udp(OUTSIDE, NODE_IP, 53, port, &data, false);
        let frags = fragment_frames(
            (UPLINK_MAC, NEXT_HOP_MAC),
            (OUTSIDE, NODE_IP),
            UDP,
            0x2002,
            &reply,
        );
        let mut received = Vec::new();
        for f in &frags {
            let (verdict, out) = h.uplink_receives(f);
            assert_eq!(
                verdict, TC_ACT_REDIRECT,
                "every reply fragment goes to the pod"
            );
            received.push(out);
        }
        let expected = fragment_frames(
            (MAC_A, GW_MAC),
            (OUTSIDE, POD_A),
            UDP,
            0x2002,
            &udp(OUTSIDE, POD_A, 53, 5353, &data, false),
        );
        assert_fragments_translated(&received, &expected);
        h.assert_counted(&[(reason::SNAT, 4), (reason::SNAT_REPLY, 4)]);
    });
}

#[test]
fn nodeport_udp_fragments_are_dnated_and_the_reply_translated_back() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        h.service(30053, UDP, &[(POD_B, 53)]);
        let client = (OUTSIDE, 50000);
        let data = big_payload();
        let frags = fragment_frames(
            (UPLINK_MAC, NEXT_HOP_MAC),
            (OUTSIDE, NODE_IP),
            UDP,
            0x3003,
            &udp(OUTSIDE, NODE_IP, client.1, 30053, &data, false),
        );
        let mut delivered = Vec::new();
        for f in &frags {
            let (verdict, out) = h.uplink_receives(f);
            assert_eq!(verdict, TC_ACT_REDIRECT, "every fragment to the backend");
            delivered.push(out);
        }
        let expected = fragment_frames(
            (MAC_B, GW_MAC),
            (OUTSIDE, POD_B),
            UDP,
            0x3003,
            &udp(OUTSIDE, POD_B, client.1, 53, &data, false),
        );
        assert_fragments_translated(&delivered, &expected);
        h.assert_counted(&[(reason::DNAT, 4)]);

        let frags = fragment_frames(
            (GW_MAC, MAC_B),
            (POD_B, OUTSIDE),
            UDP,
            0x4004,
            &udp(POD_B, OUTSIDE, 53, client.1, &data, false),
        );
        let mut sent = Vec::new();
        for f in &frags {
            let (verdict, out) = h.pod_sends(f);
            assert_eq!(
                verdict, TC_ACT_REDIRECT,
                "every reply fragment is routed out"
            );
            sent.push(out);
        }
        let expected = fragment_frames(
            (NEXT_HOP_MAC, UPLINK_MAC),
            (NODE_IP, OUTSIDE),
            UDP,
            0x4004,
            &udp(NODE_IP, OUTSIDE, 30053, client.1, &data, false),
        );
        assert_fragments_translated(&sent, &expected);
        h.assert_counted(&[(reason::DNAT, 4), (reason::DNAT_REPLY, 4)]);
    });
}

#[test]
fn a_later_fragment_before_its_first_is_counted_never_leaked() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let data = big_payload();
        let frags = fragment_frames(
            (GW_MAC, MAC_A),
            (POD_A, OUTSIDE),
            UDP,
            0x5005,
            &udp(POD_A, OUTSIDE, 5353, 53, &data, false),
        );

        // The last fragment overtakes the others: no ports to translate it by, and it must
        // not leave with the pod's address.
        let last = frags.last().expect("fragments");
        let (verdict, out) = h.pod_sends(last);
        assert_eq!(verdict, TC_ACT_SHOT, "dropped");
        assert_eq!(&out, last, "dropped before any rewrite");
        h.assert_counted(&[(reason::DROP_FRAG_OUT_OF_ORDER, 1)]);
        assert!(h.conntrack().is_empty(), "a later fragment starts no flow");

        // The rest, in order, are translated by the flow the first one starts.
        for f in &frags[..frags.len() - 1] {
            let (verdict, out) = h.pod_sends(f);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert!(ipv4_header_ok(&out), "IPv4 header checksum");
            assert_eq!(ip_at(&out, ETH_HLEN + 12), NODE_IP, "source translated");
        }
        // Once the first fragment is known, the same straggler follows its flow.
        let (verdict, out) = h.pod_sends(last);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert!(ipv4_header_ok(&out));
        assert_eq!(ip_at(&out, ETH_HLEN + 12), NODE_IP);
        assert_eq!(
            out[L4..],
            last[L4..],
            "a later fragment's data is never touched"
        );
        h.assert_counted(&[(reason::DROP_FRAG_OUT_OF_ORDER, 1), (reason::SNAT, 4)]);

        // On the uplink, a later fragment for the node IP whose first fragment was not seen
        // may be the node's own: to the kernel unchanged, counted.
        let stray = fragment_frames(
            (UPLINK_MAC, NEXT_HOP_MAC),
            (OUTSIDE, NODE_IP),
            UDP,
            0x6006,
            &udp(OUTSIDE, NODE_IP, 53, 40000, &data, false),
        );
        let (verdict, out) = h.uplink_receives(&stray[1]);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, stray[1], "unchanged");
        h.assert_counted(&[
            (reason::DROP_FRAG_OUT_OF_ORDER, 1),
            (reason::SNAT, 4),
            (reason::PASS_FRAGMENT, 1),
        ]);
    });
}

#[test]
fn clusterip_udp_fragments_from_a_pod_and_a_straggler_before_the_first() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        let vip = Ipv4Addr::new(10, 96, 0, 53);
        let spec = podnet_tests::testrun::service_spec(
            Frontend {
                addr: vip.into(),
                port: 53,
                proto: UDP,
            },
            &[(POD_B, 5353)],
            svc_flag::CLUSTER_IP,
        );
        h.services.write(&spec).expect("service");
        let data = big_payload();
        let frags = fragment_frames(
            (GW_MAC, MAC_A),
            (POD_A, vip),
            UDP,
            0x7007,
            &udp(POD_A, vip, 40053, 53, &data, false),
        );

        // A later fragment first: the ClusterIP is known, its port is not; never handed on
        // untranslated to the service CIDR.
        let straggler = &frags[2];
        let (verdict, out) = h.pod_sends(straggler);
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(&out, straggler, "dropped before any rewrite");
        h.assert_counted(&[(reason::DROP_FRAG_OUT_OF_ORDER, 1)]);

        // The whole datagram in order: to the backend, the pod's address kept.
        let mut delivered = Vec::new();
        for f in &frags {
            let (verdict, out) = h.pod_sends(f);
            assert_eq!(verdict, TC_ACT_REDIRECT, "to the backend pod");
            delivered.push(out);
        }
        let expected = fragment_frames(
            (MAC_B, GW_MAC),
            (POD_A, POD_B),
            UDP,
            0x7007,
            &udp(POD_A, POD_B, 40053, 5353, &data, false),
        );
        assert_fragments_translated(&delivered, &expected);
        h.assert_counted(&[
            (reason::DROP_FRAG_OUT_OF_ORDER, 1),
            (reason::SERVICE_DNAT, 1),
            (reason::DNAT, 3),
        ]);

        // The backend's fragmented reply comes from the ClusterIP.
        let frags = fragment_frames(
            (GW_MAC, MAC_B),
            (POD_B, POD_A),
            UDP,
            0x8008,
            &udp(POD_B, POD_A, 5353, 40053, &data, false),
        );
        let mut replies = Vec::new();
        for f in &frags {
            let (verdict, out) = h.pod_sends(f);
            assert_eq!(verdict, TC_ACT_REDIRECT, "back to the client pod");
            replies.push(out);
        }
        let expected = fragment_frames(
            (MAC_A, GW_MAC),
            (vip, POD_A),
            UDP,
            0x8008,
            &udp(vip, POD_A, 53, 40053, &data, false),
        );
        assert_fragments_translated(&replies, &expected);
        h.assert_counted(&[
            (reason::DROP_FRAG_OUT_OF_ORDER, 1),
            (reason::SERVICE_DNAT, 1),
            (reason::DNAT, 3),
            (reason::DNAT_REPLY, 4),
        ]);
    });
}
