//! Ingress of a pod's host-side veth: everything a pod sends starts here.
//!
//! In order: a packet of a tracked flow, or an ICMP error about one, is translated and
//! delivered (replies of service flows, SNATed flows, hairpin); IPv4 to another local pod is delivered straight to it; a new
//! connection to a NodePort on the node IP, or to a ClusterIP, LoadBalancer IP or externalIP,
//! is DNATed to a backend (never SNATed, except hairpin), or refused at once when there is no
//! backend; other traffic to the service CIDR goes to the kernel untouched (whatever else
//! serves it, kube-proxy say, must see the pod's own address); IPv4 to another node's pod CIDR goes
//! straight out of the uplink to that node with its addresses untouched (native routing);
//! traffic to a masquerade exclusion (`non_masquerade_cidrs`) goes to the kernel with the pod's
//! address; other traffic leaving the cluster is SNATed to the node IP. IPv6 takes its own program
//! (`from_pod6`, [`crate::ipv6`]) by tail call. Everything else (ARP, broadcast,
//! the node's own addresses, other nodes' pods, anything malformed) goes to the kernel
//! unchanged, as it would without podnet. With anti-spoofing on, IPv4 and ARP that claim an
//! address or MAC other than the pod's own are dropped.
//!
//! The common case is kept cheap: a packet to another local pod from a pod that serves no
//! translated flow (`endpoint_flag::NAT_REPLIES` unset, known from the anti-spoofing lookup)
//! cannot be a reply to translate, so it skips conntrack and the clock; the destination pod is
//! looked up once.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use podnet_ebpf::abi::{Endpoint, config_flag, endpoint_flag, ipv6_prog, reason};

use crate::{
    conntrack, fib, forward, ipv6,
    maps::debug_enabled,
    masquerade,
    parse::{self, in_prefix},
    stats, tail6, translate, ttl,
};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let hook = podnet_ebpf::abi::monitor::hook::FROM_POD;
    if ipv6::is_ipv6(&ctx) {
        // Here, in the program's own function (which returns `int`), as the verifier requires
        // of a tail call; `decide` may be an outlined function returning a pair.
        return tail6::enter(&ctx, hook, ipv6_prog::FROM_POD6);
    }
    stats::counted(&ctx, hook, decide)
}

/// The endpoint of the pod whose veth the packet came in on, if `addr` and `mac` are its own.
#[inline(always)]
fn owner(ctx: &TcContext, addr: [u8; 4], mac: [u8; 6]) -> Option<Endpoint> {
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    forward::endpoint(addr).filter(|ep| ep.ifindex == ifindex && ep.mac == mac)
}

/// Whether `addr` and `mac` are those of the pod whose veth the packet came in on.
#[inline(always)]
fn is_owner(ctx: &TcContext, addr: [u8; 4], mac: [u8; 6]) -> bool {
    owner(ctx, addr, mac).is_some()
}

/// The sending pod's endpoint, if the packet carries the source address and MAC of the pod
/// whose veth it came in on.
#[inline(always)]
fn sender(ctx: &TcContext, frame: &parse::Ipv4Frame) -> Option<Endpoint> {
    // SAFETY: the parser bounds-checked both headers and nothing has changed the packet since.
    let (saddr, smac) = unsafe { ((*frame.ip).saddr, (*frame.eth).src) };
    owner(ctx, saddr, smac)
}

/// Whether a packet from `sender` (known when anti-spoofing checked it) to a local pod can
/// skip conntrack: only a pod that is the backend of a translated flow
/// (`endpoint_flag::NAT_REPLIES`) sends local pods replies that must be translated back.
/// Without anti-spoofing the sender is not looked up, and every packet is.
#[inline(always)]
fn needs_no_conntrack(sender: Option<&Endpoint>, to_local_pod: bool) -> bool {
    to_local_pod && sender.is_some_and(|ep| ep.flags & endpoint_flag::NAT_REPLIES == 0)
}

/// Whether an ARP frame that is not IPv4's business passes: ARP for IPv4 must announce the
/// pod's own address and MAC (with anti-spoofing on), or another pod's traffic could be drawn
/// to it through the node's neighbour table. A probe (sender address 0.0.0.0, RFC 5227)
/// teaches no one anything and passes. Everything else goes to the kernel unchanged.
#[inline(always)]
fn arp_or_pass(ctx: &TcContext, pass: (i32, u32)) -> (i32, u32) {
    if pass.1 != reason::PASS_NOT_IPV4 {
        return pass;
    }
    let anti_spoof =
        crate::maps::ready_config().is_some_and(|cfg| cfg.flags & config_flag::ANTI_SPOOF != 0);
    let Some((eth_src, sha, spa)) = anti_spoof.then(|| parse::arp_sender(ctx)).flatten() else {
        return pass;
    };
    if spa == [0; 4] || (eth_src == sha && is_owner(ctx, spa, sha)) {
        pass
    } else {
        (TC_ACT_SHOT, reason::DROP_SPOOFED)
    }
}

#[inline(always)]
fn decide(ctx: &TcContext) -> (i32, u32) {
    let (cfg, frame) = match parse::ready_ipv4(ctx) {
        Ok(ready) => ready,
        Err(pass) => return arp_or_pass(ctx, pass),
    };
    // SAFETY: the parser bounds-checked the Ethernet header and nothing has changed the packet.
    if parse::is_group_mac(&unsafe { (*frame.eth).dst }) {
        return (TC_ACT_OK, reason::PASS_BROADCAST);
    }
    let sender = if cfg.flags & config_flag::ANTI_SPOOF != 0 {
        match sender(ctx, &frame) {
            Some(ep) => Some(ep),
            None => return (TC_ACT_SHOT, reason::DROP_SPOOFED),
        }
    } else {
        None
    };
    let pkt = parse::ipv4_packet(ctx, &frame);
    let key = &pkt.key;
    // This node's pods are looked up once, before conntrack, so that pod-to-pod traffic that
    // cannot belong to a translated flow skips conntrack (and the clock) altogether.
    let to_pod_cidr = in_prefix(key.daddr, cfg.pod_cidr, cfg.pod_prefix_len);
    let local = if to_pod_cidr {
        forward::endpoint(key.daddr)
    } else {
        None
    };
    if pkt.l4.has_tuple()
        && !needs_no_conntrack(sender.as_ref(), local.is_some())
        && let Some(done) = translate::tracked_timed(ctx, cfg, &pkt, true)
    {
        return done;
    }
    // An ICMP error about a translated flow (a backend's port unreachable to a NodePort
    // client, a pod's frag-needed to an outside sender): translated like the flow's replies.
    if matches!(pkt.l4, parse::L4::IcmpError)
        && let Some(done) = translate::icmp_error(ctx, cfg, &pkt, conntrack::now(), true)
    {
        return done;
    }
    // An endpoint outside the pod CIDR (a chained IPAM's range, say) is looked up only now,
    // as before conntrack it would cost every translated packet a lookup.
    if let Some(ep) = local.or_else(|| {
        (!to_pod_cidr)
            .then(|| forward::endpoint(key.daddr))
            .flatten()
    }) {
        if debug_enabled() {
            debug!(
                ctx,
                "from_pod: {:i} -> local ifindex {}",
                u32::from_be_bytes(key.daddr),
                ep.ifindex
            );
        }
        return forward::to_endpoint(ctx, cfg, &ep, None);
    }
    let now = conntrack::now();
    if !in_prefix(key.saddr, cfg.pod_cidr, cfg.pod_prefix_len) {
        // Not one of this node's pod addresses: not ours to translate.
        return (TC_ACT_OK, reason::PASS_NOT_LOCAL);
    }
    if key.daddr == cfg.node_ip {
        return translate::nodeport(ctx, cfg, &pkt, now, true)
            .unwrap_or((TC_ACT_OK, reason::PASS_NOT_LOCAL));
    }
    if let Some(done) = translate::service(ctx, cfg, &pkt, now, true) {
        return done;
    }
    if cfg.service_prefix_len != 0 && in_prefix(key.daddr, cfg.service_cidr, cfg.service_prefix_len)
    {
        // The service CIDR, but no podnet service: someone else's (kube-proxy's rules, say),
        // so to the kernel as the pod sent it, never SNATed.
        return (TC_ACT_OK, reason::PASS_SERVICE_CIDR);
    }
    if in_prefix(key.daddr, cfg.cluster_cidr, cfg.cluster_prefix_len) {
        // Another node's pods: never NATed; straight to that node when it is a known peer.
        return match forward::peer_of(key.daddr) {
            Some(node_ip) => ttl::hop(ctx, cfg, &pkt, true).unwrap_or_else(|| {
                fib::to_node(ctx, cfg, key, node_ip, reason::FORWARD_REMOTE_NODE)
            }),
            None => (TC_ACT_OK, reason::PASS_NOT_LOCAL),
        };
    }
    if let Some((peer, true)) = forward::peer(key.daddr) {
        // Another node's own IP is inside the cluster: no NAT (NodePort replies go back to the
        // node that forwarded the connection this way).
        return ttl::hop(ctx, cfg, &pkt, true).unwrap_or_else(|| {
            fib::to_node(ctx, cfg, key, peer.node_ip, reason::FORWARD_REMOTE_NODE)
        });
    }
    if masquerade::excluded(key.daddr) {
        // A masquerade exclusion (a peered network that routes back to pod addresses): to the
        // kernel as the pod sent it, routed like the node's own traffic, never SNATed.
        return (TC_ACT_OK, reason::PASS_NON_MASQUERADE);
    }
    let done = translate::snat(ctx, cfg, &pkt, now);
    if debug_enabled() {
        debug!(
            ctx,
            "from_pod: {:i}:{} -> {:i}:{} proto {} leaves the cluster: reason {}",
            u32::from_be_bytes(key.saddr),
            key.sport,
            u32::from_be_bytes(key.daddr),
            key.dport,
            key.proto,
            done.1
        );
    }
    done
}
