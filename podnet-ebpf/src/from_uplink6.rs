//! `from_uplink6`: IPv6 arriving on the uplink, tail-called by `from_uplink` for IPv6 frames:
//! replies to pods' masqueraded (SNATed) IPv6 flows, and ICMPv6 errors about them, are
//! translated back and delivered to the pod (see [`crate::nat6`]). Everything else goes to the
//! kernel unchanged, counted as `pass_not_ipv4` as before IPv6 had a program here.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{nat6, stats};

#[classifier]
pub fn from_uplink6(ctx: TcContext) -> i32 {
    stats::counted(
        &ctx,
        podnet_ebpf::abi::monitor::hook::FROM_UPLINK,
        nat6::from_uplink,
    )
}
