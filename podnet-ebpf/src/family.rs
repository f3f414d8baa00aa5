//! The address families conntrack serves, by their address type: `[u8; 4]` (IPv4,
//! `CONNTRACK`) and `Addr6` (IPv6, `CONNTRACK6`). Conntrack's entries, state machine,
//! timeouts, admission, port search and eviction are written once over [`Family`] and
//! monomorphised per family; this module holds what differs: the map, the occupancy slots,
//! the admission limit, and how an address enters the port search's hash.

use podnet_ebpf::abi::{
    Addr6, CT_USAGE_COLLECTOR, CT_USAGE_PROGRAMS, CT6_USAGE_COLLECTOR, CT6_USAGE_PROGRAMS, CtEntry,
    CtKey, NodeConfig,
};

use crate::maps::{CONNTRACK, CONNTRACK6};

/// An address family, implemented by its address type.
pub trait Family: Copy + PartialEq + 'static {
    /// The `CT_USAGE` slot the programs count this family's entries in.
    const USAGE_PROGRAMS: u32;
    /// The `CT_USAGE` slot the collector counts its removals in.
    const USAGE_COLLECTOR: u32;

    /// Entries admitted before new flows are refused.
    fn limit(cfg: &NodeConfig) -> u32;

    /// The family's conntrack entry for `key`.
    fn get_ptr_mut(key: &CtKey<Self>) -> Option<*mut CtEntry<Self>>;

    /// Inserts or replaces (`flags`: `BPF_ANY`, `BPF_NOEXIST`) an entry.
    fn insert(key: &CtKey<Self>, entry: &CtEntry<Self>, flags: u64) -> Result<(), i32>;

    /// Removes an entry.
    fn remove(key: &CtKey<Self>) -> Result<(), i32>;

    /// A 32-bit digest of an address, for the port search's starting point.
    fn digest(addr: &Self) -> u32;
}

impl Family for [u8; 4] {
    const USAGE_PROGRAMS: u32 = CT_USAGE_PROGRAMS;
    const USAGE_COLLECTOR: u32 = CT_USAGE_COLLECTOR;

    #[inline(always)]
    fn limit(cfg: &NodeConfig) -> u32 {
        cfg.ct_limit
    }

    #[inline(always)]
    fn get_ptr_mut(key: &CtKey<Self>) -> Option<*mut CtEntry<Self>> {
        CONNTRACK.get_ptr_mut(key)
    }

    #[inline(always)]
    fn insert(key: &CtKey<Self>, entry: &CtEntry<Self>, flags: u64) -> Result<(), i32> {
        CONNTRACK.insert(key, entry, flags)
    }

    #[inline(always)]
    fn remove(key: &CtKey<Self>) -> Result<(), i32> {
        CONNTRACK.remove(key)
    }

    #[inline(always)]
    fn digest(addr: &Self) -> u32 {
        u32::from_be_bytes(*addr)
    }
}

impl Family for Addr6 {
    const USAGE_PROGRAMS: u32 = CT6_USAGE_PROGRAMS;
    const USAGE_COLLECTOR: u32 = CT6_USAGE_COLLECTOR;

    #[inline(always)]
    fn limit(cfg: &NodeConfig) -> u32 {
        cfg.ct6_limit
    }

    #[inline(always)]
    fn get_ptr_mut(key: &CtKey<Self>) -> Option<*mut CtEntry<Self>> {
        CONNTRACK6.get_ptr_mut(key)
    }

    #[inline(always)]
    fn insert(key: &CtKey<Self>, entry: &CtEntry<Self>, flags: u64) -> Result<(), i32> {
        CONNTRACK6.insert(key, entry, flags)
    }

    #[inline(always)]
    fn remove(key: &CtKey<Self>) -> Result<(), i32> {
        CONNTRACK6.remove(key)
    }

    #[inline(always)]
    fn digest(addr: &Self) -> u32 {
        // The four words folded: the interface identifier and the prefix both count.
        addr[0] ^ addr[1] ^ addr[2] ^ addr[3]
    }
}
