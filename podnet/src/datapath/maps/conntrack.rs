//! `CONNTRACK` (the flow table) and `CT_USAGE` (its occupancy counters).

use podnet_ebpf::abi::{CT_USAGE_COLLECTOR, CT_USAGE_PROGRAMS, CtEntry, CtKey, CtUsage, map_name};

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
