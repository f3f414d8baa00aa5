//! `STATS`: per-CPU packet and byte counters by reason.

use podnet_ebpf::abi::{STATS_SLOTS, map_name, reason};

use super::PinnedMaps;
use crate::datapath::DatapathError;

/// A counter summed over all CPUs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReasonCount {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

impl PinnedMaps {
    /// Every named reason's counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<ReasonCount>, DatapathError> {
        const _: () = assert!(reason::COUNT <= STATS_SLOTS);
        let mut out = Vec::with_capacity(reason::NAMES.len());
        for (index, name) in (0u32..).zip(reason::NAMES) {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(Self::map_err(map_name::STATS))?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            out.push(ReasonCount {
                reason: name,
                packets,
                bytes,
            });
        }
        Ok(out)
    }
}
