//! Connection tracking: two `CONNTRACK` entries per flow, one keyed by the tuple of the flow's
//! first packet (`ORIGINAL`) and one by the tuple its replies carry (`REPLY`). Each entry says
//! what a matching packet is rewritten to, so one lookup translates any packet of the flow.
//!
//! Lifetimes are per protocol and state and are extended by traffic. A flow is dead only when
//! both of its entries have expired; a dead flow found by a lookup is removed on the spot, and
//! `podnet conntrack gc` removes the rest. New flows are admitted only while the table is below
//! its configured limit, so a full table refuses new flows (counted as `drop_ct_full`) instead
//! of letting the LRU evict live ones.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use podnet_ebpf::abi::{
    CT_REFRESH_NS, CT_USAGE_COLLECTOR, CT_USAGE_PROGRAMS, CtEntry, CtKey, CtNat, NS_PER_SEC,
    NodeConfig, SNAT_RETRIES, ct_dir, ct_live, ct_state,
    proto::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    reason,
};

use crate::{
    maps::{CONNTRACK, CT_USAGE},
    parse::L4,
};

/// CLOCK_MONOTONIC in nanoseconds, the clock entry lifetimes are kept in.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper takes no arguments and is available to every program type.
    unsafe { bpf_ktime_get_ns() }
}

/// Idle lifetime of an entry of protocol `proto` in `state`.
#[inline(always)]
fn timeout_ns(cfg: &NodeConfig, proto: u8, state: u8) -> u64 {
    let t = &cfg.ct_timeouts;
    let secs = match (proto, state) {
        (IPPROTO_TCP, ct_state::ESTABLISHED) => t.tcp_established,
        (IPPROTO_TCP, ct_state::CLOSING) => t.tcp_closing,
        (IPPROTO_TCP, _) => t.tcp_syn,
        (IPPROTO_UDP, ct_state::ESTABLISHED) => t.udp_stream,
        (IPPROTO_UDP, _) => t.udp,
        _ => t.icmp,
    };
    u64::from(secs) * NS_PER_SEC
}

/// The key of the other entry of `entry`'s flow (the tuple a reply to the rewritten packet
/// carries).
#[inline(always)]
fn twin_key(entry: &CtEntry, proto: u8) -> CtKey {
    let CtNat {
        saddr,
        daddr,
        sport,
        dport,
    } = entry.nat;
    CtKey {
        saddr: daddr,
        daddr: saddr,
        sport: dport,
        dport: sport,
        proto,
        _pad: [0; 3],
    }
}

/// `*field += n`, atomically (BPF `lock xadd`; Rust's atomics have no read-modify-write for
/// this target).
///
/// # Safety
/// `field` must point at a valid, 8-byte aligned u64 in a map value.
#[inline(always)]
unsafe fn atomic_add(field: *mut u64, n: u64) {
    // SAFETY: the caller guarantees `field` is valid; the instruction only adds `n` to it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({field} + 0) += {n}",
            field = in(reg) field,
            n = in(reg) n,
        );
    }
}

#[inline(always)]
fn usage_add(removed: bool, n: u64) {
    if let Some(usage) = CT_USAGE.get_ptr_mut(CT_USAGE_PROGRAMS) {
        // SAFETY: the pointer comes from a successful array lookup and stays valid for the
        // program's run; the field is only ever updated atomically by the programs.
        unsafe {
            let field = if removed {
                &raw mut (*usage).removed
            } else {
                &raw mut (*usage).inserted
            };
            atomic_add(field, n);
        }
    }
}

#[inline(always)]
fn remove(key: &CtKey) {
    if CONNTRACK.remove(key).is_ok() {
        usage_add(true, 1);
    }
}

/// The live entry for `key`. A flow whose entries have both expired is removed and reported as
/// absent; an entry that expired while its twin lives on (one-way traffic) counts as live.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    live(key, CONNTRACK.get_ptr_mut(key)?, now)
}

/// [`lookup`] for a caller that has not read the clock yet: reads it only when `key` has an
/// entry (most packets of a pod have none), and returns it with the entry.
#[inline(always)]
pub fn lookup_timed(key: &CtKey) -> Option<(*mut CtEntry, u64)> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    let now = now();
    live(key, entry, now).map(|e| (e, now))
}

/// `entry` (found under `key`) if its flow is live at `now`; a dead flow is removed.
#[inline(always)]
fn live(key: &CtKey, entry: *mut CtEntry, now: u64) -> Option<*mut CtEntry> {
    // SAFETY: the pointer comes from a successful lookup; entries are plain integers, and a
    // concurrent update on another CPU can at worst make this read slightly stale.
    let (expires, twin) = unsafe { ((*entry).expires_ns, twin_key(&*entry, key.proto)) };
    if expires >= now {
        return Some(entry);
    }
    let twin_alive = CONNTRACK
        .get_ptr(twin)
        // SAFETY: as above.
        .is_some_and(|t| unsafe { (*t).expires_ns } >= now);
    if twin_alive {
        return Some(entry);
    }
    remove(key);
    remove(&twin);
    None
}

/// The state a packet moves its flow to.
#[inline(always)]
fn next_state(entry: &CtEntry, l4: L4) -> u8 {
    match l4 {
        L4::Tcp { flags } if flags & (TCP_FIN | TCP_RST) != 0 => ct_state::CLOSING,
        // A new connection reusing the tuple of one that is closing (TIME_WAIT reuse).
        L4::Tcp { flags }
            if flags & (TCP_SYN | TCP_ACK) == TCP_SYN && entry.dir == ct_dir::ORIGINAL =>
        {
            ct_state::NEW
        }
        _ if entry.dir == ct_dir::REPLY && entry.state == ct_state::NEW => ct_state::ESTABLISHED,
        _ => entry.state,
    }
}

/// Records a packet that matched `entry`: moves the flow's state (both entries) and extends
/// the entry's lifetime, writing to the map only when something changes by more than
/// `CT_REFRESH_NS`.
#[inline(always)]
pub fn on_packet(cfg: &NodeConfig, key: &CtKey, entry: *mut CtEntry, l4: L4, now: u64) {
    // SAFETY: `entry` comes from `lookup` in this program run; map values stay valid while the
    // program runs, and racing writers only ever store whole, valid field values.
    let e = unsafe { &mut *entry };
    let state = next_state(e, l4);
    let expires = now + timeout_ns(cfg, key.proto, state);
    if state != e.state {
        e.state = state;
        e.expires_ns = expires;
        if let Some(twin) = CONNTRACK.get_ptr_mut(twin_key(e, key.proto)) {
            // SAFETY: as above, for the twin entry.
            unsafe {
                (*twin).state = state;
                (*twin).expires_ns = expires;
            }
        }
    } else if expires > e.expires_ns + CT_REFRESH_NS || expires < e.expires_ns {
        // Later by more than the refresh granularity, or earlier because the timeout shrank
        // (a state change seen through the twin).
        e.expires_ns = expires;
    }
}

/// Whether there is room for one more flow (two entries).
#[inline(always)]
pub fn admit(cfg: &NodeConfig) -> bool {
    let (Some(programs), Some(collector)) = (
        CT_USAGE.get(CT_USAGE_PROGRAMS),
        CT_USAGE.get(CT_USAGE_COLLECTOR),
    ) else {
        return true;
    };
    ct_live(programs, collector) + 2 <= u64::from(cfg.ct_limit)
}

/// How a new flow's translated source port is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    /// Allocate from the SNAT range: the original port if it is in range and free, otherwise
    /// the first free port probing linearly from a random start.
    Allocate { random: u32 },
    /// Keep `nat.sport` if the reply tuple is free, otherwise allocate as [`Self::Allocate`]
    /// (for DNAT: a client port reused towards another frontend whose flow went to the same
    /// backend and is still closing; the kernel's NAT resolves that clash the same way).
    KeepElseAllocate { random: u32 },
}

/// Creates both entries of a new flow whose first packet has tuple `key` and is rewritten to
/// `nat` (with the source port chosen per `ports`). Returns the final translation, or the
/// reason the flow was refused.
#[inline(always)]
pub fn create(
    cfg: &NodeConfig,
    key: &CtKey,
    mut nat: CtNat,
    kind: u8,
    ports: PortChoice,
    now: u64,
) -> Result<CtNat, u32> {
    let expires = now + timeout_ns(cfg, key.proto, ct_state::NEW);
    let reply = CtEntry {
        expires_ns: expires,
        nat: CtNat {
            saddr: key.daddr,
            daddr: key.saddr,
            sport: key.dport,
            dport: key.sport,
        },
        kind,
        dir: ct_dir::REPLY,
        state: ct_state::NEW,
        _pad: 0,
    };
    let mut reply_key = CtKey {
        saddr: nat.daddr,
        daddr: nat.saddr,
        sport: nat.dport,
        dport: nat.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let mut reply_new = true;
    match ports {
        PortChoice::KeepElseAllocate { .. } if let Some(new) = claim_reply(&reply_key, &reply) => {
            reply_new = new;
        }
        PortChoice::Allocate { random } | PortChoice::KeepElseAllocate { random } => {
            let min = u32::from(cfg.snat_port_min);
            let span = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
            let original = u32::from(nat.sport);
            let keep_first = original >= min && original - min < span;
            let start = if keep_first {
                original - min
            } else {
                random % span
            };
            let mut found = false;
            for i in 0..SNAT_RETRIES {
                let port = min + (start + i) % span;
                // `min + span - 1 <= u16::MAX` by construction of the range.
                let port = port as u16;
                reply_key.dport = port;
                if let Some(new) = claim_reply(&reply_key, &reply) {
                    reply_new = new;
                    nat.sport = port;
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(reason::DROP_NAT_NO_PORT);
            }
        }
    }
    let original = CtEntry {
        expires_ns: expires,
        nat,
        kind,
        dir: ct_dir::ORIGINAL,
        state: ct_state::NEW,
        _pad: 0,
    };
    if CONNTRACK.insert(key, original, 0).is_err() {
        if reply_new {
            // Not yet counted as inserted, so not counted as removed either.
            let _ = CONNTRACK.remove(&reply_key);
        }
        return Err(reason::DROP_CT_FULL);
    }
    usage_add(false, if reply_new { 2 } else { 1 });
    Ok(nat)
}

/// Takes `reply_key` for a new flow. `Some(true)`: inserted; `Some(false)`: the key held a
/// leftover reply entry of this very tuple (its original entry was already collected, e.g. by a
/// collector pass racing with the flow's last packet), which is overwritten; `None`: the key
/// belongs to another flow.
#[inline(always)]
fn claim_reply(reply_key: &CtKey, reply: &CtEntry) -> Option<bool> {
    if CONNTRACK
        .insert(reply_key, reply, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return Some(true);
    }
    // SAFETY: the value is copied out at once.
    let existing = unsafe { CONNTRACK.get(reply_key) }.map(|e| e.nat)?;
    if existing != reply.nat {
        return None;
    }
    CONNTRACK.insert(reply_key, reply, 0).ok().map(|()| false)
}

/// Whether a packet may start a new flow: a TCP SYN (not SYN-ACK), any UDP datagram, an echo
/// request.
#[inline(always)]
pub fn starts_flow(l4: L4) -> bool {
    match l4 {
        L4::Tcp { flags } => flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
        L4::Udp => true,
        L4::IcmpEcho { request } => request,
        L4::IcmpError | L4::Fragment | L4::OrphanFragment | L4::Opaque => false,
    }
}
