//! IPv6 from a pod (the IPv6 half of `from_pod`): anti-spoofing, the Neighbor Discovery guard,
//! and delivery to another pod on this node.
//!
//! In order:
//! - a frame too short for the fixed IPv6 header, or whose header is not well formed, goes to
//!   the kernel unchanged (which drops what is broken), counted `pass_not_ipv4` as before;
//! - with anti-spoofing on, the source must be the pod's own IPv6 address (in `ENDPOINTS6`,
//!   registered on this veth, sent from the pod's MAC), a link-local address (`fe80::/10`:
//!   what a pod's kernel uses for Router Solicitations, MLD and ND about link-local
//!   addresses; such packets never leave the link) or the unspecified address (`::`: duplicate
//!   address detection and MLD before the pod has an address); anything else is dropped
//!   (`drop_spoofed`). Then Neighbor Discovery: a Neighbor Advertisement must be for the pod's
//!   own address (or a link-local one) and, if it names a link-layer address, the pod's MAC
//!   (`drop_nd_spoofed`); a Router Advertisement or Redirect is dropped (`drop_router_advert`).
//!   ICMPv6 behind more extension headers than [`IPV6_EXT_HEADERS_MAX`] cannot be checked, so
//!   it is dropped too (`drop_nd_spoofed`). These checks come before anything else, multicast
//!   included: an unsolicited advertisement goes to all nodes;
//! - to another local pod's IPv6 address (unicast MAC): delivered straight into that pod with
//!   the MACs rewritten as for IPv4 (`forward_local6`). A frame the pod addressed to its
//!   neighbour's MAC is switched, as by the bridge podnet skips, so its hop limit stays (pods of
//!   one node share the IPv6 pod CIDR on one link); a frame the pod sent to any other MAC (the
//!   gateway's: routed by the node) loses one hop, and with a hop limit of 1 or less, or a hop-by-hop
//!   options header (which a router must process), goes to the kernel, which answers ICMPv6
//!   time exceeded from the gateway address as a router does;
//! - IPv6 leaving the cluster is masqueraded to the node's IPv6 address ([`crate::nat6`]);
//! - everything else (Neighbor Discovery itself, multicast, the node, other nodes' pods,
//!   masquerade exclusions, link-local destinations) goes to the kernel unchanged, counted as `pass_not_ipv4`
//!   as before IPv6 had a fast path.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use podnet_ebpf::abi::{
    Endpoint, EndpointKey6, NodeConfig, config_flag,
    proto::{
        ETH_HLEN, ETH_P_IPV6, IPPROTO_ICMPV6, IPV6_EXT_HEADERS_MAX, IPV6_HLEN, IPV6_NEXTHDR_DEST,
        IPV6_NEXTHDR_HOP, IPV6_NEXTHDR_ROUTING, ND_NA_OPTIONS_OFF, ND_NEIGHBOR_ADVERT,
        ND_OPT_LL_ADDR_LEN_ETHER, ND_OPT_TARGET_LL_ADDR, ND_REDIRECT, ND_ROUTER_ADVERT,
        ND_ROUTER_SOLICIT, ND_TARGET_OFF,
    },
    reason,
};

use crate::{
    forward,
    maps::ENDPOINTS6,
    parse::{EthHdr, is_group_mac, ptr_at},
};

/// The fixed IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class, flow label.
    pub vtc_flow: [u8; 4],
    /// Bytes after this header, network order.
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Offset of the hop limit in the frame.
pub const HOP_LIMIT_OFF: usize = ETH_HLEN + 7;

/// Whether the frame's EtherType is IPv6 (the frame is then this module's).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    ptr_at::<EthHdr>(ctx, 0)
        // SAFETY: `ptr_at` checked that the Ethernet header lies inside the packet.
        .is_some_and(|eth| u16::from_be(unsafe { (*eth).proto }) == ETH_P_IPV6)
}

/// The local pod with IPv6 address `addr`, if there is one.
#[inline(always)]
pub fn endpoint(addr: [u8; 16]) -> Option<Endpoint> {
    // SAFETY: hash map values are read once, immediately, and copied out.
    unsafe { ENDPOINTS6.get(EndpointKey6 { addr }) }.copied()
}

/// Whether `addr` is link-local unicast (`fe80::/10`).
#[inline(always)]
pub fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// Whether `addr` and `mac` are those of the pod whose veth the packet came in on.
#[inline(always)]
fn is_owner(ctx: &TcContext, addr: [u8; 16], mac: [u8; 6]) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    endpoint(addr).is_some_and(|ep| ep.ifindex == ifindex && ep.mac == mac)
}

/// What follows the IPv6 header and its extension headers.
#[derive(Clone, Copy)]
pub enum Upper {
    /// The upper-layer protocol (or a header this module does not step over, such as a
    /// fragment header) and its offset in the frame.
    Proto { proto: u8, off: usize },
    /// A chain longer than [`IPV6_EXT_HEADERS_MAX`], or cut short.
    Unknown,
}

/// Steps over hop-by-hop, routing and destination options headers, at most
/// [`IPV6_EXT_HEADERS_MAX`] of them.
#[inline(always)]
pub fn upper(ctx: &TcContext, first: u8) -> Upper {
    let mut next = first;
    let mut off = ETH_HLEN + IPV6_HLEN;
    for _ in 0..IPV6_EXT_HEADERS_MAX {
        match next {
            IPV6_NEXTHDR_HOP | IPV6_NEXTHDR_ROUTING | IPV6_NEXTHDR_DEST => {
                let Ok([nexthdr, len]) = ctx.load::<[u8; 2]>(off) else {
                    return Upper::Unknown;
                };
                next = nexthdr;
                off += (usize::from(len) + 1) * 8;
            }
            proto => return Upper::Proto { proto, off },
        }
    }
    match next {
        IPV6_NEXTHDR_HOP | IPV6_NEXTHDR_ROUTING | IPV6_NEXTHDR_DEST => Upper::Unknown,
        proto => Upper::Proto { proto, off },
    }
}

/// The ICMPv6 type of the frame, if its upper layer is ICMPv6 (`Err` when the extension
/// header chain cannot be followed).
#[inline(always)]
fn icmp6(ctx: &TcContext, nexthdr: u8) -> Result<Option<(u8, usize)>, ()> {
    match upper(ctx, nexthdr) {
        Upper::Proto {
            proto: IPPROTO_ICMPV6,
            off,
        } => Ok(ctx.load::<u8>(off).ok().map(|t| (t, off))),
        Upper::Proto { .. } => Ok(None),
        Upper::Unknown => Err(()),
    }
}

/// The Neighbor Discovery guard (anti-spoofing on): `None` when the message may go on.
#[inline(always)]
fn nd_guard(ctx: &TcContext, icmp_type: u8, off: usize, smac: [u8; 6]) -> Option<(i32, u32)> {
    const DROP_ND: (i32, u32) = (aya_ebpf::bindings::TC_ACT_SHOT, reason::DROP_ND_SPOOFED);
    match icmp_type {
        ND_ROUTER_ADVERT | ND_REDIRECT => {
            Some((aya_ebpf::bindings::TC_ACT_SHOT, reason::DROP_ROUTER_ADVERT))
        }
        ND_NEIGHBOR_ADVERT => {
            let Ok(target) = ctx.load::<[u8; 16]>(off + ND_TARGET_OFF) else {
                return Some(DROP_ND);
            };
            if !is_link_local(&target) && !is_owner(ctx, target, smac) {
                return Some(DROP_ND);
            }
            // The first option, if it is the target link-layer address, must be the pod's MAC
            // (the Ethernet source, checked against the pod's own above for global targets).
            if let Ok([opt_type, opt_len, mac @ ..]) = ctx.load::<[u8; 8]>(off + ND_NA_OPTIONS_OFF)
                && opt_type == ND_OPT_TARGET_LL_ADDR
                && opt_len == ND_OPT_LL_ADDR_LEN_ETHER
                && mac != smac
            {
                return Some(DROP_ND);
            }
            None
        }
        _ => None,
    }
}

/// Whether an ICMPv6 type is Neighbor Discovery (always the kernel's business).
#[inline(always)]
fn is_nd(icmp_type: u8) -> bool {
    (ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&icmp_type)
}

/// The IPv6 path of `from_pod` (see the module documentation). The caller has checked that
/// the frame is IPv6 and the node's configuration is ready.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> (i32, u32) {
    const PASS: (i32, u32) = (TC_ACT_OK, reason::PASS_NOT_IPV4);
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)) else {
        return PASS;
    };
    // SAFETY: `ptr_at` checked that both headers lie inside the packet; nothing has changed it.
    let (dmac, smac, version, payload_len, nexthdr, hop_limit, saddr, daddr) = unsafe {
        (
            (*eth).dst,
            (*eth).src,
            (*ip).vtc_flow[0] >> 4,
            usize::from(u16::from_be((*ip).payload_len)),
            (*ip).nexthdr,
            (*ip).hop_limit,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let l3_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    if version != 6 || IPV6_HLEN + payload_len > l3_len {
        return PASS;
    }
    let icmp = icmp6(ctx, nexthdr);
    if cfg.flags & config_flag::ANTI_SPOOF != 0 {
        if saddr != [0; 16] && !is_link_local(&saddr) && !is_owner(ctx, saddr, smac) {
            return (aya_ebpf::bindings::TC_ACT_SHOT, reason::DROP_SPOOFED);
        }
        match icmp {
            Err(()) => {
                return (aya_ebpf::bindings::TC_ACT_SHOT, reason::DROP_ND_SPOOFED);
            }
            Ok(Some((icmp_type, off))) => {
                if let Some(done) = nd_guard(ctx, icmp_type, off, smac) {
                    return done;
                }
            }
            Ok(None) => {}
        }
    }
    match icmp {
        Ok(Some((icmp_type, _))) if is_nd(icmp_type) => return PASS,
        Err(()) => return PASS,
        _ => {}
    }
    if is_group_mac(&dmac) {
        return PASS;
    }
    let Some(ep) = endpoint(daddr) else {
        // Not a local pod: masqueraded when it leaves the cluster (or a packet of a
        // masqueraded flow, or an ICMPv6 error about one), else to the kernel.
        return crate::nat6::from_pod(cfg).unwrap_or(PASS);
    };
    if dmac != ep.mac {
        // Not addressed to the pod itself (to the gateway's MAC): routed by the node, a
        // router's hop. The kernel handles what a router must answer.
        if hop_limit <= 1 || nexthdr == IPV6_NEXTHDR_HOP {
            return PASS;
        }
        if ctx.store(HOP_LIMIT_OFF, &(hop_limit - 1), 0).is_err() {
            return (
                aya_ebpf::bindings::TC_ACT_SHOT,
                reason::DROP_REDIRECT_FAILED,
            );
        }
    }
    deliver(ctx, cfg, &ep)
}

#[inline(always)]
fn deliver(ctx: &TcContext, cfg: &NodeConfig, ep: &Endpoint) -> (i32, u32) {
    forward::to_endpoint(ctx, cfg, ep, Some(reason::FORWARD_LOCAL6))
}
