//! The IPv6 programs of a pod's veth, tail-called one after the other (each has its own
//! 512-byte stack, which the IPv6 tuples need):
//!
//! - `from_pod6`, tail-called by `from_pod` for IPv6 frames: [`crate::ipv6::from_pod`]
//!   (anti-spoofing, the Neighbor Discovery guard, delivery to local pods); what is not for a
//!   local pod goes on to `from_pod6_nat` when IPv6 masquerade is configured;
//! - `from_pod6_nat`: packets of masqueraded flows, the masquerade decision
//!   ([`crate::nat6::pod_nat`]); a new flow goes on to `from_pod6_snat`, an ICMPv6 error to
//!   `nat6_icmp`;
//! - `from_pod6_snat`: starts a masqueraded flow ([`crate::nat6::pod_snat`]).

use aya_ebpf::{macros::classifier, programs::TcContext};
use podnet_ebpf::abi::monitor::hook;

use crate::{ipv6, nat6, tail6};

#[classifier]
pub fn from_pod6(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_POD, ipv6::from_pod)
}

#[classifier]
pub fn from_pod6_nat(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_POD, nat6::pod_nat)
}

#[classifier]
pub fn from_pod6_snat(ctx: TcContext) -> i32 {
    tail6::stage(&ctx, hook::FROM_POD, nat6::pod_snat)
}
