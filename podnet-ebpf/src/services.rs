//! Services: frontends (`address:port/proto`, a NodePort under `NODEPORT_ADDR`) to a set of
//! backends, and the choice of one backend for a new connection. A frontend's slot 0 (its
//! master entry) holds the service id, the backend count and flags; slots `1..=count` hold
//! backend ids, looked up in `BACKENDS`. Userspace fills the slots (and their backends) before
//! raising the count and lowers the count before removing a slot, so a lookup never sees a
//! slot that is not there; a backend id removed between the slot's lookup and the backend's
//! (a replace racing with the packet) reads as "no backend" for that one packet.
//!
//! A new connection's backend is, in order: the one its client last got from this frontend,
//! with `sessionAffinity: ClientIP` and while the timeout has not passed since (`AFFINITY`);
//! with Maglev, the backend the frontend's Maglev table gives the flow's hash (`MAGLEV`: every
//! node builds the same table from the same backends, so a flow picks the same backend at
//! whichever node it arrives); otherwise one of the slots, uniformly at random.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use podnet_ebpf::abi::{
    ANY_PORT, ANY_PROTO, AffinityKey, AffinityValue, CtKey, MAGLEV_TABLE_SIZE, NODEPORT_ADDR,
    NS_PER_SEC, ServiceBackend, ServiceKey, ServiceValue, svc_flag,
};

use crate::maps::{AFFINITY, BACKENDS, MAGLEV, SERVICES};

/// What a frontend lookup found.
pub enum Frontend {
    /// No service here.
    None,
    /// The address is a ClusterIP, but none of its services has this port and protocol.
    UnknownPort,
    /// A service's master entry.
    Service(ServiceValue),
}

#[inline(always)]
fn key(addr: [u8; 4], port: u16, proto: u8, slot: u16) -> ServiceKey {
    ServiceKey {
        addr,
        port,
        slot,
        proto,
        _pad: [0; 3],
    }
}

/// A uniformly random number, for backend choice.
#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: the helper takes no arguments and is available to every program type.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn master(addr: [u8; 4], port: u16, proto: u8) -> Option<ServiceValue> {
    // SAFETY: hash map values are copied out immediately.
    unsafe { SERVICES.get(key(addr, port, proto, 0)) }.copied()
}

/// The service at `addr:port/proto` (not NodePorts: see [`nodeport`]).
#[inline(always)]
pub fn frontend(addr: [u8; 4], port: u16, proto: u8) -> Frontend {
    if let Some(svc) = master(addr, port, proto) {
        return Frontend::Service(svc);
    }
    if master(addr, ANY_PORT, ANY_PROTO).is_some() {
        return Frontend::UnknownPort;
    }
    Frontend::None
}

/// The NodePort `port/proto` on the node's address.
#[inline(always)]
pub fn nodeport(port: u16, proto: u8) -> Option<ServiceValue> {
    master(NODEPORT_ADDR, port, proto)
}

/// Who a new connection comes from, for session affinity and Maglev.
pub struct Client<'a> {
    /// The client's address: affinity holds per client address.
    pub addr: [u8; 4],
    /// The flow, hashed for Maglev ([`flow_hash`]) only when the frontend uses Maglev; `None`
    /// where the flow is not known yet (a socket's `connect()` has no source port), which
    /// picks at random.
    pub flow: Option<&'a CtKey>,
}

/// Mixes `word` into the hash `h` with murmur3's 32-bit finaliser.
#[inline(always)]
pub fn mix(h: u32, word: u32) -> u32 {
    let mut x = h ^ word;
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// A hash of a flow's addresses, ports and protocol that is the same on every node (Maglev's
/// key): each word is mixed in with murmur3's 32-bit finaliser.
#[inline(always)]
fn flow_hash(key: &CtKey) -> u32 {
    let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
    let mut h = mix(0x9e37_79b9, u32::from_be_bytes(key.saddr));
    h = mix(h, u32::from_be_bytes(key.daddr));
    h = mix(h, ports);
    mix(h, u32::from(key.proto))
}

/// Picks a backend for a new connection from `client` to the frontend `addr:port/proto` whose
/// master entry is `svc` (see the module doc for the order); the connection then stays on it
/// (through conntrack, or because the socket was connected to it). `None` when the frontend
/// has no backends.
#[inline(always)]
pub fn pick(
    addr: [u8; 4],
    port: u16,
    proto: u8,
    svc: &ServiceValue,
    client: &Client<'_>,
    now: u64,
) -> Option<ServiceBackend> {
    if svc.count == 0 {
        return None;
    }
    let affine = svc.flags & svc_flag::AFFINITY != 0;
    let akey = AffinityKey {
        id: svc.id,
        client: client.addr,
    };
    if affine && let Some(entry) = AFFINITY.get_ptr_mut(&akey) {
        let timeout = u64::from(svc.affinity_timeout) * NS_PER_SEC;
        // SAFETY: `entry` points at a live LRU value; a concurrent update of the same entry can
        // at worst leave one of two fresh timestamps, which is as good as the other.
        unsafe {
            if now.saturating_sub((*entry).last_used_ns) < timeout {
                (*entry).last_used_ns = now;
                return Some((*entry).backend);
            }
        }
    }
    let backend = match client.flow {
        Some(flow) if svc.flags & svc_flag::MAGLEV != 0 => maglev(svc.id, flow_hash(flow)),
        _ => None,
    };
    let backend = match backend {
        Some(b) => b,
        None => random_backend(addr, port, proto, svc)?,
    };
    if affine {
        let value = AffinityValue {
            last_used_ns: now,
            backend,
        };
        // A full LRU evicts its least recently used entry; a failed update only means the next
        // connection picks afresh.
        let _ = AFFINITY.insert(&akey, &value, 0);
    }
    Some(backend)
}

/// The backend the frontend's Maglev table gives `hash`; `None` if it has no table (yet).
#[inline(always)]
fn maglev(id: u32, hash: u32) -> Option<ServiceBackend> {
    let index = hash % MAGLEV_TABLE_SIZE;
    // SAFETY: values are copied out immediately; userspace swaps whole tables, never writes
    // into one a program may be reading.
    let backend_id = unsafe { MAGLEV.get_value(&id, &index) }.copied()?;
    // SAFETY: as above.
    unsafe { BACKENDS.get(backend_id) }.copied()
}

/// One of the frontend's slots, uniformly at random.
#[inline(always)]
fn random_backend(
    addr: [u8; 4],
    port: u16,
    proto: u8,
    svc: &ServiceValue,
) -> Option<ServiceBackend> {
    let slot = 1 + (random() % u32::from(svc.count)) as u16;
    // SAFETY: hash map values are copied out immediately.
    let id = unsafe { SERVICES.get(key(addr, port, proto, slot)) }.map(|s| s.id)?;
    // SAFETY: as above.
    unsafe { BACKENDS.get(id) }.copied()
}
