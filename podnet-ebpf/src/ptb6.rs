//! ICMPv6 Packet Too Big for a masqueraded reply too large for its pod's link: the answer is
//! built in place of the reply, before its translation (so it quotes the packet as its sender
//! sent it, to the node's IPv6 address), and sent back out of the uplink from the node's IPv6
//! address. The sender lowers its path MTU to the node and sends smaller packets, as it would
//! behind any router. The IPv6 twin of IPv4's "fragmentation needed" (`reject::frag_needed`);
//! IPv6 routers never fragment.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use podnet_ebpf::abi::{
    addr6_to_bytes,
    proto::{DEFAULT_TTL, ETH_HLEN, ICMPV6_PACKET_TOO_BIG, IPPROTO_ICMPV6, IPV6_HLEN},
    reason,
};

/// Bytes of the too-big packet the answer quotes: its IPv6 header and the 8 bytes after it
/// (ports and TCP sequence number: what the sender's stack matches the error on).
const QUOTED_LEN: usize = IPV6_HLEN + 8;
/// The ICMPv6 header: type, code, checksum, MTU.
const ICMP6_HLEN: usize = 8;
/// The answer after Ethernet: IPv6 header, ICMPv6 header, quote.
const ANSWER_LEN: usize = IPV6_HLEN + ICMP6_HLEN + QUOTED_LEN;
/// `skb->cb` word the MTU is handed over in (by `from_uplink6`, which found it).
pub const CB_MTU: usize = 0;

/// The one's complement sum of `bytes` as big-endian 16-bit words, added to `sum`.
#[inline(always)]
fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The Internet checksum of a sum not folded yet.
#[inline(always)]
fn fold(sum: u32) -> [u8; 2] {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    // Folded twice, the sum fits 16 bits.
    (!(sum as u16)).to_be_bytes()
}

/// The body of `nat6_too_big`: answers the reply with Packet Too Big (the MTU in `skb->cb`),
/// counted as `reject_frag_needed`; what cannot be answered is dropped, counted the same.
#[inline(always)]
pub fn answer(ctx: &TcContext) -> (i32, u32) {
    let why = reason::REJECT_FRAG_NEEDED;
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_SHOT, why);
    };
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    let (ifindex, mtu) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).cb[CB_MTU]) };
    let (Ok(quoted), Ok(macs)) = (
        ctx.load::<[u8; QUOTED_LEN]>(ETH_HLEN),
        ctx.load::<[u8; 12]>(0),
    ) else {
        return (TC_ACT_SHOT, why);
    };
    if ifindex != cfg.uplink_ifindex {
        return (TC_ACT_SHOT, why);
    }
    let mut buf = [0u8; ANSWER_LEN];
    buf[0] = 0x60;
    let payload = (ICMP6_HLEN + QUOTED_LEN) as u16;
    buf[4..6].copy_from_slice(&payload.to_be_bytes());
    buf[6] = IPPROTO_ICMPV6;
    buf[7] = DEFAULT_TTL;
    buf[8..24].copy_from_slice(&addr6_to_bytes(cfg.node_ip6));
    // To the sender: the quoted packet's source.
    buf[24..40].copy_from_slice(&quoted[8..24]);
    let icmp = IPV6_HLEN;
    buf[icmp] = ICMPV6_PACKET_TOO_BIG;
    buf[icmp + 4..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
    buf[icmp + ICMP6_HLEN..].copy_from_slice(&quoted);
    let pseudo = add_words(add_words(0, &buf[8..24]), &buf[24..40])
        + u32::from(payload)
        + u32::from(IPPROTO_ICMPV6);
    let check = fold(add_words(pseudo, &buf[icmp..]));
    buf[icmp + 2..icmp + 4].copy_from_slice(&check);
    // SAFETY: the context is the program's own __sk_buff; the helper takes plain integers.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + ANSWER_LEN) as u32, 0) } != 0
        || ctx.store(ETH_HLEN, &buf, 0).is_err()
    {
        return (TC_ACT_SHOT, why);
    }
    // Back to the sender's MAC, from ours.
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    if ctx.store(0, &swapped, 0).is_err() {
        return (TC_ACT_SHOT, why);
    }
    // SAFETY: plain integer arguments.
    if unsafe { bpf_redirect(ifindex, 0) } == i64::from(TC_ACT_REDIRECT) {
        (TC_ACT_REDIRECT, why)
    } else {
        (TC_ACT_SHOT, why)
    }
}
