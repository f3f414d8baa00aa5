//! Delivery to a local pod: rewrite the destination MAC to the pod's and redirect straight into
//! its namespace with `bpf_redirect_peer`, skipping the bridge and netfilter. `bpf_redirect` to
//! the host-side veth is the fallback where a peer redirect is impossible.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_peer},
};
use podnet_ebpf::abi::{Endpoint, endpoint_flag, reason};

use crate::parse::EthHdr;

/// Hands the frame to `ep`. Returns the verdict and the reason it is counted under.
#[inline(always)]
pub fn to_endpoint(eth: *mut EthHdr, ep: &Endpoint) -> (i32, u32) {
    // SAFETY: `eth` was bounds-checked by the parser and no helper has changed the packet since.
    unsafe { (*eth).dst = ep.mac };
    let peer = ep.flags & endpoint_flag::NO_PEER_REDIRECT == 0;
    // SAFETY: both helpers take plain integers and are valid in TC programs.
    let verdict = unsafe {
        if peer {
            bpf_redirect_peer(ep.ifindex, 0)
        } else {
            bpf_redirect(ep.ifindex, 0)
        }
    };
    if verdict == i64::from(TC_ACT_REDIRECT) {
        let why = if peer {
            reason::FORWARD_LOCAL_PEER
        } else {
            reason::FORWARD_LOCAL_REDIRECT
        };
        (TC_ACT_REDIRECT, why)
    } else {
        (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)
    }
}
