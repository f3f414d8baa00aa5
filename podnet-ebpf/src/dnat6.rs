//! IPv6 service traffic from outside the node, at tc: the IPv6 twin of the uplink half of
//! [`crate::translate`] (`nodeport`, `service`), in its own tail-called program
//! (`from_uplink6_dnat`, reached from `from_uplink6` for IPv6 that neither the masquerade nor
//! the delivery from other nodes took).
//!
//! - A new TCP connection (SYN) or UDP datagram to a NodePort on the node's IPv6 address
//!   (`SERVICES6` under `NODEPORT_ADDR6`), or to an IPv6 LoadBalancer IP or externalIP routed
//!   to the node (frontends flagged `FROM_OUTSIDE`), gets a backend by the family-generic
//!   choice ([`crate::services::pick_in`]: affinity, Maglev, random). A local backend pod gets
//!   the flow with the client's address kept (kind `DNAT`, as IPv4 does for a local backend):
//!   both `CONNTRACK6` entries are created by `dnat6_new_flow`, then the packet comes back
//!   into `from_uplink6_dnat`, which finds them and translates it (the choice, the creation
//!   and the rewrite would not fit one program's stack).
//! - A packet of such a flow is translated (destination: the backend) and redirected into the
//!   pod by [`crate::nat6::translate_tracked`]; the pod's replies are translated back (source:
//!   the frontend the client used) by the same function on the pod's side (`from_pod6_nat`,
//!   which looks every flow up first), counted `dnat6_reply`.
//! - No backend: dropped, counted `drop_no_backend` (as IPv4's NodePort). Backends on other
//!   nodes are not forwarded to yet: when the choice falls on one, a local backend is taken
//!   instead (one of the frontend's first `local_count` slots); with none, the packet is
//!   dropped, counted `drop_dnat6_remote_backend`.
//!
//! Everything else goes to the kernel unchanged, counted `pass_not_ipv4` as before.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::PerCpuArray,
    macros::btf_map,
    programs::TcContext,
};
use podnet_ebpf::abi::{
    Addr6, CtKey6, CtNat6, NODEPORT_ADDR6, NodeConfig, ServiceBackend6, ServiceValue,
    addr6_from_bytes, addr6_to_bytes, ct_kind, ipv6_prog,
    proto::{ETH_HLEN, IPV6_HLEN},
    reason, svc_flag,
};

use crate::{
    conntrack::{self, PortChoice},
    ipv6::{self, Ipv6Hdr},
    nat6,
    parse::{L4, ptr_at},
    services::{self, Frontend, V6},
};

/// What goes to the kernel unchanged is counted as (as before this program existed).
const PASS: (i32, u32) = (TC_ACT_OK, reason::PASS_NOT_IPV4);

/// Slots of `DNAT6_SCRATCH`: the tuple of the packet that starts a flow, and the tuple it is
/// translated to (as a key: the same addresses and ports).
const SCRATCH_TUPLE: u32 = 0;
const SCRATCH_NAT: u32 = 1;
const SCRATCH_SLOTS: u32 = 2;

/// Per-CPU working memory handing a new flow from `from_uplink6_dnat` (which chose its backend)
/// to `dnat6_new_flow` (which creates its entries): one packet's worth per CPU, so two entries;
/// not pinned (nothing outlives a packet).
#[btf_map]
static DNAT6_SCRATCH: PerCpuArray<CtKey6, { SCRATCH_SLOTS as usize }> = PerCpuArray::new();

/// The body of `from_uplink6_dnat` (see the module doc).
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    // The backend's replies are translated on the pod's side only where IPv6 NAT is set up.
    if !nat6::enabled(cfg) || !well_formed(ctx) {
        return PASS;
    }
    let Some(pkt) = nat6::packet(ctx) else {
        return PASS;
    };
    match pkt.l4 {
        L4::Tcp { .. } | L4::Udp | L4::Fragment => {}
        _ => return PASS,
    }
    if let Some((entry, _)) = conntrack::lookup_timed(&pkt.key) {
        return nat6::translate_tracked(ctx, &pkt, entry, false);
    }
    if !conntrack::starts_flow(pkt.l4) {
        return PASS;
    }
    let Some((frontend, svc)) = frontend(cfg, &pkt.key) else {
        return PASS;
    };
    let key = &pkt.key;
    let hash = (svc.flags & svc_flag::MAGLEV != 0).then(|| flow_hash(key));
    let now = conntrack::now();
    let client = addr6_to_bytes(key.saddr);
    let Some(backend) =
        services::pick_in::<V6>(frontend, key.dport, key.proto, &svc, client, hash, now)
    else {
        return (TC_ACT_SHOT, reason::DROP_NO_BACKEND);
    };
    let backend = if ipv6::endpoint(backend.addr).is_some() {
        backend
    } else {
        // Not forwarded to other nodes yet: one of this node's backends instead, if any.
        let Some(local) = local_backend(frontend, key.dport, key.proto, &svc) else {
            return (TC_ACT_SHOT, reason::DROP_DNAT6_REMOTE_BACKEND);
        };
        local
    };
    if !conntrack::admit_family::<Addr6>(cfg) {
        return (TC_ACT_SHOT, reason::DROP_CT_FULL);
    }
    let nat = CtNat6 {
        saddr: key.saddr,
        daddr: addr6_from_bytes(backend.addr),
        sport: key.sport,
        dport: backend.port,
    };
    let (Some(tuple), Some(translated)) = (
        DNAT6_SCRATCH.get_ptr_mut(SCRATCH_TUPLE),
        DNAT6_SCRATCH.get_ptr_mut(SCRATCH_NAT),
    ) else {
        return PASS;
    };
    // SAFETY: this CPU's entries of the per-CPU scratch array, which only this packet's
    // programs use while they run (one after the other, on this CPU).
    unsafe {
        *tuple = pkt.key;
        *translated = CtKey6 {
            saddr: nat.saddr,
            daddr: nat.daddr,
            sport: nat.sport,
            dport: nat.dport,
            ..pkt.key
        };
    }
    (TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::DNAT6_NEW_FLOW))
}

/// The body of `dnat6_new_flow`: creates the entries of the flow `from_uplink6_dnat` left in
/// `DNAT6_SCRATCH` and hands the packet back to it, which then finds them and translates it
/// (creation and rewrite would not fit one program's stack).
#[inline(always)]
pub fn new_flow(_ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    let (Some(tuple), Some(translated)) = (
        DNAT6_SCRATCH.get_ptr_mut(SCRATCH_TUPLE),
        DNAT6_SCRATCH.get_ptr_mut(SCRATCH_NAT),
    ) else {
        return PASS;
    };
    // SAFETY: as in `from_uplink`: this CPU's scratch entries, written by the program that
    // tail-called this one.
    let (key, translated) = unsafe { (&*tuple, &*translated) };
    match create_dnat(cfg, key, translated) {
        Ok(()) => (TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::FROM_UPLINK6_DNAT)),
        Err(why) => (TC_ACT_SHOT, why),
    }
}

/// `conntrack::create` for a service flow from outside (`translated`: the tuple the first
/// packet is rewritten to), in its own BPF function so the port search's stack is not added
/// to the caller's frame (as `nat6`'s `create_snat`). The client's port is kept unless another
/// flow to the same backend holds the reply tuple.
#[inline(never)]
fn create_dnat(cfg: &NodeConfig, key: &CtKey6, translated: &CtKey6) -> Result<(), u32> {
    let nat = CtNat6 {
        saddr: translated.saddr,
        daddr: translated.daddr,
        sport: translated.sport,
        dport: translated.dport,
    };
    let now = conntrack::now();
    let ports = PortChoice::KeepElseAllocate;
    conntrack::create(cfg, key, nat, ct_kind::DNAT, ports, now).map(|_| ())
}

/// One of the frontend's backends on this node, at random: userspace puts them first (slots
/// `1..=local_count`). `None` when it has none.
#[inline(always)]
fn local_backend(
    frontend: [u8; 16],
    port: u16,
    proto: u8,
    svc: &ServiceValue,
) -> Option<ServiceBackend6> {
    if svc.local_count == 0 {
        return None;
    }
    let slot = 1 + (services::random() % u32::from(svc.local_count)) as u16;
    let id = <V6 as services::Family>::entry(frontend, port, proto, slot)?.id;
    let backend = <V6 as services::Family>::backend(id)?;
    ipv6::endpoint(backend.addr).map(|_| backend)
}

/// The frontend a new flow from outside is for, and its master entry: a NodePort when the
/// destination is the node's IPv6 address, else a LoadBalancer IP or externalIP.
#[inline(always)]
fn frontend(cfg: &NodeConfig, key: &CtKey6) -> Option<([u8; 16], ServiceValue)> {
    if key.daddr == cfg.node_ip6 {
        let svc = services::nodeport_in::<V6>(key.dport, key.proto)?;
        return Some((NODEPORT_ADDR6, svc));
    }
    let daddr = addr6_to_bytes(key.daddr);
    match services::frontend_in::<V6>(daddr, key.dport, key.proto) {
        Frontend::Service(svc) if svc.flags & svc_flag::FROM_OUTSIDE != 0 => Some((daddr, svc)),
        Frontend::Service(_) | Frontend::UnknownPort | Frontend::None => None,
    }
}

/// A hash of the flow that is the same on every node (Maglev's key): addresses word by word,
/// ports, protocol.
#[inline(always)]
fn flow_hash(key: &CtKey6) -> u32 {
    let mut h = services::mix(MAGLEV_SEED, key.saddr[0] ^ key.saddr[1]);
    h = services::mix(h, key.saddr[2] ^ key.saddr[3]);
    h = services::mix(h, key.daddr[0] ^ key.daddr[1]);
    h = services::mix(h, key.daddr[2] ^ key.daddr[3]);
    h = services::mix(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
    services::mix(h, u32::from(key.proto))
}

/// The seed of [`flow_hash`] (the golden ratio's bits, as IPv4's flow hash).
const MAGLEV_SEED: u32 = 0x9e37_79b9;

/// Whether the frame holds a whole IPv6 header and the payload it announces.
#[inline(always)]
fn well_formed(ctx: &TcContext) -> bool {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return false;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let (version, payload_len) = unsafe {
        (
            (*ip).vtc_flow[0] >> 4,
            usize::from(u16::from_be((*ip).payload_len)),
        )
    };
    let l3_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    version == 6 && IPV6_HLEN + payload_len <= l3_len
}
