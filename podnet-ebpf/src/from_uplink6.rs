//! The IPv6 programs of the uplink, tail-called (each has its own 512-byte stack):
//!
//! - `from_uplink6`, tail-called by `from_uplink` for IPv6 frames: replies to pods'
//!   masqueraded (SNATed) IPv6 flows are translated back and delivered to the pod
//!   ([`crate::nat6::from_uplink`]); an ICMPv6 error to the node goes on to `nat6_icmp`.
//!   IPv6 from other nodes (off the uplink or out of the tunnel) to a local pod goes straight
//!   to it ([`crate::forward6`]). Everything else goes to the kernel unchanged, counted as
//!   `pass_not_ipv4` as before IPv6 had a program here, after `from_uplink6_dnat` has looked
//!   for service traffic from outside in it;
//! - `from_uplink6_dnat`: IPv6 NodePorts, LoadBalancer IPs and externalIPs from outside,
//!   DNATed to a local backend ([`crate::dnat6`]); a new flow's entries are created by
//!   `dnat6_new_flow`, which hands the packet back;
//! - `nat6_icmp` (also reached from `from_pod6_nat`): ICMPv6 errors about masqueraded flows,
//!   translated back with the packet they quote ([`crate::nat6::icmp`]), then delivered by
//!   `nat6_icmp_out` ([`crate::nat6::icmp_out`]);
//! - `nat6_too_big`: a masqueraded reply too big for its pod's link, answered with ICMPv6
//!   Packet Too Big ([`crate::ptb6`]).

use aya_ebpf::{macros::classifier, programs::TcContext};
use podnet_ebpf::abi::{ipv6_prog, monitor::hook, reason};

use crate::{dnat6, forward6, nat6, tail6};

#[classifier]
pub fn from_uplink6(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_UPLINK, decide)
}

/// Masqueraded flows first, then other nodes' IPv6 for local pods, then service traffic from
/// outside (`from_uplink6_dnat`).
#[inline(always)]
fn decide(ctx: &TcContext) -> (i32, u32) {
    let done = nat6::from_uplink(ctx);
    if done.1 == reason::PASS_NOT_IPV4 {
        let done = forward6::from_uplink(ctx);
        if done.1 == reason::PASS_NOT_IPV4 {
            return (done.0, ipv6_prog::handoff(ipv6_prog::FROM_UPLINK6_DNAT));
        }
        return done;
    }
    done
}

#[classifier]
pub fn from_uplink6_dnat(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_UPLINK, dnat6::from_uplink)
}

#[classifier]
pub fn dnat6_new_flow(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_UPLINK, dnat6::new_flow)
}

#[classifier]
pub fn nat6_icmp(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, nat6::icmp_hook(&ctx), nat6::icmp)
}

#[classifier]
pub fn nat6_icmp_out(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, nat6::icmp_hook(&ctx), nat6::icmp_out)
}

#[classifier]
pub fn nat6_too_big(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_UPLINK, crate::ptb6::answer)
}
