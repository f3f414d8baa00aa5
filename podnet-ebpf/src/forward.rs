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
};

/// The local pod with address `addr`, if there is one.
#[inline(always)]
pub fn endpoint(addr: [u8; 4]) -> Option<Endpoint> {
    // SAFETY: hash map values are read once, immediately, and copied out.
    unsafe { ENDPOINTS.get(EndpointKey { addr }) }.copied()
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
    if ctx.store(0, &ep.mac, 0).is_err() || ctx.store(6, &cfg.gateway_mac, 0).is_err() {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
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
