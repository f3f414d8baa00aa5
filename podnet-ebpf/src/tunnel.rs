//! The overlay: a packet for another node is handed to the node's VXLAN device (external,
//! collect_md mode) with its tunnel key, the remote node's IP and the VNI, set by
//! `bpf_skb_set_tunnel_key`; the device encapsulates it and the fabric only ever sees node
//! addresses. On the far side the device decapsulates and `from_uplink`, attached to it too,
//! delivers the inner packet.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_change_type, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use podnet_ebpf::abi::{NodeConfig, VXLAN_VNI, reason};

/// Outer TTL of encapsulated packets.
const TUNNEL_TTL: u8 = 64;

/// Encapsulates towards `node_ip` through the VXLAN device `tunnel_ifindex`.
#[inline(always)]
pub fn to_node(ctx: &TcContext, tunnel_ifindex: u32, node_ip: [u8; 4], why: u32) -> (i32, u32) {
    // SAFETY: an all-zero bpf_tunnel_key is a valid starting point.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = VXLAN_VNI;
    // The helper takes the remote address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(node_ip);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: `key` is a valid bpf_tunnel_key of the size passed; the context is the program's
    // own __sk_buff.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &raw mut key,
            size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc != 0 {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    }
    // SAFETY: plain integer arguments.
    if unsafe { bpf_redirect(tunnel_ifindex, 0) } == i64::from(TC_ACT_REDIRECT) {
        (TC_ACT_REDIRECT, why)
    } else {
        (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)
    }
}

/// `skb->pkt_type` of a frame for this host.
const PACKET_HOST: u32 = 0;

/// Marks a packet that came out of the tunnel for the node itself as addressed to this host.
/// The far side sent it with whatever destination MAC its pod used (its own gateway's), which
/// is not this device's, so the kernel would drop it as another host's frame; the MAC means
/// nothing inside the tunnel.
#[inline(always)]
pub fn for_this_host(ctx: &TcContext, cfg: &NodeConfig) {
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if cfg.tunnel_ifindex != 0 && ifindex == cfg.tunnel_ifindex {
        // SAFETY: plain integer argument; TC programs may set the packet type to PACKET_HOST.
        // A failure leaves the packet as it was (dropped by the kernel, as before).
        let _ = unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    }
}
