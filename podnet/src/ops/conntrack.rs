//! The conntrack table as an operator sees it: `conntrack list` (every flow with its
//! translation, state and remaining lifetime), `conntrack gc` (removes dead flows, those whose
//! two entries have both expired), and the occupancy summary `stats` prints.
//!
//! Lifetimes are kept on CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`. Both tables,
//! `CONNTRACK` (IPv4) and `CONNTRACK6` (IPv6), are covered by the same code, generic over the
//! address ([`CtFamily`]).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
};

use podnet_ebpf::abi::{CtEntry, CtKey, ct_dir, ct_kind, ct_live, ct_state, proto};
use serde::Serialize;

use super::{Ctx, error::Result};
use crate::{
    config::NodeSettings,
    datapath::{
        DatapathError,
        maps::{CtFamily, PinnedMaps},
    },
    store,
    sys::process::monotonic_ns,
};

fn endpoint<A: CtFamily>(addr: A, port: u16) -> SocketAddr {
    SocketAddr::new(A::ip(addr), port)
}

/// One conntrack entry, readable.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Flow {
    pub proto: String,
    /// `snat`, `dnat` or `hairpin`.
    pub kind: &'static str,
    /// `original` (matches the flow's first packet) or `reply`.
    pub dir: &'static str,
    pub state: &'static str,
    /// The tuple a packet has when it matches this entry.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// What it is rewritten to.
    pub nat_src: SocketAddr,
    pub nat_dst: SocketAddr,
    /// Seconds until the entry expires (negative: expired, waiting for collection).
    pub expires_in_s: i64,
}

impl Flow {
    fn new<A: CtFamily>(key: &CtKey<A>, entry: &CtEntry<A>, now: u64) -> Self {
        let remaining = i128::from(entry.expires_ns) - i128::from(now);
        Self {
            proto: crate::model::names::proto_name(key.proto),
            kind: ct_kind::NAMES
                .get(usize::from(entry.kind))
                .copied()
                .unwrap_or("unknown"),
            dir: if entry.dir == ct_dir::REPLY {
                "reply"
            } else {
                "original"
            },
            state: ct_state::NAMES
                .get(usize::from(entry.state))
                .copied()
                .unwrap_or("unknown"),
            src: endpoint(key.saddr, key.sport),
            dst: endpoint(key.daddr, key.dport),
            nat_src: endpoint(entry.nat.saddr, entry.nat.sport),
            nat_dst: endpoint(entry.nat.daddr, entry.nat.dport),
            expires_in_s: i64::try_from(remaining / 1_000_000_000).unwrap_or(i64::MAX),
        }
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<5} {:<8} {:<8} {:<11} {:>21} -> {:<21} => {:>21} -> {:<21} {:>6}s",
            self.proto,
            self.kind,
            self.dir,
            self.state,
            self.src.to_string(),
            self.dst.to_string(),
            self.nat_src.to_string(),
            self.nat_dst.to_string(),
            self.expires_in_s
        )
    }
}

/// Header line matching `Flow`'s `Display`.
pub fn header() -> String {
    format!(
        "{:<5} {:<8} {:<8} {:<11} {:>21}    {:<21}    {:>21}    {:<21} {:>7}",
        "PROTO", "KIND", "DIR", "STATE", "SRC", "DST", "NAT-SRC", "NAT-DST", "EXPIRES"
    )
}

/// Occupancy of the table against its admission limit.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Entries counted live (two per flow).
    pub live: u64,
    /// Entries admitted before new flows are refused.
    pub limit: u32,
    pub inserted: u64,
    pub removed_by_datapath: u64,
    pub removed_by_gc: u64,
}

/// Occupancy of the IPv4 table.
pub fn usage(maps: &PinnedMaps) -> Result<Usage, DatapathError> {
    usage_of::<[u8; 4]>(maps)
}

/// Occupancy of the table of family `A`.
pub fn usage_of<A: CtFamily>(maps: &PinnedMaps) -> Result<Usage, DatapathError> {
    let (programs, collector) = maps.ct_usage_of::<A>()?;
    Ok(Usage {
        live: ct_live(&programs, &collector),
        limit: A::limit(&maps.config()?),
        inserted: programs.inserted,
        removed_by_datapath: programs.removed,
        removed_by_gc: collector.removed,
    })
}

/// Every entry of both tables, originals first, then by tuple (IPv4 before IPv6).
pub fn list(ctx: &Ctx) -> Result<Vec<Flow>> {
    let maps = ctx.maps()?;
    let now = monotonic_ns();
    let mut flows: Vec<Flow> = <[u8; 4]>::entries(&maps)?
        .iter()
        .map(|(k, e)| Flow::new(k, e, now))
        .chain(
            <podnet_ebpf::abi::Addr6>::entries(&maps)?
                .iter()
                .map(|(k, e)| Flow::new(k, e, now)),
        )
        .collect();
    flows.sort_by(|a, b| {
        (a.dir, a.proto.as_str(), a.src, a.dst).cmp(&(b.dir, b.proto.as_str(), b.src, b.dst))
    });
    Ok(flows)
}

/// What a collection pass did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// Entries of both tables.
    pub scanned: usize,
    /// Entries of dead flows removed.
    pub removed: u64,
    /// Entries of closed TCP flows ended early because the table was under pressure.
    pub evicted: u64,
    pub usage: Usage,
    /// The IPv6 table's occupancy after the pass.
    pub usage6: Usage,
}

/// The other entry of the flow `entry` belongs to: the tuple of a packet in the other
/// direction, after translation.
pub(super) fn twin<A: Copy>(key: &CtKey<A>, entry: &CtEntry<A>) -> CtKey<A> {
    CtKey {
        saddr: entry.nat.daddr,
        daddr: entry.nat.saddr,
        sport: entry.nat.dport,
        dport: entry.nat.sport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// Occupancy above which `gc` also ends closed TCP flows (their tuples held for the peers'
/// TIME_WAIT), oldest first, until the table is back at it: 3/4 of the limit leaves room for
/// about 30 s of new flows at 1,000 per second between passes of the default 10 s collector
/// before admission refuses any.
const PRESSURE_NUM: u64 = 3;
const PRESSURE_DEN: u64 = 4;

/// Removes every dead flow of both tables: both entries expired (or one expired and the other
/// gone). Under pressure (above 3/4 of the limit) it then ends closed TCP flows, oldest first,
/// as Linux's conntrack evicts TIME_WAIT entries when full, so kept-back tuples never refuse
/// new flows.
pub fn gc(ctx: &Ctx) -> Result<GcReport> {
    let _lock = store::conntrack::lock(&ctx.settings.state_dir)?;
    let mut maps = ctx.maps()?;
    let v4 = gc_table::<[u8; 4]>(&mut maps)?;
    let v6 = gc_table::<podnet_ebpf::abi::Addr6>(&mut maps)?;
    Ok(GcReport {
        scanned: v4.scanned + v6.scanned,
        removed: v4.removed + v6.removed,
        evicted: v4.evicted + v6.evicted,
        usage: v4.usage,
        usage6: v6.usage,
    })
}

/// What [`gc_table`] did to one table.
struct TablePass {
    scanned: usize,
    removed: u64,
    evicted: u64,
    usage: Usage,
}

/// One table's collection pass (see [`gc`]).
fn gc_table<A: CtFamily>(maps: &mut PinnedMaps) -> Result<TablePass> {
    let now = monotonic_ns();
    let entries: HashMap<CtKey<A>, CtEntry<A>> = A::entries(maps)?.into_iter().collect();
    let mut removed = 0;
    for (key, entry) in &entries {
        if entry.expires_ns >= now {
            continue;
        }
        let twin = twin(key, entry);
        let twin_alive = entries.get(&twin).is_some_and(|t| t.expires_ns >= now);
        if twin_alive {
            continue;
        }
        // Re-read just before removing: the datapath may have revived the entry meanwhile.
        let current = A::get(maps, key);
        if current.is_some_and(|e| e.expires_ns >= monotonic_ns()) {
            continue;
        }
        if A::remove(maps, key)? {
            removed += 1;
        }
    }
    if removed > 0 {
        maps.ct_collected_of::<A>(removed)?;
    }
    let evicted = relieve_pressure(maps, &entries, now)?;
    Ok(TablePass {
        scanned: entries.len(),
        removed,
        evicted,
        usage: usage_of::<A>(maps)?,
    })
}

/// Ends closed TCP flows, the one released longest ago first, while the table is above
/// [`PRESSURE_NUM`]/[`PRESSURE_DEN`] of its limit. Returns the entries removed.
fn relieve_pressure<A: CtFamily>(
    maps: &mut PinnedMaps,
    entries: &HashMap<CtKey<A>, CtEntry<A>>,
    now: u64,
) -> Result<u64> {
    let usage = usage_of::<A>(maps)?;
    let high = u64::from(usage.limit) * PRESSURE_NUM / PRESSURE_DEN;
    if usage.live <= high {
        return Ok(0);
    }
    let mut closed: Vec<(&CtKey<A>, &CtEntry<A>)> = entries
        .iter()
        .filter(|(k, e)| {
            k.proto == proto::IPPROTO_TCP
                && e.dir == ct_dir::ORIGINAL
                && e.expires_ns >= now
                && matches!(e.state, ct_state::CLOSING | ct_state::TIME_WAIT)
        })
        .collect();
    closed.sort_by_key(|(_, e)| e.expires_ns);
    let mut excess = usage.live - high;
    let mut evicted = 0;
    for (key, entry) in closed {
        if excess == 0 {
            break;
        }
        // Re-read: a SYN may have reopened the flow meanwhile.
        let reopened = A::get(maps, key)
            .is_none_or(|e| !matches!(e.state, ct_state::CLOSING | ct_state::TIME_WAIT));
        if reopened {
            continue;
        }
        for k in [*key, twin(key, entry)] {
            if A::remove(maps, &k)? {
                evicted += 1;
                excess = excess.saturating_sub(1);
            }
        }
    }
    if evicted > 0 {
        maps.ct_collected_of::<A>(evicted)?;
    }
    Ok(evicted)
}

/// Removes every entry of every flow that involves `addr` (a pod being deleted), so a later pod
/// given the same address never receives packets of its predecessor's flows. Returns how many
/// entries went.
pub fn forget_addr(ctx: &Ctx, addr: Ipv4Addr) -> Result<u64> {
    forget::<[u8; 4]>(ctx, addr.octets())
}

/// [`forget_addr`] for a pod's IPv6 address (`CONNTRACK6`).
pub fn forget_addr6(ctx: &Ctx, addr: std::net::Ipv6Addr) -> Result<u64> {
    forget::<podnet_ebpf::abi::Addr6>(ctx, podnet_ebpf::abi::addr6_from_bytes(addr.octets()))
}

fn forget<A: CtFamily>(ctx: &Ctx, addr: A) -> Result<u64> {
    let _lock = store::conntrack::lock(&ctx.settings.state_dir)?;
    let Some(mut maps) = ctx.maps_if_pinned() else {
        return Ok(0);
    };
    let mut removed = 0;
    for (key, entry) in A::entries(&maps)? {
        let involved = [key.saddr, key.daddr, entry.nat.saddr, entry.nat.daddr].contains(&addr);
        if involved && A::remove(&mut maps, &key)? {
            removed += 1;
        }
    }
    if removed > 0 {
        maps.ct_collected_of::<A>(removed)?;
    }
    Ok(removed)
}

/// Forgets the collection lock (`node reset`: the table goes with the pins).
pub fn clear(settings: &NodeSettings) -> Result<()> {
    Ok(store::conntrack::clear(&settings.state_dir)?)
}
