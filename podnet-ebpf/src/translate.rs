//! The NAT decisions shared by both classifiers: translating a packet of a known flow, starting
//! a NodePort flow, and translating an ICMP error about a flow.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use podnet_ebpf::abi::{CtKey, CtNat, NodeConfig, ct_dir, ct_kind, reason};

use crate::{
    conntrack::{self, PortChoice},
    forward, nat,
    parse::{Ipv4Packet, L4},
    services::{self, NodePort},
};

/// The reason a packet of a tracked flow is counted under.
#[inline(always)]
fn reason_for(kind: u8, dir: u8) -> u32 {
    match (kind, dir) {
        (ct_kind::SNAT, ct_dir::ORIGINAL) => reason::SNAT,
        (ct_kind::SNAT, _) => reason::SNAT_REPLY,
        (_, ct_dir::ORIGINAL) => reason::DNAT,
        _ => reason::DNAT_REPLY,
    }
}

/// The tuple a packet with `key` has after translation to `nat`.
#[inline(always)]
fn translated(key: &CtKey, nat: &CtNat) -> CtKey {
    CtKey {
        saddr: nat.saddr,
        daddr: nat.daddr,
        sport: nat.sport,
        dport: nat.dport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// Rewrites the packet to `nat` and delivers it.
#[inline(always)]
fn rewrite_and_deliver(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    nat: &CtNat,
    why: u32,
) -> (i32, u32) {
    if nat::rewrite(ctx, pkt, nat).is_err() {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    }
    forward::deliver(ctx, cfg, &translated(&pkt.key, nat), why)
}

/// Translates and delivers a packet that belongs to a tracked flow; `None` when it does not.
#[inline(always)]
pub fn tracked(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
) -> Option<(i32, u32)> {
    let entry = conntrack::lookup(&pkt.key, now)?;
    conntrack::on_packet(cfg, &pkt.key, entry, pkt.l4, now);
    // SAFETY: `entry` points at a live map value; it is copied out at once.
    let (nat, kind, dir) = unsafe { ((*entry).nat, (*entry).kind, (*entry).dir) };
    Some(rewrite_and_deliver(
        ctx,
        cfg,
        pkt,
        &nat,
        reason_for(kind, dir),
    ))
}

/// Starts a flow to a NodePort on the node's IP, if `pkt` is one: picks a backend, records the
/// flow and delivers the packet. `from_pod` says the client is a local pod, which may be the
/// backend itself (hairpin: the source then becomes the node IP too, or the pod would see a
/// packet from itself). `None` when `pkt` is not for a NodePort.
#[inline(always)]
pub fn nodeport(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
    from_pod: bool,
) -> Option<(i32, u32)> {
    if !matches!(pkt.l4, L4::Tcp { .. } | L4::Udp) || !conntrack::starts_flow(pkt.l4) {
        return None;
    }
    let backend = match services::pick(pkt.key.dport, pkt.key.proto) {
        NodePort::None => return None,
        NodePort::NoBackend => return Some((TC_ACT_SHOT, reason::DROP_NO_BACKEND)),
        NodePort::Backend(backend) => backend,
    };
    if !conntrack::admit(cfg) {
        return Some((TC_ACT_SHOT, reason::DROP_CT_FULL));
    }
    let hairpin = from_pod && backend.addr == pkt.key.saddr;
    // A backend on another node: the replies must come back through this node to be
    // translated, so the source becomes this node too (kube-proxy's policy "Cluster").
    let remote = !hairpin && forward::endpoint(backend.addr).is_none();
    let allocate = PortChoice::Allocate {
        random: services::random(),
    };
    let (kind, ports, saddr) = if hairpin {
        (ct_kind::HAIRPIN, allocate, cfg.node_ip)
    } else if remote {
        (ct_kind::REMOTE_BACKEND, allocate, cfg.node_ip)
    } else {
        (ct_kind::DNAT, PortChoice::Keep, pkt.key.saddr)
    };
    let nat = CtNat {
        saddr,
        daddr: backend.addr,
        sport: pkt.key.sport,
        dport: backend.port,
    };
    Some(
        match conntrack::create(cfg, &pkt.key, nat, kind, ports, now) {
            Ok(nat) => rewrite_and_deliver(ctx, cfg, pkt, &nat, reason::DNAT),
            Err(why) => (TC_ACT_SHOT, why),
        },
    )
}

/// Starts a SNAT flow for a pod packet leaving the cluster and delivers it. The route is looked
/// up first: a destination the node does not forward to (one of its own addresses, say) is not
/// the datapath's to translate and goes to the kernel unchanged.
#[inline(always)]
pub fn snat(ctx: &TcContext, cfg: &NodeConfig, pkt: &Ipv4Packet, now: u64) -> (i32, u32) {
    if !pkt.l4.has_tuple() {
        return (TC_ACT_SHOT, reason::DROP_NAT_UNSUPPORTED);
    }
    if !conntrack::starts_flow(pkt.l4) {
        return (TC_ACT_SHOT, reason::DROP_CT_NO_STATE);
    }
    let probe = CtKey {
        saddr: cfg.node_ip,
        ..pkt.key
    };
    let route = crate::fib::lookup(ctx, &probe);
    if matches!(route, crate::fib::Route::NotForwarded) {
        return (TC_ACT_OK, reason::PASS_NOT_LOCAL);
    }
    if !conntrack::admit(cfg) {
        return (TC_ACT_SHOT, reason::DROP_CT_FULL);
    }
    let nat = CtNat {
        saddr: cfg.node_ip,
        daddr: pkt.key.daddr,
        sport: pkt.key.sport,
        dport: pkt.key.dport,
    };
    let ports = PortChoice::Allocate {
        random: services::random(),
    };
    match conntrack::create(cfg, &pkt.key, nat, ct_kind::SNAT, ports, now) {
        Ok(nat) => {
            if nat::rewrite(ctx, pkt, &nat).is_err() {
                return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
            }
            crate::fib::send(ctx, &route, reason::SNAT)
        }
        Err(why) => (TC_ACT_SHOT, why),
    }
}

/// Translates an ICMP error about a tracked flow back towards the endpoint that sent the
/// quoted packet; `None` when it is about no flow podnet tracks.
#[inline(always)]
pub fn icmp_error(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
) -> Option<(i32, u32)> {
    let quoted = nat::quoted(ctx, pkt)?;
    // A reply to the quoted packet would carry the reversed tuple: its entry says how packets
    // flowing back are translated, and so how the quoted (outgoing) packet was.
    let entry = conntrack::lookup(&quoted.key.reversed(), now)?;
    // SAFETY: `entry` points at a live map value; it is copied out at once.
    let nat = unsafe { (*entry).nat };
    // The quoted packet, untranslated, went from the endpoint the reply would reach.
    let original = CtNat {
        saddr: nat.daddr,
        daddr: nat.saddr,
        sport: nat.dport,
        dport: nat.sport,
    };
    if nat::rewrite_icmp_error(ctx, pkt, &quoted, &original, nat.daddr).is_err() {
        return Some((TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED));
    }
    let key = CtKey {
        daddr: nat.daddr,
        ..pkt.key
    };
    Some(forward::deliver(
        ctx,
        cfg,
        &key,
        reason::ICMP_ERROR_TRANSLATED,
    ))
}
