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
pub const ABI_VERSION: u32 = 8;

/// Map names, as pinned under the node's bpffs directory (`<pin_dir>/<name>`).
pub mod map_name {
    pub const CONFIG: &str = "CONFIG";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const STATS: &str = "STATS";
    /// Connection tracking and NAT state: two entries per flow (one per direction).
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Conntrack occupancy, for admission control (a full table refuses new flows).
    pub const CT_USAGE: &str = "CT_USAGE";
    /// Service frontends (ClusterIP, NodePort, LoadBalancer IP, externalIP), each with its
    /// backend slots.
    pub const SERVICES: &str = "SERVICES";
    /// Service backends by id: address, port, conditions.
    pub const BACKENDS: &str = "BACKENDS";
    /// Service frontends by service id, to translate back to the address a client used.
    pub const REV_NAT: &str = "REV_NAT";
    /// Per-socket reverse translation of the socket-level balancer (socket cookie + backend ->
    /// the frontend the socket asked for).
    pub const SOCK_REV_NAT: &str = "SOCK_REV_NAT";
    /// Network namespaces of this node's pods (by netns cookie), whose sockets the socket-level
    /// balancer serves.
    pub const POD_NETNS: &str = "POD_NETNS";
    /// Other nodes' pod CIDRs (longest prefix match) and the node each lives on.
    pub const PEERS: &str = "PEERS";
    /// Session affinity (ClientIP): (service id, client address) -> the backend and when a
    /// new connection last used it.
    pub const AFFINITY: &str = "AFFINITY";
    /// Maglev lookup tables: service id -> an array of [`super::MAGLEV_TABLE_SIZE`] backend
    /// ids (a hash of maps; each frontend that uses Maglev has its own inner array).
    pub const MAGLEV: &str = "MAGLEV";
    /// Destinations pods reach with their own address, never SNATed (the node setting
    /// `non_masquerade_cidrs`, longest prefix match).
    pub const NON_MASQUERADE: &str = "NON_MASQUERADE";
    /// Drop and refusal events for `podnet monitor`: a ring buffer of
    /// [`super::monitor::DropEvent`]s.
    pub const MONITOR_EVENTS: &str = "MONITOR_EVENTS";
    /// The per-CPU rate limit of [`MONITOR_EVENTS`] and what it held back.
    pub const MONITOR_BUDGET: &str = "MONITOR_BUDGET";
    /// IPv4 fragments: (addresses, protocol, IP id) of a fragmented datagram -> the ports its
    /// first fragment carried, so the later fragments follow the same flow.
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// Local pods by IPv6 address (the IPv6 twin of [`ENDPOINTS`]).
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    /// The IPv6 programs `from_pod` and `from_uplink` tail-call into for IPv6 frames
    /// (slots [`super::ipv6_prog`]). A program array's entries are flushed by the kernel
    /// when its last user reference goes, so it is pinned like every other map: otherwise
    /// the tail calls would silently stop once `node init` exits.
    pub const IPV6_PROGS: &str = "IPV6_PROGS";
    /// IPv6 connection tracking and NAT state (the IPv6 twin of [`CONNTRACK`], same entries
    /// with 16-byte addresses).
    pub const CONNTRACK6: &str = "CONNTRACK6";
    /// IPv6 masquerade exclusions (the IPv6 twin of [`NON_MASQUERADE`]).
    pub const NON_MASQUERADE6: &str = "NON_MASQUERADE6";
    /// IPv6 fragments (the IPv6 twin of [`FRAGMENTS`], keyed by the fragment header's 32-bit
    /// identification).
    pub const FRAGMENTS6: &str = "FRAGMENTS6";
    /// Other nodes' IPv6 pod CIDRs and IPv6 node addresses (longest prefix match) and the node
    /// each belongs to (the IPv6 twin of [`PEERS`]).
    pub const PEERS6: &str = "PEERS6";
    /// IPv6 service frontends ([`super::ServiceKey6`]: a 16-byte address), each with its
    /// backend slots: the IPv6 twin of [`SERVICES`] (same [`super::ServiceValue`]).
    pub const SERVICES6: &str = "SERVICES6";
    /// IPv6 service backends by id ([`super::ServiceBackend6`]).
    pub const BACKENDS6: &str = "BACKENDS6";
    /// IPv6 service frontends by service id ([`super::RevNat6`]). Service ids are one space
    /// over both families, so `MAGLEV` (keyed by service id) serves both.
    pub const REV_NAT6: &str = "REV_NAT6";
    /// The socket-level balancer's reverse translation for IPv6 sockets.
    pub const SOCK_REV_NAT6: &str = "SOCK_REV_NAT6";
    /// Session affinity of IPv6 frontends: (service id, client IPv6 address) -> backend.
    pub const AFFINITY6: &str = "AFFINITY6";
    /// Every map, for pinning, listing and cleanup.
    pub const ALL: [&str; 28] = [
        CONFIG,
        ENDPOINTS,
        STATS,
        CONNTRACK,
        CT_USAGE,
        SERVICES,
        BACKENDS,
        REV_NAT,
        SOCK_REV_NAT,
        POD_NETNS,
        PEERS,
        AFFINITY,
        MAGLEV,
        NON_MASQUERADE,
        MONITOR_EVENTS,
        MONITOR_BUDGET,
        FRAGMENTS,
        ENDPOINTS6,
        IPV6_PROGS,
        CONNTRACK6,
        NON_MASQUERADE6,
        FRAGMENTS6,
        PEERS6,
        SERVICES6,
        BACKENDS6,
        REV_NAT6,
        SOCK_REV_NAT6,
        AFFINITY6,
    ];
}

/// Slots of the `IPV6_PROGS` program array.
pub mod ipv6_prog {
    /// [`super::program_name::FROM_POD6`].
    pub const FROM_POD6: u32 = 0;
    /// [`super::program_name::FROM_UPLINK6`].
    pub const FROM_UPLINK6: u32 = 1;
    /// [`super::program_name::FROM_POD6_NAT`].
    pub const FROM_POD6_NAT: u32 = 2;
    /// [`super::program_name::FROM_POD6_SNAT`].
    pub const FROM_POD6_SNAT: u32 = 3;
    /// [`super::program_name::NAT6_ICMP`].
    pub const NAT6_ICMP: u32 = 4;
    /// [`super::program_name::NAT6_ICMP_OUT`].
    pub const NAT6_ICMP_OUT: u32 = 5;
    /// [`super::program_name::NAT6_TOO_BIG`].
    pub const NAT6_TOO_BIG: u32 = 6;
    /// [`super::program_name::FROM_UPLINK6_DNAT`].
    pub const FROM_UPLINK6_DNAT: u32 = 7;
    /// [`super::program_name::DNAT6_NEW_FLOW`].
    pub const DNAT6_NEW_FLOW: u32 = 8;
    /// Entries of the array: one per IPv6 program.
    pub const SLOTS: u32 = 9;
    /// A program's decision "go on in the program of slot `s`" is the reason `HANDOFF | s`
    /// (never counted: the next program counts the packet).
    pub const HANDOFF: u32 = 1 << 31;

    /// The decision "go on in the program of `slot`".
    pub const fn handoff(slot: u32) -> u32 {
        HANDOFF | slot
    }
}

/// Program names (the Rust function names of the classifiers).
pub mod program_name {
    /// Ingress of a pod's host-side veth: everything the pod sends.
    pub const FROM_POD: &str = "from_pod";
    /// Ingress of the node's uplink: NodePort DNAT and reverse SNAT.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// `cgroup/connect4`: TCP and connected UDP sockets (the node's and its pods') connecting
    /// to a service frontend are connected straight to a backend.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    /// `cgroup/sendmsg4`: unconnected UDP to a service frontend is sent straight to a backend.
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// `cgroup/recvmsg4`: replies to unconnected UDP carry the frontend as their source.
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// `cgroup/getpeername4`: a balanced socket's peer is the frontend it connected to.
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// IPv6 from a pod: tail-called by `from_pod` for IPv6 frames (never attached itself).
    pub const FROM_POD6: &str = "from_pod6";
    /// IPv6 on the uplink: tail-called by `from_uplink` for IPv6 frames (never attached).
    pub const FROM_UPLINK6: &str = "from_uplink6";
    /// The IPv6 NAT of pods' traffic that is not for a local pod (tail-called by `from_pod6`):
    /// packets of masqueraded flows, ICMPv6 errors about them, and the masquerade decision.
    pub const FROM_POD6_NAT: &str = "from_pod6_nat";
    /// A new masqueraded IPv6 flow: conntrack entries and the port (tail-called by
    /// `from_pod6_nat`).
    pub const FROM_POD6_SNAT: &str = "from_pod6_snat";
    /// ICMPv6 errors about masqueraded flows, from the uplink or from a pod (tail-called by
    /// `from_uplink6` and `from_pod6_nat`).
    pub const NAT6_ICMP: &str = "nat6_icmp";
    /// Delivers an ICMPv6 error `nat6_icmp` translated (tail-called by it).
    pub const NAT6_ICMP_OUT: &str = "nat6_icmp_out";
    /// Answers a masqueraded reply too big for its pod's link with ICMPv6 Packet Too Big
    /// (tail-called by `from_uplink6`).
    pub const NAT6_TOO_BIG: &str = "nat6_too_big";
    /// IPv6 service traffic from outside the node: NodePorts on the node's IPv6 address,
    /// IPv6 LoadBalancer IPs and externalIPs, DNATed to a local backend (tail-called by
    /// `from_uplink6`, and by `dnat6_new_flow` once a new flow's entries exist).
    pub const FROM_UPLINK6_DNAT: &str = "from_uplink6_dnat";
    /// Creates the conntrack entries of a new IPv6 service flow from outside whose backend
    /// `from_uplink6_dnat` chose (tail-called by it, hands the packet back to it).
    pub const DNAT6_NEW_FLOW: &str = "dnat6_new_flow";
    /// `cgroup/connect6`: [`SOCK_CONNECT4`] for IPv6 sockets.
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    /// `cgroup/sendmsg6`: [`SOCK_SENDMSG4`] for IPv6 sockets.
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    /// `cgroup/recvmsg6`: [`SOCK_RECVMSG4`] for IPv6 sockets.
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    /// `cgroup/getpeername6`: [`SOCK_GETPEERNAME4`] for IPv6 sockets. The kernel keeps 15
    /// bytes of a program's name, so this one and [`SOCK_GETPEERNAME4`] read the same there
    /// (`sock_getpeernam`): tell them apart by the hook they are attached to.
    pub const SOCK_GETPEERNAME6: &str = "sock_getpeername6";
    /// The TC classifiers attached to interfaces.
    pub const CLASSIFIERS: [&str; 2] = [FROM_POD, FROM_UPLINK];
    /// The TC classifiers reached by tail call (`IPV6_PROGS`), each with its slot.
    pub const TAIL_CALLED: [(&str, u32); 9] = [
        (FROM_POD6, super::ipv6_prog::FROM_POD6),
        (FROM_UPLINK6, super::ipv6_prog::FROM_UPLINK6),
        (FROM_POD6_NAT, super::ipv6_prog::FROM_POD6_NAT),
        (FROM_POD6_SNAT, super::ipv6_prog::FROM_POD6_SNAT),
        (NAT6_ICMP, super::ipv6_prog::NAT6_ICMP),
        (NAT6_ICMP_OUT, super::ipv6_prog::NAT6_ICMP_OUT),
        (NAT6_TOO_BIG, super::ipv6_prog::NAT6_TOO_BIG),
        (FROM_UPLINK6_DNAT, super::ipv6_prog::FROM_UPLINK6_DNAT),
        (DNAT6_NEW_FLOW, super::ipv6_prog::DNAT6_NEW_FLOW),
    ];
    /// The cgroup socket-address programs, attached and detached together.
    pub const SOCK: [&str; 8] = [
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
        SOCK_CONNECT6,
        SOCK_SENDMSG6,
        SOCK_RECVMSG6,
        SOCK_GETPEERNAME6,
    ];
    pub const ALL: [&str; 19] = [
        FROM_POD,
        FROM_UPLINK,
        FROM_POD6,
        FROM_UPLINK6,
        FROM_POD6_NAT,
        FROM_POD6_SNAT,
        NAT6_ICMP,
        NAT6_ICMP_OUT,
        NAT6_TOO_BIG,
        FROM_UPLINK6_DNAT,
        DNAT6_NEW_FLOW,
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
        SOCK_CONNECT6,
        SOCK_SENDMSG6,
        SOCK_RECVMSG6,
        SOCK_GETPEERNAME6,
    ];
}

/// Default number of entries in the endpoints map. One entry per local pod address: a /16 pod
/// CIDR holds 65 534 addresses, and Kubernetes' own default is 110 pods per node, so this never
/// limits a real node while costing only ~2.5 MiB (key 4 B + value 24 B + hash overhead).
pub const DEFAULT_ENDPOINTS_MAX: u32 = 65_536;

/// The `ENDPOINTS6` hash has as many entries as `ENDPOINTS` (the node setting `endpoints_max`
/// sizes both): a dual-stack pod has one address of each family. It is allocated as pods are
/// added (`BPF_F_NO_PREALLOC`), so an IPv4-only node pays only its bucket array (8 B per
/// entry, 0.5 MiB at the default); a full one takes ~6 MiB (key 16 B + value 24 B + ~48 B of
/// element header each).
pub const fn endpoints6_map_entries(endpoints_max: u32) -> u32 {
    endpoints_max
}

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
    pub _pad3: u32,
    /// Cookie of the node's network namespace: the socket programs act on sockets there (and,
    /// with [`config_flag::SOCKET_LB`], in the pods' namespaces listed in `POD_NETNS`).
    pub netns_cookie: u64,
    /// The service CIDR (Kubernetes' `--service-cluster-ip-range`): pod traffic to an address
    /// in it that matches no service goes to the kernel unchanged, never SNATed (so kube-proxy
    /// or anything else in netfilter can still see it). Unset when `service_prefix_len` is 0.
    pub service_cidr: [u8; 4],
    pub service_prefix_len: u8,
    pub _pad2: [u8; 3],
    /// The node's IPv6 address on its uplink: the source of masqueraded IPv6. All zero on a
    /// node without one (IPv6 is then never masqueraded). An [`Addr6`], as in the conntrack
    /// entries it is compared with.
    pub node_ip6: Addr6,
    /// This node's IPv6 pod CIDR (dual-stack nodes), an [`Addr6`].
    pub pod_cidr6: Addr6,
    /// The cluster's IPv6 CIDR: IPv6 to it is never masqueraded. An [`Addr6`].
    pub cluster_cidr6: Addr6,
    pub pod_prefix_len6: u8,
    /// 0 on a node without IPv6 pods.
    pub cluster_prefix_len6: u8,
    pub _pad4: [u8; 2],
    /// `CONNTRACK6` entries admitted before new IPv6 flows are refused (two per flow).
    pub ct6_limit: u32,
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
    /// TCP after an RST (Cilium's close timeout).
    pub tcp_closing: u32,
    /// UDP until the first reply (Linux `nf_conntrack_udp_timeout`).
    pub udp: u32,
    /// UDP once both directions have been seen (Linux `nf_conntrack_udp_timeout_stream`).
    pub udp_stream: u32,
    /// ICMP echo.
    pub icmp: u32,
    /// TCP after a FIN. Linux conntrack's TIME_WAIT timeout: the translated tuple stays taken
    /// while the server may still hold it in TIME_WAIT, so a new flow from another client
    /// port is never mapped onto it (the server's PAWS check would drop its SYN: every
    /// connection has its own TCP timestamp offset). The same client tuple reopens the flow.
    /// Under table pressure the collector ends these flows first.
    pub tcp_time_wait: u32,
}

impl CtTimeouts {
    pub const DEFAULT: Self = Self {
        tcp_syn: 60,
        tcp_established: 6 * 3600,
        tcp_closing: 10,
        udp: 30,
        udp_stream: 120,
        icmp: 30,
        tcp_time_wait: 120,
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

/// Default IPv6 conntrack admission limit, in entries (two per flow, so 32,768 flows), and the
/// size of `CONNTRACK6` with the same headroom as [`ct_map_entries`] gives the IPv4 table.
/// An IPv6 entry is larger: key 40 B (two 16-byte addresses, ports, protocol) and value 48 B
/// ([`CtEntry`] with 16-byte addresses): 161.6 bytes per LRU element measured (`bytes_memlock`
/// of 13,239,232 for 81,920 slots on two CPUs), against 113.6 for an IPv4 entry (key 16 +
/// value 24). 65,536 admitted entries (81,920 allocated with the headroom) take 12.6 MiB,
/// preallocated; a quarter of the IPv4 table's flows, since most clusters' traffic leaving the
/// cluster is still IPv4. Fixed at map creation.
pub const DEFAULT_CT6_LIMIT: u32 = 65_536;

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

/// Default entries in the `SERVICES` hash (one per frontend, one per backend slot of each
/// frontend, one per ClusterIP address): 30,000 services with 300,000 backend slots and their
/// 30,000 ClusterIP address entries take 360,000, leaving ~160,000 for further frontends of
/// the same services (NodePorts, LoadBalancer IPs, externalIPs). Allocated as entries are
/// written (`BPF_F_NO_PREALLOC`): ~88 bytes per entry (key 12 -> 16, value 16, element header
/// and free-list node 56), ~30 MiB for the 360,000 entries of 30,000 services, plus the bucket
/// array (16 bytes per entry of the size rounded up to a power of two: 8 MiB) even when empty.
/// Measured: 30,000 services with 300,000 backends take 71 MiB in `SERVICES`, `BACKENDS` and
/// `REV_NAT` together (`bytes_memlock`). Cilium's service map default is 64 Ki entries per
/// family.
pub const DEFAULT_SERVICES_MAX: u32 = 524_288;

/// Entries in the `BACKENDS` hash, as a function of the services map's size: a backend id per
/// backend slot (ids are per frontend, see [`backend_id`]), and every slot is also a `SERVICES`
/// entry, so the table never needs more; a replace holds a round of new backends (16 Ki, see
/// `services_map`) next to the old ones, which the table's masters and address entries leave
/// room for. The same size, not a little more, because the kernel rounds a hash map's bucket
/// array up to a power of two (16 bytes per bucket: 8 MiB at the default, 16 MiB one entry
/// above it). Allocated on use, ~72 bytes per entry: ~21 MiB for 300,000 backends.
pub const fn backends_map_entries(services_max: u32) -> u32 {
    services_max
}

/// Entries in the `REV_NAT` hash: one per frontend; 30,000 services with up to four frontends
/// each (ClusterIP, NodePort, a LoadBalancer IP, an externalIP) fit with room. ~72 bytes each
/// (key 4 -> 8, value 12 -> 16, header 48), allocated on use: ~2 MiB for 30,000 frontends, 8 MiB full.
pub const REV_NAT_MAX: u32 = 131_072;

/// Entries in the `SOCK_REV_NAT` LRU: one per (socket, backend) the socket-level balancer
/// translated, kept while in use (UDP DNS clients, connected sockets' `getpeername`). The LRU
/// forgets the least recently used first; a forgotten entry only means an unconnected UDP
/// reply shows the backend's address instead of the service's. ~88 bytes each (key 16, value
/// 12 -> 16, LRU element header 56): ~5.5 MiB.
pub const SOCK_REV_NAT_MAX: u32 = 65_536;

/// Entries in the `POD_NETNS` hash: one per pod on the node (Kubernetes' default is 110 pods
/// per node, its limit 256 unless raised); ~64 bytes each, allocated on use (0.5 MiB full).
pub const POD_NETNS_MAX: u32 = 8_192;

/// Frontend address of an IPv6 NodePort in `SERVICES6` (as [`NODEPORT_ADDR`] for IPv4).
pub const NODEPORT_ADDR6: [u8; 16] = [0; 16];

/// Frontend address of a NodePort: any of the node's addresses (the datapath looks NodePorts
/// up with this address when a packet or socket is for the node IP), so a NodePort's entries
/// do not depend on the node IP.
pub const NODEPORT_ADDR: [u8; 4] = [0; 4];

/// Port and protocol of a ClusterIP's address entry: `(clusterIP, ANY_PORT, ANY_PROTO, slot 0)`
/// exists while any service uses that ClusterIP, so traffic to a port it does not serve is
/// refused instead of leaving the node.
pub const ANY_PORT: u16 = 0;
pub const ANY_PROTO: u8 = 0;

/// Key of the `SERVICES` hash. Slot 0 of a frontend is its master entry (service id, backend
/// count, flags); slots `1..=count` hold backend ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Frontend address ([`NODEPORT_ADDR`] for a NodePort).
    pub addr: [u8; 4],
    /// Frontend port, host order.
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of the `SERVICES` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slot 0: the service id (key of `REV_NAT`). Slots `1..`: the backend id (key of
    /// `BACKENDS`).
    pub id: u32,
    /// Slot 0: number of backends. Slots: 0.
    pub count: u16,
    /// Slot 0: how many backends are on this node; userspace puts them first (slots
    /// `1..=local_count`). Informational: with a Local traffic policy userspace writes only
    /// the local backends.
    pub local_count: u16,
    /// Slot 0: bit set of `svc_flag::*`.
    pub flags: u16,
    pub _pad: u16,
    /// Slot 0: session affinity (ClientIP) timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
}

/// Bits of [`ServiceValue::flags`].
pub mod svc_flag {
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 0;
    /// The frontend is a NodePort (address [`super::NODEPORT_ADDR`]).
    pub const NODE_PORT: u16 = 1 << 1;
    /// The frontend is a LoadBalancer ingress IP (reachable from outside).
    pub const LOAD_BALANCER: u16 = 1 << 2;
    /// The frontend is an externalIP (reachable from outside).
    pub const EXTERNAL_IP: u16 = 1 << 3;
    /// `externalTrafficPolicy: Local` (the slots hold this node's backends only).
    pub const EXT_LOCAL: u16 = 1 << 4;
    /// `internalTrafficPolicy: Local` (the slots hold this node's backends only).
    pub const INT_LOCAL: u16 = 1 << 5;
    /// `sessionAffinity: ClientIP`: a client's new connections follow `AFFINITY`.
    pub const AFFINITY: u16 = 1 << 6;
    /// Backend choice by the frontend's Maglev table (`MAGLEV`) instead of at random.
    pub const MAGLEV: u16 = 1 << 7;
    /// A ClusterIP's address entry (`ANY_PORT`, `ANY_PROTO`): not a service itself.
    pub const ADDRESS: u16 = 1 << 8;
    /// Frontends that traffic from outside the node may use.
    pub const FROM_OUTSIDE: u16 = LOAD_BALANCER | EXTERNAL_IP;
}

/// Value of the `BACKENDS` hash (key: the backend id, a `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceBackend {
    pub addr: [u8; 4],
    /// Port, host order (the service port's `targetPort`).
    pub port: u16,
    /// Bit set of `backend_flag::*`.
    pub flags: u8,
    pub _pad: u8,
}

/// Bits of [`ServiceBackend::flags`]: the EndpointSlice conditions (KEP-1669) and where the
/// backend lives. Userspace chooses which backends go in the slots by them (KEP-1669, traffic
/// policies); the datapath uses every backend in the slots.
pub mod backend_flag {
    pub const READY: u8 = 1 << 0;
    pub const SERVING: u8 = 1 << 1;
    pub const TERMINATING: u8 = 1 << 2;
    /// On this node.
    pub const LOCAL: u8 = 1 << 3;
}

/// Value of the `REV_NAT` hash (key: the service id, a `u32`): the frontend a service id
/// stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    pub addr: [u8; 4],
    /// Port, host order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    /// The frontend's `svc_flag::*`, as in its master entry (so userspace reads every frontend
    /// from this map alone).
    pub flags: u16,
    pub _pad2: [u8; 2],
}

/// Service ids are `1..=MAX_SERVICE_ID`, so every backend id ([`backend_id`]) fits a `u32`.
pub const MAX_SERVICE_ID: u32 = u32::MAX / BACKEND_IDS_PER_SERVICE - 1;
/// Backend ids reserved per service id: two generations of [`MAX_BACKENDS`] slots, so a
/// replace writes its new backends under ids the old ones do not use.
pub const BACKEND_IDS_PER_SERVICE: u32 = 2 * MAX_BACKENDS as u32;

/// The backend id of slot `slot` (1-based) of service `service_id` in `generation` (0 or 1).
pub const fn backend_id(service_id: u32, generation: u32, slot: u16) -> u32 {
    service_id * BACKEND_IDS_PER_SERVICE + (generation & 1) * MAX_BACKENDS as u32 + slot as u32 - 1
}

/// Key of the `SOCK_REV_NAT` LRU: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// Backend address and port (host order).
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Value of the `SOCK_REV_NAT` LRU: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNat {
    pub addr: [u8; 4],
    /// Port, host order.
    pub port: u16,
    pub _pad: [u8; 2],
    /// The service id.
    pub id: u32,
}

/// Entries in the `AFFINITY` LRU: one per (frontend with `sessionAffinity: ClientIP`, client
/// address) pair in use. 65,536 covers e.g. 1,000 clients of each of 64 affine services at
/// once; when it is full the least recently used pair is forgotten, and that client's next
/// connection simply picks a backend afresh (what an expired affinity does anyway). ~88 bytes
/// each (key 8, value 16, LRU element header 56, preallocated): ~5.5 MiB.
pub const AFFINITY_MAX: u32 = 65_536;

/// Key of the `AFFINITY` LRU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The frontend's service id.
    pub id: u32,
    /// The client: the packet's source address, or for the socket-level balancer the address
    /// of the pod (or node) whose socket connects, so both paths share one entry.
    pub client: [u8; 4],
}

/// Value of the `AFFINITY` LRU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` of the last new connection that used the entry: it holds until
    /// `affinity_timeout` passes without one (kube-proxy's `recent` match works the same way).
    pub last_used_ns: u64,
    /// The backend: userspace deletes the entries of a backend that leaves the frontend.
    pub backend: ServiceBackend,
}

// IPv6 services. The same design as IPv4's, in maps of their own whose keys and values carry
// 16-byte addresses: `SERVICES6` (frontend -> master entry and slots, the same
// [`ServiceValue`]), `BACKENDS6`, `REV_NAT6`, `SOCK_REV_NAT6` and `AFFINITY6`. Service ids
// (and so backend ids, [`backend_id`]) are one space over both families: `MAGLEV`, keyed by
// service id, holds IPv6 frontends' tables too (their backend ids are looked up in
// `BACKENDS6`), and the total of IPv4 and IPv6 frontends is bounded by [`REV_NAT_MAX`].
// Memory: each hash is allocated as it is written (`BPF_F_NO_PREALLOC`), so an IPv4-only node
// pays only the bucket arrays (16 bytes per entry rounded up to a power of two); the two LRUs
// are preallocated, like their IPv4 twins.

/// Entries in the `SERVICES6` hash for a node setting of `services_max`: as many as
/// `SERVICES`. In a dual-stack cluster every dual-stack service has an IPv6 frontend of each
/// kind and as many IPv6 backends as IPv4 ones, so the IPv6 table is as large as the IPv4 one;
/// an IPv6-only cluster puts all of its services here. ~104 bytes per entry written (key 24,
/// value 16, element header and free-list node 56, rounded), plus the bucket array (8 MiB at
/// the default size) even when empty.
pub const fn services6_map_entries(services_max: u32) -> u32 {
    services_max
}

/// Entries in the `BACKENDS6` hash: as [`backends_map_entries`], for the same reasons (a
/// backend id per slot of `SERVICES6`, and a replace's round of new backends). ~80 bytes per
/// entry written (key 4 -> 8, value 20 -> 24, header 48).
pub const fn backends6_map_entries(services_max: u32) -> u32 {
    backends_map_entries(services6_map_entries(services_max))
}

/// Entries in the `REV_NAT6` hash: [`REV_NAT_MAX`], since ids are shared with IPv4 frontends
/// and one family may hold all of them (an IPv6-only cluster). ~80 bytes per frontend written
/// (key 4 -> 8, value 24, header 48), 2 MiB of buckets even when empty.
pub const REV_NAT6_MAX: u32 = REV_NAT_MAX;

/// Entries in the `SOCK_REV_NAT6` LRU: as `SOCK_REV_NAT` ([`SOCK_REV_NAT_MAX`]), the balanced
/// sockets a node keeps at once, which in an IPv6-only or IPv6-preferring cluster are IPv6.
/// Preallocated (an LRU): ~112 bytes each (key 32, value 24, LRU element header 56), ~7 MiB.
pub const SOCK_REV_NAT6_MAX: u32 = SOCK_REV_NAT_MAX;

/// Entries in the `AFFINITY6` LRU: as [`AFFINITY_MAX`] for IPv6 clients. Preallocated: ~112
/// bytes each (key 20 -> 24, value 32, LRU element header 56), ~7 MiB.
pub const AFFINITY6_MAX: u32 = AFFINITY_MAX;

/// Key of the `SERVICES6` hash: [`ServiceKey`] with an IPv6 frontend address
/// ([`NODEPORT_ADDR6`] for a NodePort). The value is a [`ServiceValue`], as for IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey6 {
    /// Frontend address, network order.
    pub addr: [u8; 16],
    /// Frontend port, host order.
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of the `BACKENDS6` hash (key: the backend id, a `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceBackend6 {
    pub addr: [u8; 16],
    /// Port, host order (the service port's `targetPort`).
    pub port: u16,
    /// Bit set of `backend_flag::*`.
    pub flags: u8,
    pub _pad: u8,
}

/// Value of the `REV_NAT6` hash (key: the service id): the IPv6 frontend it stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat6 {
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    /// The frontend's `svc_flag::*`, as in its master entry.
    pub flags: u16,
    pub _pad2: [u8; 2],
}

/// Key of the `SOCK_REV_NAT6` LRU: a socket and the IPv6 backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey6 {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// Backend address and port (host order).
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Value of the `SOCK_REV_NAT6` LRU: the IPv6 frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNat6 {
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    pub _pad: [u8; 2],
    /// The service id.
    pub id: u32,
}

/// Key of the `AFFINITY6` LRU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey6 {
    /// The frontend's service id.
    pub id: u32,
    /// The client's IPv6 address (as [`AffinityKey::client`]).
    pub client: [u8; 16],
}

/// Value of the `AFFINITY6` LRU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue6 {
    /// As [`AffinityValue::last_used_ns`].
    pub last_used_ns: u64,
    pub backend: ServiceBackend6,
    pub _pad: [u8; 4],
}

/// Entries of each Maglev lookup table: a prime (Maglev needs one), Cilium's default. Maglev
/// spreads flows evenly while a frontend has up to about 1% of this many backends (~160), and
/// moves about 1/N of flows when one of N backends comes or goes. 4 bytes each: 64 KiB per
/// frontend that uses Maglev, allocated only for those.
pub const MAGLEV_TABLE_SIZE: u32 = 16_381;

/// Entries in the `MAGLEV` hash of maps: one per frontend, as `REV_NAT`.
pub const MAGLEV_MAX: u32 = REV_NAT_MAX;

/// Value of the `POD_NETNS` hash (key: the pod namespace's cookie, a `u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodNetns {
    /// The pod's address, so userspace can tell whose entry it is.
    pub addr: [u8; 4],
    pub _pad: [u8; 4],
    /// The pod's IPv6 address on a dual-stack node (all zero otherwise): the client address of
    /// its IPv6 sockets, for session affinity.
    pub addr6: [u8; 16],
}

/// VXLAN network identifier of the overlay (Flannel's default too).
pub const VXLAN_VNI: u32 = 1;
/// UDP port of the overlay (Linux's and Flannel's VXLAN port).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14): pods get the uplink
/// MTU minus this in overlay mode, so nothing needs fragmenting.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes VXLAN adds over the IPv6 underlay (outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet
/// 14): the pods' allowance with the node setting `ipv6_underlay`.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// Default entries in the peers map: one per other node. Kubernetes supports clusters of up to
/// 5,000 nodes; 8,192 leaves room and costs ~0.5 MiB (LPM trie nodes are allocated on use).
pub const DEFAULT_PEERS_MAX: u32 = 8_192;

/// Entries in the `NON_MASQUERADE` LPM trie: the most masquerade exclusions a node may list
/// (`non_masquerade_cidrs`). ip-masq-agent's lists are a handful of prefixes (RFC 1918 and a
/// few peered networks); 256 leaves ample room and costs next to nothing (LPM trie nodes are
/// allocated on use, ~64 bytes each: 16 KiB full).
pub const NON_MASQUERADE_MAX: u32 = 256;

/// Entries in the `FRAGMENTS` LRU hash: fragmented datagrams whose later fragments may still
/// come. An entry is needed only from a datagram's first fragment to its last, which on a
/// network that does not reorder follow each other within microseconds; the LRU lets the
/// oldest go. So the map must hold the datagrams in flight at once through this node, which
/// the kernel bounds the same way for its own reassembly: `ipfrag_high_thresh` (4 MiB by
/// default, per namespace) holds ~2,700 full-size (1,500-byte) fragments, so at most that many
/// incomplete datagrams per receiver. 8,192 (Cilium's default too) covers three such
/// receivers' worth of interleaved datagrams and costs ~0.6 MiB (16 bytes of key and value
/// plus the LRU's ~56 bytes per preallocated element).
pub const FRAGMENTS_MAX: u32 = 8_192;

/// Key of the `FRAGMENTS` map: what the fragments of one datagram share (RFC 791: source,
/// destination, protocol and identification), as they arrive at the hook (untranslated).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// The IPv4 identification field, host order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the `FRAGMENTS` map: the L4 ports (host order, as in [`CtKey`]) the datagram's
/// first fragment carried; for ICMP echo, the identifier as in [`CtKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Key of the `FRAGMENTS6` map: what the fragments of one IPv6 datagram share (RFC 8200:
/// source, destination and the fragment header's identification), plus the upper-layer
/// protocol, as they arrive at the hook (untranslated). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub saddr: Addr6,
    pub daddr: Addr6,
    /// The fragment header's identification, host order.
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Entries in the `FRAGMENTS6` LRU: as [`FRAGMENTS_MAX`] for IPv4, on the same reasoning
/// (datagrams in flight whose later fragments may still come); ~0.9 MiB (40 + 4 bytes of key
/// and value plus the LRU's ~56 bytes per preallocated element, 8,192 entries).
pub const FRAGMENTS6_MAX: u32 = 8_192;

/// Entries in the `NON_MASQUERADE6` LPM trie, as [`NON_MASQUERADE_MAX`] for IPv4.
pub const NON_MASQUERADE6_MAX: u32 = 256;

/// Value of a `NON_MASQUERADE` entry (key: `prefix_len` + the network address): the entry's
/// presence is what counts.
pub const NON_MASQUERADE_PRESENT: u32 = 1;

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
    /// (`PEERS6` only.) The overlay carries IPv6 to this node over the IPv6 underlay: the
    /// tunnel's remote is [`super::Peer6::node_ip6`], not [`super::Peer6::node_ip`] (the node
    /// setting `ipv6_underlay`).
    pub const UNDERLAY6: u32 = 1 << 1;
}

/// Value of the `PEERS6` LPM trie (key: `prefix_len` + an IPv6 pod CIDR's network address, or
/// a node's IPv6 address as a /128 marked [`peer_flag::NODE_IP`]): the node it belongs to. 24
/// bytes; the trie is sized like `PEERS` ([`DEFAULT_PEERS_MAX`]: one pod CIDR and one node
/// address per other node) and allocates its nodes on use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer6 {
    /// The node's IPv6 address on the fabric: the next hop in native routing, the tunnel's
    /// remote with [`peer_flag::UNDERLAY6`]. All zero when the node has none (overlay over
    /// the IPv4 underlay only).
    pub node_ip6: [u8; 16],
    /// The node's IPv4 address: the tunnel's remote over the IPv4 underlay.
    pub node_ip: [u8; 4],
    /// Bit set of `peer_flag::*`.
    pub flags: u32,
}

/// Most backends one frontend may have (slots 1..=MAX_BACKENDS in the services map).
pub const MAX_BACKENDS: u16 = 1024;

/// SNAT port choices tried before a new flow is refused (Cilium tries up to 128; podnet probes
/// linearly from a random start, so a handful suffices until the range is nearly full).
pub const SNAT_RETRIES: u32 = 32;

/// A packet extends its entry's lifetime only when that moves it by more than this, so busy
/// flows write their entry at most once per second instead of on every packet.
pub const CT_REFRESH_NS: u64 = NS_PER_SEC;

/// Nanoseconds in a second (`bpf_ktime_get_ns` counts nanoseconds).
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Key of the `CONNTRACK` map: a packet's 5-tuple as it is seen at the hook. Ports are in host
/// order so `bpftool` prints them readably; for ICMP echo the identifier stands in for the
/// source port of a request and the destination port of a reply (the other port is 0).
///
/// Generic over the address (`[u8; 4]`, the default, for `CONNTRACK`; `[u8; 16]` for
/// `CONNTRACK6`, see [`CtKey6`]), so one conntrack implementation serves both families.
/// Sizes: 16 bytes (IPv4), 40 bytes (IPv6); no hidden padding in either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey<A = [u8; 4]> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// An IPv6 address as the IPv6 NAT maps hold it: its 16 network-order bytes as four
/// native-endian words (each `u32::from_ne_bytes` of 4 bytes, so the same 16 bytes in
/// memory). Words, not bytes, so the programs copy and compare addresses four bytes at a time:
/// byte arrays were split into single bytes, each spilled to its own 8-byte stack slot.
pub type Addr6 = [u32; 4];

/// The [`Addr6`] of an address's 16 network-order bytes (the same memory).
pub const fn addr6_from_bytes(b: [u8; 16]) -> Addr6 {
    // SAFETY: both are 16 bytes of plain integers; every bit pattern is valid for either.
    unsafe { core::mem::transmute::<[u8; 16], Addr6>(b) }
}

/// The 16 network-order bytes of an [`Addr6`] (the same memory).
pub const fn addr6_to_bytes(a: Addr6) -> [u8; 16] {
    // SAFETY: as above.
    unsafe { core::mem::transmute::<Addr6, [u8; 16]>(a) }
}

/// Key of the `CONNTRACK6` map.
pub type CtKey6 = CtKey<Addr6>;
/// Value of the `CONNTRACK6` map.
pub type CtEntry6 = CtEntry<Addr6>;
/// An IPv6 translated tuple.
pub type CtNat6 = CtNat<Addr6>;

impl<A: Copy> CtKey<A> {
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

/// Value of the `CONNTRACK` map (and, with 16-byte addresses, of `CONNTRACK6`): what a packet
/// matching the key becomes. 24 bytes (IPv4), 48 bytes (IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<A = [u8; 4]> {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the entry is dead.
    pub expires_ns: u64,
    /// The translated tuple.
    pub nat: CtNat<A>,
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
pub struct CtNat<A = [u8; 4]> {
    pub saddr: A,
    pub daddr: A,
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
    /// A connection from outside the cluster routed straight to a pod's address: nothing is
    /// rewritten; the entry only tells the pod's replies from its own new traffic (which would
    /// be SNATed), as the kernel's conntrack does for masquerading.
    pub const ROUTED: u8 = 5;
    pub const NAMES: [&str; 6] = [
        "none",
        "snat",
        "dnat",
        "hairpin",
        "remote-backend",
        "routed",
    ];
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
    /// RST seen (TCP): nobody holds the tuple any more.
    pub const CLOSING: u8 = 2;
    /// FIN seen (TCP): whichever end closed first holds the tuple in TIME_WAIT for up to 60 s
    /// (Linux; 2 MSL elsewhere), so the flow keeps its tuple that long (see
    /// [`super::CtTimeouts::tcp_time_wait`]).
    pub const TIME_WAIT: u8 = 3;
    pub const NAMES: [&str; 4] = ["new", "established", "closing", "time_wait"];
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
/// The same two slots for `CONNTRACK6`.
pub const CT6_USAGE_PROGRAMS: u32 = 2;
pub const CT6_USAGE_COLLECTOR: u32 = 3;
pub const CT_USAGE_SLOTS: u32 = 4;

/// Live conntrack entries given both usage slots.
pub const fn ct_live(programs: &CtUsage, collector: &CtUsage) -> u64 {
    programs
        .inserted
        .saturating_sub(programs.removed)
        .saturating_sub(collector.removed)
}

/// Bits of [`NodeConfig::flags`].
pub mod config_flag {
    /// Set once userspace has written a complete configuration; until then the programs only
    /// count and pass packets.
    pub const READY: u32 = 1 << 0;
    /// Pods may only send IPv4 from their own address and MAC (`node init --anti-spoof`, on by
    /// default): anything else from a pod's veth is dropped as `drop_spoofed`.
    pub const ANTI_SPOOF: u32 = 1 << 1;
    /// Socket-level service balancing for the pods' sockets too (`cgroup` programs in the pods'
    /// namespaces listed in `POD_NETNS`); off, the pods' service traffic takes the TC path
    /// alone. The node's own sockets are always balanced at the socket (no TC hook sees them).
    pub const SOCKET_LB: u32 = 1 << 2;
}

/// Key of the `ENDPOINTS` hash: a local pod's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 4],
}

/// Key of the `ENDPOINTS6` hash: a local pod's IPv6 address, network order. The value is the
/// same [`Endpoint`] as the pod's IPv4 entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey6 {
    pub addr: [u8; 16],
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
    /// Set by the datapath (never cleared while the pod lives; `podnet` keeps it when it
    /// rewrites the entry) once the pod is the backend of a translated service flow: its
    /// packets to other local pods may be replies that must be translated back, so they are
    /// looked up in conntrack. A pod without it that sends to a local pod needs no lookup.
    pub const NAT_REPLIES: u32 = 1 << 1;
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
    /// A later fragment arriving on the uplink for the node IP before its datagram's first
    /// fragment (which carries the ports): it may be the node's own traffic, so it goes to the
    /// kernel unchanged (if it belonged to a translated flow, that datagram is lost).
    pub const PASS_FRAGMENT: u32 = 14;
    /// The conntrack table is at its limit: a new flow was refused.
    pub const DROP_CT_FULL: u32 = 15;
    /// No free SNAT port for this destination after `SNAT_RETRIES` tries.
    pub const DROP_NAT_NO_PORT: u32 = 16;
    /// Traffic leaving the cluster that cannot be translated (no ports: other protocols, ICMP
    /// other than echo): dropped so a pod address never leaks outside.
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
    /// Pod traffic to an address in the service CIDR that is no podnet service: handed to the
    /// kernel unchanged (never SNATed), for whatever else serves it.
    pub const PASS_SERVICE_CIDR: u32 = 25;
    /// A new connection to a service frontend with no backends, refused at once (TCP RST or
    /// ICMP port unreachable back to the client).
    pub const REJECT_NO_BACKEND: u32 = 26;
    /// A new connection to a ClusterIP on a port none of its services has, refused likewise.
    pub const REJECT_UNKNOWN_PORT: u32 = 27;
    /// A socket's `connect()` or `sendmsg()` to a service frontend (not a NodePort) sent
    /// straight to a backend (counted per call, bytes 0).
    pub const SOCK_SERVICE: u32 = 28;
    /// A reply's source (`recvmsg`) or a socket's peer (`getpeername`) translated back to the
    /// service frontend.
    pub const SOCK_REV_NAT: u32 = 29;
    /// A socket's `connect()` or `sendmsg()` to a frontend with no backends (or a ClusterIP
    /// port no service has) refused with ECONNREFUSED.
    pub const SOCK_REJECT: u32 = 30;
    /// Pod traffic to a service frontend, destination rewritten to a backend (no SNAT).
    pub const SERVICE_DNAT: u32 = 31;
    /// Pod traffic leaving the cluster for a masquerade exclusion (`non_masquerade_cidrs`):
    /// handed to the kernel with the pod's own address, never SNATed.
    pub const PASS_NON_MASQUERADE: u32 = 32;
    /// A packet podnet would route (translate, or forward to another node or from the uplink
    /// to a pod) whose TTL would reach 0: dropped and answered with ICMP time exceeded from
    /// the node's address facing the sender, as a router does.
    pub const DROP_TTL_EXCEEDED: u32 = 33;
    /// A pod's reply to a connection from outside the cluster routed straight to it, sent
    /// back as it is (not SNATed).
    pub const FORWARD_ROUTED_REPLY: u32 = 34;
    /// A later fragment of a datagram whose first fragment (which carries the ports) has not
    /// been seen, on a path that must translate it (SNAT from a pod, a service frontend):
    /// dropped, since it could be neither translated nor let out untranslated.
    pub const DROP_FRAG_OUT_OF_ORDER: u32 = 35;
    /// A TCP segment other than a SYN to a service frontend with no conntrack state (its flow
    /// was removed when its backend left the service): answered with a RST, so the client
    /// learns at once instead of retransmitting until it times out.
    pub const REJECT_CT_NO_STATE: u32 = 36;
    /// A packet from the uplink too big for the pod it is for (the pod's MTU is smaller, e.g.
    /// 50 bytes less in overlay mode), with "don't fragment" set: answered with ICMP
    /// fragmentation needed carrying the pod's MTU, from the node IP, as a router would.
    pub const REJECT_FRAG_NEEDED: u32 = 37;
    /// The same without "don't fragment": translated and handed to the kernel, which forwards
    /// it to the pod in fragments. IPv6 too big for its pod (routers never fragment IPv6)
    /// goes to the kernel too, which answers ICMPv6 packet too big.
    pub const PASS_TOO_BIG: u32 = 38;
    /// IPv6 to a local pod, delivered straight to it (`bpf_redirect_peer`, or `bpf_redirect`
    /// where a peer redirect is impossible).
    pub const FORWARD_LOCAL6: u32 = 39;
    /// With anti-spoofing on: a Neighbor Advertisement from a pod for an address that is not
    /// its own (or naming another MAC than the pod's), or ICMPv6 hidden behind more extension
    /// headers than the program looks through. Dropped, so no neighbour table learns it.
    pub const DROP_ND_SPOOFED: u32 = 40;
    /// With anti-spoofing on: a Router Advertisement or Redirect from a pod (messages only a
    /// router sends): dropped, so a pod never becomes the node's or other pods' router.
    pub const DROP_ROUTER_ADVERT: u32 = 41;
    /// An IPv6 frame whose tail call into its IPv6 program failed (the `IPV6_PROGS` slot
    /// empty): handed to the kernel unchanged, never dropped.
    pub const PASS_IPV6_NO_PROG: u32 = 42;
    /// A pod's IPv6 leaving the cluster, source rewritten to the node's IPv6 address.
    pub const SNAT6: u32 = 43;
    /// A reply to masqueraded IPv6, destination rewritten back to the pod.
    pub const SNAT6_REPLY: u32 = 44;
    /// An ICMPv6 error about a masqueraded IPv6 flow, translated back (outer and quoted
    /// headers).
    pub const ICMP6_ERROR_TRANSLATED: u32 = 45;
    /// A pod's IPv6 to a masquerade exclusion (`NON_MASQUERADE6`): to the kernel unchanged.
    pub const PASS_NON_MASQUERADE6: u32 = 46;
    /// An IPv6 packet on a NAT path that cannot be translated: an extension header chain
    /// podnet does not follow, a later fragment whose first fragment was not seen, or a
    /// protocol without ports. Dropped when it would have to be translated.
    pub const DROP_NAT6_UNSUPPORTED: u32 = 47;
    /// IPv6 from a pod to another node's pod (or to another node itself, both in `PEERS6`),
    /// sent by the program, addresses untouched and one hop less: natively routed (FIB lookup
    /// towards the node's IPv6 address, redirect out of the interface it names) or
    /// encapsulated in VXLAN to the node (over the IPv4 or the IPv6 underlay).
    pub const FORWARD_REMOTE_NODE6: u32 = 48;
    /// IPv6 from another node (its pods or itself, in `PEERS6`), off the uplink or out of the
    /// tunnel, delivered straight into a local pod, one hop less.
    pub const FORWARD_UPLINK_TO_POD6: u32 = 49;
    /// IPv6 from outside the node to a service frontend (a NodePort on the node's IPv6
    /// address, an IPv6 LoadBalancer IP or externalIP), destination rewritten to a local
    /// backend pod (the client's address kept) and delivered into it.
    pub const DNAT6: u32 = 50;
    /// A backend pod's reply to such IPv6 service traffic, source rewritten back to the
    /// frontend the client used.
    pub const DNAT6_REPLY: u32 = 51;
    /// A new IPv6 connection from outside to a service frontend whose backends are all on
    /// other nodes: not forwarded there yet (IPv6 service traffic from outside reaches local
    /// backends only), dropped.
    pub const DROP_DNAT6_REMOTE_BACKEND: u32 = 52;
    /// Number of reasons in use (< [`super::STATS_SLOTS`]).
    pub const COUNT: u32 = 53;

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
        "pass_service_cidr",
        "reject_no_backend",
        "reject_unknown_port",
        "sock_service",
        "sock_rev_nat",
        "sock_reject",
        "service_dnat",
        "pass_non_masquerade",
        "drop_ttl_exceeded",
        "forward_routed_reply",
        "drop_frag_out_of_order",
        "reject_ct_no_state",
        "reject_frag_needed",
        "pass_too_big",
        "forward_local6",
        "drop_nd_spoofed",
        "drop_router_advert",
        "pass_ipv6_no_prog",
        "snat6",
        "snat6_reply",
        "icmp6_error_translated",
        "pass_non_masquerade6",
        "drop_nat6_unsupported",
        "forward_remote_node6",
        "forward_uplink_to_pod6",
        "dnat6",
        "dnat6_reply",
        "drop_dnat6_remote_backend",
    ];
}

/// Drop and refusal events (`podnet monitor`): what the programs report, how often, and how
/// much of the packet.
pub mod monitor {
    use super::reason;

    /// Bytes of the ring buffer `MONITOR_EVENTS` (a power of two, a multiple of the page size):
    /// 256 KiB holds 1,560 events of [`EVENT_LEN`] plus the ring's 8-byte record header, over
    /// three quarters of a second of both CPUs reporting at their limit, while a reader wakes
    /// up on each event. A full ring costs nothing more: the event is counted as lost.
    pub const RING_BYTES: u32 = 256 * 1024;

    /// Events each CPU may report per [`WINDOW_NS`]: a flood of drops reports this many a
    /// second per CPU (2,000 lines a second on a two-CPU node, 320 KB/s of events), and every
    /// further drop costs only a per-CPU lookup, a comparison and two counter increments (and
    /// one clock read in [`HELD_BACK_PER_CLOCK_READ`]).
    pub const EVENTS_PER_WINDOW: u32 = 1_000;
    /// The rate limit's window: one second.
    pub const WINDOW_NS: u64 = 1_000_000_000;
    /// Once a CPU has spent its budget, it looks at the clock (to see whether a new window
    /// began) only for every 16th packet it holds back: the clock read was most of a held-back
    /// packet's cost (about 35 of 40 ns measured here). A new window's first events may thus be
    /// held back too, at most 15 per CPU, counted like the others.
    pub const HELD_BACK_PER_CLOCK_READ: u32 = 16;

    /// Bytes of the packet each event carries, from the Ethernet header on: enough for
    /// Ethernet + IPv4 with options + an ICMP header quoting an IPv4 header and its ports
    /// (14 + 60 + 8 + 20 + 8 = 110). Userspace decodes addresses, ports and protocol from them.
    pub const CAPTURE_LEN: usize = 128;

    /// Which program saw the packet ([`DropEvent::hook`]).
    pub mod hook {
        /// `from_pod`: the packet came from a pod (ingress of its host-side veth).
        pub const FROM_POD: u8 = 0;
        /// `from_uplink`: the packet came from the network (uplink or tunnel device).
        pub const FROM_UPLINK: u8 = 1;
    }

    /// One dropped or refused packet, as the programs write it into `MONITOR_EVENTS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DropEvent {
        /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was counted.
        pub ktime_ns: u64,
        /// The `reason::*` it was counted under.
        pub reason: u32,
        /// ifindex of the interface the program runs on.
        pub ifindex: u32,
        /// Length of the packet when it was counted (after any rewrite).
        pub packet_len: u32,
        /// Events this CPU held back (rate limit or full ring) since its previous event.
        pub suppressed_before: u32,
        /// Bytes of `data` that are the packet's (0 if it could not be read).
        pub captured: u16,
        /// `hook::*`.
        pub hook: u8,
        /// 1 when the packet was dropped (`TC_ACT_SHOT`); 0 when it went on, e.g. a refused
        /// connection's packet turned into its answer (TCP RST, ICMP port unreachable).
        pub dropped: u8,
        pub _pad: u32,
        /// The packet's first bytes, from the Ethernet header; as the packet was when counted,
        /// so a refused packet that was answered holds the answer.
        pub data: [u8; CAPTURE_LEN],
    }

    /// Size of a [`DropEvent`] record.
    pub const EVENT_LEN: usize = core::mem::size_of::<DropEvent>();

    /// Value of the per-CPU `MONITOR_BUDGET` array (one entry): the rate limit's state and its
    /// totals.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MonitorBudget {
        /// Start of the current window.
        pub window_start_ns: u64,
        /// Events reported (or tried, when the ring was full) in the current window.
        pub sent: u32,
        /// Events held back since the last one reported (copied into the next event).
        pub pending: u32,
        /// Events ever held back by the rate limit.
        pub suppressed: u64,
        /// Events ever lost to a full ring buffer (nobody reading fast enough, or nobody reading).
        pub lost: u64,
    }

    const fn starts_with(name: &str, prefix: &str) -> bool {
        let (name, prefix) = (name.as_bytes(), prefix.as_bytes());
        if name.len() < prefix.len() {
            return false;
        }
        let mut i = 0;
        while i < prefix.len() {
            if name[i] != prefix[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Whether packets counted under `name` are reported: every `drop_*` and `reject_*`
    /// reason (and, whatever the reason, every packet a program drops).
    pub const fn is_reported_name(name: &str) -> bool {
        starts_with(name, "drop_") || starts_with(name, "reject_")
    }

    /// Bit `r` set for each reason `r` whose packets are reported ([`is_reported_name`]),
    /// derived from the names so a new `drop_*` reason is reported without a change here.
    pub const REPORTED: u64 = {
        let mut mask = 0u64;
        let mut i = 0;
        while i < reason::NAMES.len() {
            if is_reported_name(reason::NAMES[i]) {
                mask |= 1 << i;
            }
            i += 1;
        }
        mask
    };
    /// [`REPORTED`] has a bit for every stats slot.
    const _: () = assert!(super::STATS_SLOTS <= u64::BITS);

    /// Whether a packet counted under `why` is reported regardless of its verdict.
    #[inline(always)]
    pub const fn reason_reported(why: u32) -> bool {
        (REPORTED >> (why & 63)) & 1 != 0
    }
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
    /// ICMP destination unreachable code "port unreachable".
    pub const ICMP_PORT_UNREACH: u8 = 3;
    /// ICMP destination unreachable code "fragmentation needed and DF set".
    pub const ICMP_FRAG_NEEDED: u8 = 4;
    /// ICMP time exceeded code "TTL exceeded in transit".
    pub const ICMP_EXC_TTL: u8 = 0;
    /// IPv4 `frag_off` bit "don't fragment".
    pub const IP_DF: u16 = 0x4000;
    /// TTL of packets the programs build themselves (TCP RST, ICMP errors).
    pub const DEFAULT_TTL: u8 = 64;
    /// IPv4 `frag_off` bits: more fragments, and the offset mask.
    pub const IP_MF: u16 = 0x2000;
    pub const IP_OFFSET: u16 = 0x1fff;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    /// The fixed IPv6 header.
    pub const IPV6_HLEN: usize = 40;
    /// IPv6 extension headers the programs step over (next header, length in 8-octet units
    /// after the first 8): hop-by-hop options, routing, destination options.
    pub const IPV6_NEXTHDR_HOP: u8 = 0;
    pub const IPV6_NEXTHDR_ROUTING: u8 = 43;
    pub const IPV6_NEXTHDR_DEST: u8 = 60;
    /// Extension headers looked through before giving up on finding the upper layer: real
    /// traffic carries one or two; a chain longer than this cannot be checked for Neighbor
    /// Discovery, so with anti-spoofing on it is dropped.
    pub const IPV6_EXT_HEADERS_MAX: usize = 4;
    pub const IPPROTO_ICMPV6: u8 = 58;
    /// Neighbor Discovery (RFC 4861) message types.
    pub const ND_ROUTER_SOLICIT: u8 = 133;
    pub const ND_ROUTER_ADVERT: u8 = 134;
    pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
    pub const ND_NEIGHBOR_ADVERT: u8 = 136;
    pub const ND_REDIRECT: u8 = 137;
    /// Offset of a Neighbor Advertisement's target address in its ICMPv6 message, and of its
    /// first option.
    pub const ND_TARGET_OFF: usize = 8;
    pub const ND_NA_OPTIONS_OFF: usize = 24;
    /// ND option "target link-layer address", and its length (in 8-octet units) for Ethernet.
    pub const ND_OPT_TARGET_LL_ADDR: u8 = 2;
    pub const ND_OPT_LL_ADDR_LEN_ETHER: u8 = 1;
    /// The IPv6 fragment header's next-header value, its length, and its offset field's bits.
    pub const IPV6_NEXTHDR_FRAGMENT: u8 = 44;
    pub const IPV6_FRAG_HLEN: usize = 8;
    pub const IPV6_FRAG_OFFSET_MASK: u16 = 0xfff8;
    pub const IPV6_FRAG_MORE: u16 = 0x0001;
    /// ICMPv6 types (RFC 4443): errors, then echo.
    pub const ICMPV6_DEST_UNREACH: u8 = 1;
    pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
    pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
    pub const ICMPV6_PARAM_PROBLEM: u8 = 4;
    pub const ICMPV6_ECHO_REQUEST: u8 = 128;
    pub const ICMPV6_ECHO_REPLY: u8 = 129;
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::{
        AffinityKey, AffinityValue, Counter, CtEntry, CtKey, CtUsage, Endpoint, EndpointKey,
        EndpointKey6, FragKey, FragPorts, NodeConfig, Peer, Peer6, PodNetns, RevNat,
        ServiceBackend, ServiceKey, ServiceValue, SockRevNat, SockRevNatKey,
    };
    use super::{
        AffinityKey6, AffinityValue6, RevNat6, ServiceBackend6, ServiceKey6, SockRevNat6,
        SockRevNatKey6,
    };

    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every padding
    // byte spelled out as a field, so any bit pattern is valid and there are no hidden bytes.
    unsafe impl aya::Pod for NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: as above (16-byte addresses; no hidden padding, see the layout test).
    unsafe impl aya::Pod for super::CtKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtUsage {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceBackend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodNetns {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::monitor::DropEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::monitor::MonitorBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceBackend6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNat6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNatKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevNat6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn node_config_layout() {
        assert_eq!(size_of::<NodeConfig>(), 160);
        assert_eq!(offset_of!(NodeConfig, node_ip6), 104);
        assert_eq!(offset_of!(NodeConfig, cluster_prefix_len6), 153);
        assert_eq!(offset_of!(NodeConfig, ct6_limit), 156);
        assert_eq!(offset_of!(NodeConfig, service_cidr), 96);
        assert_eq!(offset_of!(NodeConfig, service_prefix_len), 100);
        assert_eq!(offset_of!(NodeConfig, snat_port_min), 44);
        assert_eq!(offset_of!(NodeConfig, ct_limit), 48);
        assert_eq!(offset_of!(NodeConfig, ct_timeouts), 52);
        assert_eq!(offset_of!(NodeConfig, tunnel_ifindex), 80);
        assert_eq!(offset_of!(NodeConfig, netns_cookie), 88);
        assert_eq!(offset_of!(NodeConfig, node_ip), 8);
        assert_eq!(offset_of!(NodeConfig, pod_cidr), 16);
        assert_eq!(offset_of!(NodeConfig, pod_prefix_len), 20);
        assert_eq!(offset_of!(NodeConfig, cluster_cidr), 24);
        assert_eq!(offset_of!(NodeConfig, gateway_mac), 28);
        assert_eq!(offset_of!(NodeConfig, uplink_ifindex), 36);
        assert_eq!(offset_of!(NodeConfig, bridge_ifindex), 40);
    }

    #[test]
    fn peer6_layout() {
        assert_eq!(size_of::<Peer6>(), 24);
        assert_eq!(offset_of!(Peer6, node_ip), 16);
        assert_eq!(offset_of!(Peer6, flags), 20);
    }

    #[test]
    fn endpoint_layout() {
        assert_eq!(size_of::<EndpointKey>(), 4);
        assert_eq!(size_of::<EndpointKey6>(), 16);
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
        assert_eq!(size_of::<CtKey6>(), 40);
        assert_eq!(offset_of!(CtKey6, sport), 32);
        assert_eq!(offset_of!(CtKey6, proto), 36);
        assert_eq!(size_of::<CtEntry6>(), 48);
        assert_eq!(offset_of!(CtEntry6, kind), 44);
        assert_eq!(size_of::<FragKey6>(), 40);
    }

    #[test]
    fn service_layouts() {
        assert_eq!(size_of::<ServiceKey>(), 12);
        assert_eq!(offset_of!(ServiceKey, port), 4);
        assert_eq!(offset_of!(ServiceKey, proto), 8);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(offset_of!(ServiceValue, flags), 8);
        assert_eq!(offset_of!(ServiceValue, affinity_timeout), 12);
        assert_eq!(size_of::<ServiceBackend>(), 8);
        assert_eq!(size_of::<RevNat>(), 12);
        assert_eq!(size_of::<SockRevNatKey>(), 16);
        assert_eq!(size_of::<SockRevNat>(), 12);
        assert_eq!(size_of::<PodNetns>(), 24);
        assert_eq!(offset_of!(PodNetns, addr6), 8);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(offset_of!(AffinityValue, backend), 8);
    }

    #[test]
    fn service6_layouts() {
        assert_eq!(size_of::<ServiceKey6>(), 24);
        assert_eq!(offset_of!(ServiceKey6, port), 16);
        assert_eq!(offset_of!(ServiceKey6, proto), 20);
        assert_eq!(size_of::<ServiceBackend6>(), 20);
        assert_eq!(size_of::<RevNat6>(), 24);
        assert_eq!(size_of::<SockRevNatKey6>(), 32);
        assert_eq!(offset_of!(SockRevNatKey6, addr), 8);
        assert_eq!(size_of::<SockRevNat6>(), 24);
        assert_eq!(size_of::<AffinityKey6>(), 20);
        assert_eq!(size_of::<AffinityValue6>(), 32);
        assert_eq!(offset_of!(AffinityValue6, backend), 8);
    }

    #[test]
    fn backend_ids_fit_and_never_collide() {
        assert_eq!(backend_id(1, 0, 1), BACKEND_IDS_PER_SERVICE);
        assert_eq!(
            backend_id(1, 1, MAX_BACKENDS),
            2 * BACKEND_IDS_PER_SERVICE - 1
        );
        assert!(backend_id(MAX_SERVICE_ID, 1, MAX_BACKENDS) < u32::MAX);
        assert_eq!(backend_id(2, 0, 1), backend_id(1, 1, MAX_BACKENDS) + 1);
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
    fn monitor_layouts_and_reported_reasons() {
        assert_eq!(size_of::<monitor::DropEvent>(), 32 + monitor::CAPTURE_LEN);
        assert_eq!(offset_of!(monitor::DropEvent, data), 32);
        assert_eq!(size_of::<monitor::MonitorBudget>(), 32);
        const { assert!(STATS_SLOTS <= 64) };
        assert!(monitor::reason_reported(reason::DROP_SPOOFED));
        assert!(monitor::reason_reported(reason::REJECT_NO_BACKEND));
        assert!(monitor::reason_reported(reason::DROP_CT_FULL));
        assert!(!monitor::reason_reported(reason::SNAT));
        assert!(!monitor::reason_reported(reason::SOCK_REJECT));
        assert!(!monitor::reason_reported(reason::PASS_MALFORMED));
        assert!(monitor::RING_BYTES.is_power_of_two());
    }

    #[test]
    fn fragment_layout() {
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(offset_of!(FragKey, id), 8);
        assert_eq!(offset_of!(FragKey, proto), 10);
        assert_eq!(size_of::<FragPorts>(), 4);
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
