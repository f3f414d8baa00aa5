//! NodePorts: `(port, protocol)` to a set of backends, and the choice of one backend for a new
//! connection. Slot 0 of a NodePort holds the number of backends; slots `1..=count` hold them.
//! Userspace fills the slots before raising the count and lowers the count before clearing a
//! slot, so a lookup never sees a slot that is not there.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use podnet_ebpf::abi::{ServiceKey, ServiceValue};

use crate::maps::SERVICES;

/// What a NodePort lookup found.
pub enum NodePort {
    /// Not a NodePort.
    None,
    /// A NodePort whose backends are all gone.
    NoBackend,
    Backend(ServiceValue),
}

#[inline(always)]
fn key(port: u16, proto: u8, slot: u16) -> ServiceKey {
    ServiceKey {
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

/// Picks a backend for a new connection to NodePort `port`/`proto`, uniformly at random: the
/// connection then stays on it through conntrack.
#[inline(always)]
pub fn pick(port: u16, proto: u8) -> NodePort {
    // SAFETY: hash map values are copied out immediately.
    let Some(count) = (unsafe { SERVICES.get(key(port, proto, 0)) }).map(|svc| svc.count) else {
        return NodePort::None;
    };
    if count == 0 {
        return NodePort::NoBackend;
    }
    let slot = 1 + (random() % u32::from(count)) as u16;
    // SAFETY: as above.
    match unsafe { SERVICES.get(key(port, proto, slot)) } {
        Some(backend) => NodePort::Backend(*backend),
        None => NodePort::NoBackend,
    }
}
