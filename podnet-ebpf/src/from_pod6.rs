//! `from_pod6`: IPv6 from a pod, tail-called by `from_pod` for IPv6 frames. Its body is
//! [`crate::ipv6::from_pod`] (anti-spoofing, the Neighbor Discovery guard, delivery to local
//! pods, and then NAT of IPv6 leaving the cluster, see [`crate::nat6`]).

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{ipv6, stats};

#[classifier]
pub fn from_pod6(ctx: TcContext) -> i32 {
    stats::counted(
        &ctx,
        podnet_ebpf::abi::monitor::hook::FROM_POD,
        ipv6::from_pod,
    )
}
