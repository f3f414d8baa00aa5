//! Services: frontends (`address:port/proto`, a NodePort under `NODEPORT_ADDR`) to a set of
//! backends, and the choice of one backend for a new connection. A frontend's slot 0 (its
//! master entry) holds the service id, the backend count and flags; slots `1..=count` hold
//! backend ids, looked up in `BACKENDS`. Userspace fills the slots (and their backends) before
//! raising the count and lowers the count before removing a slot, so a lookup never sees a
//! slot that is not there; a backend id removed between the slot's lookup and the backend's
//! (a replace racing with the packet) reads as "no backend" for that one packet.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use podnet_ebpf::abi::{
    ANY_PORT, ANY_PROTO, NODEPORT_ADDR, ServiceBackend, ServiceKey, ServiceValue,
};

use crate::maps::{BACKENDS, SERVICES};

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

/// A uniformly random number, for backend choice and SNAT port probing.
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

/// Picks a backend of the frontend `addr:port/proto` whose master entry is `svc`, uniformly
/// at random: the connection then stays on it (through conntrack, or because the socket was
/// connected to it). `None` when it has no backends.
#[inline(always)]
pub fn pick(addr: [u8; 4], port: u16, proto: u8, svc: &ServiceValue) -> Option<ServiceBackend> {
    if svc.count == 0 {
        return None;
    }
    let slot = 1 + (random() % u32::from(svc.count)) as u16;
    // SAFETY: hash map values are copied out immediately.
    let id = unsafe { SERVICES.get(key(addr, port, proto, slot)) }.map(|s| s.id)?;
    // SAFETY: as above.
    unsafe { BACKENDS.get(id) }.copied()
}
