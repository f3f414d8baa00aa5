//! Refusing a connection to a service at once, like kube-proxy's `REJECT`: the packet is turned
//! into the answer in place (a TCP RST for TCP, an ICMP port unreachable quoting the datagram
//! for UDP), from the address the client used, and sent straight back: into the pod it came
//! from, or out of the uplink it arrived on. The client's `connect()` then fails with
//! ECONNREFUSED instead of timing out. A packet whose TTL runs out where podnet routes it is
//! answered the same way, with ICMP time exceeded from the node, and one too big for the pod
//! it is for with ICMP fragmentation needed.
//!
//! The headers are built whole on the stack with their checksums computed here (they are
//! small and fixed), then the packet is cut to size (`bpf_skb_change_tail`) and written.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use podnet_ebpf::abi::{
    NodeConfig,
    proto::{
        DEFAULT_TTL, ETH_HLEN, ICMP_DEST_UNREACH, ICMP_EXC_TTL, ICMP_FRAG_NEEDED,
        ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, IP_DF, IPPROTO_ICMP, IPPROTO_TCP, IPV4_MIN_HLEN,
        TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    reason,
};

use crate::{
    forward,
    parse::{Ipv4Packet, L4},
};

/// TCP header without options, as sent in a RST.
const TCP_HLEN: usize = 20;
/// `version 4, IHL 5`.
const IPV4_VERSION_IHL: u8 = 0x45;
/// Data offset 5 words, in the high nibble.
const TCP_DOFF_5: u8 = 0x50;
/// ICMP header before the quoted packet.
const ICMP_HLEN: usize = 8;
/// Bytes of the refused datagram an ICMP error quotes: its IPv4 header (without options) and
/// the first 8 bytes after it (RFC 792), which carry the ports the client matches on.
const QUOTED_LEN: usize = IPV4_MIN_HLEN + 8;
/// The RST's IPv4 + TCP headers.
const RST_LEN: usize = IPV4_MIN_HLEN + TCP_HLEN;
/// The ICMP error's IPv4 + ICMP headers + quote.
const UNREACH_LEN: usize = IPV4_MIN_HLEN + ICMP_HLEN + QUOTED_LEN;

/// Offsets inside the TCP header.
const TCP_SEQ_OFF: usize = 4;
const TCP_ACK_OFF: usize = 8;
const TCP_DOFF_OFF: usize = 12;
/// Offset of the IPv4 total length in the frame.
const IP_TOT_LEN_OFF: usize = ETH_HLEN + 2;

struct Unbuildable;

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

/// The Internet checksum (RFC 1071) of a folded-later sum.
#[inline(always)]
fn fold(sum: u32) -> [u8; 2] {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Writes an IPv4 header without options into `hdr`, checksum included.
#[inline(always)]
fn ipv4_header(hdr: &mut [u8], total: usize, proto: u8, saddr: [u8; 4], daddr: [u8; 4]) {
    hdr[0] = IPV4_VERSION_IHL;
    hdr[1] = 0;
    hdr[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    hdr[4..6].copy_from_slice(&[0, 0]);
    hdr[6..8].copy_from_slice(&IP_DF.to_be_bytes());
    hdr[8] = DEFAULT_TTL;
    hdr[9] = proto;
    hdr[10..12].copy_from_slice(&[0, 0]);
    hdr[12..16].copy_from_slice(&saddr);
    hdr[16..20].copy_from_slice(&daddr);
    let check = fold(add_words(0, &hdr[..IPV4_MIN_HLEN]));
    hdr[10..12].copy_from_slice(&check);
}

#[inline(always)]
fn change_tail(ctx: &TcContext, len: usize) -> Result<(), Unbuildable> {
    // SAFETY: the context is the program's own __sk_buff; the helper takes plain integers.
    let rc = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
    if rc == 0 { Ok(()) } else { Err(Unbuildable) }
}

/// Turns the TCP segment `pkt` into the RST that refuses it (RFC 9293 3.10.7.1: an ACK gets a
/// RST carrying its acknowledgment number as sequence number; anything else a RST+ACK
/// acknowledging it). A RST is never answered.
#[inline(always)]
fn tcp_reset(ctx: &TcContext, pkt: &Ipv4Packet, flags: u8) -> Result<(), Unbuildable> {
    if flags & TCP_RST != 0 {
        return Err(Unbuildable);
    }
    let l4 = pkt.l4_off;
    let load = |off| ctx.load::<[u8; 4]>(off).map_err(|_| Unbuildable);
    let seq = u32::from_be_bytes(load(l4 + TCP_SEQ_OFF)?);
    let ack = u32::from_be_bytes(load(l4 + TCP_ACK_OFF)?);
    let doff = usize::from(ctx.load::<u8>(l4 + TCP_DOFF_OFF).map_err(|_| Unbuildable)? >> 4) * 4;
    let tot_len = usize::from(u16::from_be_bytes(
        ctx.load::<[u8; 2]>(IP_TOT_LEN_OFF)
            .map_err(|_| Unbuildable)?,
    ));
    let payload = tot_len.saturating_sub(l4 - ETH_HLEN + doff) as u32;
    let (out_seq, out_ack, out_flags) = if flags & TCP_ACK != 0 && flags & TCP_SYN == 0 {
        (ack, 0, TCP_RST)
    } else {
        let syn_fin = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (
            0,
            seq.wrapping_add(payload).wrapping_add(syn_fin),
            TCP_RST | TCP_ACK,
        )
    };
    let key = &pkt.key;
    let mut buf = [0u8; RST_LEN];
    ipv4_header(&mut buf, RST_LEN, IPPROTO_TCP, key.daddr, key.saddr);
    let tcp = &mut buf[IPV4_MIN_HLEN..];
    tcp[0..2].copy_from_slice(&key.dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&key.sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&out_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&out_ack.to_be_bytes());
    tcp[12] = TCP_DOFF_5;
    tcp[13] = out_flags;
    // Window, checksum and urgent pointer stay 0 until the checksum is known.
    let pseudo =
        add_words(add_words(0, &key.daddr), &key.saddr) + u32::from(IPPROTO_TCP) + TCP_HLEN as u32;
    let check = fold(add_words(pseudo, tcp));
    tcp[16..18].copy_from_slice(&check);
    change_tail(ctx, ETH_HLEN + RST_LEN)?;
    ctx.store(ETH_HLEN, &buf, 0).map_err(|_| Unbuildable)
}

/// Turns `pkt` into an ICMP error of `kind` (type, code) from `from` back to its sender,
/// quoting its IPv4 header and first 8 bytes; `rest` is the second word of the ICMP header
/// (the next-hop MTU of "fragmentation needed", zero otherwise). Packets with IPv4 options are
/// not answered (the quote would not have a fixed size).
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    kind: (u8, u8),
    rest: [u8; 4],
    from: [u8; 4],
) -> Result<(), Unbuildable> {
    if pkt.l4_off != ETH_HLEN + IPV4_MIN_HLEN {
        return Err(Unbuildable);
    }
    let quoted: [u8; QUOTED_LEN] = ctx.load(ETH_HLEN).map_err(|_| Unbuildable)?;
    let key = &pkt.key;
    let mut buf = [0u8; UNREACH_LEN];
    ipv4_header(&mut buf, UNREACH_LEN, IPPROTO_ICMP, from, key.saddr);
    let icmp = &mut buf[IPV4_MIN_HLEN..];
    icmp[0] = kind.0;
    icmp[1] = kind.1;
    icmp[4..ICMP_HLEN].copy_from_slice(&rest);
    icmp[ICMP_HLEN..].copy_from_slice(&quoted);
    let check = fold(add_words(0, icmp));
    icmp[2..4].copy_from_slice(&check);
    change_tail(ctx, ETH_HLEN + UNREACH_LEN)?;
    ctx.store(ETH_HLEN, &buf, 0).map_err(|_| Unbuildable)
}

/// Refuses `pkt` (counted under `why`): answers it in place and sends the answer back to the
/// client, the pod it came from (`from_pod`) or out of the interface it arrived on. What cannot
/// be answered (a RST, a datagram with IP options, a failing helper) is dropped, still counted
/// under `why`.
#[inline(always)]
pub fn refuse(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    why: u32,
    from_pod: bool,
) -> (i32, u32) {
    let built = match pkt.l4 {
        L4::Tcp { flags } => tcp_reset(ctx, pkt, flags),
        L4::Udp => icmp_error(
            ctx,
            pkt,
            (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH),
            [0; 4],
            pkt.key.daddr,
        ),
        _ => Err(Unbuildable),
    };
    if built.is_err() {
        return (TC_ACT_SHOT, why);
    }
    send_back(ctx, cfg, pkt, why, from_pod)
}

/// Answers `pkt`, whose TTL ran out where podnet routes it, with ICMP time exceeded from the
/// node's address facing the sender (the pod network's gateway for a pod, the node IP on the
/// uplink), as a router would, so traceroute shows the node. An ICMP error is never answered,
/// only dropped. Counted as `DROP_TTL_EXCEEDED` either way.
#[inline(always)]
pub fn time_exceeded(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    from_pod: bool,
) -> (i32, u32) {
    let why = reason::DROP_TTL_EXCEEDED;
    let from = if from_pod {
        cfg.gateway_ip
    } else {
        cfg.node_ip
    };
    if matches!(pkt.l4, L4::IcmpError)
        || icmp_error(ctx, pkt, (ICMP_TIME_EXCEEDED, ICMP_EXC_TTL), [0; 4], from).is_err()
    {
        return (TC_ACT_SHOT, why);
    }
    send_back(ctx, cfg, pkt, why, from_pod)
}

/// Answers `pkt`, which came in on the uplink with "don't fragment" set and is too big for
/// the pod it is for, with ICMP fragmentation needed carrying `mtu` (RFC 1191), from the node
/// IP, so the sender lowers its path MTU. An ICMP error is never answered, only dropped.
/// Counted as `REJECT_FRAG_NEEDED` either way.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, cfg: &NodeConfig, pkt: &Ipv4Packet, mtu: u32) -> (i32, u32) {
    let why = reason::REJECT_FRAG_NEEDED;
    // An MTU beyond 16 bits cannot be smaller than the packet; clamp rather than wrap.
    let mtu = u16::try_from(mtu).unwrap_or(u16::MAX).to_be_bytes();
    if matches!(pkt.l4, L4::IcmpError)
        || icmp_error(
            ctx,
            pkt,
            (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),
            [0, 0, mtu[0], mtu[1]],
            cfg.node_ip,
        )
        .is_err()
    {
        return (TC_ACT_SHOT, why);
    }
    send_back(ctx, cfg, pkt, why, false)
}

/// Sends the answer built in place of `pkt` back to its sender: into the pod it came from
/// (`from_pod`), or out of the uplink it arrived on.
#[inline(always)]
fn send_back(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    why: u32,
    from_pod: bool,
) -> (i32, u32) {
    if from_pod {
        return match forward::endpoint(pkt.key.saddr) {
            Some(ep) => forward::to_endpoint(ctx, cfg, &ep, Some(why)),
            None => (TC_ACT_SHOT, why),
        };
    }
    // Back where it came from: the client's MAC becomes the destination, ours the source
    // (the Ethernet header is as it arrived: only what follows it was rewritten).
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return (TC_ACT_SHOT, why);
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ifindex != cfg.uplink_ifindex || ctx.store(0, &swapped, 0).is_err() {
        return (TC_ACT_SHOT, why);
    }
    // SAFETY: plain integer arguments.
    if unsafe { bpf_redirect(ifindex, 0) } == i64::from(TC_ACT_REDIRECT) {
        (TC_ACT_REDIRECT, why)
    } else {
        (TC_ACT_SHOT, why)
    }
}
