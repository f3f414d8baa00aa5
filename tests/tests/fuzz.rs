//! Packet fuzzing of both classifiers, `from_pod` and `from_uplink`, through
//! `BPF_PROG_TEST_RUN`, with maps set up so that the rewrite paths really run: two local pods
//! (one delivered with `bpf_redirect_peer`, one with `bpf_redirect`), NodePorts with a local
//! backend (TCP and UDP), a hairpin backend, a backend on another node and one with no backend,
//! another node as a peer, SNAT configured, and live conntrack flows of every kind (SNAT TCP,
//! UDP and echo, DNAT, hairpin, remote backend) made by running the programs on their first
//! packets. The corpus is built around packets of those flows (new flows, their replies, ICMP
//! errors quoting them, pod to pod, to another node) plus non-IP, IPv6 and VLAN frames, then
//! varied structurally (IP options, fragments, bad IHL or version, short or long total length,
//! truncation at any layer, Ethernet padding, TCP flag combinations, short ICMP quotes) and
//! mutated at random (bit flips, boundary values, inserted and deleted bytes); half the mutated
//! frames get consistent checksums again so the checks below stay strict.
//!
//! What "not ours" means, from `podnet-ebpf/src`: each program hands a packet to the kernel
//! with `TC_ACT_OK` exactly when it is not the datapath's to translate or deliver: node not
//! ready, not IPv4 (ARP, IPv6, VLAN-tagged), malformed IPv4, broadcast or multicast MACs, a
//! source outside this node's pod CIDR, traffic for the node itself that is not a NodePort, an
//! unroutable destination, another node's pods without a known peer (`from_pod`); not for the
//! node IP nor a local pod, later fragments whose first fragment was not seen, untracked
//! traffic that is no NodePort, ICMP errors about
//! untracked flows (`from_uplink`). No path rewrites a packet and then returns `TC_ACT_OK`
//! (delivery is always a redirect), so the invariants per input are:
//!
//! - the verdict is `TC_ACT_OK`, `TC_ACT_SHOT` or `TC_ACT_REDIRECT`;
//! - `TC_ACT_OK`: the frame leaves byte for byte as it came;
//! - `TC_ACT_REDIRECT`: the frame is well-formed IPv4 of the same length; only the bytes NAT
//!   and delivery own changed (MACs, addresses, ports or echo identifier, checksums, an ICMP
//!   error's quoted addresses and ports, never past the IPv4 total length); every checksum
//!   that verified before (IPv4 header, TCP/UDP/ICMP, a quoted IPv4 header) still verifies,
//!   recomputed here independently; a UDP checksum of 0 ("none") stays 0; and a packet whose
//!   addresses or ports were rewritten has a complete L4 header inside its total length;
//! - `TC_ACT_SHOT`: anything (the frame is gone);
//! - every packet is counted under exactly one reason (`STATS` adds up to the inputs run).
//!
//! The suite runs a fixed seed and a bounded number of inputs; `cargo xtask fuzz
//! [--iterations N] [--seed S]` runs more (`PODNET_FUZZ_ITERATIONS`, `PODNET_FUZZ_SEED`). A
//! failure prints the seed, the index and the frame in hex; `PODNET_FUZZ_REPLAY=<program>:<hex>`
//! runs that one frame against freshly seeded maps.
//!
//! Services too: ClusterIPs (local backend, hairpin, a backend on another node, no backend, an
//! unknown port), a LoadBalancer IP from outside (with and without a backend), the service CIDR
//! without a service, with live ClusterIP and LoadBalancer flows seeded like the others. A
//! refusal (a TCP RST or ICMP port unreachable built in place and sent back) is the one
//! redirect that may change the frame's length and every byte: it is checked to be exactly a
//! refusal of the input (addresses and ports swapped, headers only, checksums verifying, the
//! ICMP quote being the input's headers).
//!
//! Not fuzzed: the socket programs (`sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`,
//! `sock_getpeername4`). They are `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` programs, for which the
//! kernel has no `BPF_PROG_TEST_RUN`; they never see packets, only socket addresses, and are
//! covered end to end in `tests/tests/nat.rs` and `tests/tests/services.rs`.
//!
//! Limitation (as in `nat_unit.rs`): test runs hand the programs `CHECKSUM_NONE` skbs, so only
//! full checksums are exercised, and `bpf_fib_lookup` routes in the namespace of the thread
//! running the test: each run happens on a thread inside a private namespace wired like a
//! node's uplink, which is deleted afterwards.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use podnet::datapath::services_map::{Frontend, ServicesMap};
use podnet_ebpf::abi::{
    CT_USAGE_PROGRAMS, Counter, CtEntry, CtKey, CtTimeouts, CtUsage, Endpoint, EndpointKey,
    EndpointKey6, NodeConfig, Peer, Peer6, config_flag, endpoint_flag, map_name, peer_flag,
    program_name, proto::IP_MF, reason, svc_flag,
};
use podnet_tests::{
    Scenario,
    fuzz::{self, Ipv4View, Rng},
    packet::{
        Addr, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, csum, eth, ipv4, tcp, tcp_frame, udp,
        udp_frame,
    },
    require_root,
    testrun::{in_uplink_netns, load_classifiers},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = SYN | ACK;

/// Inputs and seed of the suite's run.
const SUITE_ITERATIONS: u64 = 100_000;
const SUITE_SEED: u64 = 0x00c0_ffee_5eed;
/// Inputs between two resets of conntrack (the seeded flows are made again), so that flows the
/// fuzzer closed or moved keep being found live in long runs.
const EPOCH: u64 = 4_096;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// A host outside the cluster on the uplink's subnet, also the default gateway.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// A router that sends ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Another node, and one of its pods (inside the cluster CIDR, outside this node's pod CIDR).
const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const OTHER_NODE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 107, 9);
const POD_CIDR: [u8; 4] = [10, 244, 100, 0];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 100, 1);
/// Delivered with `bpf_redirect_peer`.
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 100, 2);
/// Delivered with `bpf_redirect` (`NO_PEER_REDIRECT`).
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 100, 3);
/// In this node's pod CIDR but no endpoint.
const POD_GONE: Ipv4Addr = Ipv4Addr::new(10, 244, 100, 9);

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const BROADCAST: [u8; 6] = [0xff; 6];

/// NodePorts: TCP and UDP to pod B, hairpin to pod A, a backend on another node, no backend.
const NP_TCP: u16 = 30_080;
const NP_UDP: u16 = 30_053;
const NP_HAIRPIN: u16 = 30_081;
const NP_REMOTE: u16 = 30_090;
const NP_EMPTY: u16 = 30_099;

/// Services: ClusterIP ports to pod B (TCP, UDP), to pod A (hairpin), to another node's pod;
/// a ClusterIP without backends; a LoadBalancer IP with and without a backend; an address of
/// the service CIDR that is no service.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const NOT_A_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Seeded service flows (client ports kept): pod A to the ClusterIP (backend pod B), pod A to
/// the ClusterIP whose backend is on another node, the outside to the LoadBalancer IP.
const SVC_CLIENT: Addr = (POD_A, 42_000);
const SVC_REMOTE_CLIENT: Addr = (POD_A, 43_000);
const LB_CLIENT: Addr = (OUTSIDE, 50_003);

const SNAT_PORT_MIN: u16 = 40_000;
const SNAT_PORT_MAX: u16 = 65_535;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Prog {
    FromPod,
    FromUplink,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Self::FromPod => program_name::FROM_POD,
            Self::FromUplink => program_name::FROM_UPLINK,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::FromPod, Self::FromUplink]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// Ports the datapath chose for the seeded flows. Every seeded source port (and the echo
/// identifier) lies in the SNAT range, so SNAT keeps it and the flows are the same in every run:
/// a replayed input meets the state it failed against.
#[derive(Clone, Copy, Debug, Default)]
struct Flows {
    /// `A:40000 -> OUTSIDE:80` leaves as `NODE:snat_tcp`.
    snat_tcp: u16,
    /// `A:45353 -> OUTSIDE:53` leaves as `NODE:snat_udp`.
    snat_udp: u16,
    /// `A` echo id 0xb000 to `OUTSIDE` leaves with id `snat_echo`.
    snat_echo: u16,
    /// `A:41000 -> NODE:NP_HAIRPIN` reaches `A:80` as `NODE:hairpin`.
    hairpin: u16,
    /// `OUTSIDE:50002 -> NODE:NP_REMOTE` goes to `OTHER_NODE_POD:80` as `NODE:remote`.
    remote: u16,
}

/// DNAT flows with a local backend (ports kept): TCP and UDP clients.
const DNAT_TCP_CLIENT: Addr = (OUTSIDE, 50_000);
const DNAT_UDP_CLIENT: Addr = (OUTSIDE, 50_001);
const REMOTE_CLIENT: Addr = (OUTSIDE, 50_002);
const SNAT_TCP: Addr = (POD_A, 40_000);
const SNAT_UDP: Addr = (POD_A, 45_353);
const SNAT_ECHO_ID: u16 = 0xb000;
const HAIRPIN_CLIENT: Addr = (POD_A, 41_000);

/// Runs `test` in a namespace wired like a node's uplink: neighbours for the outside host and
/// the other node, and a default route via the outside host (so any destination is routable
/// and SNAT runs for it).
fn in_node_netns(test: impl FnOnce() + Send) {
    in_uplink_netns(
        "fuzz",
        UPLINK_MAC,
        NODE_IP,
        &[(OUTSIDE, NEXT_HOP_MAC), (OTHER_NODE, OTHER_NODE_MAC)],
        &format!(
            "ip route add default via {OUTSIDE} dev up0 \
             && sysctl -qw net.ipv6.conf.all.forwarding=1 \
             && ip -6 addr add {NODE6_TEXT}/64 dev up0 nodad \
             && ip -6 neigh replace {} lladdr {} dev up0 nud permanent \
             && ip -6 neigh replace {OUTSIDE6_NEXT_HOP} lladdr {} dev up0 nud permanent \
             && ip -6 route add default via {OUTSIDE6_NEXT_HOP} dev up0",
            std::net::Ipv6Addr::from(OTHER_NODE6),
            podnet_tests::testrun::mac_str(OTHER_NODE_MAC),
            podnet_tests::testrun::mac_str(NEXT_HOP_MAC)
        ),
        test,
    );
}

struct Harness {
    ebpf: Ebpf,
    services: ServicesMap,
}

/// What the kernel did with one input.
enum Ran {
    /// `BPF_PROG_TEST_RUN` refused the frame ([`kernel_refuses`]).
    Refused,
    Verdict(u32, Vec<u8>),
}

impl Harness {
    /// A node in native routing mode, or (`overlay`) one whose other nodes are reached through
    /// a tunnel device (the loopback stands in for it: a test run redirects nowhere).
    fn new(overlay: bool) -> Self {
        let mut ebpf = load_classifiers();
        // The skb of a test run comes in on the namespace's loopback: the pods "live" there,
        // so anti-spoofing accepts their own packets and drops forged ones.
        let lo = podnet::sys::link::ifindex("lo").expect("loopback ifindex");
        let mut config: Array<_, NodeConfig> =
            Array::try_from(ebpf.map_mut(map_name::CONFIG).expect("CONFIG")).expect("array");
        config
            .set(
                0,
                NodeConfig {
                    flags: config_flag::READY | config_flag::ANTI_SPOOF,
                    node_ip: NODE_IP.octets(),
                    gateway_ip: GATEWAY.octets(),
                    pod_cidr: POD_CIDR,
                    pod_prefix_len: 24,
                    cluster_cidr: [10, 244, 0, 0],
                    cluster_prefix_len: 16,
                    gateway_mac: GW_MAC,
                    snat_port_min: SNAT_PORT_MIN,
                    snat_port_max: SNAT_PORT_MAX,
                    ct_limit: 1 << 17,
                    ct_timeouts: CtTimeouts::DEFAULT,
                    // Refusals from the uplink go back out of the device the skb came in on.
                    uplink_ifindex: lo,
                    tunnel_ifindex: if overlay { lo } else { 0 },
                    service_cidr: [10, 96, 0, 0],
                    service_prefix_len: 12,
                    // IPv6 masquerade on: pods' IPv6 to the outside is SNATed to NODE6.
                    node_ip6: podnet_ebpf::abi::addr6_from_bytes(NODE6),
                    pod_cidr6: podnet_ebpf::abi::addr6_from_bytes(POD_CIDR6),
                    pod_prefix_len6: 64,
                    cluster_cidr6: podnet_ebpf::abi::addr6_from_bytes(POD_CIDR6),
                    cluster_prefix_len6: 48,
                    ct6_limit: 1 << 17,
                    ..NodeConfig::default()
                },
                0,
            )
            .expect("config");
        let mut endpoints: HashMap<_, EndpointKey, Endpoint> =
            HashMap::try_from(ebpf.map_mut(map_name::ENDPOINTS).expect("ENDPOINTS")).expect("hash");
        for (addr, mac, flags) in [
            (POD_A, MAC_A, 0),
            (POD_B, MAC_B, endpoint_flag::NO_PEER_REDIRECT),
        ] {
            endpoints
                .insert(
                    EndpointKey {
                        addr: addr.octets(),
                    },
                    Endpoint {
                        ifindex: lo,
                        flags,
                        mac,
                        ..Endpoint::default()
                    },
                    0,
                )
                .expect("endpoint");
        }
        let mut endpoints6: HashMap<_, EndpointKey6, Endpoint> =
            HashMap::try_from(ebpf.map_mut(map_name::ENDPOINTS6).expect("ENDPOINTS6"))
                .expect("hash");
        for (addr, mac, flags) in [
            (POD_A6, MAC_A, 0),
            (POD_B6, MAC_B, endpoint_flag::NO_PEER_REDIRECT),
        ] {
            endpoints6
                .insert(
                    EndpointKey6 { addr },
                    Endpoint {
                        ifindex: lo,
                        flags,
                        mac,
                        ..Endpoint::default()
                    },
                    0,
                )
                .expect("endpoint6");
        }
        let mut peers: LpmTrie<_, [u8; 4], Peer> =
            LpmTrie::try_from(ebpf.map_mut(map_name::PEERS).expect("PEERS")).expect("lpm");
        for (prefix, addr, flags) in [
            (24, [10, 244, 107, 0], 0),
            (32, OTHER_NODE.octets(), peer_flag::NODE_IP),
        ] {
            peers
                .insert(
                    &Key::new(prefix, addr),
                    Peer {
                        node_ip: OTHER_NODE.octets(),
                        flags,
                    },
                    0,
                )
                .expect("peer");
        }
        // The other node's IPv6 pod CIDR and address; in overlay mode over the IPv6 underlay.
        let mut peers6: LpmTrie<_, [u8; 16], Peer6> =
            LpmTrie::try_from(ebpf.map_mut(map_name::PEERS6).expect("PEERS6")).expect("lpm");
        let underlay = if overlay { peer_flag::UNDERLAY6 } else { 0 };
        for (prefix, addr, flags) in [
            (64, REMOTE6_CIDR, underlay),
            (128, OTHER_NODE6, underlay | peer_flag::NODE_IP),
        ] {
            peers6
                .insert(
                    &Key::new(prefix, addr),
                    Peer6 {
                        node_ip6: OTHER_NODE6,
                        node_ip: OTHER_NODE.octets(),
                        flags,
                    },
                    0,
                )
                .expect("peer6");
        }
        let services = podnet_tests::testrun::services_map(&mut ebpf);
        let mut h = Self { ebpf, services };
        h.service(NP_TCP, TCP, &[(POD_B, 80)]);
        h.service(NP_UDP, UDP, &[(POD_B, 53)]);
        h.service(NP_HAIRPIN, TCP, &[(POD_A, 80)]);
        h.service(NP_REMOTE, TCP, &[(OTHER_NODE_POD, 80)]);
        h.service(NP_EMPTY, TCP, &[]);
        let cluster_ip = svc_flag::CLUSTER_IP;
        for (addr, port, proto, backends, flags) in [
            (VIP, 80, TCP, &[(POD_B, 80)][..], cluster_ip),
            (VIP, 53, UDP, &[(POD_B, 53)][..], cluster_ip),
            (VIP, 81, TCP, &[(POD_A, 80)][..], cluster_ip),
            (VIP, 82, TCP, &[(OTHER_NODE_POD, 80)][..], cluster_ip),
            (EMPTY_VIP, 80, TCP, &[][..], cluster_ip),
            (EMPTY_VIP, 53, UDP, &[][..], cluster_ip),
            (LB_IP, 80, TCP, &[(POD_B, 80)][..], svc_flag::LOAD_BALANCER),
            (LB_IP, 81, TCP, &[][..], svc_flag::LOAD_BALANCER),
        ] {
            let spec = podnet_tests::testrun::service_spec(
                Frontend {
                    addr: addr.into(),
                    port,
                    proto,
                },
                backends,
                flags,
            );
            h.services.write(&spec).expect("service");
        }
        h
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

    fn run(&self, prog: Prog, frame: &[u8]) -> Ran {
        let classifier: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut out = vec![0u8; frame.len() + 256];
        let result = classifier.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        });
        match result {
            Ok(result) => {
                out.truncate(usize::try_from(result.data_size_out).expect("fits"));
                Ran::Verdict(result.return_value, out)
            }
            Err(_) if kernel_refuses(frame) => Ran::Refused,
            Err(e) => panic!(
                "test run of {} failed: {e:?}: {}",
                prog.name(),
                fuzz::hex(frame)
            ),
        }
    }

    /// Runs a seeding packet, which must be translated and redirected; returns it as it left.
    fn seed(&self, prog: Prog, frame: &[u8], what: &str) -> Vec<u8> {
        match self.run(prog, frame) {
            Ran::Verdict(TC_ACT_REDIRECT, out) => out,
            Ran::Verdict(verdict, _) => panic!("seeding {what}: verdict {verdict}"),
            Ran::Refused => panic!("seeding {what}: refused"),
        }
    }

    /// Empties conntrack and its usage counters, then makes the seeded flows (and answers the
    /// TCP ones, so they are established).
    fn reseed(&mut self) -> Flows {
        let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_name::CONNTRACK).expect("CONNTRACK"))
                .expect("hash");
        let keys: Vec<CtKey> = ct.keys().map(|k| k.expect("conntrack key")).collect();
        for key in keys {
            // An entry the LRU evicted meanwhile is already gone, which is all we want.
            let _ = ct.remove(&key);
        }
        let mut usage: Array<&mut MapData, CtUsage> =
            Array::try_from(self.ebpf.map_mut(map_name::CT_USAGE).expect("CT_USAGE"))
                .expect("array");
        usage
            .set(CT_USAGE_PROGRAMS, CtUsage::default(), 0)
            .expect("usage");

        let src_port = |frame: &[u8]| u16_at(frame, ETH_HLEN + 20);
        let out = self.seed(
            Prog::FromPod,
            &tcp_frame(GW_MAC, MAC_A, SNAT_TCP, (OUTSIDE, 80), SYN, b""),
            "SNAT TCP",
        );
        let snat_tcp = src_port(&out);
        let out = self.seed(
            Prog::FromPod,
            &udp_frame(GW_MAC, MAC_A, SNAT_UDP, (OUTSIDE, 53), b"query", false),
            "SNAT UDP",
        );
        let snat_udp = src_port(&out);
        let out = self.seed(
            Prog::FromPod,
            &echo_frame(GW_MAC, MAC_A, POD_A, OUTSIDE, true, SNAT_ECHO_ID),
            "SNAT echo",
        );
        let snat_echo = u16_at(&out, ETH_HLEN + 20 + 4);
        self.seed(
            Prog::FromUplink,
            &tcp_frame(
                UPLINK_MAC,
                NEXT_HOP_MAC,
                DNAT_TCP_CLIENT,
                (NODE_IP, NP_TCP),
                SYN,
                b"",
            ),
            "NodePort TCP",
        );
        self.seed(
            Prog::FromUplink,
            &udp_frame(
                UPLINK_MAC,
                NEXT_HOP_MAC,
                DNAT_UDP_CLIENT,
                (NODE_IP, NP_UDP),
                b"q",
                false,
            ),
            "NodePort UDP",
        );
        // First fragments of datagrams of the SNAT and NodePort UDP flows, with the IP id every
        // frame built here carries: the corpus's later fragments of those flows then have ports
        // to follow (the fragment map), and the others are out of order.
        for (prog, frame, what) in [
            (
                Prog::FromPod,
                udp_frame(GW_MAC, MAC_A, SNAT_UDP, (OUTSIDE, 53), b"query", false),
                "SNAT UDP first fragment",
            ),
            (
                Prog::FromUplink,
                udp_frame(
                    UPLINK_MAC,
                    NEXT_HOP_MAC,
                    DNAT_UDP_CLIENT,
                    (NODE_IP, NP_UDP),
                    b"q",
                    false,
                ),
                "NodePort UDP first fragment",
            ),
        ] {
            let mut first = frame;
            first[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&IP_MF.to_be_bytes());
            fuzz::fix_checksums(&mut first);
            self.seed(prog, &first, what);
        }
        let out = self.seed(
            Prog::FromPod,
            &tcp_frame(
                GW_MAC,
                MAC_A,
                HAIRPIN_CLIENT,
                (NODE_IP, NP_HAIRPIN),
                SYN,
                b"",
            ),
            "hairpin",
        );
        let hairpin = src_port(&out);
        let out = self.seed(
            Prog::FromUplink,
            &tcp_frame(
                UPLINK_MAC,
                NEXT_HOP_MAC,
                REMOTE_CLIENT,
                (NODE_IP, NP_REMOTE),
                SYN,
                b"",
            ),
            "NodePort to another node",
        );
        let remote = src_port(&out);
        let flows = Flows {
            snat_tcp,
            snat_udp,
            snat_echo,
            hairpin,
            remote,
        };
        assert_eq!(
            (snat_tcp, snat_udp, snat_echo, hairpin, remote),
            (
                SNAT_TCP.1,
                SNAT_UDP.1,
                SNAT_ECHO_ID,
                HAIRPIN_CLIENT.1,
                REMOTE_CLIENT.1
            ),
            "SNAT keeps a free source port inside its range, so seeded flows are reproducible"
        );
        // The replies that establish the TCP flows.
        self.seed(
            Prog::FromUplink,
            &tcp_frame(
                UPLINK_MAC,
                NEXT_HOP_MAC,
                (OUTSIDE, 80),
                (NODE_IP, snat_tcp),
                SYN_ACK,
                b"",
            ),
            "SNAT TCP reply",
        );
        self.seed(
            Prog::FromPod,
            &tcp_frame(GW_MAC, MAC_B, (POD_B, 80), DNAT_TCP_CLIENT, SYN_ACK, b""),
            "NodePort TCP reply",
        );
        self.seed(
            Prog::FromPod,
            &tcp_frame(GW_MAC, MAC_A, SVC_CLIENT, (VIP, 80), SYN, b""),
            "ClusterIP TCP",
        );
        self.seed(
            Prog::FromPod,
            &tcp_frame(GW_MAC, MAC_A, SVC_REMOTE_CLIENT, (VIP, 82), SYN, b""),
            "ClusterIP to another node",
        );
        self.seed(
            Prog::FromUplink,
            &tcp_frame(UPLINK_MAC, NEXT_HOP_MAC, LB_CLIENT, (LB_IP, 80), SYN, b""),
            "LoadBalancer IP",
        );
        flows
    }

    /// Packets counted per reason so far (all CPUs).
    fn counted(&self) -> Vec<u64> {
        let stats: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(map_name::STATS).expect("STATS")).expect("percpu");
        (0..reason::COUNT)
            .map(|why| {
                stats
                    .get(&why, 0)
                    .expect("slot")
                    .iter()
                    .map(|c| c.packets)
                    .sum()
            })
            .collect()
    }
}

/// Frames `BPF_PROG_TEST_RUN` refuses (`EINVAL`) before any program runs: shorter than an
/// Ethernet header, or an IPv4 (IPv6) EtherType with less than a fixed IPv4 (IPv6) header
/// after it (seen on kernel 6.18). A real interface would not deliver these either.
fn kernel_refuses(frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    let l3 = frame.len() - ETH_HLEN;
    match u16_at(frame, 12) {
        ETH_P_IP => l3 < 20,
        ETH_P_IPV6 => l3 < 40,
        _ => false,
    }
}

fn u16_at(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

/// An ICMP message of `icmp_type`/`code` with `rest` (the second header word) and `body`.
fn icmp(icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let check = csum(&m, 0);
    m[2..4].copy_from_slice(&check.to_be_bytes());
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
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&7u16.to_be_bytes());
    let m = icmp(if request { 8 } else { 0 }, 0, rest, b"podnet echo");
    eth(dst_mac, src_mac, ETH_P_IP, &ipv4(src, dst, ICMP, &[], &m))
}

/// An ICMP error from `src` to `dst` quoting the first `quote_len` bytes of `quoted` (an IPv4
/// packet).
fn icmp_error_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (icmp_type, code): (u8, u8),
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &quoted[..quote_len.min(quoted.len())];
    let m = icmp(icmp_type, code, [0, 0, 0x05, 0xdc], quote);
    eth(macs.0, macs.1, ETH_P_IP, &ipv4(src, dst, ICMP, &[], &m))
}

/// The IPv4 packet of a TCP segment, as an ICMP error would quote it.
fn tcp_packet(src: Addr, dst: Addr) -> Vec<u8> {
    ipv4(
        src.0,
        dst.0,
        TCP,
        &[],
        &tcp(src.0, dst.0, src.1, dst.1, SYN, b""),
    )
}

fn udp_packet(src: Addr, dst: Addr) -> Vec<u8> {
    ipv4(
        src.0,
        dst.0,
        UDP,
        &[],
        &udp(src.0, dst.0, src.1, dst.1, b"query", false),
    )
}

fn echo_packet(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    echo_frame([0; 6], [0; 6], src, dst, true, id)[ETH_HLEN..].to_vec()
}

/// TCP flags: mostly the usual ones, sometimes any combination.
fn flags(rng: &mut Rng) -> u8 {
    if rng.chance(25) {
        rng.byte()
    } else {
        *rng.pick(&[SYN, SYN_ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, 0])
    }
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = *rng.pick(&[0, 0, 1, 5, 32, 200]);
    (0..len).map(|_| rng.byte()).collect()
}

/// A random address: a pod, the node, the outside, another node's pod, or anything.
fn any_addr(rng: &mut Rng) -> Ipv4Addr {
    if rng.chance(20) {
        Ipv4Addr::from(u32::try_from(rng.next_u64() >> 32).expect("fits"))
    } else {
        *rng.pick(&[
            POD_A,
            POD_B,
            POD_GONE,
            NODE_IP,
            OUTSIDE,
            OTHER_NODE,
            OTHER_NODE_POD,
            GATEWAY,
            Ipv4Addr::new(203, 0, 113, 7),
            Ipv4Addr::BROADCAST,
        ])
    }
}

/// One corpus packet built around the seeded flows, before structural variation.
fn template(rng: &mut Rng, f: &Flows) -> (Prog, Vec<u8>) {
    let pod = (GW_MAC, MAC_A);
    let pod_b = (GW_MAC, MAC_B);
    let up = (UPLINK_MAC, NEXT_HOP_MAC);
    let data = payload(rng);
    let sport = rng.u16();
    let zero_udp = rng.chance(30);
    let quote_len = *rng.pick(&[28, 28, 28, 24, 20, 12, 48, 200]);
    let error = *rng.pick(&[(3, 3), (3, 4), (11, 0), (12, 0), (3, 1)]);
    match rng.below(38) {
        // from_pod: IPv6 (pod to pod, Neighbor Discovery, spoofing, extension headers).
        36 | 37 => ipv6_template(rng, &data),
        // from_pod: new SNAT flows, the seeded ones going on.
        0 => {
            let any_port = rng.u16();
            let dst = (any_addr(rng), *rng.pick(&[80, 443, 53, any_port]));
            let fl = if rng.chance(70) { SYN } else { flags(rng) };
            let src = (POD_A, sport);
            (Prog::FromPod, tcp_frame(pod.0, pod.1, src, dst, fl, &data))
        }
        1 => (
            Prog::FromPod,
            tcp_frame(pod.0, pod.1, SNAT_TCP, (OUTSIDE, 80), flags(rng), &data),
        ),
        2 => {
            let dst = (any_addr(rng), 53);
            let src = (POD_A, sport);
            (
                Prog::FromPod,
                udp_frame(pod.0, pod.1, src, dst, &data, zero_udp),
            )
        }
        3 => (
            Prog::FromPod,
            udp_frame(pod.0, pod.1, SNAT_UDP, (OUTSIDE, 53), &data, zero_udp),
        ),
        4 => {
            let request = rng.chance(80);
            let id = if rng.chance(50) { SNAT_ECHO_ID } else { sport };
            let dst = any_addr(rng);
            (
                Prog::FromPod,
                echo_frame(pod.0, pod.1, POD_A, dst, request, id),
            )
        }
        // from_pod: NodePort replies, hairpin, NodePorts from pods.
        5 => (
            Prog::FromPod,
            tcp_frame(
                pod_b.0,
                pod_b.1,
                (POD_B, 80),
                DNAT_TCP_CLIENT,
                flags(rng),
                &data,
            ),
        ),
        6 => (
            Prog::FromPod,
            udp_frame(
                pod_b.0,
                pod_b.1,
                (POD_B, 53),
                DNAT_UDP_CLIENT,
                &data,
                zero_udp,
            ),
        ),
        7 => (
            Prog::FromPod,
            tcp_frame(
                pod.0,
                pod.1,
                (POD_A, 80),
                (NODE_IP, f.hairpin),
                flags(rng),
                &data,
            ),
        ),
        8 => {
            let port = *rng.pick(&[NP_TCP, NP_HAIRPIN, NP_REMOTE, NP_EMPTY, 22]);
            let (macs, src) = if rng.chance(50) {
                (pod, POD_A)
            } else {
                (pod_b, POD_B)
            };
            (
                Prog::FromPod,
                tcp_frame(macs.0, macs.1, (src, sport), (NODE_IP, port), SYN, &data),
            )
        }
        9 => (
            Prog::FromPod,
            udp_frame(
                pod_b.0,
                pod_b.1,
                (POD_B, sport),
                (NODE_IP, NP_UDP),
                &data,
                zero_udp,
            ),
        ),
        // from_pod: pod to pod, to another node, ICMP errors from a pod, spoofing.
        10 => (
            Prog::FromPod,
            tcp_frame(pod.0, pod.1, (POD_A, sport), (POD_B, 80), flags(rng), &data),
        ),
        11 => {
            let dst = *rng.pick(&[OTHER_NODE_POD, OTHER_NODE]);
            (
                Prog::FromPod,
                udp_frame(pod.0, pod.1, (POD_A, sport), (dst, 80), &data, zero_udp),
            )
        }
        12 => {
            let quoted = tcp_packet(DNAT_TCP_CLIENT, (POD_B, 80));
            (
                Prog::FromPod,
                icmp_error_frame(pod_b, POD_B, OUTSIDE, error, &quoted, quote_len),
            )
        }
        13 => {
            let src = (any_addr(rng), sport);
            let macs = if rng.chance(50) {
                pod
            } else {
                (GW_MAC, [0x02, 0, 0, 0, 0, 0x66])
            };
            (
                Prog::FromPod,
                tcp_frame(macs.0, macs.1, src, (OUTSIDE, 80), SYN, &data),
            )
        }
        // from_uplink: replies to SNAT flows.
        14 => (
            Prog::FromUplink,
            tcp_frame(
                up.0,
                up.1,
                (OUTSIDE, 80),
                (NODE_IP, f.snat_tcp),
                flags(rng),
                &data,
            ),
        ),
        15 => (
            Prog::FromUplink,
            udp_frame(
                up.0,
                up.1,
                (OUTSIDE, 53),
                (NODE_IP, f.snat_udp),
                &data,
                zero_udp,
            ),
        ),
        16 => (
            Prog::FromUplink,
            echo_frame(up.0, up.1, OUTSIDE, NODE_IP, false, f.snat_echo),
        ),
        // from_uplink: NodePorts, new and going on, and the remote backend's replies.
        17 => {
            let any_port = rng.u16();
            let port = *rng.pick(&[NP_TCP, NP_HAIRPIN, NP_REMOTE, NP_EMPTY, 22, any_port]);
            let fl = if rng.chance(70) { SYN } else { flags(rng) };
            let src = (any_addr(rng), sport);
            (
                Prog::FromUplink,
                tcp_frame(up.0, up.1, src, (NODE_IP, port), fl, &data),
            )
        }
        18 => (
            Prog::FromUplink,
            udp_frame(
                up.0,
                up.1,
                (OUTSIDE, sport),
                (NODE_IP, NP_UDP),
                &data,
                zero_udp,
            ),
        ),
        19 => (
            Prog::FromUplink,
            tcp_frame(
                up.0,
                up.1,
                DNAT_TCP_CLIENT,
                (NODE_IP, NP_TCP),
                flags(rng),
                &data,
            ),
        ),
        20 => (
            Prog::FromUplink,
            tcp_frame(
                up.0,
                up.1,
                (OTHER_NODE_POD, 80),
                (NODE_IP, f.remote),
                flags(rng),
                &data,
            ),
        ),
        // from_uplink: ICMP errors quoting translated flows as they left the node.
        21 => {
            let quoted = tcp_packet((NODE_IP, f.snat_tcp), (OUTSIDE, 80));
            (
                Prog::FromUplink,
                icmp_error_frame(up, ROUTER, NODE_IP, error, &quoted, quote_len),
            )
        }
        22 => {
            let quoted = udp_packet((NODE_IP, f.snat_udp), (OUTSIDE, 53));
            (
                Prog::FromUplink,
                icmp_error_frame(up, ROUTER, NODE_IP, error, &quoted, quote_len),
            )
        }
        23 => {
            let quoted = echo_packet(NODE_IP, OUTSIDE, f.snat_echo);
            (
                Prog::FromUplink,
                icmp_error_frame(up, ROUTER, NODE_IP, error, &quoted, quote_len),
            )
        }
        24 => {
            let quoted = tcp_packet((NODE_IP, NP_TCP), DNAT_TCP_CLIENT);
            (
                Prog::FromUplink,
                icmp_error_frame(up, ROUTER, NODE_IP, error, &quoted, quote_len),
            )
        }
        25 => {
            let quoted = tcp_packet((NODE_IP, f.remote), (OTHER_NODE_POD, 80));
            (
                Prog::FromUplink,
                icmp_error_frame(up, OTHER_NODE, NODE_IP, error, &quoted, quote_len),
            )
        }
        // from_uplink: another node's pod to ours, the node's own traffic.
        26 => {
            let dst = *rng.pick(&[POD_A, POD_B, POD_GONE]);
            (
                Prog::FromUplink,
                tcp_frame(
                    up.0,
                    OTHER_NODE_MAC,
                    (OTHER_NODE_POD, sport),
                    (dst, 80),
                    flags(rng),
                    &data,
                ),
            )
        }
        27 => {
            let dst = (any_addr(rng), rng.u16());
            (
                Prog::FromUplink,
                udp_frame(up.0, up.1, (OUTSIDE, sport), dst, &data, zero_udp),
            )
        }
        // Not IPv4 at all, for either program.
        28 => {
            let prog = *rng.pick(&[Prog::FromPod, Prog::FromUplink]);
            let (ethertype, body) = match rng.below(3) {
                0 => (ETH_P_ARP, arp_body()),
                1 => (ETH_P_IPV6, ipv6_body(&data)),
                _ => (rng.u16(), data.clone()),
            };
            (prog, eth(BROADCAST, MAC_A, ethertype, &body))
        }
        // from_pod: services, new and going on (the refusals of 10.96.0.11 and of unknown
        // ports included), and the service CIDR without a service.
        30 => {
            let dst = *rng.pick(&[
                (VIP, 80),
                (VIP, 81),
                (VIP, 82),
                (VIP, 9999),
                (EMPTY_VIP, 80),
                (NOT_A_SERVICE, 80),
                (LB_IP, 80),
            ]);
            let fl = if rng.chance(70) { SYN } else { flags(rng) };
            let (macs, src) = if rng.chance(70) {
                (pod, POD_A)
            } else {
                (pod_b, POD_B)
            };
            (
                Prog::FromPod,
                tcp_frame(macs.0, macs.1, (src, sport), dst, fl, &data),
            )
        }
        31 => {
            let dst = *rng.pick(&[(VIP, 53), (EMPTY_VIP, 53), (VIP, 5353), (NOT_A_SERVICE, 53)]);
            (
                Prog::FromPod,
                udp_frame(pod.0, pod.1, (POD_A, sport), dst, &data, zero_udp),
            )
        }
        32 => (
            Prog::FromPod,
            tcp_frame(pod.0, pod.1, SVC_CLIENT, (VIP, 80), flags(rng), &data),
        ),
        // from_pod: the backend's reply; from_uplink: the other node's backend's reply.
        33 => (
            Prog::FromPod,
            tcp_frame(pod_b.0, pod_b.1, (POD_B, 80), SVC_CLIENT, flags(rng), &data),
        ),
        34 => (
            Prog::FromUplink,
            tcp_frame(
                up.0,
                OTHER_NODE_MAC,
                (OTHER_NODE_POD, 80),
                SVC_REMOTE_CLIENT,
                flags(rng),
                &data,
            ),
        ),
        // from_uplink: the LoadBalancer IP, new and going on, without backends, a ClusterIP.
        35 => {
            let (src, dst) = *rng.pick(&[
                (LB_CLIENT, (LB_IP, 80)),
                ((OUTSIDE, sport), (LB_IP, 80)),
                ((OUTSIDE, sport), (LB_IP, 81)),
                ((OUTSIDE, sport), (VIP, 80)),
            ]);
            let fl = if rng.chance(60) { SYN } else { flags(rng) };
            if rng.chance(25) {
                let dst = (dst.0, 53);
                (
                    Prog::FromUplink,
                    udp_frame(up.0, up.1, src, dst, &data, zero_udp),
                )
            } else {
                (Prog::FromUplink, tcp_frame(up.0, up.1, src, dst, fl, &data))
            }
        }
        // Broadcast IPv4 from a pod, and to the node from the uplink.
        _ => {
            let prog = *rng.pick(&[Prog::FromPod, Prog::FromUplink]);
            let dst = (Ipv4Addr::BROADCAST, 67);
            (
                prog,
                udp_frame(BROADCAST, MAC_A, (POD_A, 68), dst, &data, zero_udp),
            )
        }
    }
}

fn arp_body() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&MAC_A);
    a.extend_from_slice(&POD_A.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&GATEWAY.octets());
    a
}

fn ipv6_body(data: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(data.len()).expect("fits").to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&[0xfd; 16]);
    p.extend_from_slice(&[0xfe; 16]);
    p.extend_from_slice(data);
    p
}

/// Structural variations of an IPv4 frame: the cases a parser gets wrong.
fn vary(rng: &mut Rng, frame: &mut Vec<u8>) {
    if frame.len() < ETH_HLEN + 20 || u16_at(frame, 12) != ETH_P_IP {
        return;
    }
    let ip = ETH_HLEN;
    match rng.below(12) {
        // IP options (NOPs, a router alert, junk), the header length and total length
        // following.
        0 => {
            let words = 1 + rng.below(10);
            let hlen = usize::from(frame[ip] & 0x0f) * 4;
            let mut options: Vec<u8> = match rng.below(3) {
                0 => vec![1; words * 4],
                1 => {
                    let mut o = vec![0x94, 4, 0, 0];
                    o.resize(words * 4, 0);
                    o
                }
                _ => (0..words * 4).map(|_| rng.byte()).collect(),
            };
            let at = (ip + hlen).min(frame.len());
            let tail = frame.split_off(at);
            frame.append(&mut options);
            frame.extend_from_slice(&tail);
            frame[ip] = 0x40 | u8::try_from((hlen / 4 + words).min(15)).expect("fits");
            let total =
                u16_at(frame, ip + 2).saturating_add(u16::try_from(words * 4).expect("fits"));
            frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        }
        // A fragment: first (MF), middle, last.
        1 => {
            let off = *rng.pick(&[0x2000u16, 0x2001, 0x0001, 0x00b9, 0x4000 | 0x2000]);
            frame[ip + 6..ip + 8].copy_from_slice(&off.to_be_bytes());
        }
        // Truncated anywhere, total length kept (malformed) or cut to match.
        2 | 3 => {
            let len = rng.below(frame.len());
            frame.truncate(len);
            if rng.chance(50) && len >= ip + 20 {
                let total = u16::try_from(len - ip).expect("fits");
                frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
            }
        }
        // The IPv4 total length shorter than the frame: L4 headers cut by the IP length, the
        // rest Ethernet padding.
        4 | 5 => {
            let total = usize::from(u16_at(frame, ip + 2));
            let shorter = u16::try_from(rng.below(total + 1)).expect("fits");
            frame[ip + 2..ip + 4].copy_from_slice(&shorter.to_be_bytes());
        }
        // Ethernet padding after the packet.
        6 => {
            let extra = 1 + rng.below(40);
            frame.extend((0..extra).map(|_| rng.byte()));
        }
        // Any IHL, any version.
        7 => frame[ip] = (frame[ip] & 0xf0) | u8::try_from(rng.below(16)).expect("fits"),
        8 => frame[ip] = (frame[ip] & 0x0f) | (u8::try_from(rng.below(16)).expect("fits") << 4),
        // A VLAN tag (the programs see EtherType 0x8100).
        9 => {
            let tag = [0x81, 0x00, 0x00, 0x64];
            frame.splice(12..12, tag);
        }
        // Another protocol number.
        10 => frame[ip + 9] = *rng.pick(&[0, 2, 4, 41, 47, 50, 132, 255]),
        // Total length longer than the frame.
        _ => {
            let total = u16_at(frame, ip + 2).saturating_add(1 + rng.u16() % 64);
            frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        }
    }
}

/// Input `index` of the run with `seed`.
fn input(seed: u64, index: u64, flows: &Flows) -> (Prog, Vec<u8>) {
    let mut rng = Rng::for_input(seed, index);
    let (prog, mut frame) = template(&mut rng, flows);
    let mut changed = false;
    if rng.chance(45) {
        vary(&mut rng, &mut frame);
        changed = true;
    }
    if rng.chance(35) {
        let count = 1 + rng.below(4);
        fuzz::mutate_bytes(&mut rng, &mut frame, count);
        changed = true;
    }
    if changed && rng.chance(50) {
        fuzz::fix_checksums(&mut frame);
    }
    (prog, frame)
}

/// What one input did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    Passed,
    Dropped,
    /// Redirected with only its MACs changed.
    Forwarded,
    /// Redirected with addresses or ports rewritten; `verified`: every checksum verified, in
    /// and out.
    Rewritten {
        verified: bool,
    },
    /// Answered in place with a refusal (TCP RST, ICMP port unreachable) and sent back.
    Refusal,
}

/// Checks one result against the invariants (module doc); `Err` says which one broke.
fn check(input: &[u8], ran: Ran) -> Result<Outcome, String> {
    let (verdict, out) = match ran {
        Ran::Refused => return Ok(Outcome::Refused),
        Ran::Verdict(verdict, out) => (verdict, out),
    };
    match verdict {
        TC_ACT_OK if out == input => Ok(Outcome::Passed),
        TC_ACT_OK => Err(format!(
            "passed to the kernel (TC_ACT_OK) but modified: {}",
            fuzz::hex(&out)
        )),
        TC_ACT_SHOT => Ok(Outcome::Dropped),
        TC_ACT_REDIRECT
            if input.len() > ETH_HLEN + 24
                && u16_at(input, 12) == ETH_P_IPV6
                && input[ETH_HLEN + 8..ETH_HLEN + 24] != NODE6
                && out.get(ETH_HLEN + 8..ETH_HLEN + 24) == Some(&NODE6[..]) =>
        {
            check_masqueraded6(input, &out)
        }
        TC_ACT_REDIRECT if input.len() > ETH_HLEN && u16_at(input, 12) == ETH_P_IPV6 => {
            check_redirected6(input, &out)
        }
        TC_ACT_REDIRECT => check_redirected(input, &out),
        other => Err(format!("unexpected verdict {other}")),
    }
}

/// A redirected output that is a refusal of `input`: a TCP RST answering a TCP segment that is
/// no RST, or an ICMP port unreachable answering a UDP datagram. `None` when it is neither;
/// otherwise whether it is exactly what a refusal must be: a fresh IPv4 header without options
/// and L4 header whose checksums verify, from the input's destination to its source (ports
/// swapped for TCP), cut to its headers (an ICMP error quoting the input's IPv4 header and 8
/// bytes after it).
fn check_refusal(input: &[u8], out: &[u8]) -> Option<Result<Outcome, String>> {
    let v = fuzz::ipv4_view(input)?;
    let vo = fuzz::ipv4_view(out)?;
    // A first fragment carries the header a refusal answers, like a whole packet.
    let rst = v.proto == TCP
        && vo.proto == TCP
        && !v.later_fragment
        && fuzz::l4_header_inside(&v)
        && input[v.l4_off + 13] & RST == 0
        && out.get(vo.l4_off + 13).is_some_and(|f| f & RST != 0);
    let unreach = v.proto == UDP
        && vo.proto == ICMP
        && out.get(vo.l4_off..vo.l4_off + 2) == Some(&[3, 3][..]);
    // ICMP time exceeded: the input's TTL ran out where podnet routes it.
    let expired = vo.proto == ICMP
        && input[ETH_HLEN + 8] <= 1
        && out.get(vo.l4_off..vo.l4_off + 2) == Some(&[11, 0][..]);
    if expired {
        return Some(check_time_exceeded(input, out, &v, &vo));
    }
    if !rst && !unreach {
        return None;
    }
    let fail = |what: &str| Some(Err(format!("refusal, {what}: {}", fuzz::hex(out))));
    let ip = |f: &[u8], at: usize| f[ETH_HLEN + at..ETH_HLEN + at + 4].to_vec();
    let expected_len = ETH_HLEN + if rst { 40 } else { 56 };
    if out.len() != expected_len || vo.hlen != 20 || vo.total + ETH_HLEN != out.len() {
        return fail(&format!("{} bytes where {expected_len} are due", out.len()));
    }
    if !fuzz::ip_header_ok(out, &vo) || fuzz::l4_ok(out, &vo) != Some(true) {
        return fail("a checksum does not verify");
    }
    if ip(out, 12) != ip(input, 16) || ip(out, 16) != ip(input, 12) {
        return fail("not from the address the client used back to the client");
    }
    if rst {
        let ports_in = (u16_at(input, v.l4_off), u16_at(input, v.l4_off + 2));
        let ports_out = (u16_at(out, vo.l4_off), u16_at(out, vo.l4_off + 2));
        if ports_out != (ports_in.1, ports_in.0) {
            return fail("ports not swapped");
        }
    } else if v.hlen != 20 || out[vo.l4_off + 8..] != input[ETH_HLEN..ETH_HLEN + 28] {
        return fail("the quote is not the refused datagram's headers");
    }
    Some(Ok(Outcome::Refusal))
}

/// An ICMP time exceeded built in place of `input`: to its sender, from the node (whichever
/// of its addresses), quoting its IPv4 header and first 8 bytes, with checksums that verify.
fn check_time_exceeded(
    input: &[u8],
    out: &[u8],
    v: &fuzz::Ipv4View,
    vo: &fuzz::Ipv4View,
) -> Result<Outcome, String> {
    let fail = |what: &str| Err(format!("time exceeded, {what}: {}", fuzz::hex(out)));
    if out.len() != ETH_HLEN + 56 || vo.hlen != 20 || vo.total + ETH_HLEN != out.len() {
        return fail(&format!(
            "{} bytes where {} are due",
            out.len(),
            ETH_HLEN + 56
        ));
    }
    if !fuzz::ip_header_ok(out, vo) || fuzz::l4_ok(out, vo) != Some(true) {
        return fail("a checksum does not verify");
    }
    if out[ETH_HLEN + 16..ETH_HLEN + 20] != input[ETH_HLEN + 12..ETH_HLEN + 16] {
        return fail("not back to the sender");
    }
    if v.hlen != 20 || out[vo.l4_off + 8..] != input[ETH_HLEN..ETH_HLEN + 28] {
        return fail("the quote is not the expired packet's headers");
    }
    Ok(Outcome::Refusal)
}

fn check_redirected(input: &[u8], out: &[u8]) -> Result<Outcome, String> {
    if let Some(refusal) = check_refusal(input, out) {
        return refusal;
    }
    let fail = |what: &str| Err(format!("redirected, {what}: {}", fuzz::hex(out)));
    if out.len() != input.len() {
        return fail(&format!("length {} became {}", input.len(), out.len()));
    }
    let Some(v) = fuzz::ipv4_view(input) else {
        return fail("but the input is not well-formed IPv4");
    };
    let Some(vo) = fuzz::ipv4_view(out) else {
        return fail("but the output is not well-formed IPv4");
    };
    let may = fuzz::rewritable(input, &v);
    // A routed hop takes one off the TTL (and nothing else may touch it).
    let ttl = ETH_HLEN + 8;
    if out[ttl] != input[ttl] && out[ttl] != input[ttl].wrapping_sub(1) {
        return fail(&format!("TTL {} became {}", input[ttl], out[ttl]));
    }
    if let Some(at) = (0..out.len()).find(|&i| out[i] != input[i] && !may[i] && i != ttl) {
        return fail(&format!("byte {at} changed, which NAT does not own"));
    }
    let ip_in = fuzz::ip_header_ok(input, &v);
    let ip_out = fuzz::ip_header_ok(out, &vo);
    if ip_in && !ip_out {
        return fail("the IPv4 header checksum no longer verifies");
    }
    let l4_in = fuzz::l4_ok(input, &v);
    let l4_out = fuzz::l4_ok(out, &vo);
    if l4_in == Some(true) && l4_out != Some(true) {
        return fail("the L4 checksum no longer verifies");
    }
    let q_in = fuzz::quoted_ip_ok(input, &v);
    let q_out = fuzz::quoted_ip_ok(out, &vo);
    if q_in == Some(true) && q_out != Some(true) {
        return fail("the quoted IPv4 header checksum no longer verifies");
    }
    if v.proto == UDP && fuzz::l4_complete(&v) {
        let (c_in, c_out) = (u16_at(input, v.l4_off + 6), u16_at(out, vo.l4_off + 6));
        if (c_in == 0) != (c_out == 0) {
            return fail("a UDP checksum changed between none (0) and present");
        }
    }
    // Forwarded untranslated: the same but for a routed hop's TTL and header checksum.
    let hop_fields = [ETH_HLEN + 8, ETH_HLEN + 10, ETH_HLEN + 11];
    if (12..out.len()).all(|i| out[i] == input[i] || hop_fields.contains(&i)) {
        return Ok(Outcome::Forwarded);
    }
    if matches!(v.proto, TCP | UDP | ICMP) && !fuzz::l4_header_inside(&v) {
        return fail("rewritten, but its L4 header is not inside the IPv4 total length");
    }
    let verified = ip_in && l4_in != Some(false) && q_in != Some(false);
    Ok(Outcome::Rewritten { verified })
}

/// The run's configuration: the suite's fixed seed and size, or the environment's.
fn run_config() -> (u64, u64) {
    let env = |name: &str, default: u64| {
        std::env::var(name).map_or(default, |v| {
            let v = v.trim();
            v.strip_prefix("0x")
                .map_or_else(|| v.parse(), |hex| u64::from_str_radix(hex, 16))
                .unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        })
    };
    (
        env(fuzz::SEED_ENV, SUITE_SEED),
        env(fuzz::ITERATIONS_ENV, SUITE_ITERATIONS),
    )
}

/// Replays one input given as `<program>:<hex>` against freshly seeded maps.
fn replay(spec: &str) {
    let (name, hex) = spec
        .split_once(':')
        .unwrap_or_else(|| panic!("{}: expected <program>:<hex>", fuzz::REPLAY_ENV));
    let prog = Prog::parse(name).unwrap_or_else(|| panic!("unknown program {name}"));
    let frame = fuzz::unhex(hex).expect("hex frame");
    in_node_netns(|| {
        let mut h = Harness::new(std::env::var_os(OVERLAY_ENV).is_some());
        h.reseed();
        let ran = h.run(prog, &frame);
        if let Ran::Verdict(verdict, out) = &ran {
            eprintln!("verdict {verdict}\n in: {hex}\nout: {}", fuzz::hex(out));
        }
        if let Err(broken) = check(&frame, ran) {
            panic!("replayed input breaks an invariant: {broken}");
        }
    });
}

/// Every reason the corpus must reach, or the fuzzer is not testing what it claims to.
const MUST_REACH: [u32; 26] = [
    reason::FORWARD_REMOTE_NODE6,
    reason::FORWARD_UPLINK_TO_POD6,
    reason::FORWARD_LOCAL6,
    reason::DROP_ND_SPOOFED,
    reason::DROP_ROUTER_ADVERT,
    reason::FORWARD_LOCAL_PEER,
    reason::FORWARD_LOCAL_REDIRECT,
    reason::PASS_NOT_IPV4,
    reason::PASS_NOT_LOCAL,
    reason::PASS_MALFORMED,
    reason::PASS_BROADCAST,
    reason::SNAT,
    reason::SNAT_REPLY,
    reason::DNAT,
    reason::DNAT_REPLY,
    reason::ICMP_ERROR_TRANSLATED,
    reason::PASS_NOT_NAT,
    reason::PASS_FRAGMENT,
    reason::DROP_FRAG_OUT_OF_ORDER,
    reason::FORWARD_REMOTE_NODE,
    reason::FORWARD_UPLINK_TO_POD,
    reason::DROP_SPOOFED,
    reason::SERVICE_DNAT,
    reason::REJECT_NO_BACKEND,
    reason::REJECT_UNKNOWN_PORT,
    reason::PASS_SERVICE_CIDR,
];

/// Set (to anything) to replay an input on an overlay-mode node.
const OVERLAY_ENV: &str = "PODNET_FUZZ_OVERLAY";

#[test]
fn fuzzed_frames_keep_the_datapath_invariants() {
    require_root!();
    if let Ok(spec) = std::env::var(fuzz::REPLAY_ENV) {
        replay(&spec);
        return;
    }
    fuzz_node(false);
}

/// The same corpus on a node in overlay mode: packets for other nodes' pods (and the node's
/// own tunnel traffic) take the tunnel path.
#[test]
fn fuzzed_frames_keep_the_datapath_invariants_in_overlay_mode() {
    require_root!();
    if std::env::var_os(fuzz::REPLAY_ENV).is_some() {
        return;
    }
    fuzz_node(true);
}

fn fuzz_node(overlay: bool) {
    let (seed, iterations) = run_config();
    let mode = if overlay { "overlay" } else { "native routing" };
    let mut s = Scenario::new(format!(
        "fuzzed frames (truncated, options, fragments, bad IHL, VLAN, IPv6, flags, ICMP quotes, \
         random mutations) through from_pod and from_uplink keep the datapath's invariants \
         ({mode})"
    ));
    s.number("seed", format!("{seed:#x}"));
    in_node_netns(|| {
        let started = Instant::now();
        let mut h = Harness::new(overlay);
        let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
        let mut per_prog: BTreeMap<(Prog, u32), u64> = BTreeMap::new();
        let mut reasons = vec![0u64; reason::COUNT as usize];
        let mut ran = 0u64;
        let mut flows = Flows::default();
        let mut before = Vec::new();
        for index in 0..iterations {
            if index % EPOCH == 0 {
                if index > 0 {
                    add_delta(&mut reasons, &before, &h.counted());
                }
                flows = h.reseed();
                before = h.counted();
            }
            let (prog, frame) = input(seed, index, &flows);
            let result = h.run(prog, &frame);
            if let Ran::Verdict(verdict, _) = &result {
                *per_prog.entry((prog, *verdict)).or_default() += 1;
                ran += 1;
            }
            let outcome = check(&frame, result).unwrap_or_else(|broken| {
                panic!(
                    "fuzz input {index} of seed {seed:#x} through {}: {broken}\n\
                     input: {}\nreplay: {}={}:{}",
                    prog.name(),
                    fuzz::hex(&frame),
                    fuzz::REPLAY_ENV,
                    prog.name(),
                    fuzz::hex(&frame),
                )
            });
            let key = match outcome {
                Outcome::Refused => "refused_by_kernel",
                Outcome::Passed => "passed_unchanged",
                Outcome::Dropped => "dropped",
                Outcome::Forwarded => "forwarded_macs_only",
                Outcome::Rewritten { verified: true } => "rewritten_checksums_verified",
                Outcome::Rewritten { verified: false } => "rewritten_bad_checksum_in",
                Outcome::Refusal => "refused_with_rst_or_icmp",
            };
            *outcomes.entry(key).or_default() += 1;
        }
        add_delta(&mut reasons, &before, &h.counted());
        let elapsed = started.elapsed();

        let counted: u64 = reasons.iter().sum();
        assert_eq!(
            counted, ran,
            "every packet counted under exactly one reason"
        );
        let missing: Vec<&str> = MUST_REACH
            .iter()
            .filter(|why| reasons[**why as usize] == 0)
            .map(|why| reason::NAMES[*why as usize])
            .collect();
        if iterations >= SUITE_ITERATIONS {
            assert!(
                missing.is_empty(),
                "the corpus never reached {missing:?}: {reasons:?}"
            );
            let rewritten = outcomes.get("rewritten_checksums_verified").copied();
            assert!(
                rewritten.unwrap_or(0) * 10 >= iterations,
                "fewer than 10% of the inputs were rewritten: {outcomes:?}"
            );
        }

        s.number("inputs", iterations);
        for (key, n) in &outcomes {
            s.number(key, n);
        }
        for ((prog, verdict), n) in &per_prog {
            let verdict = match *verdict {
                TC_ACT_OK => "ok",
                TC_ACT_SHOT => "shot",
                TC_ACT_REDIRECT => "redirect",
                _ => "other",
            };
            s.number(&format!("{}_{verdict}", prog.name()), n);
        }
        let by_reason: Vec<String> = reasons
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(why, n)| format!("{}:{n}", reason::NAMES[why]))
            .collect();
        s.number("reasons", by_reason.join(" "));
        s.number("seconds", format!("{:.1}", elapsed.as_secs_f64()));
        eprintln!(
            "fuzz ({mode}): {iterations} inputs, seed {seed:#x}, {:.1} s\n  {outcomes:?}\n  {per_prog:?}\n  {}",
            elapsed.as_secs_f64(),
            by_reason.join(" ")
        );
    });
}

fn add_delta(total: &mut [u64], before: &[u64], after: &[u64]) {
    for ((t, b), a) in total.iter_mut().zip(before).zip(after) {
        *t += a - b;
    }
}

/// The checks must be able to fail: a rewrite that breaks a checksum, a byte NAT does not own,
/// a modified pass and an unknown verdict are each caught.
#[test]
fn the_fuzz_checks_catch_broken_outputs() {
    let frame = tcp_frame(GW_MAC, MAC_A, SNAT_TCP, (OUTSIDE, 80), SYN, b"data");
    // A correct SNAT rewrite, made here: passes.
    let mut good = frame.clone();
    good[ETH_HLEN + 12..ETH_HLEN + 16].copy_from_slice(&NODE_IP.octets());
    good[ETH_HLEN + 20..ETH_HLEN + 22].copy_from_slice(&41_000u16.to_be_bytes());
    fuzz::fix_checksums(&mut good);
    assert!(matches!(
        check(&frame, Ran::Verdict(TC_ACT_REDIRECT, good.clone())),
        Ok(Outcome::Rewritten { verified: true })
    ));
    // The same with a stale L4 checksum.
    let mut stale = good.clone();
    stale[ETH_HLEN + 36] ^= 1;
    assert!(check(&frame, Ran::Verdict(TC_ACT_REDIRECT, stale)).is_err());
    // A routed hop's TTL, one lower, checksums fixed: passes; two lower, or higher: fails.
    let mut hop = good.clone();
    hop[ETH_HLEN + 8] -= 1;
    fuzz::fix_checksums(&mut hop);
    assert!(check(&frame, Ran::Verdict(TC_ACT_REDIRECT, hop)).is_ok());
    for changed in [good[ETH_HLEN + 8] - 2, good[ETH_HLEN + 8] + 1] {
        let mut ttl = good.clone();
        ttl[ETH_HLEN + 8] = changed;
        fuzz::fix_checksums(&mut ttl);
        assert!(check(&frame, Ran::Verdict(TC_ACT_REDIRECT, ttl)).is_err());
    }
    // Passed to the kernel, but modified.
    assert!(check(&frame, Ran::Verdict(TC_ACT_OK, good.clone())).is_err());
    assert!(matches!(
        check(&frame, Ran::Verdict(TC_ACT_OK, frame.clone())),
        Ok(Outcome::Passed)
    ));
    // An unknown verdict.
    assert!(check(&frame, Ran::Verdict(1, frame.clone())).is_err());
    // A port rewritten past a short IPv4 total length.
    let mut short = frame.clone();
    short[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&30u16.to_be_bytes());
    fuzz::fix_checksums(&mut short);
    let mut short_out = short.clone();
    short_out[ETH_HLEN + 20] ^= 0x40;
    assert!(check(&short, Ran::Verdict(TC_ACT_REDIRECT, short_out)).is_err());
    // A redirected frame that is not IPv4.
    let arp = eth(BROADCAST, MAC_A, ETH_P_ARP, &arp_body());
    assert!(check(&arp, Ran::Verdict(TC_ACT_REDIRECT, arp.clone())).is_err());
    // IPv6 from pod A to the other node's pod: into the tunnel one hop less passes; with the
    // hop limit kept, from a link-local source, or with the uplink's MACs swapped, it fails.
    let v6 = |src: [u8; 16], dst: [u8; 16], macs: ([u8; 6], [u8; 6])| {
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, UDP, 64];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        eth(macs.0, macs.1, ETH_P_IPV6, &ip)
    };
    let hop_less = |f: &[u8]| {
        let mut out = f.to_vec();
        out[ETH_HLEN + 7] -= 1;
        out
    };
    let to_remote = v6(POD_A6, REMOTE6, (GW_MAC, MAC_A));
    assert!(
        check(
            &to_remote,
            Ran::Verdict(TC_ACT_REDIRECT, hop_less(&to_remote))
        )
        .is_ok()
    );
    assert!(check(&to_remote, Ran::Verdict(TC_ACT_REDIRECT, to_remote.clone())).is_err());
    let link_local = v6(LINK_LOCAL_A, REMOTE6, (GW_MAC, MAC_A));
    assert!(
        check(
            &link_local,
            Ran::Verdict(TC_ACT_REDIRECT, hop_less(&link_local))
        )
        .is_err()
    );
    let mut swapped = hop_less(&to_remote);
    swapped[0..6].copy_from_slice(&UPLINK_MAC);
    swapped[6..12].copy_from_slice(&OTHER_NODE_MAC);
    assert!(check(&to_remote, Ran::Verdict(TC_ACT_REDIRECT, swapped)).is_err());
    // IPv6 from the other node's pod to pod A: delivered one hop less; from the outside, not.
    let from_remote = v6(REMOTE6, POD_A6, (UPLINK_MAC, OTHER_NODE_MAC));
    let mut delivered = hop_less(&from_remote);
    delivered[0..6].copy_from_slice(&MAC_A);
    delivered[6..12].copy_from_slice(&GW_MAC);
    assert!(
        check(
            &from_remote,
            Ran::Verdict(TC_ACT_REDIRECT, delivered.clone())
        )
        .is_ok()
    );
    let mut from_outside = from_remote.clone();
    from_outside[ETH_HLEN + 8..ETH_HLEN + 24].copy_from_slice(&OUTSIDE6);
    let mut outside_out = delivered;
    outside_out[ETH_HLEN + 8..ETH_HLEN + 24].copy_from_slice(&OUTSIDE6);
    assert!(check(&from_outside, Ran::Verdict(TC_ACT_REDIRECT, outside_out)).is_err());
    // The generator is deterministic per seed and index.
    let flows = Flows::default();
    assert_eq!(input(7, 3, &flows), input(7, 3, &flows));
    assert_ne!(input(7, 3, &flows), input(7, 4, &flows));
    let view: Option<Ipv4View> = fuzz::ipv4_view(&frame);
    assert!(view.is_some_and(|v| fuzz::l4_ok(&frame, &v) == Some(true)));
}

/// IPv6 local pods (the same veth and MACs as [`POD_A`], [`POD_B`]); one without endpoint.
const POD_A6: [u8; 16] = [
    0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 2,
];
const POD_B6: [u8; 16] = [
    0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 3,
];
const POD_GONE6: [u8; 16] = [
    0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 9,
];
const LINK_LOCAL_A: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const OUTSIDE6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The node's IPv6 address on the uplink (what pods' IPv6 is masqueraded to), its next hop to
/// everything else, and the pods' IPv6 CIDR (its first /48 is the cluster's).
const NODE6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const NODE6_TEXT: &str = "fd00:198:18::10";
const OUTSIDE6_NEXT_HOP: &str = "fd00:198:18::1";
const POD_CIDR6: [u8; 16] = [
    0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0,
];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// The node's and the other node's IPv6 addresses, the other node's IPv6 pod CIDR (a /64)
/// and one of its pods.
const NODE_IP6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const OTHER_NODE6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];
const REMOTE6_CIDR: [u8; 16] = [
    0xfd, 0, 0, 0x10, 0x02, 0x44, 0x01, 0x07, 0, 0, 0, 0, 0, 0, 0, 0,
];
const REMOTE6: [u8; 16] = [
    0xfd, 0, 0, 0x10, 0x02, 0x44, 0x01, 0x07, 0, 0, 0, 0, 0, 0, 0, 9,
];
const ICMPV6: u8 = 58;
/// IPv6 extension headers: hop-by-hop, routing, fragment, destination options.
const EXT_HEADERS: [u8; 4] = [0, 43, 44, 60];

/// Whether an IPv6 address belongs to the other node (its pod CIDR or its own address).
fn is_peer6(addr: &[u8]) -> bool {
    addr == OTHER_NODE6 || addr[..8] == REMOTE6_CIDR[..8]
}

/// The local pod MAC of an IPv6 address, if it is one.
fn pod_mac6(addr: &[u8]) -> Option<[u8; 6]> {
    if addr == POD_A6 {
        Some(MAC_A)
    } else if addr == POD_B6 {
        Some(MAC_B)
    } else {
        None
    }
}

/// An IPv6 frame from a pod: to a local pod (on-link or through the gateway's MAC), to one
/// gone, to all nodes, to the outside (masqueraded to the node's IPv6 address); from its own address, a link-local one, `::` or another
/// pod's; UDP, TCP, ICMPv6 echo, and Neighbor Discovery (NS, NA for its own or another
/// address with a matching or foreign link-layer address option, RS, RA, Redirect); behind
/// up to six extension headers; with a wrong payload length or cut short. Also IPv6 between
/// nodes: from a pod to the other node's pod or the other node itself, and from the uplink
/// (the other node's pod or the node itself, or the outside) to a local pod or the node.
fn ipv6_template(rng: &mut Rng, data: &[u8]) -> (Prog, Vec<u8>) {
    let from_uplink = rng.chance(25);
    let (src, smac) = if from_uplink {
        *rng.pick(&[
            (REMOTE6, OTHER_NODE_MAC),
            (REMOTE6, OTHER_NODE_MAC),
            (OTHER_NODE6, OTHER_NODE_MAC),
            (OUTSIDE6, NEXT_HOP_MAC),
            (POD_A6, OTHER_NODE_MAC),
        ])
    } else {
        *rng.pick(&[
            (POD_A6, MAC_A),
            (POD_A6, MAC_A),
            (POD_B6, MAC_B),
            (LINK_LOCAL_A, MAC_A),
            ([0; 16], MAC_A),
            (POD_B6, MAC_A),
            (POD_GONE6, MAC_A),
        ])
    };
    let dst = if from_uplink {
        *rng.pick(&[POD_A6, POD_B6, POD_GONE6, NODE_IP6, REMOTE6, ALL_NODES])
    } else {
        *rng.pick(&[
            POD_B6,
            POD_B6,
            POD_A6,
            POD_GONE6,
            ALL_NODES,
            OUTSIDE6,
            REMOTE6,
            REMOTE6,
            OTHER_NODE6,
        ])
    };
    let dmac = match rng.below(4) {
        0 if from_uplink => UPLINK_MAC,
        0 => GW_MAC,
        1 => ALL_NODES_MAC,
        _ if from_uplink => UPLINK_MAC,
        _ => pod_mac6(&dst).unwrap_or(GW_MAC),
    };
    let hop_limit = *rng.pick(&[0, 1, 2, 64, 255]);
    let (mut next, mut body) = match rng.below(7) {
        0 => (UDP, data.to_vec()),
        1 => (TCP, data.to_vec()),
        2 => (ICMPV6, [&[128, 0, 0, 0, 0, 1, 0, 1][..], data].concat()),
        3 | 4 => {
            let target = *rng.pick(&[src, POD_A6, POD_B6, LINK_LOCAL_A, POD_GONE6]);
            let ll = *rng.pick(&[smac, MAC_B, MAC_A]);
            let mut m = vec![136, 0, 0, 0, *rng.pick(&[0x20, 0x60, 0]), 0, 0, 0];
            m.extend_from_slice(&target);
            if rng.chance(80) {
                m.extend_from_slice(&[2, 1]);
                m.extend_from_slice(&ll);
            }
            (ICMPV6, m)
        }
        5 => {
            let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&dst);
            (ICMPV6, m)
        }
        _ => {
            let ty = *rng.pick(&[133, 134, 137]);
            let mut m = vec![ty, 0, 0, 0, 64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&[1, 1]);
            m.extend_from_slice(&smac);
            (ICMPV6, m)
        }
    };
    if rng.chance(40) {
        for _ in 0..=rng.below(6) {
            let ext = *rng.pick(&EXT_HEADERS);
            let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
            if ext == 44 && rng.chance(50) {
                h[3] = 1;
            }
            if ext != 44 && rng.chance(20) {
                h[1] = 1;
                h.extend_from_slice(&[1, 6, 0, 0, 0, 0, 0, 0]);
            }
            h.extend_from_slice(&body);
            body = h;
            next = ext;
        }
    }
    let mut ip = vec![0x60, 0, 0, 0];
    let mut payload_len = u16::try_from(body.len()).expect("fits");
    if rng.chance(10) {
        payload_len = payload_len.wrapping_add(rng.u16() % 64).wrapping_sub(32);
    }
    ip.extend_from_slice(&payload_len.to_be_bytes());
    ip.extend_from_slice(&[next, hop_limit]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&body);
    let mut frame = eth(dmac, smac, ETH_P_IPV6, &ip);
    if rng.chance(10) {
        let len = rng.below(frame.len());
        frame.truncate(len);
    }
    let prog = if from_uplink {
        Prog::FromUplink
    } else {
        Prog::FromPod
    };
    (prog, frame)
}

/// The ICMPv6 type of an IPv6 frame, following hop-by-hop, routing and destination options
/// headers (independently of the datapath); `None` when the upper layer is not ICMPv6 or not
/// inside the frame.
fn icmp6_type(frame: &[u8]) -> Option<u8> {
    let mut next = frame[ETH_HLEN + 6];
    let mut off = ETH_HLEN + 40;
    loop {
        match next {
            0 | 43 | 60 => {
                next = *frame.get(off)?;
                off += (usize::from(*frame.get(off + 1)?) + 1) * 8;
            }
            ICMPV6 => return frame.get(off).copied(),
            _ => return None,
        }
    }
}

/// A redirected IPv6 frame: well-formed, to a local pod, from its own source (anti-spoofing
/// is on) or a link-local or unspecified one, never Neighbor Discovery nor multicast, the same
/// bytes but for the MACs (the pod's, the gateway's) and, when it was routed (not sent to the
/// pod's MAC), a hop limit one lower, which was above 1.
fn check_redirected6(input: &[u8], out: &[u8]) -> Result<Outcome, String> {
    let fail = |what: &str| Err(format!("IPv6 redirected, {what}: {}", fuzz::hex(out)));
    if out.len() != input.len() {
        return fail(&format!("length {} became {}", input.len(), out.len()));
    }
    if input.len() < ETH_HLEN + 40 || input[ETH_HLEN] >> 4 != 6 {
        return fail("but the input is not IPv6");
    }
    if usize::from(u16_at(input, ETH_HLEN + 4)) + 40 > input.len() - ETH_HLEN {
        return fail("but its payload length runs past the frame");
    }
    if input[0] & 1 != 0 {
        return fail("but it was sent to a group MAC");
    }
    let (src, dst) = (
        &input[ETH_HLEN + 8..ETH_HLEN + 24],
        &input[ETH_HLEN + 24..ETH_HLEN + 40],
    );
    let hop = ETH_HLEN + 7;
    let routable = input[hop] > 1 && input[ETH_HLEN + 6] != 0;
    let own = pod_mac6(src) == Some(input[6..12].try_into().expect("6 bytes"));
    let expected_hop = if is_peer6(dst) {
        // From a pod to the other node: the pod's own address, one hop less, into the tunnel
        // (MACs as they were) or out of the uplink to the other node's MAC.
        if !own {
            return fail(
                "to another node from a source that is not the pod's own (or is :: or link-local)",
            );
        }
        if !routable {
            return fail("to another node with a hop limit of 1 or less, or a hop-by-hop header");
        }
        let tunnel = out[0..12] == input[0..12];
        let native = out[0..6] == OTHER_NODE_MAC && out[6..12] == UPLINK_MAC;
        if !tunnel && !native {
            return fail("to another node with MACs of neither the tunnel nor the way out");
        }
        input[hop] - 1
    } else {
        let Some(mac) = pod_mac6(dst) else {
            return fail("to no local pod");
        };
        if out[0..6] != mac || out[6..12] != GW_MAC {
            return fail("with the wrong MACs");
        }
        if is_peer6(src) {
            // From the other node: routed, one hop less.
            if !routable {
                return fail(
                    "from another node with a hop limit of 1 or less, or a hop-by-hop header",
                );
            }
            input[hop] - 1
        } else {
            if !own && src[0..2] != [0xfe, 0x80] && src != [0; 16] {
                return fail("from a source that is not the pod's own");
            }
            if icmp6_type(input).is_some_and(|t| (133..=137).contains(&t)) {
                return fail("but it is Neighbor Discovery, the kernel's");
            }
            if input[0..6] != mac {
                if !routable {
                    return fail("routed with a hop limit of 1 or less, or a hop-by-hop header");
                }
                input[hop] - 1
            } else {
                input[hop]
            }
        }
    };
    if out[hop] != expected_hop {
        return fail(&format!("hop limit {} became {}", input[hop], out[hop]));
    }
    if let Some(at) = (12..out.len()).find(|&i| i != hop && out[i] != input[i]) {
        return fail(&format!("byte {at} changed"));
    }
    Ok(Outcome::Forwarded)
}

/// The upper layer of an IPv6 frame with no extension headers: its protocol and bytes (inside
/// the payload length); `None` otherwise.
fn upper6(frame: &[u8]) -> Option<(u8, &[u8])> {
    let len = usize::from(u16_at(frame, ETH_HLEN + 4));
    let next = frame[ETH_HLEN + 6];
    let l4 = frame.get(ETH_HLEN + 40..ETH_HLEN + 40 + len)?;
    matches!(next, TCP | UDP | ICMPV6).then_some((next, l4))
}

/// Whether the L4 checksum of an IPv6 frame without extension headers verifies (RFC 8200 8.1);
/// `None` when it has extension headers (a fragment's checksum covers the whole datagram).
fn l4_ok6(frame: &[u8]) -> Option<bool> {
    let (next, l4) = upper6(frame)?;
    let mut sum = 0u32;
    for pair in frame[ETH_HLEN + 8..ETH_HLEN + 40].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    let len = u32::try_from(l4.len()).expect("small");
    sum += (len >> 16) + (len & 0xffff) + u32::from(next);
    let csum_off = match next {
        TCP => 16,
        UDP => 6,
        _ => 2,
    };
    if l4.len() < csum_off + 2 {
        return None;
    }
    Some(podnet_tests::packet::csum(l4, sum) == 0)
}

/// A pod's IPv6 masqueraded out of the uplink: well-formed IPv6 of the same length, to the
/// next hop's MAC from the uplink's (or with its MACs for the kernel's neighbour code), from
/// the node's IPv6 address to the input's destination
/// (outside the cluster), one hop less (the input's was above 1), changed nowhere but in the
/// MACs, the hop limit, the source address and the upper layer; its L4 checksum verifies when
/// the input's did.
fn check_masqueraded6(input: &[u8], out: &[u8]) -> Result<Outcome, String> {
    let fail = |what: &str| Err(format!("IPv6 masqueraded, {what}: {}", fuzz::hex(out)));
    if out.len() != input.len() {
        return fail(&format!("length {} became {}", input.len(), out.len()));
    }
    if input.len() < ETH_HLEN + 40 || input[ETH_HLEN] >> 4 != 6 {
        return fail("but the input is not IPv6");
    }
    if usize::from(u16_at(input, ETH_HLEN + 4)) + 40 > input.len() - ETH_HLEN {
        return fail("but its payload length runs past the frame");
    }
    // To the next hop from the uplink's MAC, or (a destination on the uplink's link whose
    // neighbour is not resolved yet: `bpf_redirect_neigh`) with the MACs as they were, for the
    // kernel to fill in.
    let routed = out[0..6] == NEXT_HOP_MAC && out[6..12] == UPLINK_MAC;
    if !routed && out[0..12] != input[0..12] {
        return fail(
            "neither to the next hop from the uplink's MAC nor left for the kernel's neighbour",
        );
    }
    if out[ETH_HLEN + 8..ETH_HLEN + 24] != NODE6 {
        return fail("not from the node's IPv6 address");
    }
    let dst = &input[ETH_HLEN + 24..ETH_HLEN + 40];
    if out[ETH_HLEN + 24..ETH_HLEN + 40] != *dst || dst[..6] == POD_CIDR6[..6] {
        return fail("to another destination, or one inside the cluster");
    }
    let hop = ETH_HLEN + 7;
    if input[hop] <= 1 || out[hop] != input[hop] - 1 {
        return fail(&format!("hop limit {} became {}", input[hop], out[hop]));
    }
    let l4_start = ETH_HLEN + 40;
    let src = ETH_HLEN + 8..ETH_HLEN + 24;
    if let Some(at) = (12..l4_start).find(|&i| i != hop && !src.contains(&i) && out[i] != input[i])
    {
        return fail(&format!("byte {at} changed"));
    }
    let verified = match (l4_ok6(input), l4_ok6(out)) {
        (Some(true), Some(false)) => return fail("its L4 checksum no longer verifies"),
        (Some(true), Some(true)) => true,
        _ => false,
    };
    Ok(Outcome::Rewritten { verified })
}
