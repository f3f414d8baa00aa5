//! `CONNTRACK` and `CONNTRACK6` (the flow tables, IPv4 and IPv6) and `CT_USAGE` (their
//! occupancy counters). The tables share one entry layout, generic over the address
//! ([`CtFamily`]: `[u8; 4]` or `[u8; 16]`), so the operations on them are written once.

use std::net::IpAddr;

use podnet_ebpf::abi::{
    Addr6, CT_USAGE_COLLECTOR, CT_USAGE_PROGRAMS, CT6_USAGE_COLLECTOR, CT6_USAGE_PROGRAMS, CtEntry,
    CtKey, CtUsage, NodeConfig, map_name,
};

use super::{PinnedMaps, is_not_found};
use crate::datapath::{DatapathError, batch};

impl PinnedMaps {
    /// Usage as the programs and the collector recorded it: `(programs, collector)`.
    pub fn ct_usage(&self) -> Result<(CtUsage, CtUsage), DatapathError> {
        let get = |slot| {
            self.ct_usage
                .get(&slot, 0)
                .map_err(Self::map_err(map_name::CT_USAGE))
        };
        Ok((get(CT_USAGE_PROGRAMS)?, get(CT_USAGE_COLLECTOR)?))
    }

    /// Adds `n` to the collector's removed count. Only the collector writes this slot.
    pub fn ct_collected(&mut self, n: u64) -> Result<(), DatapathError> {
        let (_, mut collector) = self.ct_usage()?;
        collector.removed += n;
        self.ct_usage
            .set(CT_USAGE_COLLECTOR, collector, 0)
            .map_err(Self::map_err(map_name::CT_USAGE))
    }

    /// Every conntrack entry, read in batches (`BPF_MAP_LOOKUP_BATCH`, thousands of entries a
    /// system call) where the kernel offers them, else one entry at a time. Entries that vanish
    /// during the walk are skipped.
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, DatapathError> {
        use std::os::fd::AsFd as _;

        use aya::maps::IterableMap as _;
        match batch::lookup_all(self.conntrack.map().fd().as_fd(), map_name::CONNTRACK) {
            Err(DatapathError::Io { source, .. }) if batch::unsupported(&source) => {
                self.ct_entries_one_by_one()
            }
            read => read,
        }
    }

    /// [`Self::ct_entries`] on a kernel without batch lookups (before 5.6).
    fn ct_entries_one_by_one(&self) -> Result<Vec<(CtKey, CtEntry)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.conntrack.iter() {
            match item {
                Ok(pair) => out.push(pair),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(Self::map_err(map_name::CONNTRACK)(source)),
            }
        }
        Ok(out)
    }

    /// Removes a conntrack entry; `Ok(false)` if it was already gone.
    pub fn ct_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        match self.conntrack.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::CONNTRACK)(source)),
        }
    }
}

/// Every entry of a conntrack table of address `A`.
pub type CtEntries<A> = Vec<(CtKey<A>, CtEntry<A>)>;

/// A conntrack table, by its address type: what differs between `CONNTRACK` and
/// `CONNTRACK6`.
pub trait CtFamily: Copy + Eq + std::hash::Hash + 'static {
    /// The table's map name.
    const MAP: &'static str;
    /// The `CT_USAGE` slots of the programs and of the collector.
    const USAGE_PROGRAMS: u32;
    const USAGE_COLLECTOR: u32;

    /// Every entry (see [`PinnedMaps::ct_entries`]).
    fn entries(maps: &PinnedMaps) -> Result<CtEntries<Self>, DatapathError>;
    /// The entry for `key`, if any.
    fn get(maps: &PinnedMaps, key: &CtKey<Self>) -> Option<CtEntry<Self>>;
    /// Removes an entry; `Ok(false)` if it was already gone.
    fn remove(maps: &mut PinnedMaps, key: &CtKey<Self>) -> Result<bool, DatapathError>;
    /// The admission limit in the node's configuration.
    fn limit(config: &NodeConfig) -> u32;
    /// The address as a standard one.
    fn ip(addr: Self) -> IpAddr;
}

impl PinnedMaps {
    /// Usage of table `A` as the programs and the collector recorded it.
    pub fn ct_usage_of<A: CtFamily>(&self) -> Result<(CtUsage, CtUsage), DatapathError> {
        let get = |slot| {
            self.ct_usage
                .get(&slot, 0)
                .map_err(Self::map_err(map_name::CT_USAGE))
        };
        Ok((get(A::USAGE_PROGRAMS)?, get(A::USAGE_COLLECTOR)?))
    }

    /// Adds `n` to table `A`'s collector count.
    pub fn ct_collected_of<A: CtFamily>(&mut self, n: u64) -> Result<(), DatapathError> {
        let (_, mut collector) = self.ct_usage_of::<A>()?;
        collector.removed += n;
        self.ct_usage
            .set(A::USAGE_COLLECTOR, collector, 0)
            .map_err(Self::map_err(map_name::CT_USAGE))
    }
}

impl CtFamily for [u8; 4] {
    const MAP: &'static str = map_name::CONNTRACK;
    const USAGE_PROGRAMS: u32 = CT_USAGE_PROGRAMS;
    const USAGE_COLLECTOR: u32 = CT_USAGE_COLLECTOR;

    fn entries(maps: &PinnedMaps) -> Result<CtEntries<Self>, DatapathError> {
        maps.ct_entries()
    }

    fn get(maps: &PinnedMaps, key: &CtKey<Self>) -> Option<CtEntry<Self>> {
        maps.conntrack.get(key, 0).ok()
    }

    fn remove(maps: &mut PinnedMaps, key: &CtKey<Self>) -> Result<bool, DatapathError> {
        maps.ct_remove(key)
    }

    fn limit(config: &NodeConfig) -> u32 {
        config.ct_limit
    }

    fn ip(addr: Self) -> IpAddr {
        IpAddr::from(addr)
    }
}

impl CtFamily for Addr6 {
    const MAP: &'static str = map_name::CONNTRACK6;
    const USAGE_PROGRAMS: u32 = CT6_USAGE_PROGRAMS;
    const USAGE_COLLECTOR: u32 = CT6_USAGE_COLLECTOR;

    fn entries(maps: &PinnedMaps) -> Result<CtEntries<Self>, DatapathError> {
        use std::os::fd::AsFd as _;

        use aya::maps::IterableMap as _;
        match batch::lookup_all(maps.conntrack6.map().fd().as_fd(), map_name::CONNTRACK6) {
            Err(DatapathError::Io { source, .. }) if batch::unsupported(&source) => {
                let mut out = Vec::new();
                for item in maps.conntrack6.iter() {
                    match item {
                        Ok(pair) => out.push(pair),
                        Err(aya::maps::MapError::KeyNotFound) => {}
                        Err(source) => {
                            return Err(PinnedMaps::map_err(map_name::CONNTRACK6)(source));
                        }
                    }
                }
                Ok(out)
            }
            read => read,
        }
    }

    fn get(maps: &PinnedMaps, key: &CtKey<Self>) -> Option<CtEntry<Self>> {
        maps.conntrack6.get(key, 0).ok()
    }

    fn remove(maps: &mut PinnedMaps, key: &CtKey<Self>) -> Result<bool, DatapathError> {
        match maps.conntrack6.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(PinnedMaps::map_err(map_name::CONNTRACK6)(source)),
        }
    }

    fn limit(config: &NodeConfig) -> u32 {
        config.ct6_limit
    }

    fn ip(addr: Self) -> IpAddr {
        IpAddr::from(podnet_ebpf::abi::addr6_to_bytes(addr))
    }
}
