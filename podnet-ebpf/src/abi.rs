//! The map ABI: every key and value the kernel programs and userspace exchange.
//!
//! Each type is `#[repr(C)]` with explicit padding fields, so there are no hidden holes (padding
//! in a key breaks lookups, and the verifier rejects uninitialised stack bytes). Addresses are
//! stored as `[u8; 4]` in network order, exactly as they sit in the packet, so the programs copy
//! them without byte swaps and `bpftool map dump` prints them as readable octets.
//!
//! Bump [`ABI_VERSION`] whenever a layout here changes: a node whose pinned maps carry an older
//! version must be re-initialised, not silently reused.

/// Version of this ABI, recorded in [`NodeConfig::abi_version`].
pub const ABI_VERSION: u32 = 2;

/// Map names, as pinned under the node's bpffs directory (`<pin_dir>/<name>`).
pub mod map_name {
    pub const CONFIG: &str = "CONFIG";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const STATS: &str = "STATS";
    /// Connection tracking and NAT state: two entries per flow (one per direction).
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Conntrack occupancy, for admission control (a full table refuses new flows).
    pub const CT_USAGE: &str = "CT_USAGE";
    /// NodePorts and their backends.
    pub const SERVICES: &str = "SERVICES";
    /// Other nodes' pod CIDRs (longest prefix match) and the node each lives on.
    pub const PEERS: &str = "PEERS";
    /// Every map, for pinning, listing and cleanup.
    pub const ALL: [&str; 7] = [
        CONFIG, ENDPOINTS, STATS, CONNTRACK, CT_USAGE, SERVICES, PEERS,
    ];
}

/// Program names (the Rust function names of the classifiers).
pub mod program_name {
    /// Ingress of a pod's host-side veth: everything the pod sends.
    pub const FROM_POD: &str = "from_pod";
    /// Ingress of the node's uplink: NodePort DNAT and reverse SNAT.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// `cgroup/connect4`: the node's own connections to `nodeIP:NodePort` go straight to a
    /// backend.
    pub const NODEPORT_CONNECT4: &str = "nodeport_connect4";
    /// The TC classifiers.
    pub const CLASSIFIERS: [&str; 2] = [FROM_POD, FROM_UPLINK];
    pub const ALL: [&str; 3] = [FROM_POD, FROM_UPLINK, NODEPORT_CONNECT4];
}

/// Default number of entries in the endpoints map. One entry per local pod address: a /16 pod
/// CIDR holds 65 534 addresses, and Kubernetes' own default is 110 pods per node, so this never
/// limits a real node while costing only ~2.5 MiB (key 4 B + value 24 B + hash overhead).
pub const DEFAULT_ENDPOINTS_MAX: u32 = 65_536;

/// Slots in the per-CPU stats map. Fixed and larger than [`reason::COUNT`], so new reasons can be
/// added without changing the map's size (and so without re-creating the pinned map).
pub const STATS_SLOTS: u32 = 64;

/// Node-wide settings the control plane writes into the `CONFIG` array (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// [`ABI_VERSION`] of the programs that created the maps.
    pub abi_version: u32,
    /// Bit set of `config_flag::*`.
    pub flags: u32,
    /// The node's IP on its uplink.
    pub node_ip: [u8; 4],
    /// Gateway address of the pod network (on the bridge).
    pub gateway_ip: [u8; 4],
    /// This node's pod CIDR.
    pub pod_cidr: [u8; 4],
    pub pod_prefix_len: u8,
    pub cluster_prefix_len: u8,
    pub _pad0: [u8; 2],
    /// The cluster CIDR every node's pod CIDR is carved from.
    pub cluster_cidr: [u8; 4],
    /// The bridge's MAC, used as source MAC when the programs route a packet.
    pub gateway_mac: [u8; 6],
    pub _pad1: [u8; 2],
    /// ifindex of the uplink in the node's namespace.
    pub uplink_ifindex: u32,
    /// ifindex of the bridge in the node's namespace.
    pub bridge_ifindex: u32,
    /// First port SNAT may allocate (also used for ICMP echo identifiers).
    pub snat_port_min: u16,
    /// Last port SNAT may allocate, inclusive.
    pub snat_port_max: u16,
    /// Conntrack entries admitted before new flows are refused (two per flow).
    pub ct_limit: u32,
    /// Conntrack lifetimes, per protocol and state.
    pub ct_timeouts: CtTimeouts,
    /// ifindex of the node's VXLAN device in overlay mode; 0 in native routing mode.
    pub tunnel_ifindex: u32,
    /// Cookie of the node's network namespace: the socket program acts only on sockets there.
    pub netns_cookie: u64,
}

/// Idle lifetimes of conntrack entries, in seconds. A packet matching an entry extends it.
/// Also the node setting `ct_timeouts` (each field defaults on its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct CtTimeouts {
    /// TCP until the first reply (Cilium and Linux both use 60 s for SYN_SENT/SYN_RECV).
    pub tcp_syn: u32,
    /// TCP once both directions have been seen.
    pub tcp_established: u32,
    /// TCP after a FIN or RST (Cilium's close timeout).
    pub tcp_closing: u32,
    /// UDP until the first reply (Linux `nf_conntrack_udp_timeout`).
    pub udp: u32,
    /// UDP once both directions have been seen (Linux `nf_conntrack_udp_timeout_stream`).
    pub udp_stream: u32,
    /// ICMP echo.
    pub icmp: u32,
}

impl CtTimeouts {
    pub const DEFAULT: Self = Self {
        tcp_syn: 60,
        tcp_established: 6 * 3600,
        tcp_closing: 10,
        udp: 30,
        udp_stream: 120,
        icmp: 30,
    };
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Default SNAT port range: 28 976 ports below the NodePort range and below Linux's ephemeral
/// range (32768-60999). The node's own outgoing connections take ephemeral ports, so a pod flow
/// never shares a 4-tuple with one of them; the node's listening services are not at risk either
/// (a collision would need a pod to connect to a remote client's own ephemeral port). At the
/// 10 s TCP close timeout this sustains ~2 900 new connections per second to one destination.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1_024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 29_999;

/// Default NodePort range: Kubernetes' `--service-node-port-range`.
pub const DEFAULT_NODEPORT_MIN: u16 = 30_000;
pub const DEFAULT_NODEPORT_MAX: u16 = 32_767;

/// Default conntrack admission limit, in entries (two per flow, so 131 072 flows). About 23 MiB
/// of kernel memory at ~88 bytes per LRU element (28 MiB with the headroom below); Cilium's
/// defaults are 512 Ki TCP plus 256 Ki other entries for a node that also load-balances the
/// cluster's services, which podnet's NodePorts do not.
pub const DEFAULT_CT_LIMIT: u32 = 262_144;

/// The LRU map holds the limit plus this much headroom (and at least `CT_SLACK_PER_CPU` per
/// possible CPU): the kernel's LRU keeps per-CPU free lists of up to 128 elements, and without
/// headroom it would start evicting live flows before admission control says "full". Eviction
/// stays a last-resort backstop, never the normal way a flow ends.
pub const CT_SLACK_DIVISOR: u32 = 4;
pub const CT_SLACK_PER_CPU: u32 = 256;

/// Entries the conntrack LRU map is created with for `limit` admitted entries.
pub const fn ct_map_entries(limit: u32, possible_cpus: u32) -> u32 {
    let by_ratio = limit / CT_SLACK_DIVISOR;
    let by_cpus = CT_SLACK_PER_CPU.saturating_mul(possible_cpus);
    let slack = if by_ratio > by_cpus {
        by_ratio
    } else {
        by_cpus
    };
    limit.saturating_add(slack)
}

/// Default entries in the services map: every NodePort of the default range (2 768 ports) for
/// both TCP and UDP with ~10 backends each fits with room to spare; Cilium's service map
/// default is the same 64 Ki.
pub const DEFAULT_SERVICES_MAX: u32 = 65_536;

/// VXLAN network identifier of the overlay (Flannel's default too).
pub const VXLAN_VNI: u32 = 1;
/// UDP port of the overlay (Linux's and Flannel's VXLAN port).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14): pods get the uplink
/// MTU minus this in overlay mode, so nothing needs fragmenting.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Default entries in the peers map: one per other node. Kubernetes supports clusters of up to
/// 5,000 nodes; 8,192 leaves room and costs ~0.5 MiB (LPM trie nodes are allocated on use).
pub const DEFAULT_PEERS_MAX: u32 = 8_192;

/// Value of the `PEERS` LPM trie (key: `prefix_len` + the pod CIDR's network address): the
/// node that owns the pod CIDR.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The node's IP on the fabric.
    pub node_ip: [u8; 4],
    /// Bit set of `peer_flag::*`.
    pub flags: u32,
}

/// Bits of [`Peer::flags`].
pub mod peer_flag {
    /// The entry is the node's own IP (a /32), not its pod CIDR: pod traffic to it is sent to
    /// the node untranslated (node IPs are inside the cluster), so replies of NodePort flows
    /// forwarded to a backend on another node return to the node that translated them.
    pub const NODE_IP: u32 = 1 << 0;
}

/// Most backends one NodePort may have (slots 1..=MAX_BACKENDS in the services map).
pub const MAX_BACKENDS: u16 = 1024;

/// SNAT port choices tried before a new flow is refused (Cilium tries up to 128; podnet probes
/// linearly from a random start, so a handful suffices until the range is nearly full).
pub const SNAT_RETRIES: u32 = 32;

/// A packet extends its entry's lifetime only when that moves it by more than this, so busy
/// flows write their entry at most once per second instead of on every packet.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Key of the `CONNTRACK` map: a packet's 5-tuple as it is seen at the hook. Ports are in host
/// order so `bpftool` prints them readably; for ICMP echo the identifier stands in for the
/// source port of a request and the destination port of a reply (the other port is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The key a reply to a packet with this tuple carries.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// Value of the `CONNTRACK` map: what a packet matching the key becomes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the entry is dead.
    pub expires_ns: u64,
    /// The translated tuple.
    pub nat: CtNat,
    /// `ct_kind::*`: which translation created the flow.
    pub kind: u8,
    /// `ct_dir::*`: whether this entry matches the flow's first packet or its replies.
    pub dir: u8,
    /// `ct_state::*`.
    pub state: u8,
    pub _pad: u8,
}

/// The tuple a packet is rewritten to (ports in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtNat {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
}

pub mod ct_kind {
    /// A pod reaching outside the cluster, source rewritten to the node IP.
    pub const SNAT: u8 = 1;
    /// A NodePort connection, destination rewritten to a backend.
    pub const DNAT: u8 = 2;
    /// A pod reaching a NodePort served by itself: destination and source rewritten.
    pub const HAIRPIN: u8 = 3;
    /// A NodePort connection forwarded to a backend on another node: destination rewritten to
    /// the backend and source to this node, so the replies come back through it.
    pub const REMOTE_BACKEND: u8 = 4;
    pub const NAMES: [&str; 5] = ["none", "snat", "dnat", "hairpin", "remote-backend"];
}

pub mod ct_dir {
    pub const ORIGINAL: u8 = 0;
    pub const REPLY: u8 = 1;
}

pub mod ct_state {
    /// Only the first direction seen (TCP SYN, first UDP datagram, echo request).
    pub const NEW: u8 = 0;
    /// Both directions seen.
    pub const ESTABLISHED: u8 = 1;
    /// FIN or RST seen (TCP).
    pub const CLOSING: u8 = 2;
    pub const NAMES: [&str; 3] = ["new", "established", "closing"];
}

/// Value of the `CT_USAGE` array: entries inserted and removed. Slot [`CT_USAGE_PROGRAMS`] is
/// updated by the programs (atomic adds); slot [`CT_USAGE_COLLECTOR`] only by
/// `podnet conntrack gc` (under the node's lock), so no value has two kinds of writer. Live
/// entries = inserted - removed, summed over both slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtUsage {
    pub inserted: u64,
    pub removed: u64,
}

pub const CT_USAGE_PROGRAMS: u32 = 0;
pub const CT_USAGE_COLLECTOR: u32 = 1;
pub const CT_USAGE_SLOTS: u32 = 2;

/// Live conntrack entries given both usage slots.
pub const fn ct_live(programs: &CtUsage, collector: &CtUsage) -> u64 {
    programs
        .inserted
        .saturating_sub(programs.removed)
        .saturating_sub(collector.removed)
}

/// Key of the `SERVICES` map. Slot 0 is the NodePort itself (its value's `count` says how many
/// backends there are); slots `1..=count` are the backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The NodePort, host order.
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Backend address (slot 0: unused).
    pub addr: [u8; 4],
    /// Backend port, host order (slot 0: unused).
    pub port: u16,
    /// Slot 0: number of backends. Backends: unused.
    pub count: u16,
}

/// Bits of [`NodeConfig::flags`].
pub mod config_flag {
    /// Set once userspace has written a complete configuration; until then the programs only
    /// count and pass packets.
    pub const READY: u32 = 1 << 0;
    /// Pods may only send IPv4 from their own address and MAC (`node init --anti-spoof`, on by
    /// default): anything else from a pod's veth is dropped as `drop_spoofed`.
    pub const ANTI_SPOOF: u32 = 1 << 1;
}

/// Key of the `ENDPOINTS` hash: a local pod's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 4],
}

/// Value of the `ENDPOINTS` hash: where a local pod lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the pod's host-side veth (its peer is the pod's `eth0`).
    pub ifindex: u32,
    /// Bit set of `endpoint_flag::*`.
    pub flags: u32,
    /// MAC of the pod's `eth0`: the destination MAC of packets delivered to it.
    pub mac: [u8; 6],
    pub _pad0: [u8; 2],
    /// Pod's network namespace inode, so `podnet` can tell a recycled entry from a live one.
    pub netns_ino: u64,
}

/// Bits of [`Endpoint::flags`].
pub mod endpoint_flag {
    /// The host-side interface is not a veth (or is in the same namespace as the pod): deliver
    /// with `bpf_redirect` to its egress instead of `bpf_redirect_peer`.
    pub const NO_PEER_REDIRECT: u32 = 1 << 0;
}

/// Value of the per-CPU `STATS` array, indexed by `reason::*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a packet took the path it took: the index into `STATS`.
pub mod reason {
    /// IPv4 to a local pod, delivered with `bpf_redirect_peer`.
    pub const FORWARD_LOCAL_PEER: u32 = 0;
    /// IPv4 to a local pod, delivered with `bpf_redirect` (no peer redirect possible).
    pub const FORWARD_LOCAL_REDIRECT: u32 = 1;
    /// Not IPv4 (ARP, IPv6, ...): handed to the kernel unchanged.
    pub const PASS_NOT_IPV4: u32 = 2;
    /// IPv4 to something that is not a local pod: handed to the kernel unchanged.
    pub const PASS_NOT_LOCAL: u32 = 3;
    /// Truncated or malformed header: handed to the kernel unchanged, never rewritten.
    pub const PASS_MALFORMED: u32 = 4;
    /// Broadcast or multicast: left to the bridge.
    pub const PASS_BROADCAST: u32 = 5;
    /// The node's configuration is not written yet.
    pub const PASS_NOT_READY: u32 = 6;
    /// A redirect helper refused the target.
    pub const DROP_REDIRECT_FAILED: u32 = 7;
    /// Pod traffic leaving the cluster, source rewritten to the node IP.
    pub const SNAT: u32 = 8;
    /// A reply to SNATed traffic, destination rewritten back to the pod.
    pub const SNAT_REPLY: u32 = 9;
    /// NodePort traffic, destination rewritten to a backend.
    pub const DNAT: u32 = 10;
    /// A backend's reply, source rewritten back to `nodeIP:NodePort`.
    pub const DNAT_REPLY: u32 = 11;
    /// An ICMP error about a translated flow, translated back (outer and quoted headers).
    pub const ICMP_ERROR_TRANSLATED: u32 = 12;
    /// Uplink traffic with no NAT state and no NodePort: the node's own, to the kernel unchanged.
    pub const PASS_NOT_NAT: u32 = 13;
    /// A fragment (first or later) arriving on the uplink for the node IP: podnet does not
    /// reassemble, so it goes to the kernel unchanged (and a fragmented reply to a SNATed flow
    /// does not reach the pod).
    pub const PASS_FRAGMENT: u32 = 14;
    /// The conntrack table is at its limit: a new flow was refused.
    pub const DROP_CT_FULL: u32 = 15;
    /// No free SNAT port for this destination after `SNAT_RETRIES` tries.
    pub const DROP_NAT_NO_PORT: u32 = 16;
    /// Traffic leaving the cluster that cannot be translated (no ports: other protocols, ICMP
    /// other than echo, fragments): dropped so a pod address never leaks outside.
    pub const DROP_NAT_UNSUPPORTED: u32 = 17;
    /// A TCP segment other than a SYN for a translated path with no conntrack entry.
    pub const DROP_CT_NO_STATE: u32 = 18;
    /// A NodePort with no backends.
    pub const DROP_NO_BACKEND: u32 = 19;
    /// A translated packet with no route out (`bpf_fib_lookup` failed).
    pub const DROP_NO_ROUTE: u32 = 20;
    /// A node socket's `connect()` to `nodeIP:NodePort` sent straight to a backend (counted
    /// per connect, bytes 0).
    pub const SOCK_NODEPORT: u32 = 21;
    /// A pod packet to another node's pod CIDR, sent straight out of the uplink to that node
    /// (native routing, source preserved).
    pub const FORWARD_REMOTE_NODE: u32 = 22;
    /// A packet from another node arriving on the uplink for a local pod, delivered to it.
    pub const FORWARD_UPLINK_TO_POD: u32 = 23;
    /// An IPv4 packet from a pod whose source address or MAC is not that pod's own.
    pub const DROP_SPOOFED: u32 = 24;
    /// Number of reasons in use (< [`super::STATS_SLOTS`]).
    pub const COUNT: u32 = 25;

    /// Human-readable names, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "forward_local_peer",
        "forward_local_redirect",
        "pass_not_ipv4",
        "pass_not_local",
        "pass_malformed",
        "pass_broadcast",
        "pass_not_ready",
        "drop_redirect_failed",
        "snat",
        "snat_reply",
        "dnat",
        "dnat_reply",
        "icmp_error_translated",
        "pass_not_nat",
        "pass_fragment",
        "drop_ct_full",
        "drop_nat_no_port",
        "drop_nat_unsupported",
        "drop_ct_no_state",
        "drop_no_backend",
        "drop_no_route",
        "sock_nodeport",
        "forward_remote_node",
        "forward_uplink_to_pod",
        "drop_spoofed",
    ];
}

/// Protocol constants used by the programs, named instead of written as numbers.
pub mod proto {
    pub const ETH_HLEN: usize = 14;
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    /// ARP's hardware type for Ethernet.
    pub const ARPHRD_ETHER: u16 = 1;
    pub const IPV4_MIN_HLEN: usize = 20;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const ICMP_ECHO_REPLY: u8 = 0;
    pub const ICMP_DEST_UNREACH: u8 = 3;
    pub const ICMP_ECHO_REQUEST: u8 = 8;
    pub const ICMP_TIME_EXCEEDED: u8 = 11;
    pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK: u8 = 0x10;
    /// IPv4 `frag_off` bits: more fragments, and the offset mask.
    pub const IP_MF: u16 = 0x2000;
    pub const IP_OFFSET: u16 = 0x1fff;
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::{
        Counter, CtEntry, CtKey, CtUsage, Endpoint, EndpointKey, NodeConfig, Peer, ServiceKey,
        ServiceValue,
    };

    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every padding
    // byte spelled out as a field, so any bit pattern is valid and there are no hidden bytes.
    unsafe impl aya::Pod for NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtUsage {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn node_config_layout() {
        assert_eq!(size_of::<NodeConfig>(), 88);
        assert_eq!(offset_of!(NodeConfig, snat_port_min), 44);
        assert_eq!(offset_of!(NodeConfig, ct_limit), 48);
        assert_eq!(offset_of!(NodeConfig, ct_timeouts), 52);
        assert_eq!(offset_of!(NodeConfig, tunnel_ifindex), 76);
        assert_eq!(offset_of!(NodeConfig, netns_cookie), 80);
        assert_eq!(offset_of!(NodeConfig, node_ip), 8);
        assert_eq!(offset_of!(NodeConfig, pod_cidr), 16);
        assert_eq!(offset_of!(NodeConfig, pod_prefix_len), 20);
        assert_eq!(offset_of!(NodeConfig, cluster_cidr), 24);
        assert_eq!(offset_of!(NodeConfig, gateway_mac), 28);
        assert_eq!(offset_of!(NodeConfig, uplink_ifindex), 36);
        assert_eq!(offset_of!(NodeConfig, bridge_ifindex), 40);
    }

    #[test]
    fn endpoint_layout() {
        assert_eq!(size_of::<EndpointKey>(), 4);
        assert_eq!(size_of::<Endpoint>(), 24);
        assert_eq!(offset_of!(Endpoint, mac), 8);
        assert_eq!(offset_of!(Endpoint, netns_ino), 16);
    }

    #[test]
    fn conntrack_layout() {
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, sport), 8);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(size_of::<CtEntry>(), 24);
        assert_eq!(offset_of!(CtEntry, nat), 8);
        assert_eq!(offset_of!(CtEntry, kind), 20);
        assert_eq!(size_of::<CtUsage>(), 16);
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 8);
    }

    #[test]
    fn reversed_key_swaps_ends() {
        let key = CtKey {
            saddr: [10, 0, 0, 1],
            daddr: [10, 0, 0, 2],
            sport: 1,
            dport: 2,
            proto: proto::IPPROTO_TCP,
            _pad: [0; 3],
        };
        let rev = key.reversed();
        assert_eq!((rev.saddr, rev.sport), (key.daddr, key.dport));
        assert_eq!(rev.reversed(), key);
    }

    #[test]
    fn ct_map_has_headroom() {
        assert_eq!(
            ct_map_entries(DEFAULT_CT_LIMIT, 2),
            DEFAULT_CT_LIMIT + DEFAULT_CT_LIMIT / 4
        );
        assert_eq!(ct_map_entries(8, 2), 8 + 512);
        assert_eq!(ct_map_entries(u32::MAX, 2), u32::MAX);
    }

    #[test]
    fn counter_layout() {
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(offset_of!(Counter, bytes), 8);
    }

    #[test]
    fn reasons_fit_and_are_named() {
        const { assert!(reason::COUNT <= STATS_SLOTS) };
        assert_eq!(reason::NAMES.len(), reason::COUNT as usize);
        let mut names = reason::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            reason::COUNT as usize,
            "reason names are unique"
        );
    }
}
