//! Delivery: to a local pod, by rewriting the MACs (source: the gateway, destination: the pod)
//! and redirecting straight into its namespace with `bpf_redirect_peer`, skipping the bridge
//! and netfilter (`bpf_redirect` to the host-side veth where a peer redirect is impossible);
//! anywhere else, by a FIB lookup and a redirect out of the node.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use podnet_ebpf::abi::{
    CtKey, Endpoint, EndpointKey, NodeConfig, Peer, endpoint_flag, peer_flag, reason,
};

use crate::{
    fib,
    maps::{ENDPOINTS, PEERS},
    parse::EthHdr,
};

/// The local pod with address `addr`, if there is one.
#[inline(always)]
pub fn endpoint(addr: [u8; 4]) -> Option<Endpoint> {
    // SAFETY: hash map values are read once, immediately, and copied out.
    unsafe { ENDPOINTS.get(EndpointKey { addr }) }.copied()
}

/// Records that the local pod at `addr`, if there is one, is the backend of a translated flow
/// (`endpoint_flag::NAT_REPLIES`): its packets to local pods are then looked up in conntrack.
/// Writes only when the flag is not yet set.
#[inline(always)]
pub fn mark_nat_replies(addr: [u8; 4]) {
    if let Some(ep) = ENDPOINTS.get_ptr_mut(EndpointKey { addr }) {
        // SAFETY: the pointer comes from a successful lookup and map values stay valid while
        // the program runs; the flags word is written whole (a racing userspace update
        // replaces the value and keeps the flag).
        unsafe {
            if (*ep).flags & endpoint_flag::NAT_REPLIES == 0 {
                (*ep).flags |= endpoint_flag::NAT_REPLIES;
            }
        }
    }
}

/// Hands the frame to `ep`. Returns the verdict and the reason it is counted under: `why`, or
/// the local-forwarding reason when `why` is `None`.
#[inline(always)]
pub fn to_endpoint(
    ctx: &TcContext,
    cfg: &NodeConfig,
    ep: &Endpoint,
    why: Option<u32>,
) -> (i32, u32) {
    // Written in place rather than with `bpf_skb_store_bytes`: two helper calls less. (A
    // program that writes the packet makes the kernel unclone a cloned skb's headers first,
    // as the helper would.)
    let Some(eth) = crate::parse::ptr_at::<EthHdr>(ctx, 0) else {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    };
    // SAFETY: `ptr_at` checked that the Ethernet header lies inside the packet, and no helper
    // has changed the packet since.
    unsafe {
        (*eth).dst = ep.mac;
        (*eth).src = cfg.gateway_mac;
    }
    let peer = ep.flags & endpoint_flag::NO_PEER_REDIRECT == 0;
    // SAFETY: both helpers take plain integers and are valid in TC programs.
    let verdict = unsafe {
        if peer {
            bpf_redirect_peer(ep.ifindex, 0)
        } else {
            bpf_redirect(ep.ifindex, 0)
        }
    };
    if verdict != i64::from(TC_ACT_REDIRECT) {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    }
    let why = why.unwrap_or(if peer {
        reason::FORWARD_LOCAL_PEER
    } else {
        reason::FORWARD_LOCAL_REDIRECT
    });
    (TC_ACT_REDIRECT, why)
}

/// The other node `addr` belongs to: a pod CIDR of another node (`node_ip: false`), or
/// another node's own IP (`node_ip: true`).
#[inline(always)]
pub fn peer(addr: [u8; 4]) -> Option<(Peer, bool)> {
    PEERS
        .get(&aya_ebpf::btf_maps::lpm_trie::Key::new(32, addr))
        .map(|peer| (*peer, peer.flags & peer_flag::NODE_IP != 0))
}

/// The node whose pod CIDR holds `addr`, if another node's does.
#[inline(always)]
pub fn peer_of(addr: [u8; 4]) -> Option<[u8; 4]> {
    peer(addr).filter(|(_, node)| !node).map(|(p, _)| p.node_ip)
}

/// Delivers a translated packet whose tuple is now `key`: to the local pod it is addressed to,
/// or out of the node by the FIB.
#[inline(always)]
pub fn deliver(ctx: &TcContext, cfg: &NodeConfig, key: &CtKey, why: u32) -> (i32, u32) {
    match endpoint(key.daddr) {
        Some(ep) => to_endpoint(ctx, cfg, &ep, Some(why)),
        None => deliver_off_node(ctx, cfg, key, why),
    }
}

/// Delivers a translated packet whose tuple is now `key`, addressed to no local pod: to the
/// node whose pod CIDR holds it, or out of the node by the FIB.
#[inline(always)]
pub fn deliver_off_node(ctx: &TcContext, cfg: &NodeConfig, key: &CtKey, why: u32) -> (i32, u32) {
    match peer(key.daddr) {
        Some((p, _)) => fib::to_node(ctx, cfg, key, p.node_ip, why),
        None => fib::route_and_send(ctx, key, why),
    }
}
