//! Routing IPv6 out of the node by the FIB, the IPv6 twin of [`crate::fib`]: `bpf_fib_lookup`
//! (`AF_INET6`) towards another node's IPv6 address, then a redirect out of the interface it
//! names, to the next hop's MAC (or `bpf_redirect_neigh` while the neighbour is unresolved).
//! The packet keeps its addresses (a pod's own, untranslated), so what the FIB cannot forward
//! here may go to the kernel, which answers as a router.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use podnet_ebpf::abi::{Peer6, proto::ETH_HLEN, reason};

/// `AF_INET6`.
const AF_INET6: u8 = 10;
/// Offset of the IPv6 source address in the frame.
const SADDR_OFF: usize = ETH_HLEN + 8;

/// An IPv6 address as the four 32-bit words the helpers take (network order, as in memory).
#[inline(always)]
pub fn words(addr: [u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        i += 1;
    }
    out
}

/// Sends a pod's IPv6 packet with hop limit `hop_limit` (above 1) to `peer`'s IPv6 node
/// address, one hop less, counted under `why`. `None` when the FIB does not forward it there
/// (no route, forwarding off, a packet too big for the way out): the kernel's, unchanged.
#[inline(always)]
pub fn to_node(ctx: &TcContext, peer: &Peer6, hop_limit: u8, why: u32) -> Option<(i32, u32)> {
    const FAILED: (i32, u32) = (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    let saddr = ctx.load::<[u8; 16]>(SADDR_OFF).ok()?;
    let Some(scratch) = crate::maps::scratch6() else {
        return Some(FAILED);
    };
    // SAFETY: `scratch` is this CPU's zeroed scratch entry (see `maps::SCRATCH6`); the fields
    // are plain data; the helpers get pointers to memory of the sizes passed; the context
    // pointer is the program's own.
    unsafe {
        let params = &raw mut (*scratch).fib;
        (*params).family = AF_INET6;
        (*params).ifindex = (*ctx.skb.skb).ifindex;
        (*params).__bindgen_anon_3.ipv6_src = words(saddr);
        (*params).__bindgen_anon_4.ipv6_dst = words(peer.node_ip6);
        // tot_len 0: the helper checks the skb itself against the egress MTU.
        let rc = bpf_fib_lookup(ctx.as_ptr(), params, size_of::<FibParams>() as i32, 0);
        let redirected = match u32::try_from(rc) {
            Ok(BPF_FIB_LKUP_RET_SUCCESS) => {
                if let Err(failed) = crate::forward6::hop(ctx, hop_limit) {
                    return Some(failed);
                }
                let (dmac, smac) = ((*params).dmac, (*params).smac);
                if ctx.store(0, &dmac, 0).is_err() || ctx.store(6, &smac, 0).is_err() {
                    return Some(FAILED);
                }
                bpf_redirect((*params).ifindex, 0)
            }
            Ok(BPF_FIB_LKUP_RET_NO_NEIGH) => {
                if let Err(failed) = crate::forward6::hop(ctx, hop_limit) {
                    return Some(failed);
                }
                // For AF_INET6 the helper leaves the next hop in `ipv6_dst`; the kernel
                // resolves it on `ifindex` and transmits once it is known.
                let neigh = &raw mut (*scratch).neigh;
                (*neigh).nh_family = u32::from(AF_INET6);
                (*neigh).__bindgen_anon_1.ipv6_nh = (*params).__bindgen_anon_4.ipv6_dst;
                bpf_redirect_neigh(
                    (*params).ifindex,
                    neigh,
                    size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            }
            _ => return None,
        };
        if redirected == i64::from(TC_ACT_REDIRECT) {
            Some((TC_ACT_REDIRECT, why))
        } else {
            Some(FAILED)
        }
    }
}
