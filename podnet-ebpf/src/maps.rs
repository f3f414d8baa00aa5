//! The maps, BTF-defined so `bpftool map dump` prints field names. The sizes here are the
//! compiled-in defaults; `podnet node init` sets the real ones at load time from the node's
//! configuration (see `podnet_ebpf::abi` for why each is sized as it is).

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{
        Array, HashMap, HashOfMaps, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    macros::btf_map,
};
use podnet_ebpf::abi::{
    AFFINITY_MAX, AFFINITY6_MAX, Addr6, AffinityKey, AffinityKey6, AffinityValue, AffinityValue6,
    CT_USAGE_SLOTS, Counter, CtEntry, CtEntry6, CtKey, CtKey6, CtUsage, DEFAULT_CT_LIMIT,
    DEFAULT_CT6_LIMIT, DEFAULT_ENDPOINTS_MAX, DEFAULT_PEERS_MAX, DEFAULT_SERVICES_MAX, Endpoint,
    EndpointKey, EndpointKey6, FRAGMENTS_MAX, FRAGMENTS6_MAX, FragKey, FragKey6, FragPorts,
    MAGLEV_MAX, MAGLEV_TABLE_SIZE, NON_MASQUERADE_MAX, NON_MASQUERADE6_MAX, NodeConfig,
    POD_NETNS_MAX, Peer, PodNetns, REV_NAT_MAX, REV_NAT6_MAX, RevNat, RevNat6, SOCK_REV_NAT_MAX,
    SOCK_REV_NAT6_MAX, STATS_SLOTS, ServiceBackend, ServiceBackend6, ServiceKey, ServiceKey6,
    ServiceValue, SockRevNat, SockRevNat6, SockRevNatKey, SockRevNatKey6, backends_map_entries,
    backends6_map_entries, endpoints6_map_entries, ipv6_prog,
    monitor::{DropEvent, MonitorBudget, RING_BYTES},
    services6_map_entries,
};

/// Node configuration: a single entry.
#[btf_map]
pub static CONFIG: Array<NodeConfig, 1> = Array::new();

/// Local pods by IPv4 address.
#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { DEFAULT_ENDPOINTS_MAX as usize }> =
    HashMap::new();

/// Local pods by IPv6 address (sized like `ENDPOINTS`, allocated as pods are added; see
/// `podnet_ebpf::abi::endpoints6_map_entries`).
#[btf_map]
pub static ENDPOINTS6: HashMap<
    EndpointKey6,
    Endpoint,
    { endpoints6_map_entries(DEFAULT_ENDPOINTS_MAX) as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Per-CPU packet and byte counters, indexed by `abi::reason`.
#[btf_map]
pub static STATS: PerCpuArray<Counter, { STATS_SLOTS as usize }> = PerCpuArray::new();

/// Conntrack and NAT state, two entries per flow. An LRU so that even a table nobody collects
/// can never grow past its size; admission control (`CT_USAGE`) keeps live flows from being
/// evicted in normal operation.
#[btf_map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { DEFAULT_CT_LIMIT as usize }> = LruHashMap::new();

/// IPv6 conntrack and NAT state: `CONNTRACK`'s twin with 16-byte addresses (same entries,
/// same code, see `crate::family`). Sized on its own (`podnet_ebpf::abi::DEFAULT_CT6_LIMIT`).
#[btf_map]
pub static CONNTRACK6: LruHashMap<CtKey6, CtEntry6, { DEFAULT_CT6_LIMIT as usize }> =
    LruHashMap::new();

/// Conntrack occupancy counters: for each family one slot the programs write, one the
/// collector writes.
#[btf_map]
pub static CT_USAGE: Array<CtUsage, { CT_USAGE_SLOTS as usize }> = Array::new();

/// Flags of the service maps: elements are allocated as they are written, so a node pays for
/// the services it has, not for the 30,000-service capacity.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// Service frontends (slot 0: master entry) and their backend slots (slots 1..).
#[btf_map]
pub static SERVICES: HashMap<
    ServiceKey,
    ServiceValue,
    { DEFAULT_SERVICES_MAX as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Backends by id.
#[btf_map]
pub static BACKENDS: HashMap<
    u32,
    ServiceBackend,
    { backends_map_entries(DEFAULT_SERVICES_MAX) as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Frontends by service id.
#[btf_map]
pub static REV_NAT: HashMap<u32, RevNat, { REV_NAT_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// The socket-level balancer's reverse translation: (socket cookie, backend) -> frontend.
#[btf_map]
pub static SOCK_REV_NAT: LruHashMap<SockRevNatKey, SockRevNat, { SOCK_REV_NAT_MAX as usize }> =
    LruHashMap::new();

/// Session affinity: which backend each client of a `ClientIP` frontend last got, and when.
/// An LRU, so clients that went away make room by themselves.
#[btf_map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { AFFINITY_MAX as usize }> =
    LruHashMap::new();

/// Maglev lookup tables by service id: each inner array maps a flow hash (modulo its size) to
/// a backend id. Userspace builds a frontend's new table as a new array and swaps it in with
/// one update, so a packet sees the old table or the new one, never a mix.
#[btf_map]
pub static MAGLEV: HashOfMaps<
    u32,
    Array<u32, { MAGLEV_TABLE_SIZE as usize }>,
    { MAGLEV_MAX as usize },
    NO_PREALLOC,
> = HashOfMaps::new();

/// IPv6 service frontends and their backend slots (the IPv6 twin of `SERVICES`; sizes in
/// `podnet_ebpf::abi::services6_map_entries`).
#[btf_map]
pub static SERVICES6: HashMap<
    ServiceKey6,
    ServiceValue,
    { services6_map_entries(DEFAULT_SERVICES_MAX) as usize },
    NO_PREALLOC,
> = HashMap::new();

/// IPv6 backends by id.
#[btf_map]
pub static BACKENDS6: HashMap<
    u32,
    ServiceBackend6,
    { backends6_map_entries(DEFAULT_SERVICES_MAX) as usize },
    NO_PREALLOC,
> = HashMap::new();

/// IPv6 frontends by service id.
#[btf_map]
pub static REV_NAT6: HashMap<u32, RevNat6, { REV_NAT6_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// The socket-level balancer's reverse translation for IPv6 sockets.
#[btf_map]
pub static SOCK_REV_NAT6: LruHashMap<SockRevNatKey6, SockRevNat6, { SOCK_REV_NAT6_MAX as usize }> =
    LruHashMap::new();

/// Session affinity of IPv6 frontends.
#[btf_map]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue6, { AFFINITY6_MAX as usize }> =
    LruHashMap::new();

/// This node's pods' network namespaces, by netns cookie.
#[btf_map]
pub static POD_NETNS: HashMap<u64, PodNetns, { POD_NETNS_MAX as usize }, NO_PREALLOC> =
    HashMap::new();

/// Other nodes' pod CIDRs: longest prefix match on a destination address gives the node.
#[btf_map]
pub static PEERS: LpmTrie<[u8; 4], Peer, { DEFAULT_PEERS_MAX as usize }> = LpmTrie::new();

/// Masquerade exclusions: destinations pods reach with their own address (longest prefix
/// match; the value is `NON_MASQUERADE_PRESENT`).
#[btf_map]
pub static NON_MASQUERADE: LpmTrie<[u8; 4], u32, { NON_MASQUERADE_MAX as usize }> = LpmTrie::new();

/// IPv6 masquerade exclusions (longest prefix match on 16-byte addresses).
#[btf_map]
pub static NON_MASQUERADE6: LpmTrie<Addr6, u32, { NON_MASQUERADE6_MAX as usize }> = LpmTrie::new();

/// IPv6 fragments: the ports of each fragmented datagram's first fragment, for its later
/// fragments (as `FRAGMENTS` for IPv4).
#[btf_map]
pub static FRAGMENTS6: LruHashMap<FragKey6, FragPorts, { FRAGMENTS6_MAX as usize }> =
    LruHashMap::new();

/// Per-CPU working memory of the IPv6 NAT programs (`crate::nat6`): the tuple of a packet
/// starting a masqueraded flow, handed from `from_pod6_nat` to `from_pod6_snat`, and the tuple
/// its route is looked up with. Two entries per CPU; not pinned (nothing outlives a packet).
#[btf_map]
pub static NAT6_SCRATCH: PerCpuArray<CtKey6, 2> = PerCpuArray::new();

/// Drop and refusal events for `podnet monitor` (see `podnet_ebpf::abi::monitor` for the size).
#[btf_map]
pub static MONITOR_EVENTS: RingBuf<DropEvent, { RING_BYTES as usize }> = RingBuf::new();

/// The per-CPU rate limit of `MONITOR_EVENTS`: one entry.
#[btf_map]
pub static MONITOR_BUDGET: PerCpuArray<MonitorBudget, 1> = PerCpuArray::new();

/// IPv4 fragments: the ports of each fragmented datagram's first fragment, for its later
/// fragments (which carry no L4 header). An LRU: entries are never removed, the oldest
/// datagrams make room for new ones.
#[btf_map]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts, { FRAGMENTS_MAX as usize }> =
    LruHashMap::new();

/// The IPv6 programs (`from_pod6`, `from_uplink6`), by `ipv6_prog` slot, which `from_pod` and
/// `from_uplink` tail-call for IPv6 frames. One slot per program; pinned, so its entries live
/// as long as the node (the kernel empties a program array whose last user reference goes).
#[btf_map]
pub static IPV6_PROGS: ProgramArray<{ ipv6_prog::SLOTS as usize }> = ProgramArray::new();

/// Non-zero turns on per-packet debug logging. Set at load time (`podnet node init --debug`);
/// it lives in read-only data, so with 0 the verifier removes the logging code entirely.
#[unsafe(no_mangle)]
pub static DEBUG: Global<u8> = Global::new(0);

#[inline(always)]
pub fn debug_enabled() -> bool {
    DEBUG.load() != 0
}

/// The node's configuration, if userspace has written a complete one.
#[inline(always)]
pub fn ready_config() -> Option<&'static NodeConfig> {
    CONFIG
        .get(0)
        .filter(|cfg| cfg.flags & podnet_ebpf::abi::config_flag::READY != 0)
}
