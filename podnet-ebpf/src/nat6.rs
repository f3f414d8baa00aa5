//! IPv6 NAT: masquerade (SNAT) of pods' IPv6 leaving the cluster, and its reverse on the
//! uplink.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use podnet_ebpf::abi::reason;

/// The body of `from_uplink6`.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> (i32, u32) {
    let _ = ctx;
    if crate::maps::ready_config().is_none() {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    }
    (TC_ACT_OK, reason::PASS_NOT_IPV4)
}
