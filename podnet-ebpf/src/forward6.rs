//! IPv6 between pods of different nodes, the IPv6 twin of the cross-node half of
//! [`crate::forward`]: other nodes' IPv6 pod CIDRs and IPv6 node addresses are in `PEERS6`.
//!
//! - From a pod ([`to_peer`], called where [`crate::ipv6`] has found no local pod): IPv6 to
//!   another node's pod (or to the node itself) goes straight to that node, its addresses
//!   untouched and its hop limit one lower, as the kernel would route it: natively by a FIB
//!   lookup towards the node's IPv6 address ([`crate::fib6`]), or into the VXLAN overlay
//!   ([`crate::tunnel6`]). A hop limit of 1 or less, or a hop-by-hop options header (which a
//!   router must process), goes to the kernel, which answers time exceeded as a router does;
//!   so does a source a router never forwards (`::`, link-local);
//!   so does what the FIB cannot forward (no route, a packet too big for the way out).
//! - From the uplink or out of the tunnel ([`from_uplink`]): IPv6 from another node (a source
//!   in `PEERS6`) to a local pod is delivered straight into the pod, one hop less. A hop limit
//!   of 1 or less, a hop-by-hop options header, or a packet bigger than the pod's MTU goes to
//!   the kernel, which answers time exceeded or packet too big (or forwards it). Anything else
//!   (the node's own IPv6, Neighbor Discovery, multicast, sources from outside the cluster)
//!   goes to the kernel unchanged, counted `pass_not_ipv4` as before; out of the tunnel a
//!   unicast frame is first marked as addressed to this host (its MAC is the far side's).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED},
    helpers::generated::bpf_check_mtu,
    programs::TcContext,
};
use podnet_ebpf::abi::{
    CtKey6, NodeConfig, Peer6, addr6_from_bytes,
    proto::{ETH_HLEN, IPV6_HLEN, IPV6_NEXTHDR_HOP},
    reason,
};

use crate::{
    fib6, forward,
    ipv6::{Ipv6Hdr, endpoint},
    maps::PEERS6,
    parse::{EthHdr, is_group_mac, ptr_at},
};

/// Offset of the hop limit in the frame, and of the source address.
const HOP_LIMIT_OFF: usize = ETH_HLEN + 7;
const SADDR_OFF: usize = ETH_HLEN + 8;

/// What IPv6 that goes to the kernel unchanged is counted as (as before IPv6 had a fast path).
const PASS: (i32, u32) = (TC_ACT_OK, reason::PASS_NOT_IPV4);

/// The other node `addr` belongs to (one of its IPv6 pod CIDRs, or its IPv6 address).
#[inline(always)]
pub fn peer(addr: [u8; 16]) -> Option<Peer6> {
    PEERS6
        .get(&aya_ebpf::btf_maps::lpm_trie::Key::new(128, addr))
        .copied()
}

/// Whether a packet with this hop limit and first next header may be routed by the program:
/// otherwise it is the kernel's (time exceeded, hop-by-hop options).
#[inline(always)]
fn routable(hop_limit: u8, nexthdr: u8) -> bool {
    hop_limit > 1 && nexthdr != IPV6_NEXTHDR_HOP
}

/// Takes one hop off the packet's hop limit (known to be `hop_limit`, above 1). IPv6 has no
/// header checksum.
#[inline(always)]
fn hop(ctx: &TcContext, hop_limit: u8) -> Result<(), (i32, u32)> {
    ctx.store(HOP_LIMIT_OFF, &(hop_limit - 1), 0)
        .map_err(|_| (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED))
}

/// IPv6 from a pod to `daddr`, an address of no local pod: sent to the node it belongs to
/// when that is another node (see the module doc). `None` when it is not (the caller hands
/// the packet to the kernel unchanged).
#[inline(always)]
pub fn to_peer(
    ctx: &TcContext,
    cfg: &NodeConfig,
    daddr: [u8; 16],
    hop_limit: u8,
    nexthdr: u8,
) -> Option<(i32, u32)> {
    let peer = peer(daddr)?;
    let saddr = ctx.load::<[u8; 16]>(SADDR_OFF).ok()?;
    // A router never forwards the unspecified or a link-local source beyond the link
    // (RFC 4291 2.5.2, 2.5.6): the kernel's, which drops it.
    if !routable(hop_limit, nexthdr) || saddr == [0; 16] || crate::ipv6::is_link_local(&saddr) {
        return None;
    }
    if cfg.tunnel_ifindex != 0 {
        if let Err(failed) = hop(ctx, hop_limit) {
            return Some(failed);
        }
        return Some(crate::tunnel6::to_node(
            ctx,
            cfg.tunnel_ifindex,
            &peer,
            reason::FORWARD_REMOTE_NODE6,
        ));
    }
    to_node_natively(ctx, &peer, saddr, hop_limit, nexthdr)
}

/// Routes a pod's IPv6 packet (hop limit `hop_limit`, above 1) by the FIB towards `peer`'s
/// IPv6 node address, as IPv4 goes towards the node IP: the fabric need not know pod CIDRs.
/// `None` when the FIB does not forward it there (no route, forwarding off, too big for the way
/// out): the kernel's, unchanged, which answers as a router.
#[inline(always)]
fn to_node_natively(
    ctx: &TcContext,
    peer: &Peer6,
    saddr: [u8; 16],
    hop_limit: u8,
    nexthdr: u8,
) -> Option<(i32, u32)> {
    let via = CtKey6 {
        saddr: addr6_from_bytes(saddr),
        daddr: addr6_from_bytes(peer.node_ip6),
        proto: nexthdr,
        ..CtKey6::default()
    };
    let route = fib6::lookup(ctx, &via);
    if matches!(route, fib6::Route::NotForwarded) {
        return None;
    }
    if let Err(failed) = hop(ctx, hop_limit) {
        return Some(failed);
    }
    Some(fib6::send(ctx, &route, reason::FORWARD_REMOTE_NODE6))
}

/// The IPv6 path of `from_uplink` (see the module doc). The caller has checked that the
/// frame is IPv6.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)) else {
        return PASS;
    };
    // SAFETY: `ptr_at` checked that both headers lie inside the packet; nothing has changed it.
    let (dmac, version, payload_len, nexthdr, hop_limit, saddr, daddr) = unsafe {
        (
            (*eth).dst,
            (*ip).vtc_flow[0] >> 4,
            usize::from(u16::from_be((*ip).payload_len)),
            (*ip).nexthdr,
            (*ip).hop_limit,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if is_group_mac(&dmac) {
        return PASS;
    }
    let l3_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    let delivered = if version == 6 && IPV6_HLEN + payload_len <= l3_len {
        to_pod(ctx, cfg, saddr, daddr, hop_limit, nexthdr)
    } else {
        None
    };
    let done = delivered.unwrap_or(PASS);
    if done.1 != reason::FORWARD_UPLINK_TO_POD6 {
        crate::tunnel::for_this_host(ctx, cfg);
    }
    done
}

/// Delivers IPv6 from another node to the local pod `daddr`, if it is one (see the module
/// doc). `None`: the kernel's.
#[inline(always)]
fn to_pod(
    ctx: &TcContext,
    cfg: &NodeConfig,
    saddr: [u8; 16],
    daddr: [u8; 16],
    hop_limit: u8,
    nexthdr: u8,
) -> Option<(i32, u32)> {
    let ep = endpoint(daddr)?;
    peer(saddr)?;
    if !routable(hop_limit, nexthdr) {
        return None;
    }
    if too_big(ctx, ep.ifindex) {
        return Some((TC_ACT_OK, reason::PASS_TOO_BIG));
    }
    if let Err(failed) = hop(ctx, hop_limit) {
        return Some(failed);
    }
    Some(forward::to_endpoint(
        ctx,
        cfg,
        &ep,
        Some(reason::FORWARD_UPLINK_TO_POD6),
    ))
}

/// Whether the packet is bigger than the device `ifindex`'s MTU (a GSO packet is cut to the
/// size TCP negotiated with the pod, so it fits).
#[inline(always)]
fn too_big(ctx: &TcContext, ifindex: u32) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: the context is the program's own __sk_buff; `mtu` is a valid u32 the helper
    // fills in (in: 0, the skb's own length is checked).
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &raw mut mtu, 0, 0) };
    rc == i64::from(BPF_MTU_CHK_RET_FRAG_NEEDED)
}
