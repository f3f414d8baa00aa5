//! `from_uplink6`: IPv6 arriving on the uplink, tail-called by `from_uplink` for IPv6 frames:
//! replies to pods' masqueraded (SNATed) IPv6 flows, and ICMPv6 errors about them, are
//! translated back and delivered to the pod (see [`crate::nat6`]); IPv6 from other nodes (off
//! the uplink or out of the tunnel) to a local pod goes straight to it (see
//! [`crate::forward6`]). Everything else goes to the kernel unchanged, counted as
//! `pass_not_ipv4` as before IPv6 had a program here.

use aya_ebpf::{macros::classifier, programs::TcContext};
use podnet_ebpf::abi::reason;

use crate::{forward6, nat6, stats};

#[classifier]
pub fn from_uplink6(ctx: TcContext) -> i32 {
    stats::counted(&ctx, podnet_ebpf::abi::monitor::hook::FROM_UPLINK, decide)
}

/// Masqueraded flows first, then other nodes' IPv6 for local pods.
#[inline(always)]
fn decide(ctx: &TcContext) -> (i32, u32) {
    let done = nat6::from_uplink(ctx);
    if done.1 == reason::PASS_NOT_IPV4 {
        return forward6::from_uplink(ctx);
    }
    done
}
