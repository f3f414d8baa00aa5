//! The IPv6 programs of the uplink, tail-called (each has its own 512-byte stack):
//!
//! - `from_uplink6`, tail-called by `from_uplink` for IPv6 frames: replies to pods'
//!   masqueraded (SNATed) IPv6 flows are translated back and delivered to the pod
//!   ([`crate::nat6::from_uplink`]); an ICMPv6 error to the node goes on to `nat6_icmp`.
//!   Everything else goes to the kernel unchanged, counted as `pass_not_ipv4` as before IPv6
//!   had a program here;
//! - `nat6_icmp` (also reached from `from_pod6_nat`): ICMPv6 errors about masqueraded flows,
//!   translated back with the packet they quote ([`crate::nat6::icmp`]), then delivered by
//!   `nat6_icmp_out` ([`crate::nat6::icmp_out`]).

use aya_ebpf::{macros::classifier, programs::TcContext};
use podnet_ebpf::abi::monitor::hook;

use crate::{nat6, tail6};

#[classifier]
pub fn from_uplink6(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_UPLINK, nat6::from_uplink)
}

#[classifier]
pub fn nat6_icmp(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, nat6::icmp_hook(&ctx), nat6::icmp)
}

#[classifier]
pub fn nat6_icmp_out(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, nat6::icmp_hook(&ctx), nat6::icmp_out)
}
