//! The NAT decisions shared by both classifiers: translating a packet of a known flow, starting
//! a service flow (NodePort, ClusterIP, LoadBalancer IP, externalIP) or refusing it, starting a
//! SNAT flow, and translating an ICMP error about a flow. A later IP fragment carries the ports
//! of its datagram's first fragment (see `frag`), so it is translated by the same flow; it never
//! starts one.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use podnet_ebpf::abi::{
    CtKey, CtNat, NODEPORT_ADDR, NodeConfig, ServiceBackend, ct_dir, ct_kind, reason, svc_flag,
};

use crate::{
    conntrack::{self, PortChoice},
    forward,
    mtu::{self, Fit},
    nat,
    parse::{Ipv4Packet, L4},
    reject,
    services::{self, Frontend},
    ttl,
};

/// The reason a packet of a tracked flow is counted under.
#[inline(always)]
fn reason_for(kind: u8, dir: u8) -> u32 {
    match (kind, dir) {
        (ct_kind::ROUTED, ct_dir::ORIGINAL) => reason::FORWARD_UPLINK_TO_POD,
        (ct_kind::ROUTED, _) => reason::FORWARD_ROUTED_REPLY,
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
    from_pod: bool,
) -> (i32, u32) {
    let dest = translated(&pkt.key, nat);
    let ep = forward::endpoint(dest.daddr);
    // From the uplink to a pod: the pod's MTU may be smaller (see `mtu`).
    let (fit, mtu) = match &ep {
        Some(ep) if !from_pod => mtu::check(ctx, ep.ifindex),
        _ => (Fit::Fits, 0),
    };
    // Every translated packet crosses the node: one hop (the kernel counts it for a packet it
    // forwards in fragments).
    if fit != Fit::Fragment
        && let Some(expired) = ttl::hop(ctx, cfg, pkt, from_pod)
    {
        return expired;
    }
    if fit == Fit::FragNeeded {
        // Answered before the rewrite: the error quotes the packet as its sender sent it.
        return reject::frag_needed(ctx, cfg, pkt, mtu);
    }
    if nat::rewrite(ctx, pkt, nat).is_err() {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    }
    match (fit, ep) {
        (Fit::Fragment, _) => (TC_ACT_OK, reason::PASS_TOO_BIG),
        (_, Some(ep)) => forward::to_endpoint(ctx, cfg, &ep, Some(why)),
        (_, None) => forward::deliver_off_node(ctx, cfg, &dest, why),
    }
}

/// Translates and delivers a packet that belongs to a tracked flow; `None` when it does not.
#[inline(always)]
pub fn tracked(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
    from_pod: bool,
) -> Option<(i32, u32)> {
    let entry = conntrack::lookup(&pkt.key, now)?;
    Some(translate_tracked(ctx, cfg, pkt, entry, now, from_pod))
}

/// [`tracked`] for a caller that has not read the clock: it is read only for a tracked flow.
#[inline(always)]
pub fn tracked_timed(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    from_pod: bool,
) -> Option<(i32, u32)> {
    let (entry, now) = conntrack::lookup_timed(&pkt.key)?;
    Some(translate_tracked(ctx, cfg, pkt, entry, now, from_pod))
}

/// Translates and delivers a packet that matched the live `entry`.
#[inline(always)]
fn translate_tracked(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    entry: *mut podnet_ebpf::abi::CtEntry,
    now: u64,
    from_pod: bool,
) -> (i32, u32) {
    conntrack::on_packet(cfg, &pkt.key, entry, pkt.l4, now);
    // SAFETY: `entry` points at a live map value; it is copied out at once.
    let (nat, kind, dir) = unsafe { ((*entry).nat, (*entry).kind, (*entry).dir) };
    rewrite_and_deliver(ctx, cfg, pkt, &nat, reason_for(kind, dir), from_pod)
}

/// Starts a flow to `backend` of a service frontend (the packet's destination): records the
/// flow and delivers the packet. `from_pod` says the client is a local pod, which may be the
/// backend itself (hairpin: the source then becomes the node IP too, or the pod would see a
/// packet from itself). A backend on another node gets the packet with this node's IP as its
/// source, so the replies come back through this node (kube-proxy's policy "Cluster"), when
/// the client is outside or the frontend is a NodePort; a pod's packet to any other frontend
/// keeps the pod's address (its replies come back to the pod's node by routing).
#[inline(always)]
fn start_service_flow(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
    backend: &ServiceBackend,
    from_pod: bool,
    nodeport: bool,
) -> (i32, u32) {
    if !conntrack::admit(cfg) {
        return (TC_ACT_SHOT, reason::DROP_CT_FULL);
    }
    let hairpin = from_pod && backend.addr == pkt.key.saddr;
    let remote = !hairpin && forward::endpoint(backend.addr).is_none();
    if !remote {
        // The backend is a local pod: its replies to local clients must be looked up.
        forward::mark_nat_replies(backend.addr);
    }
    let snat_remote = remote && (nodeport || !from_pod);
    let allocate = PortChoice::Allocate;
    let (kind, ports, saddr) = if hairpin {
        (ct_kind::HAIRPIN, allocate, cfg.node_ip)
    } else if snat_remote {
        (ct_kind::REMOTE_BACKEND, allocate, cfg.node_ip)
    } else {
        let ports = PortChoice::KeepElseAllocate;
        (ct_kind::DNAT, ports, pkt.key.saddr)
    };
    let nat = CtNat {
        saddr,
        daddr: backend.addr,
        sport: pkt.key.sport,
        dport: backend.port,
    };
    let why = if from_pod && !nodeport {
        reason::SERVICE_DNAT
    } else {
        reason::DNAT
    };
    match conntrack::create(cfg, &pkt.key, nat, kind, ports, now) {
        Ok(nat) => rewrite_and_deliver(ctx, cfg, pkt, &nat, why, from_pod),
        Err(why) => (TC_ACT_SHOT, why),
    }
}

/// Starts a flow to a NodePort on the node's IP, if `pkt` is one (see [`start_service_flow`]).
/// `None` when `pkt` is not for a NodePort.
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
    let svc = services::nodeport(pkt.key.dport, pkt.key.proto)?;
    let client = services::Client {
        addr: pkt.key.saddr,
        flow: Some(&pkt.key),
    };
    let Some(backend) = services::pick(
        NODEPORT_ADDR,
        pkt.key.dport,
        pkt.key.proto,
        &svc,
        &client,
        now,
    ) else {
        return Some((TC_ACT_SHOT, reason::DROP_NO_BACKEND));
    };
    Some(start_service_flow(
        ctx, cfg, pkt, now, &backend, from_pod, true,
    ))
}

/// Starts a flow to a service frontend at the packet's destination (ClusterIP, LoadBalancer
/// IP, externalIP; from outside only the latter two), or refuses it at once (TCP RST, ICMP port
/// unreachable, back to the client) when the frontend has no backends or the address is a
/// ClusterIP without this port. `None` when the destination is no frontend.
#[inline(always)]
pub fn service(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
    from_pod: bool,
) -> Option<(i32, u32)> {
    if matches!(pkt.l4, L4::Fragment | L4::OrphanFragment) {
        return untracked_fragment_to_frontend(pkt, from_pod);
    }
    if !matches!(pkt.l4, L4::Tcp { .. } | L4::Udp) {
        return None;
    }
    let key = &pkt.key;
    let svc = match services::frontend(key.daddr, key.dport, key.proto) {
        Frontend::None => return None,
        Frontend::UnknownPort if from_pod => {
            return Some(reject::refuse(
                ctx,
                cfg,
                pkt,
                reason::REJECT_UNKNOWN_PORT,
                from_pod,
            ));
        }
        Frontend::UnknownPort => return None,
        Frontend::Service(svc) => svc,
    };
    if !from_pod && svc.flags & svc_flag::FROM_OUTSIDE == 0 {
        return None;
    }
    let client = services::Client {
        addr: key.saddr,
        flow: Some(key),
    };
    let Some(backend) = services::pick(key.daddr, key.dport, key.proto, &svc, &client, now) else {
        return Some(reject::refuse(
            ctx,
            cfg,
            pkt,
            reason::REJECT_NO_BACKEND,
            from_pod,
        ));
    };
    if !conntrack::starts_flow(pkt.l4) {
        // A flow whose backend left (its entries removed) or that was forgotten: a RST tells
        // the client at once (a RST itself is not answered, only counted).
        return Some(reject::refuse(
            ctx,
            cfg,
            pkt,
            reason::REJECT_CT_NO_STATE,
            from_pod,
        ));
    }
    Some(start_service_flow(
        ctx, cfg, pkt, now, &backend, from_pod, false,
    ))
}

/// Records a connection from outside the cluster routed straight to the local pod at its
/// destination (no NAT), so the pod's replies are not taken for new traffic of its own and
/// SNATed, then delivers the packet (one hop). Packets that start no flow, and those from a
/// masquerade exclusion, are delivered as they are.
#[inline(always)]
pub fn routed_to_pod(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
    ep: &podnet_ebpf::abi::Endpoint,
) -> (i32, u32) {
    let fit = mtu::check(ctx, ep.ifindex);
    if fit.0 == Fit::FragNeeded {
        // Answered, not delivered: no record.
        return mtu::to_pod_checked(ctx, cfg, pkt, ep, reason::FORWARD_UPLINK_TO_POD, fit);
    }
    // A masquerade exclusion needs no record: the pod's traffic to it is never SNATed.
    if pkt.l4.has_tuple()
        && conntrack::starts_flow(pkt.l4)
        && !crate::masquerade::excluded(pkt.key.saddr)
        && conntrack::admit(cfg)
    {
        let nat = CtNat {
            saddr: pkt.key.saddr,
            daddr: pkt.key.daddr,
            sport: pkt.key.sport,
            dport: pkt.key.dport,
        };
        let ports = PortChoice::KeepElseAllocate;
        match conntrack::create(cfg, &pkt.key, nat, ct_kind::ROUTED, ports, now) {
            // A clash with another flow's reply tuple moved the source port: rewrite it.
            Ok(done) if done.sport != nat.sport => {
                if nat::rewrite(ctx, pkt, &done).is_err() {
                    return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
                }
            }
            Ok(_) => {}
            Err(why) => return (TC_ACT_SHOT, why),
        }
    }
    mtu::to_pod_checked(ctx, cfg, pkt, ep, reason::FORWARD_UPLINK_TO_POD, fit)
}

/// A later fragment to a service frontend that no conntrack entry took (its first fragment was
/// refused, or has not been seen: then its ports are unknown, and only a ClusterIP's address is
/// recognised): dropped, never handed on untranslated. `None` when the destination is no
/// frontend the sender may use.
#[inline(always)]
fn untracked_fragment_to_frontend(pkt: &Ipv4Packet, from_pod: bool) -> Option<(i32, u32)> {
    let key = &pkt.key;
    // With unknown ports the port is 0, which no service has: a ClusterIP reads as UnknownPort.
    let frontend = match services::frontend(key.daddr, key.dport, key.proto) {
        Frontend::None => false,
        Frontend::UnknownPort => from_pod,
        Frontend::Service(svc) => from_pod || svc.flags & svc_flag::FROM_OUTSIDE != 0,
    };
    let why = if pkt.l4 == L4::Fragment {
        reason::DROP_CT_NO_STATE
    } else {
        reason::DROP_FRAG_OUT_OF_ORDER
    };
    frontend.then_some((TC_ACT_SHOT, why))
}

/// Starts a SNAT flow for a pod packet leaving the cluster and delivers it. The route is looked
/// up first: a destination the node does not forward to (one of its own addresses, say) is not
/// the datapath's to translate and goes to the kernel unchanged.
#[inline(always)]
pub fn snat(ctx: &TcContext, cfg: &NodeConfig, pkt: &Ipv4Packet, now: u64) -> (i32, u32) {
    match pkt.l4 {
        L4::OrphanFragment => return (TC_ACT_SHOT, reason::DROP_FRAG_OUT_OF_ORDER),
        l4 if !l4.has_tuple() => return (TC_ACT_SHOT, reason::DROP_NAT_UNSUPPORTED),
        _ => {}
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
    if let Some(expired) = ttl::hop(ctx, cfg, pkt, true) {
        return expired;
    }
    let nat = CtNat {
        saddr: cfg.node_ip,
        daddr: pkt.key.daddr,
        sport: pkt.key.sport,
        dport: pkt.key.dport,
    };
    let ports = PortChoice::Allocate;
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
/// quoted packet; `None` when it is about no flow podnet tracks. An error sent by the endpoint
/// the quoted packet was for (a pod behind a NodePort answering port unreachable, say) is
/// translated like that endpoint's replies, so it comes from the address the sender used; one
/// from a router on the way keeps the router's address.
#[inline(always)]
pub fn icmp_error(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    now: u64,
    from_pod: bool,
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
    if let Some(expired) = ttl::hop(ctx, cfg, pkt, from_pod) {
        return Some(expired);
    }
    let from = if pkt.key.saddr == quoted.key.daddr {
        nat.saddr
    } else {
        pkt.key.saddr
    };
    if nat::rewrite_icmp_error(ctx, pkt, &quoted, &original, from, nat.daddr).is_err() {
        return Some((TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED));
    }
    let key = CtKey {
        saddr: from,
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
