//! Routing a translated packet out of the node: `bpf_fib_lookup` in the node's namespace, then
//! a redirect to the egress interface with the next hop's MAC (or `bpf_redirect_neigh` when the
//! neighbour is not resolved yet). A SNATed packet carries the node's own address as its
//! source, which the kernel's input path would drop as a martian, so it cannot be handed back.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use podnet_ebpf::abi::{CtKey, NodeConfig, reason};

const AF_INET: u8 = 2;

/// Where `fib::lookup` says a packet goes.
pub enum Route {
    /// Out of `ifindex` to the next hop `dmac`, from `smac`.
    Out {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Out of `ifindex` to next hop `nh` (a gateway, or the destination itself), whose
    /// neighbour entry is not resolved yet.
    NoNeigh { ifindex: u32, nh: [u8; 4] },
    /// Not forwarded: a local address, blackhole, unreachable, or forwarding disabled.
    NotForwarded,
}

/// Looks up the route for a packet with tuple `key` arriving on the skb's interface.
#[inline(always)]
pub fn lookup(ctx: &TcContext, key: &CtKey) -> Route {
    // SAFETY: an all-zero bpf_fib_lookup is the documented starting point for the helper.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = key.proto;
    params.sport = key.sport.to_be();
    params.dport = key.dport.to_be();
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_1.tot_len = 0;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(key.saddr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(key.daddr);
    // SAFETY: `params` is a valid, writable bpf_fib_lookup of the size passed; the context
    // pointer is the program's own.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &raw mut params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match u32::try_from(rc) {
        Ok(BPF_FIB_LKUP_RET_SUCCESS) => Route::Out {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        },
        // SAFETY: for AF_INET the helper leaves the next hop in `ipv4_dst`.
        Ok(BPF_FIB_LKUP_RET_NO_NEIGH) => Route::NoNeigh {
            ifindex: params.ifindex,
            nh: unsafe { params.__bindgen_anon_4.ipv4_dst }.to_ne_bytes(),
        },
        _ => Route::NotForwarded,
    }
}

/// Sends the packet along `route`; `why` is the reason it is counted under when that works.
#[inline(always)]
pub fn send(ctx: &TcContext, route: &Route, why: u32) -> (i32, u32) {
    let rc = match *route {
        Route::Out {
            ifindex,
            smac,
            dmac,
        } => {
            if ctx.store(0, &dmac, 0).is_err() || ctx.store(6, &smac, 0).is_err() {
                return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
            }
            // SAFETY: plain integer arguments.
            unsafe { bpf_redirect(ifindex, 0) }
        }
        Route::NoNeigh { ifindex, nh } => {
            let mut neigh = bpf_redir_neigh {
                nh_family: u32::from(AF_INET),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    ipv4_nh: u32::from_ne_bytes(nh),
                },
            };
            // SAFETY: `neigh` is a valid bpf_redir_neigh of the size passed; the kernel resolves
            // the neighbour of `nh` on `ifindex` and transmits once it is known.
            unsafe {
                bpf_redirect_neigh(
                    ifindex,
                    &raw mut neigh,
                    size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            }
        }
        Route::NotForwarded => return (TC_ACT_SHOT, reason::DROP_NO_ROUTE),
    };
    if rc == i64::from(TC_ACT_REDIRECT) {
        (TC_ACT_REDIRECT, why)
    } else {
        (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)
    }
}

/// Routes the packet by its (already translated) tuple and sends it.
#[inline(always)]
pub fn route_and_send(ctx: &TcContext, key: &CtKey, why: u32) -> (i32, u32) {
    send(ctx, &lookup(ctx, key), why)
}

/// Sends a packet addressed to another node (one of its pods, or itself) to that node, the
/// addresses untouched: in native routing mode routed by the node's IP (the fabric need not
/// know pod CIDRs); in overlay mode encapsulated in VXLAN to the node's IP.
#[inline(always)]
pub fn to_node(
    ctx: &TcContext,
    cfg: &NodeConfig,
    key: &CtKey,
    node_ip: [u8; 4],
    why: u32,
) -> (i32, u32) {
    if cfg.tunnel_ifindex != 0 {
        return crate::tunnel::to_node(ctx, cfg.tunnel_ifindex, node_ip, why);
    }
    let via = CtKey {
        daddr: node_ip,
        ..*key
    };
    send(ctx, &lookup(ctx, &via), why)
}
