//! IPv6 masquerade through `BPF_PROG_TEST_RUN`: the classifiers (with the IPv6 programs they
//! tail-call) run on crafted frames inside a namespace whose routing answers as a node's uplink,
//! and every rewritten frame is checked against checksums computed here, independently of the
//! datapath: TCP, UDP and ICMPv6 echo out to the node's IPv6 address and back to the pod, an
//! ICMPv6 error about a masqueraded flow translated back with its quote, and IPv6 that must
//! keep the pod's address (the cluster, masquerade exclusions) passed unchanged.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use podnet_ebpf::abi::{
    Counter, CtTimeouts, DEFAULT_CT6_LIMIT, Endpoint, EndpointKey6, NON_MASQUERADE_PRESENT,
    NodeConfig, addr6_from_bytes, config_flag, map_name, program_name, reason,
};
use podnet_tests::{
    packet::*,
    require_root,
    testrun::{in_uplink_netns, load_classifiers, mac_str},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x10);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x1);
const POD_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
const OTHER_NODE_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 7, 0, 0, 0, 9);
const EXCLUDED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

const PORT_MIN: u16 = 20_000;
const PORT_MAX: u16 = 29_999;

/// Where L4 starts in the frames here (no extension headers).
const L4: usize = ETH_HLEN + 40;

fn in_node_netns(test: impl FnOnce() + Send) {
    let extra = format!(
        "sysctl -qw net.ipv6.conf.all.forwarding=1 \
         && ip -6 addr add {NODE6}/64 dev up0 nodad \
         && ip -6 neigh replace {OUTSIDE6} lladdr {} dev up0 nud permanent \
         && ip link add small0 mtu 1280 type veth peer name small1 \
         && ip link set small0 up && ip link set small1 up",
        mac_str(NEXT_HOP_MAC)
    );
    in_uplink_netns("nat6", UPLINK_MAC, NODE_IP, &[], &extra, test);
}

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    /// Loads the classifiers (and the IPv6 programs) with private maps and configures a
    /// dual-stack node with pod A, masquerade exclusion fd00:99::/48.
    fn new() -> Self {
        let mut ebpf = load_classifiers();
        let mut config: Array<_, NodeConfig> =
            Array::try_from(ebpf.map_mut(map_name::CONFIG).expect("CONFIG")).expect("array");
        let net = |s: &str| addr6_from_bytes(s.parse::<Ipv6Addr>().expect("IPv6").octets());
        config
            .set(
                0,
                NodeConfig {
                    flags: config_flag::READY,
                    node_ip: NODE_IP.octets(),
                    gateway_mac: GW_MAC,
                    snat_port_min: PORT_MIN,
                    snat_port_max: PORT_MAX,
                    ct_limit: 1024,
                    ct_timeouts: CtTimeouts::DEFAULT,
                    node_ip6: addr6_from_bytes(NODE6.octets()),
                    pod_cidr6: net("fd00:10:244:1::"),
                    pod_prefix_len6: 64,
                    cluster_cidr6: net("fd00:10:244::"),
                    cluster_prefix_len6: 48,
                    ct6_limit: DEFAULT_CT6_LIMIT,
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
                    addr: POD_A.octets(),
                },
                Endpoint {
                    ifindex: 41,
                    mac: MAC_A,
                    ..Endpoint::default()
                },
                0,
            )
            .expect("endpoint");
        let mut excluded: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(ebpf.map_mut(map_name::NON_MASQUERADE6).expect("map")).expect("lpm");
        let key = Key::new(48, "fd00:99::".parse::<Ipv6Addr>().expect("IPv6").octets());
        excluded
            .insert(&key, NON_MASQUERADE_PRESENT, 0)
            .expect("exclusion");
        Self { ebpf }
    }

    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        podnet_tests::testrun::run_classifier(&self.ebpf, program, frame)
    }

    fn pod_sends(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_name::FROM_POD, frame)
    }

    fn uplink_receives(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_name::FROM_UPLINK, frame)
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

/// The IPv6 pseudo-header sum (RFC 8200 8.1) for `len` bytes of upper-layer `next`.
fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for addr in [src, dst] {
        for w in addr.segments() {
            sum += u32::from(w);
        }
    }
    let len = u32::try_from(len).expect("small");
    sum + (len >> 16) + (len & 0xffff) + u32::from(next)
}

/// An IPv6 frame around `payload` (upper layer `next`), the L4 checksum at `csum_off` (within
/// the payload) filled in.
fn frame6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    mut payload: Vec<u8>,
    csum_off: usize,
) -> Vec<u8> {
    payload[csum_off..csum_off + 2].copy_from_slice(&[0, 0]);
    let c = csum(&payload, pseudo6(src, dst, next, payload.len()));
    payload[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&u16::try_from(payload.len()).expect("small").to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&payload);
    eth(dst_mac, src_mac, ETH_P_IPV6, &ip)
}

fn tcp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    macs: [[u8; 6]; 2],
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(b"data");
    frame6(macs[0], macs[1], src, dst, TCP, t, 16)
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, macs: [[u8; 6]; 2]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&12u16.to_be_bytes());
    u.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
    frame6(macs[0], macs[1], src, dst, UDP, u, 6)
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, request: bool, id: u16, macs: [[u8; 6]; 2]) -> Vec<u8> {
    let kind = if request { 128 } else { 129 };
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1, b'p', b'i', b'n', b'g']);
    frame6(macs[0], macs[1], src, dst, ICMPV6, m, 2)
}

fn src6(f: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&f[ETH_HLEN + 8..ETH_HLEN + 24]).expect("16"))
}
fn dst6(f: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&f[ETH_HLEN + 24..ETH_HLEN + 40]).expect("16"))
}
fn port_at(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// Whether the frame's L4 checksum (over the pseudo-header) verifies.
fn l4_ok6(f: &[u8]) -> bool {
    let next = f[ETH_HLEN + 6];
    let len = usize::from(u16::from_be_bytes([f[ETH_HLEN + 4], f[ETH_HLEN + 5]]));
    let l4 = &f[L4..L4 + len];
    csum(l4, pseudo6(src6(f), dst6(f), next, len)) == 0
}

const OUT: [[u8; 6]; 2] = [GW_MAC, MAC_A];
const IN: [[u8; 6]; 2] = [UPLINK_MAC, NEXT_HOP_MAC];

/// Sends `out` from pod A and checks it left by the uplink's next hop as NODE6, one hop less,
/// with a valid checksum; returns the frame as it left.
fn leaves_as_node(h: &Harness, out: &[u8]) -> Vec<u8> {
    let (verdict, f) = h.pod_sends(out);
    assert_eq!(verdict, TC_ACT_REDIRECT, "from_pod verdict");
    assert_eq!(f[..6], NEXT_HOP_MAC, "to the next hop");
    assert_eq!(f[6..12], UPLINK_MAC, "from the uplink");
    assert_eq!(src6(&f), NODE6, "source masqueraded");
    assert_eq!(dst6(&f), OUTSIDE6);
    assert_eq!(f[ETH_HLEN + 7], 63, "one hop less");
    assert!(l4_ok6(&f), "L4 checksum after SNAT");
    f
}

/// Delivers `reply` on the uplink and checks it reached pod A translated back.
fn reaches_pod(h: &Harness, reply: &[u8]) -> Vec<u8> {
    let (verdict, f) = h.uplink_receives(reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "from_uplink verdict");
    assert_eq!(f[..6], MAC_A, "to the pod's MAC");
    assert_eq!(f[6..12], GW_MAC, "from the gateway");
    assert_eq!(src6(&f), OUTSIDE6);
    assert_eq!(dst6(&f), POD_A, "destination translated back");
    assert_eq!(f[ETH_HLEN + 7], 63, "one hop less");
    assert!(l4_ok6(&f), "L4 checksum after reverse SNAT");
    f
}

#[test]
fn tcp_udp_and_echo_are_masqueraded_to_the_node_ipv6_address_and_back_with_valid_checksums() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        // TCP: SYN out, SYN-ACK back.
        let f = leaves_as_node(&h, &tcp6(POD_A, OUTSIDE6, 40_000, 443, SYN, OUT));
        let port = port_at(&f, L4);
        assert!((PORT_MIN..=PORT_MAX).contains(&port), "SNAT port {port}");
        assert_eq!(port_at(&f, L4 + 2), 443);
        let back = reaches_pod(&h, &tcp6(OUTSIDE6, NODE6, 443, port, SYN | ACK, IN));
        assert_eq!(port_at(&back, L4 + 2), 40_000, "the pod's port back");
        // The next packet of the flow keeps its port.
        let again = leaves_as_node(&h, &tcp6(POD_A, OUTSIDE6, 40_000, 443, ACK, OUT));
        assert_eq!(port_at(&again, L4), port);

        // UDP.
        let f = leaves_as_node(&h, &udp6(POD_A, OUTSIDE6, 40_001, 53, OUT));
        let port = port_at(&f, L4);
        assert!((PORT_MIN..=PORT_MAX).contains(&port), "SNAT port {port}");
        let back = reaches_pod(&h, &udp6(OUTSIDE6, NODE6, 53, port, IN));
        assert_eq!(port_at(&back, L4 + 2), 40_001);

        // ICMPv6 echo: the identifier is the port.
        let f = leaves_as_node(&h, &echo6(POD_A, OUTSIDE6, true, 7, OUT));
        let id = port_at(&f, L4 + 4);
        assert!((PORT_MIN..=PORT_MAX).contains(&id), "echo identifier {id}");
        let back = reaches_pod(&h, &echo6(OUTSIDE6, NODE6, false, id, IN));
        assert_eq!(port_at(&back, L4 + 4), 7, "the pod's identifier back");

        assert_eq!(h.count(reason::SNAT6), 4);
        assert_eq!(h.count(reason::SNAT6_REPLY), 3);
        assert_eq!(h.count(reason::PASS_IPV6_NO_PROG), 0);
        // A reply to no flow is the node's own: to the kernel unchanged.
        let stray = udp6(OUTSIDE6, NODE6, 53, 9, IN);
        let (verdict, f) = h.uplink_receives(&stray);
        assert_eq!((verdict, f), (TC_ACT_OK, stray));
    });
}

#[test]
fn an_icmpv6_error_about_a_masqueraded_flow_is_translated_back_with_its_quote() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let sent = leaves_as_node(&h, &udp6(POD_A, OUTSIDE6, 40_002, 5353, OUT));
        let port = port_at(&sent, L4);
        // The outside's port unreachable quotes the datagram as it arrived there.
        let mut m = vec![1, 4, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&sent[ETH_HLEN..]);
        let error = frame6(UPLINK_MAC, NEXT_HOP_MAC, OUTSIDE6, NODE6, ICMPV6, m, 2);
        let (verdict, f) = h.uplink_receives(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT, "translated and redirected");
        assert_eq!(f[..6], MAC_A);
        assert_eq!(src6(&f), OUTSIDE6, "from the host the datagram was for");
        assert_eq!(dst6(&f), POD_A, "to the pod");
        assert!(l4_ok6(&f), "ICMPv6 checksum (pseudo-header and quote)");
        // The quote is the pod's own datagram again.
        let q = L4 + 8;
        let quoted_src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[q + 8..q + 24]).expect("16"));
        assert_eq!(quoted_src, POD_A, "quoted source");
        assert_eq!(port_at(&f, q + 40), 40_002, "quoted source port");
        assert_eq!(port_at(&f, q + 42), 5353);
        assert_ne!(port, 40_002, "the test needs a translated port");
        assert_eq!(h.count(reason::ICMP6_ERROR_TRANSLATED), 1);
    });
}

#[test]
fn ipv6_to_the_cluster_and_to_masquerade_exclusions_keeps_the_pods_address() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        for dst in [OTHER_NODE_POD, EXCLUDED] {
            let frame = udp6(POD_A, dst, 40_003, 53, OUT);
            let (verdict, f) = h.pod_sends(&frame);
            assert_eq!(verdict, TC_ACT_OK, "to the kernel: {dst}");
            assert_eq!(f, frame, "unchanged: {dst}");
        }
        assert_eq!(h.count(reason::PASS_NON_MASQUERADE6), 1);
        assert_eq!(h.count(reason::SNAT6), 0);
    });
}

/// An IPv6 UDP datagram from pod A to the outside in two fragments: the first (fragment header,
/// UDP header, the first 8 bytes of data), and the rest. The UDP checksum covers the whole
/// datagram.
fn fragmented_udp(id: u32) -> (Vec<u8>, Vec<u8>) {
    const FRAGMENT: u8 = 44;
    let data: Vec<u8> = (0u8..24).collect();
    let mut udp = Vec::new();
    udp.extend_from_slice(&40_004u16.to_be_bytes());
    udp.extend_from_slice(&53u16.to_be_bytes());
    udp.extend_from_slice(&u16::try_from(8 + data.len()).expect("small").to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&data);
    let c = csum(&udp, pseudo6(POD_A, OUTSIDE6, UDP, udp.len()));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let (first, rest) = udp.split_at(16);
    let frag = |offset: usize, more: bool, body: &[u8]| {
        let off_flags = u16::try_from(offset).expect("small") | u16::from(more);
        let mut p = vec![UDP, 0];
        p.extend_from_slice(&off_flags.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(body);
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&u16::try_from(p.len()).expect("small").to_be_bytes());
        ip.extend_from_slice(&[FRAGMENT, 64]);
        ip.extend_from_slice(&POD_A.octets());
        ip.extend_from_slice(&OUTSIDE6.octets());
        ip.extend_from_slice(&p);
        eth(GW_MAC, MAC_A, ETH_P_IPV6, &ip)
    };
    (frag(0, true, first), frag(16, false, rest))
}

#[test]
fn fragments_follow_their_first_fragment_and_orphans_are_dropped() {
    require_root!();
    in_node_netns(|| {
        let h = Harness::new();
        let (first, later) = fragmented_udp(0x1234);
        let (verdict, f1) = h.pod_sends(&first);
        assert_eq!(verdict, TC_ACT_REDIRECT, "first fragment");
        let (verdict, f2) = h.pod_sends(&later);
        assert_eq!(verdict, TC_ACT_REDIRECT, "later fragment");
        for f in [&f1, &f2] {
            assert_eq!(src6(f), NODE6, "masqueraded");
            assert_eq!(f[ETH_HLEN + 7], 63, "one hop less");
        }
        // Reassembled, the datagram's checksum verifies with the translated addresses.
        let frag_l4 = L4 + 8;
        let mut udp = f1[frag_l4..].to_vec();
        udp.extend_from_slice(&f2[frag_l4..]);
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        assert!((PORT_MIN..=PORT_MAX).contains(&sport), "SNAT port {sport}");
        assert_eq!(csum(&udp, pseudo6(NODE6, OUTSIDE6, UDP, udp.len())), 0);
        // Only the addresses, hop limit and MACs of the later fragment changed.
        assert_eq!(f2[L4..], later[L4..]);
        assert_eq!(h.count(reason::SNAT6), 2);
        // A later fragment of a datagram whose first fragment was never seen is dropped.
        let (_, orphan) = fragmented_udp(0x9999);
        let (verdict, _) = h.pod_sends(&orphan);
        assert_eq!(verdict, TC_ACT_SHOT, "dropped");
        assert_eq!(h.count(reason::DROP_NAT6_UNSUPPORTED), 1);
    });
}

#[test]
fn hop_limit_1_goes_to_the_kernel_untranslated_and_an_empty_program_slot_passes() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        let mut frame = udp6(POD_A, OUTSIDE6, 40_005, 53, OUT);
        frame[ETH_HLEN + 7] = 1;
        let (verdict, f) = h.pod_sends(&frame);
        assert_eq!(
            (verdict, &f),
            (TC_ACT_OK, &frame),
            "to the kernel unchanged"
        );
        assert_eq!(h.count(reason::SNAT6), 0);
        // With its IPv6 program gone from IPV6_PROGS, from_pod passes IPv6 unchanged.
        let mut progs: aya::maps::ProgramArray<_> =
            aya::maps::ProgramArray::try_from(h.ebpf.map_mut(map_name::IPV6_PROGS).expect("map"))
                .expect("program array");
        progs
            .clear_index(&podnet_ebpf::abi::ipv6_prog::FROM_POD6)
            .expect("clear");
        let frame = udp6(POD_A, OUTSIDE6, 40_006, 53, OUT);
        let (verdict, f) = h.pod_sends(&frame);
        assert_eq!((verdict, f), (TC_ACT_OK, frame), "passed unchanged");
        assert_eq!(h.count(reason::PASS_IPV6_NO_PROG), 1);
    });
}

#[test]
fn a_reply_too_big_for_the_pods_link_is_answered_with_packet_too_big_from_the_node() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        // Pod A lives behind a link of MTU 1280 (`small0`); the test run's packets arrive on
        // ifindex 1, the uplink here.
        let small = podnet::sys::link::ifindex("small0").expect("small0");
        let mut endpoints: HashMap<_, EndpointKey6, Endpoint> =
            HashMap::try_from(h.ebpf.map_mut(map_name::ENDPOINTS6).expect("ENDPOINTS6"))
                .expect("hash");
        endpoints
            .insert(
                EndpointKey6 {
                    addr: POD_A.octets(),
                },
                Endpoint {
                    ifindex: small,
                    mac: MAC_A,
                    ..Endpoint::default()
                },
                0,
            )
            .expect("endpoint");
        let mut config: Array<_, NodeConfig> =
            Array::try_from(h.ebpf.map_mut(map_name::CONFIG).expect("CONFIG")).expect("array");
        let mut cfg = config.get(&0, 0).expect("config");
        cfg.uplink_ifindex = 1;
        config.set(0, cfg, 0).expect("config");

        let sent = leaves_as_node(&h, &udp6(POD_A, OUTSIDE6, 40_007, 53, OUT));
        let port = port_at(&sent, L4);
        // A 1,400-byte reply.
        let mut u = Vec::new();
        u.extend_from_slice(&53u16.to_be_bytes());
        u.extend_from_slice(&port.to_be_bytes());
        u.extend_from_slice(&1_400u16.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.resize(1_400, 0xab);
        let big = frame6(UPLINK_MAC, NEXT_HOP_MAC, OUTSIDE6, NODE6, UDP, u, 6);
        let (verdict, f) = h.uplink_receives(&big);
        assert_eq!(verdict, TC_ACT_REDIRECT, "answered, back out");
        assert_eq!(f.len(), ETH_HLEN + 40 + 8 + 48, "IPv6 + ICMPv6 + quote");
        assert_eq!(f[..6], NEXT_HOP_MAC, "to the sender's MAC");
        assert_eq!(f[6..12], UPLINK_MAC);
        assert_eq!(src6(&f), NODE6, "from the node's IPv6 address");
        assert_eq!(dst6(&f), OUTSIDE6);
        assert_eq!(f[ETH_HLEN + 6], ICMPV6);
        assert_eq!(f[L4], 2, "Packet Too Big");
        assert_eq!(
            u32::from_be_bytes(f[L4 + 4..L4 + 8].try_into().expect("4")),
            1_280,
            "the pod link's MTU"
        );
        assert_eq!(
            f[L4 + 8..],
            big[ETH_HLEN..ETH_HLEN + 48],
            "quotes the reply as its sender sent it"
        );
        assert!(l4_ok6(&f), "ICMPv6 checksum");
        assert_eq!(h.count(reason::REJECT_FRAG_NEEDED), 1);
        assert_eq!(h.count(reason::SNAT6_REPLY), 0);
    });
}

/// `SERVICES6` and `BACKENDS6` with one NodePort, `proto` `port` on the node's IPv6 address, to
/// pod A's `target`.
fn nodeport6(h: &mut Harness, proto: u8, port: u16, target: u16, id: u32) {
    use podnet_ebpf::abi::{NODEPORT_ADDR6, ServiceBackend6, ServiceKey6, ServiceValue, svc_flag};
    let mut services: HashMap<_, ServiceKey6, ServiceValue> =
        HashMap::try_from(h.ebpf.map_mut(map_name::SERVICES6).expect("SERVICES6")).expect("hash");
    let key = |slot| ServiceKey6 {
        addr: NODEPORT_ADDR6,
        port,
        slot,
        proto,
        _pad: [0; 3],
    };
    let master = ServiceValue {
        id,
        count: 1,
        local_count: 1,
        flags: svc_flag::NODE_PORT,
        ..ServiceValue::default()
    };
    services.insert(key(0), master, 0).expect("master");
    let slot = ServiceValue {
        id: id + 100,
        ..ServiceValue::default()
    };
    services.insert(key(1), slot, 0).expect("slot");
    let mut backends: HashMap<_, u32, ServiceBackend6> =
        HashMap::try_from(h.ebpf.map_mut(map_name::BACKENDS6).expect("BACKENDS6")).expect("hash");
    let backend = ServiceBackend6 {
        addr: POD_A.octets(),
        port: target,
        ..ServiceBackend6::default()
    };
    backends.insert(id + 100, backend, 0).expect("backend");
}

#[test]
fn an_ipv6_nodeport_from_outside_is_dnated_to_the_local_pod_and_back_with_valid_checksums() {
    require_root!();
    in_node_netns(|| {
        let mut h = Harness::new();
        nodeport6(&mut h, TCP, 30_080, 8080, 1);
        nodeport6(&mut h, UDP, 30_053, 5353, 2);
        for (request, reply, port) in [
            (
                tcp6(OUTSIDE6, NODE6, 41_000, 30_080, SYN, IN),
                tcp6(POD_A, OUTSIDE6, 8080, 41_000, SYN | ACK, OUT),
                8080,
            ),
            (
                udp6(OUTSIDE6, NODE6, 41_001, 30_053, IN),
                udp6(POD_A, OUTSIDE6, 5353, 41_001, OUT),
                5353,
            ),
        ] {
            // In: to pod A's target port, the client kept.
            let (verdict, f) = h.uplink_receives(&request);
            assert_eq!(verdict, TC_ACT_REDIRECT, "from_uplink verdict");
            assert_eq!(f[..6], MAC_A, "to the pod's MAC");
            assert_eq!(src6(&f), OUTSIDE6, "the client's address kept");
            assert_eq!(dst6(&f), POD_A, "destination: the backend");
            assert_eq!(port_at(&f, L4 + 2), port, "the backend's port");
            assert_eq!(f[ETH_HLEN + 7], 63, "one hop less");
            assert!(l4_ok6(&f), "L4 checksum after DNAT");
            // Back: from the NodePort the client used.
            let (verdict, f) = h.pod_sends(&reply);
            assert_eq!(verdict, TC_ACT_REDIRECT, "from_pod verdict");
            assert_eq!(f[..6], NEXT_HOP_MAC, "to the next hop");
            assert_eq!(src6(&f), NODE6, "the reply comes from the node's address");
            assert_eq!(dst6(&f), OUTSIDE6);
            assert_eq!(
                port_at(&f, L4),
                port_at(&request, L4 + 2),
                "from the NodePort"
            );
            assert!(l4_ok6(&f), "L4 checksum after reverse DNAT");
        }
        assert_eq!(h.count(reason::DNAT6), 2);
        assert_eq!(h.count(reason::DNAT6_REPLY), 2);
        assert_eq!(h.count(reason::SNAT6), 0, "replies are not masqueraded");
        // A NodePort without a service: the node's own, to the kernel unchanged.
        let stray = tcp6(OUTSIDE6, NODE6, 41_002, 30_099, SYN, IN);
        let (verdict, f) = h.uplink_receives(&stray);
        assert_eq!((verdict, f), (TC_ACT_OK, stray));
    });
}
