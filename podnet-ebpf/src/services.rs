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
//!
//! Both families share this logic: [`Family`] names a family's maps (`SERVICES`, `BACKENDS`,
//! `AFFINITY` for IPv4 with [`V4`]; `SERVICES6`, `BACKENDS6`, `AFFINITY6` for IPv6 with
//! [`V6`]); `MAGLEV` is one map for both (service ids are one space). The IPv4 functions
//! without a family parameter ([`frontend`], [`nodeport`], [`pick`]) are the ones the
//! classifiers use; [`frontend_in`], [`nodeport_in`] and [`pick_in`] take the family.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use podnet_ebpf::abi::{
    ANY_PORT, ANY_PROTO, AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, CtKey,
    MAGLEV_TABLE_SIZE, NODEPORT_ADDR, NODEPORT_ADDR6, NS_PER_SEC, ServiceBackend, ServiceBackend6,
    ServiceKey, ServiceKey6, ServiceValue, svc_flag,
};

use crate::maps::{AFFINITY, AFFINITY6, BACKENDS, BACKENDS6, MAGLEV, SERVICES, SERVICES6};

/// An address family's service maps.
pub trait Family {
    /// An address, network order.
    type Addr: Copy;
    /// A `BACKENDS` value.
    type Backend: Copy;
    /// The frontend address NodePorts are kept under.
    const NODEPORT: Self::Addr;
    /// The `SERVICES` entry `slot` of frontend `addr:port/proto`.
    fn entry(addr: Self::Addr, port: u16, proto: u8, slot: u16) -> Option<ServiceValue>;
    /// The backend with id `id`.
    fn backend(id: u32) -> Option<Self::Backend>;
    /// The backend `client` last got from service `id`, if that was less than `timeout_ns`
    /// before `now` (which then becomes its last use).
    fn affine(id: u32, client: Self::Addr, now: u64, timeout_ns: u64) -> Option<Self::Backend>;
    /// Records that `client` got `backend` from service `id` at `now`.
    fn remember(id: u32, client: Self::Addr, backend: Self::Backend, now: u64);
}

/// IPv4: `SERVICES`, `BACKENDS`, `AFFINITY`.
pub struct V4;
/// IPv6: `SERVICES6`, `BACKENDS6`, `AFFINITY6`.
pub struct V6;

impl Family for V4 {
    type Addr = [u8; 4];
    type Backend = ServiceBackend;
    const NODEPORT: [u8; 4] = NODEPORT_ADDR;

    #[inline(always)]
    fn entry(addr: [u8; 4], port: u16, proto: u8, slot: u16) -> Option<ServiceValue> {
        // SAFETY: hash map values are copied out immediately.
        unsafe { SERVICES.get(key(addr, port, proto, slot)) }.copied()
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<ServiceBackend> {
        // SAFETY: as above.
        unsafe { BACKENDS.get(id) }.copied()
    }

    #[inline(always)]
    fn affine(id: u32, client: [u8; 4], now: u64, timeout_ns: u64) -> Option<ServiceBackend> {
        let entry = AFFINITY.get_ptr_mut(&AffinityKey { id, client })?;
        // SAFETY: `entry` points at a live LRU value; a concurrent update of the same entry can
        // at worst leave one of two fresh timestamps, which is as good as the other.
        unsafe {
            if now.saturating_sub((*entry).last_used_ns) < timeout_ns {
                (*entry).last_used_ns = now;
                return Some((*entry).backend);
            }
        }
        None
    }

    #[inline(always)]
    fn remember(id: u32, client: [u8; 4], backend: ServiceBackend, now: u64) {
        let value = AffinityValue {
            last_used_ns: now,
            backend,
        };
        // A full LRU evicts its least recently used entry; a failed update only means the next
        // connection picks afresh.
        let _ = AFFINITY.insert(&AffinityKey { id, client }, &value, 0);
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    type Backend = ServiceBackend6;
    const NODEPORT: [u8; 16] = NODEPORT_ADDR6;

    #[inline(always)]
    fn entry(addr: [u8; 16], port: u16, proto: u8, slot: u16) -> Option<ServiceValue> {
        let key = ServiceKey6 {
            addr,
            port,
            slot,
            proto,
            _pad: [0; 3],
        };
        // SAFETY: hash map values are copied out immediately.
        unsafe { SERVICES6.get(key) }.copied()
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<ServiceBackend6> {
        // SAFETY: as above.
        unsafe { BACKENDS6.get(id) }.copied()
    }

    #[inline(always)]
    fn affine(id: u32, client: [u8; 16], now: u64, timeout_ns: u64) -> Option<ServiceBackend6> {
        let entry = AFFINITY6.get_ptr_mut(&AffinityKey6 { id, client })?;
        // SAFETY: as for IPv4.
        unsafe {
            if now.saturating_sub((*entry).last_used_ns) < timeout_ns {
                (*entry).last_used_ns = now;
                return Some((*entry).backend);
            }
        }
        None
    }

    #[inline(always)]
    fn remember(id: u32, client: [u8; 16], backend: ServiceBackend6, now: u64) {
        let value = AffinityValue6 {
            last_used_ns: now,
            backend,
            _pad: [0; 4],
        };
        // As for IPv4: a failed update only means the next connection picks afresh.
        let _ = AFFINITY6.insert(&AffinityKey6 { id, client }, &value, 0);
    }
}

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

/// The service at `addr:port/proto` (not NodePorts: see [`nodeport`]).
#[inline(always)]
pub fn frontend(addr: [u8; 4], port: u16, proto: u8) -> Frontend {
    frontend_in::<V4>(addr, port, proto)
}

/// [`frontend`] in family `F`.
#[inline(always)]
pub fn frontend_in<F: Family>(addr: F::Addr, port: u16, proto: u8) -> Frontend {
    if let Some(svc) = F::entry(addr, port, proto, 0) {
        return Frontend::Service(svc);
    }
    if F::entry(addr, ANY_PORT, ANY_PROTO, 0).is_some() {
        return Frontend::UnknownPort;
    }
    Frontend::None
}

/// The NodePort `port/proto` on the node's address.
#[inline(always)]
pub fn nodeport(port: u16, proto: u8) -> Option<ServiceValue> {
    nodeport_in::<V4>(port, proto)
}

/// [`nodeport`] in family `F` (the node's IPv6 address for [`V6`]).
#[inline(always)]
pub fn nodeport_in<F: Family>(port: u16, proto: u8) -> Option<ServiceValue> {
    F::entry(F::NODEPORT, port, proto, 0)
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
    let hash = match client.flow {
        Some(flow) if svc.flags & svc_flag::MAGLEV != 0 => Some(flow_hash(flow)),
        _ => None,
    };
    pick_in::<V4>(addr, port, proto, svc, client.addr, hash, now)
}

/// [`pick`] in family `F`, for a client at `client`; `flow_hash` is the flow's Maglev hash
/// when the frontend uses Maglev and the flow is known (else the choice is random).
#[inline(always)]
pub fn pick_in<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
    svc: &ServiceValue,
    client: F::Addr,
    flow_hash: Option<u32>,
    now: u64,
) -> Option<F::Backend> {
    if svc.count == 0 {
        return None;
    }
    let affine = svc.flags & svc_flag::AFFINITY != 0;
    if affine {
        let timeout = u64::from(svc.affinity_timeout) * NS_PER_SEC;
        if let Some(backend) = F::affine(svc.id, client, now, timeout) {
            return Some(backend);
        }
    }
    let backend = match flow_hash {
        Some(hash) if svc.flags & svc_flag::MAGLEV != 0 => maglev::<F>(svc.id, hash),
        _ => None,
    };
    let backend = match backend {
        Some(b) => b,
        None => random_backend::<F>(addr, port, proto, svc)?,
    };
    if affine {
        F::remember(svc.id, client, backend, now);
    }
    Some(backend)
}

/// The backend the frontend's Maglev table gives `hash`; `None` if it has no table (yet).
#[inline(always)]
fn maglev<F: Family>(id: u32, hash: u32) -> Option<F::Backend> {
    let index = hash % MAGLEV_TABLE_SIZE;
    // SAFETY: values are copied out immediately; userspace swaps whole tables, never writes
    // into one a program may be reading.
    let backend_id = unsafe { MAGLEV.get_value(&id, &index) }.copied()?;
    F::backend(backend_id)
}

/// One of the frontend's slots, uniformly at random.
#[inline(always)]
fn random_backend<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
    svc: &ServiceValue,
) -> Option<F::Backend> {
    let slot = 1 + (random() % u32::from(svc.count)) as u16;
    let id = F::entry(addr, port, proto, slot)?.id;
    F::backend(id)
}
