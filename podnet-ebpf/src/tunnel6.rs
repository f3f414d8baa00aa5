//! IPv6 pod traffic into the VXLAN overlay, the IPv6 twin of [`crate::tunnel`]: the tunnel key
//! names the remote node by its IPv4 address (IPv6 inside the IPv4 underlay) or, for peers
//! marked `peer_flag::UNDERLAY6`, by its IPv6 address (`BPF_F_TUNINFO_IPV6`: the IPv6
//! underlay). The node's VXLAN device is in external (collect_md) mode, which opens a socket of
//! each family, so one device carries both. On the far side `from_uplink` hands the inner
//! frame to [`crate::forward6::from_uplink`].

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use podnet_ebpf::abi::{Peer6, VXLAN_VNI, peer_flag, reason};

/// Outer TTL (hop limit) of encapsulated packets.
const TUNNEL_TTL: u8 = 64;

/// Encapsulates towards `peer` through the VXLAN device `tunnel_ifindex`.
#[inline(always)]
pub fn to_node(ctx: &TcContext, tunnel_ifindex: u32, peer: &Peer6, why: u32) -> (i32, u32) {
    // SAFETY: an all-zero bpf_tunnel_key is a valid starting point.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = VXLAN_VNI;
    key.tunnel_ttl = TUNNEL_TTL;
    let flags = if peer.flags & peer_flag::UNDERLAY6 != 0 {
        // The helper copies the IPv6 remote as it lies in memory (network order).
        let a = peer.node_ip6;
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        key.__bindgen_anon_1.remote_ipv6 = [w(0), w(4), w(8), w(12)];
        u64::from(BPF_F_TUNINFO_IPV6)
    } else {
        // The helper takes the IPv4 remote in host order.
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(peer.node_ip);
        0
    };
    // SAFETY: `key` is a valid bpf_tunnel_key of the size passed; the context is the program's
    // own __sk_buff.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &raw mut key,
            size_of::<bpf_tunnel_key>() as u32,
            flags,
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
