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
pub const ABI_VERSION: u32 = 1;

/// Map names, as pinned under the node's bpffs directory (`<pin_dir>/<name>`).
pub mod map_name {
    pub const CONFIG: &str = "CONFIG";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const STATS: &str = "STATS";
    /// Every map, for pinning, listing and cleanup.
    pub const ALL: [&str; 3] = [CONFIG, ENDPOINTS, STATS];
}

/// Program names (the Rust function names of the classifiers).
pub mod program_name {
    /// Ingress of a pod's host-side veth: everything the pod sends.
    pub const FROM_POD: &str = "from_pod";
    pub const ALL: [&str; 1] = [FROM_POD];
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
}

/// Bits of [`NodeConfig::flags`].
pub mod config_flag {
    /// Set once userspace has written a complete configuration; until then the programs only
    /// count and pass packets.
    pub const READY: u32 = 1 << 0;
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
    /// Number of reasons in use (< [`super::STATS_SLOTS`]).
    pub const COUNT: u32 = 8;

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
    ];
}

/// Protocol constants used by the programs, named instead of written as numbers.
pub mod proto {
    pub const ETH_HLEN: usize = 14;
    pub const ETH_P_IP: u16 = 0x0800;
    pub const IPV4_MIN_HLEN: usize = 20;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::{Counter, Endpoint, EndpointKey, NodeConfig};

    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every padding
    // byte spelled out as a field, so any bit pattern is valid and there are no hidden bytes.
    unsafe impl aya::Pod for NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn node_config_layout() {
        assert_eq!(size_of::<NodeConfig>(), 44);
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
