//! IPv4 fragments. Only a datagram's first fragment carries the L4 header (the ports); it is
//! parsed and translated like any other packet of its flow, and its ports are remembered in
//! `FRAGMENTS` under what all fragments of the datagram share (addresses, protocol, IP id, as
//! they arrive, untranslated). A later fragment takes its ports from there and so follows the
//! same conntrack entry, with only its addresses (and the IPv4 header checksum) rewritten: the
//! L4 checksum lives in the first fragment only.
//!
//! A later fragment whose first fragment has not been seen (reordered on the way, or lost) has
//! no ports: the callers drop it where it would have to be translated
//! (`drop_frag_out_of_order`) and forward it by address where no translation is involved.
//! Non-fragments never reach this module.

use podnet_ebpf::abi::{CtKey, FragKey, FragPorts};

use crate::maps::FRAGMENTS;

#[inline(always)]
fn key(tuple: &CtKey, id: u16) -> FragKey {
    FragKey {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        id,
        proto: tuple.proto,
        _pad: 0,
    }
}

/// Records the ports of a datagram's first fragment (`tuple`, IP id `id`) for its later
/// fragments. A full map makes room by evicting the oldest datagram.
#[inline(always)]
pub fn remember_first(tuple: &CtKey, id: u16) {
    let ports = FragPorts {
        sport: tuple.sport,
        dport: tuple.dport,
    };
    // A failed insert (memory pressure) leaves the later fragments without ports: they are then
    // counted as out of order.
    let _ = FRAGMENTS.insert(key(tuple, id), ports, 0);
}

/// The ports of the datagram a later fragment (`tuple` with ports 0, IP id `id`) belongs to,
/// if its first fragment has been seen.
#[inline(always)]
pub fn ports_of_later(tuple: &CtKey, id: u16) -> Option<FragPorts> {
    // SAFETY: the value is copied out at once.
    unsafe { FRAGMENTS.get(key(tuple, id)) }.copied()
}
