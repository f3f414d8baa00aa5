//! The TTL of packets podnet routes: where the kernel would have forwarded a packet (across the
//! node: translated, to or from another node, from the uplink to a pod) its TTL goes down by
//! one, with the IPv4 header checksum updated; a packet that would leave with TTL 0 is dropped
//! and answered with ICMP time exceeded ([`crate::reject::time_exceeded`]). Pod to pod on one
//! node is one link (the bridge podnet replaces), so it keeps its TTL, as the bridge did.

use aya_ebpf::programs::TcContext;
use podnet_ebpf::abi::{NodeConfig, proto::ETH_HLEN};

use crate::{parse::Ipv4Packet, reject};

/// Offset of the TTL (followed by the protocol: one 16-bit word of the header checksum).
const TTL_OFF: usize = ETH_HLEN + 8;
/// Offset of the IPv4 header checksum.
const CHECK_OFF: usize = ETH_HLEN + 10;

/// Takes one hop off `pkt`'s TTL before podnet routes it (`from_pod`: it came from a pod). `None` when it may go on (its TTL
/// now one lower); otherwise the verdict for it: time exceeded back to the sender (or a drop,
/// for an ICMP error or a failing helper).
#[inline(always)]
pub fn hop(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    from_pod: bool,
) -> Option<(i32, u32)> {
    let Ok(word) = ctx.load::<[u8; 2]>(TTL_OFF) else {
        return Some(reject::time_exceeded(ctx, cfg, pkt, from_pod));
    };
    if word[0] <= 1 {
        return Some(reject::time_exceeded(ctx, cfg, pkt, from_pod));
    }
    let new = [word[0] - 1, word[1]];
    let (from, to) = (
        u64::from(u16::from_ne_bytes(word)),
        u64::from(u16::from_ne_bytes(new)),
    );
    if ctx.l3_csum_replace(CHECK_OFF, from, to, 2).is_err() || ctx.store(TTL_OFF, &new, 0).is_err()
    {
        return Some((
            aya_ebpf::bindings::TC_ACT_SHOT,
            podnet_ebpf::abi::reason::DROP_REDIRECT_FAILED,
        ));
    }
    None
}
