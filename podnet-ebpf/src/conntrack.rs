//! Connection tracking: two `CONNTRACK` entries per flow, one keyed by the tuple of the flow's
//! first packet (`ORIGINAL`) and one by the tuple its replies carry (`REPLY`). Each entry says
//! what a matching packet is rewritten to, so one lookup translates any packet of the flow.
//!
//! Lifetimes are per protocol and state and are extended by traffic. A flow is dead only when
//! both of its entries have expired; a dead flow found by a lookup is removed on the spot, and
//! `podnet conntrack gc` removes the rest. New flows are admitted only while the table is below
//! its configured limit, so a full table refuses new flows (counted as `drop_ct_full`) instead
//! of letting the LRU evict live ones.
//!
//! Everything here is generic over the address family ([`Family`]: `[u8; 4]` for
//! `CONNTRACK`, `Addr6` for `CONNTRACK6`) and monomorphised per family: IPv4 and IPv6 share
//! the entry layout, the state machine, the timeouts, admission, the port search and eviction.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
};
use podnet_ebpf::abi::{
    CT_REFRESH_NS, CtEntry, CtKey, CtNat, NS_PER_SEC, NodeConfig, SNAT_RETRIES, ct_dir, ct_live,
    ct_state,
    proto::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    reason,
};

pub use crate::family::Family;
use crate::{maps::CT_USAGE, parse::L4, services};

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
        (IPPROTO_TCP, ct_state::TIME_WAIT) => t.tcp_time_wait,
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
fn twin_key<A: Family>(entry: &CtEntry<A>, proto: u8) -> CtKey<A> {
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
fn usage_add<A: Family>(removed: bool, n: u64) {
    if let Some(usage) = CT_USAGE.get_ptr_mut(A::USAGE_PROGRAMS) {
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
fn remove<A: Family>(key: &CtKey<A>) {
    if A::remove(key).is_ok() {
        usage_add::<A>(true, 1);
    }
}

/// The live entry for `key`. A flow whose entries have both expired is removed and reported as
/// absent; an entry that expired while its twin lives on (one-way traffic) counts as live.
#[inline(always)]
pub fn lookup<A: Family>(key: &CtKey<A>, now: u64) -> Option<*mut CtEntry<A>> {
    live(key, A::get_ptr_mut(key)?, now)
}

/// [`lookup`] for a caller that has not read the clock yet: reads it only when `key` has an
/// entry (most packets of a pod have none), and returns it with the entry.
#[inline(always)]
pub fn lookup_timed<A: Family>(key: &CtKey<A>) -> Option<(*mut CtEntry<A>, u64)> {
    let entry = A::get_ptr_mut(key)?;
    let now = now();
    live(key, entry, now).map(|e| (e, now))
}

/// `entry` (found under `key`) if its flow is live at `now`; a dead flow is removed.
#[inline(always)]
fn live<A: Family>(key: &CtKey<A>, entry: *mut CtEntry<A>, now: u64) -> Option<*mut CtEntry<A>> {
    // SAFETY: the pointer comes from a successful lookup; entries are plain integers, and a
    // concurrent update on another CPU can at worst make this read slightly stale.
    let (expires, twin) = unsafe { ((*entry).expires_ns, twin_key(&*entry, key.proto)) };
    if expires >= now {
        return Some(entry);
    }
    let twin_alive = A::get_ptr_mut(&twin)
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
fn next_state<A>(entry: &CtEntry<A>, l4: L4) -> u8 {
    match l4 {
        L4::Tcp { flags } if flags & TCP_RST != 0 => ct_state::CLOSING,
        // After a FIN one end holds the tuple in TIME_WAIT; an RST before it ended that.
        L4::Tcp { flags } if flags & TCP_FIN != 0 && entry.state != ct_state::CLOSING => {
            ct_state::TIME_WAIT
        }
        L4::Tcp { flags } if flags & TCP_FIN != 0 => ct_state::CLOSING,
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
pub fn on_packet<A: Family>(
    cfg: &NodeConfig,
    key: &CtKey<A>,
    entry: *mut CtEntry<A>,
    l4: L4,
    now: u64,
) {
    // SAFETY: `entry` comes from `lookup` in this program run; map values stay valid while the
    // program runs, and racing writers only ever store whole, valid field values.
    let e = unsafe { &mut *entry };
    let state = next_state(e, l4);
    let expires = now + timeout_ns(cfg, key.proto, state);
    if state != e.state {
        e.state = state;
        e.expires_ns = expires;
        if let Some(twin) = A::get_ptr_mut(&twin_key(e, key.proto)) {
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

/// Whether there is room for one more IPv4 flow (two entries).
#[inline(always)]
pub fn admit(cfg: &NodeConfig) -> bool {
    admit_family::<[u8; 4]>(cfg)
}

/// Whether there is room for one more flow (two entries) of family `A`.
#[inline(always)]
pub fn admit_family<A: Family>(cfg: &NodeConfig) -> bool {
    let (Some(programs), Some(collector)) = (
        CT_USAGE.get(A::USAGE_PROGRAMS),
        CT_USAGE.get(A::USAGE_COLLECTOR),
    ) else {
        return true;
    };
    ct_live(programs, collector) + 2 <= u64::from(A::limit(cfg))
}

/// How a new flow's translated source port is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    /// Allocate from the SNAT range: the original port if it is in range and free, otherwise
    /// the first free port probing linearly from [`probe_start`].
    Allocate,
    /// Keep `nat.sport` if the reply tuple is free, otherwise allocate as [`Self::Allocate`]
    /// (for DNAT: a client port reused towards another frontend whose flow went to the same
    /// backend and is still closing; the kernel's NAT resolves that clash the same way).
    KeepElseAllocate,
}

/// Where the search for a translated port starts, for a client port outside the SNAT range:
/// the client port shifted by a hash of (client address, destination, protocol, node secret).
/// For one client and one destination that is a one-to-one map of client ports onto the range
/// (as Linux's NAT keeps the client's port where it can): a client's ports never collide with
/// each other, so probing rarely goes past the first port, even when a client's whole
/// ephemeral range is held for the server's TIME_WAIT, and a reused client port finds its old
/// tuple. The node secret (the namespace cookie, random per boot) keeps the mapping
/// unpredictable from outside.
#[inline(always)]
fn probe_start<A: Family>(
    cfg: &NodeConfig,
    key: &CtKey<A>,
    nat: &CtNat<A>,
    original: u32,
    span: u32,
) -> u32 {
    // The low word of the cookie, by design.
    let mut h = services::mix(cfg.netns_cookie as u32, A::digest(&key.saddr));
    h = services::mix(h, A::digest(&nat.daddr));
    h = services::mix(h, (u32::from(nat.dport) << 8) | u32::from(key.proto));
    (original % span + h % span) % span
}

/// Creates both entries of a new flow whose first packet has tuple `key` and is rewritten to
/// `nat` (with the source port chosen per `ports`). Returns the final translation, or the
/// reason the flow was refused.
#[inline(always)]
pub fn create<A: Family>(
    cfg: &NodeConfig,
    key: &CtKey<A>,
    mut nat: CtNat<A>,
    kind: u8,
    ports: PortChoice,
    now: u64,
) -> Result<CtNat<A>, u32> {
    let expires = now + timeout_ns(cfg, key.proto, ct_state::NEW);
    // The reply entry and its key live in the search (one copy on the stack: the programs'
    // stack is small, and the port search adds a frame).
    let mut search = PortSearch {
        reply_key: CtKey {
            saddr: nat.daddr,
            daddr: nat.saddr,
            sport: nat.dport,
            dport: nat.sport,
            proto: key.proto,
            _pad: [0; 3],
        },
        reply: CtEntry {
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
        },
        now,
        victim_expires: u64::MAX,
        min: 0,
        span: 0,
        start: 0,
        victim_port: 0,
        taken: SEARCH_NONE,
        port: 0,
    };
    let mut reply_new = true;
    match ports {
        PortChoice::KeepElseAllocate
            if let Claim::Taken(new) = claim_reply(&search.reply_key, &search.reply, now) =>
        {
            reply_new = new;
        }
        PortChoice::Allocate | PortChoice::KeepElseAllocate => {
            let min = u32::from(cfg.snat_port_min);
            let span = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
            let original = u32::from(nat.sport);
            let keep_first = original >= min && original - min < span;
            search.start = if keep_first {
                original - min
            } else {
                probe_start(cfg, key, &nat, original, span)
            };
            search.min = min;
            search.span = span;
            // SAFETY: `probe_port` has the callback signature bpf_loop expects, and the context
            // is a live `PortSearch` on this stack that outlives the call.
            unsafe {
                bpf_loop(
                    SNAT_RETRIES,
                    probe_port::<A> as *const () as *mut c_void,
                    (&raw mut search).cast(),
                    0,
                );
            }
            let port = match search.taken {
                SEARCH_NEW => {
                    reply_new = true;
                    search.port
                }
                SEARCH_LEFTOVER => {
                    reply_new = false;
                    search.port
                }
                // No free port among the probes: take over the evictable flow met on the way
                // whose entry expires first (a TCP connection that closed longest ago, or a
                // dead flow not yet collected), as Linux's NAT evicts TIME_WAIT entries.
                _ if search.victim_expires != u64::MAX => {
                    search.reply_key.dport = search.victim_port as u16;
                    evict(&search.reply_key);
                    if !matches!(
                        claim_reply(&search.reply_key, &search.reply, now),
                        Claim::Taken(true)
                    ) {
                        return Err(reason::DROP_NAT_NO_PORT);
                    }
                    search.victim_port
                }
                _ => return Err(reason::DROP_NAT_NO_PORT),
            };
            // `min + span - 1 <= u16::MAX` by construction of the range.
            nat.sport = port as u16;
            search.reply_key.dport = port as u16;
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
    if A::insert(key, &original, 0).is_err() {
        if reply_new {
            // Not yet counted as inserted, so not counted as removed either.
            let _ = A::remove(&search.reply_key);
        }
        return Err(reason::DROP_CT_FULL);
    }
    usage_add::<A>(false, if reply_new { 2 } else { 1 });
    Ok(nat)
}

/// `PortSearch::taken`: no port free among the probes.
const SEARCH_NONE: u32 = 0;
/// `PortSearch::taken`: `port` taken with a new reply entry.
const SEARCH_NEW: u32 = 1;
/// `PortSearch::taken`: `port` taken over a leftover reply entry of the same tuple.
const SEARCH_LEFTOVER: u32 = 2;

/// A SNAT port search, on the stack of [`create`], probed one port per `bpf_loop` round by
/// [`probe_port`]. The loop body is verified once instead of once per unrolled probe and per
/// caller, which keeps `from_pod` well inside the verifier's budget.
#[repr(C)]
struct PortSearch<A> {
    reply_key: CtKey<A>,
    reply: CtEntry<A>,
    now: u64,
    /// Expiry of the evictable flow met so far that expires first (`u64::MAX`: none).
    victim_expires: u64,
    min: u32,
    span: u32,
    start: u32,
    /// The port that flow holds.
    victim_port: u32,
    /// `SEARCH_*`.
    taken: u32,
    /// The port taken, when `taken` says one was.
    port: u32,
}

/// One round of a port search: tries port `min + (start + i) % span`. Returns 1 (stop) once
/// a port is taken, 0 to go on.
extern "C" fn probe_port<A: Family>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the context `create` gave it: a live `PortSearch` on its
    // stack, used by nothing else while the loop runs.
    let search = unsafe { &mut *ctx.cast::<PortSearch<A>>() };
    if search.span == 0 {
        // Never: the range holds at least one port (and no panic path may reach the verifier).
        return 1;
    }
    // `i < SNAT_RETRIES`, so the cast keeps it.
    let port = search.min + (search.start + i as u32) % search.span;
    // In place, not in a copy: the callback's frame adds to the caller's stack (an IPv6 key is
    // 40 bytes). `create` sets the port it finally takes.
    // `min + span - 1 <= u16::MAX` by construction of the range.
    search.reply_key.dport = port as u16;
    match claim_reply(&search.reply_key, &search.reply, search.now) {
        Claim::Taken(new) => {
            search.taken = if new { SEARCH_NEW } else { SEARCH_LEFTOVER };
            search.port = port;
            1
        }
        Claim::Evictable { expires } if expires < search.victim_expires => {
            search.victim_expires = expires;
            search.victim_port = port;
            0
        }
        Claim::Evictable { .. } | Claim::Held => 0,
    }
}

/// What [`claim_reply`] found.
enum Claim {
    /// The key is the new flow's: `true` if inserted, `false` if it held a leftover reply
    /// entry of this very tuple (its original entry was already collected, e.g. by a collector
    /// pass racing with the flow's last packet), which was overwritten.
    Taken(bool),
    /// Another flow holds the key, but may give it up under pressure: a TCP connection that
    /// closed (RST or FIN), or an entry already expired and not yet collected. Its entry
    /// expires at `expires`.
    Evictable { expires: u64 },
    /// Another flow holds the key.
    Held,
}

/// Takes `reply_key` for a new flow, unless another flow holds it.
#[inline(always)]
fn claim_reply<A: Family>(reply_key: &CtKey<A>, reply: &CtEntry<A>, now: u64) -> Claim {
    if A::insert(reply_key, reply, u64::from(BPF_NOEXIST)).is_ok() {
        return Claim::Taken(true);
    }
    // SAFETY: the fields are copied out at once.
    let Some((nat, state, expires)) =
        A::get_ptr_mut(reply_key).map(|e| unsafe { ((*e).nat, (*e).state, (*e).expires_ns) })
    else {
        return Claim::Held;
    };
    if nat == reply.nat {
        return match A::insert(reply_key, reply, 0) {
            Ok(()) => Claim::Taken(false),
            Err(_) => Claim::Held,
        };
    }
    if expires < now || state == ct_state::TIME_WAIT || state == ct_state::CLOSING {
        Claim::Evictable { expires }
    } else {
        Claim::Held
    }
}

/// Ends the closed flow holding `key` (both of its entries), so a new flow can take the key.
#[inline(always)]
fn evict<A: Family>(key: &CtKey<A>) {
    // SAFETY: the value is copied out at once.
    let Some(twin) = A::get_ptr_mut(key).map(|e| twin_key(unsafe { &*e }, key.proto)) else {
        return;
    };
    remove(key);
    remove(&twin);
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
