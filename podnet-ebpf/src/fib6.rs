//! IPv6 out by the routing table: `bpf_fib_lookup` (AF_INET6) for a translated packet's
//! tuple, and the redirect to the interface and next hop it names (the IPv6 twin of
//! [`crate::fib`]).

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
use podnet_ebpf::abi::{Addr6, CtKey6, reason};

/// `AF_INET6`.
const AF_INET6: u8 = 10;

/// Where the routing table sends an IPv6 packet.
pub enum Route {
    /// Out of `ifindex`, with these MACs (the neighbour is known).
    Out {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Out of `ifindex` to next hop `nh`, whose MAC the kernel resolves.
    NoNeigh { ifindex: u32, nh: Addr6 },
    /// Not forwarded (local, unreachable, prohibited, or no route).
    NotForwarded,
}

/// Looks up the route of a packet with tuple `key` (as it will leave, i.e. translated). Its
/// own BPF function: the 64-byte parameter block takes stack in a leaf frame only.
#[inline(never)]
pub fn lookup(ctx: &TcContext, key: &CtKey6) -> Route {
    // SAFETY: the parameter struct is plain old data; zero is a valid start for every field.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = key.proto;
    params.sport = key.sport.to_be();
    params.dport = key.dport.to_be();
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv6_src = key.saddr;
    params.__bindgen_anon_4.ipv6_dst = key.daddr;
    // SAFETY: `params` is a valid, writable bpf_fib_lookup on this stack, of the size given.
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
        Ok(BPF_FIB_LKUP_RET_NO_NEIGH) => Route::NoNeigh {
            ifindex: params.ifindex,
            // SAFETY: the kernel wrote the next hop's IPv6 address into this union.
            nh: unsafe { params.__bindgen_anon_4.ipv6_dst },
        },
        _ => Route::NotForwarded,
    }
}

/// Sends the packet along `route`, counted as `why`.
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
            // SAFETY: plain helper call with an ifindex the FIB returned.
            unsafe { bpf_redirect(ifindex, 0) }
        }
        Route::NoNeigh { ifindex, nh } => {
            let mut neigh = bpf_redir_neigh {
                nh_family: u32::from(AF_INET6),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: nh },
            };
            // SAFETY: `neigh` is a valid bpf_redir_neigh on this stack, of the size given.
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
