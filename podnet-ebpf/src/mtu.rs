//! Path MTU towards pods. A packet that came in on the uplink may be bigger than the pod it is
//! for can take (the pods' MTU is the uplink's minus the VXLAN overhead in overlay mode, or
//! whatever `--mtu` set); a redirect into the pod would drop it without a word. Instead, as
//! a router does: with "don't fragment" set the sender gets ICMP fragmentation needed with
//! the pod's MTU ([`crate::reject::frag_needed`]); without it the packet goes through the
//! kernel, which fragments it on the way to the pod.
//!
//! Only packets from the uplink are checked: pods on one node share one MTU, so pod-to-pod
//! packets never need it and do not pay for the helper call.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_OK, bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED},
    helpers::generated::bpf_check_mtu,
    programs::TcContext,
};
use podnet_ebpf::abi::{
    Endpoint, NodeConfig,
    proto::{ETH_HLEN, IP_DF},
    reason,
};

use crate::{forward, parse::Ipv4Packet, reject, ttl};

/// Offset of the IPv4 flags and fragment offset.
const FRAG_OFF: usize = ETH_HLEN + 6;

/// What to do with a packet for the device `ifindex`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It fits: redirect it.
    Fits,
    /// Too big, "don't fragment" set: answer with the device's MTU.
    FragNeeded,
    /// Too big, may be fragmented: let the kernel forward it.
    Fragment,
}

/// Whether the packet fits `ifindex`'s MTU, and that MTU (0 when it fits). A GSO packet
/// counts as fitting: it is cut into segments of the size TCP negotiated with the pod (its MSS
/// follows the pod's MTU).
#[inline(always)]
pub fn check(ctx: &TcContext, ifindex: u32) -> (Fit, u32) {
    let mut mtu: u32 = 0;
    // SAFETY: the context is the program's own __sk_buff; `mtu` is a valid u32 the helper
    // fills in (in: 0, the skb's own length is checked).
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &raw mut mtu, 0, 0) };
    if rc != i64::from(BPF_MTU_CHK_RET_FRAG_NEEDED) {
        // Fits, or the helper could not tell (no such device): the redirect decides.
        return (Fit::Fits, 0);
    }
    let df = ctx
        .load::<[u8; 2]>(FRAG_OFF)
        .is_ok_and(|f| u16::from_be_bytes(f) & IP_DF != 0);
    if df {
        (Fit::FragNeeded, mtu)
    } else {
        (Fit::Fragment, mtu)
    }
}

/// Delivers a packet that came in on the uplink, untranslated, to the local pod `ep` (counted
/// under `why`): one hop (TTL), unless it is too big for the pod (see the module doc).
#[inline(always)]
pub fn to_pod(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    ep: &Endpoint,
    why: u32,
) -> (i32, u32) {
    let (fit, mtu) = check(ctx, ep.ifindex);
    to_pod_checked(ctx, cfg, pkt, ep, why, (fit, mtu))
}

/// [`to_pod`] with the packet already [`check`]ed.
#[inline(always)]
pub fn to_pod_checked(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    ep: &Endpoint,
    why: u32,
    (fit, mtu): (Fit, u32),
) -> (i32, u32) {
    if fit == Fit::Fragment {
        // The kernel routes it like any router, TTL included.
        return (TC_ACT_OK, reason::PASS_TOO_BIG);
    }
    if let Some(expired) = ttl::hop(ctx, cfg, pkt, false) {
        return expired;
    }
    if fit == Fit::FragNeeded {
        return reject::frag_needed(ctx, cfg, pkt, mtu);
    }
    forward::to_endpoint(ctx, cfg, ep, Some(why))
}
