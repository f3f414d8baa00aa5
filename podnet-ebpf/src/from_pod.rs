//! Ingress of a pod's host-side veth: everything a pod sends starts here.
//!
//! IPv4 to another local pod is delivered straight to it; everything else (ARP, IPv6,
//! broadcast, traffic leaving the node, anything malformed) goes to the kernel unchanged, where
//! the bridge and the routing table handle it as they would without podnet.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use podnet_ebpf::abi::{EndpointKey, config_flag, reason};

use crate::{
    forward,
    maps::{CONFIG, ENDPOINTS, debug_enabled},
    parse::{self, Frame},
    stats,
};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let (verdict, why) = decide(&ctx);
    stats::count(why, len);
    verdict
}

#[inline(always)]
fn decide(ctx: &TcContext) -> (i32, u32) {
    let ready = CONFIG
        .get(0)
        .is_some_and(|cfg| cfg.flags & config_flag::READY != 0);
    if !ready {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    }
    let frame = match parse::frame(ctx) {
        Frame::Ipv4(frame) => frame,
        Frame::NotIpv4 => return (TC_ACT_OK, reason::PASS_NOT_IPV4),
        Frame::Malformed => return (TC_ACT_OK, reason::PASS_MALFORMED),
    };
    // SAFETY: the parser bounds-checked both headers and nothing has changed the packet since.
    let (dst_mac, daddr) = unsafe { ((*frame.eth).dst, (*frame.ip).daddr) };
    if parse::is_group_mac(&dst_mac) {
        return (TC_ACT_OK, reason::PASS_BROADCAST);
    }
    // SAFETY: hash map values are read once, immediately, and copied out.
    let Some(ep) = (unsafe { ENDPOINTS.get(EndpointKey { addr: daddr }) }).copied() else {
        return (TC_ACT_OK, reason::PASS_NOT_LOCAL);
    };
    if debug_enabled() {
        debug!(
            ctx,
            "from_pod: {:i} -> local ifindex {}",
            u32::from_be_bytes(daddr),
            ep.ifindex
        );
    }
    forward::to_endpoint(frame.eth, &ep)
}
