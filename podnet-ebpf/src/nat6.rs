//! IPv6 NAT: masquerade (SNAT) of pods' IPv6 leaving the cluster to the node's IPv6 address,
//! and its reverse on the uplink, with IPv4's conntrack (`CONNTRACK6` through
//! [`crate::conntrack`], generic over the family).
//!
//! From a pod (`from_pod6`, after anti-spoofing, ND and local delivery, see [`crate::ipv6`]):
//! - a packet of a masqueraded flow is translated (source `node_ip6` and the flow's port) and
//!   routed out by the FIB, its hop limit one lower;
//! - an ICMPv6 error the pod sends about a reply of such a flow is translated like the flow;
//! - a new flow from the pod's address to a destination outside the cluster's IPv6 CIDR and
//!   the node's pod CIDR, not link-local and not a masquerade exclusion (`NON_MASQUERADE6`), is
//!   masqueraded: a port from the SNAT range (ICMPv6 echo: the identifier), as for IPv4;
//! - a packet with a hop limit of 1 or less goes to the kernel untranslated, which answers
//!   ICMPv6 time exceeded from the gateway as a router does.
//!
//! On the uplink (`from_uplink6`): a reply to a masqueraded flow, and an ICMPv6 error (destination
//! unreachable, packet too big, time exceeded, parameter problem) quoting a packet of one, is
//! translated back (the quoted packet's addresses and ports too, with the ICMPv6 checksum, which
//! covers the pseudo-header and the quote) and delivered straight into the pod, its hop limit one
//! lower. A reply too big for the pod's link is translated and handed to the kernel
//! (`pass_too_big`), which answers with Packet Too Big. Everything else goes to the kernel
//! unchanged, counted as `pass_not_ipv4`.
//!
//! Fragments: a first fragment is translated like any packet of its flow and its ports are
//! remembered in `FRAGMENTS6` (source, destination, identification, protocol); later fragments
//! take them from there and get their addresses rewritten (the L4 checksum, in the first
//! fragment, already covers the new pseudo-header). A later fragment whose first one was not
//! seen cannot be translated: dropped from a pod (`drop_nat6_unsupported`), passed on the
//! uplink (`pass_fragment`: perhaps the node's own).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, generated::bpf_check_mtu},
    programs::TcContext,
};
use podnet_ebpf::abi::{
    Addr6, CtEntry6, CtKey6, CtNat6, FragKey6, FragPorts, NodeConfig, addr6_to_bytes, ct_dir,
    ct_kind, ipv6_prog,
    proto::{
        ETH_HLEN, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAM_PROBLEM, ICMPV6_TIME_EXCEEDED, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, IPV6_FRAG_HLEN, IPV6_FRAG_MORE, IPV6_FRAG_OFFSET_MASK, IPV6_HLEN,
        IPV6_NEXTHDR_FRAGMENT,
    },
    reason,
};

use crate::{
    conntrack::{self, PortChoice},
    fib6, forward,
    ipv6::{self, HOP_LIMIT_OFF, Ipv6Hdr, Upper},
    maps::{FRAGMENTS6, NAT6_SCRATCH, NON_MASQUERADE6},
    parse::{L4, ports, ptr_at},
};

/// Offsets of the IPv6 addresses in the frame.
const SADDR_OFF: usize = ETH_HLEN + 8;
const DADDR_OFF: usize = ETH_HLEN + 24;
/// Offsets of the addresses inside an IPv6 header (a quoted one).
const HDR_SADDR: usize = 8;
const HDR_DADDR: usize = 24;
const HDR_NEXTHDR: usize = 6;
/// Checksum offsets inside TCP, UDP and ICMPv6 headers.
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const ICMP6_CSUM_OFF: usize = 2;
/// Offset of the identifier in an ICMPv6 echo message.
const ICMP6_ID_OFF: usize = 4;
/// The ICMPv6 header before an error's quoted packet.
const ICMP6_HLEN: usize = 8;
/// Offset of the TCP flags byte.
const TCP_FLAGS_OFF: usize = 13;
/// L4 bytes NAT reads and rewrites, per protocol.
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Bytes after the quoted IPv6 header that must be present to translate an error: ports, or
/// an echo's identifier.
const QUOTED_L4_LEN: usize = 8;
/// `bpf_check_mtu`'s answer "too big".
const MTU_FRAG_NEEDED: i64 =
    aya_ebpf::bindings::bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED as i64;
/// `bpf_l4_csum_replace` flags: the low bits give the size of the replaced field; 0 means
/// `to` is a checksum difference (as `bpf_csum_diff` computes for 16-byte addresses).
const CSUM_DIFF: u64 = 0;
const CSUM_16BIT: u64 = 2;

/// Slots of `NAT6_SCRATCH`: the tuple of the packet that starts a flow, and the tuple its
/// route is looked up with.
const SCRATCH_TUPLE: u32 = 0;
const SCRATCH_PROBE: u32 = 1;

/// An IPv6 packet's conntrack view.
pub struct Ipv6Packet {
    /// Ports are 0 unless [`L4::has_tuple`].
    pub key: CtKey6,
    pub l4_off: usize,
    /// Bytes of L4 inside the IPv6 payload length.
    pub l4_len: usize,
    pub l4: L4,
}

/// The rewrite failed part-way (a helper refused); the packet must be dropped.
struct RewriteFailed;

type Rewrite = Result<(), RewriteFailed>;

#[inline(always)]
fn ok<E>(rc: Result<(), E>) -> Rewrite {
    rc.map_err(|_| RewriteFailed)
}

/// Whether `addr` lies in `net/prefix_len`; a prefix length of 0 matches nothing here (an
/// unset CIDR). Word by word, each in host order.
#[inline(always)]
fn in_prefix6(addr: &Addr6, net: &Addr6, prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return false;
    }
    let mut i = 0;
    while i < 4 {
        let bits = u32::from(prefix_len).saturating_sub(32 * i as u32).min(32);
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        if u32::from_be(addr[i]) & mask != u32::from_be(net[i]) & mask {
            return false;
        }
        i += 1;
    }
    true
}

/// `fe80::/10`, and its mask, on the first word of an address in host order.
const LINK_LOCAL_NET: u32 = 0xfe80_0000;
const LINK_LOCAL_MASK: u32 = 0xffc0_0000;

/// Whether `addr` is link-local unicast (`fe80::/10`).
#[inline(always)]
fn is_link_local(addr: &Addr6) -> bool {
    u32::from_be(addr[0]) & LINK_LOCAL_MASK == LINK_LOCAL_NET
}

/// The ports (and TCP flags, ICMPv6 kind) of the L4 header `proto` at `l4_off`.
#[inline(always)]
fn transport(ctx: &TcContext, proto: u8, l4_off: usize, l4_len: usize, key: &mut CtKey6) -> L4 {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let min = if proto == IPPROTO_TCP {
                TCP_MIN_HLEN
            } else {
                UDP_HLEN
            };
            if l4_len < min {
                return L4::Opaque;
            }
            let Some((sport, dport)) = ports(ctx, l4_off) else {
                return L4::Opaque;
            };
            key.sport = sport;
            key.dport = dport;
            if proto == IPPROTO_UDP {
                return L4::Udp;
            }
            match ctx.load::<u8>(l4_off + TCP_FLAGS_OFF) {
                Ok(flags) => L4::Tcp { flags },
                Err(_) => L4::Opaque,
            }
        }
        IPPROTO_ICMPV6 => {
            if l4_len < ICMP6_HLEN {
                return L4::Opaque;
            }
            let Ok(icmp_type) = ctx.load::<u8>(l4_off) else {
                return L4::Opaque;
            };
            match icmp_type {
                ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => {
                    let Ok(id) = ctx.load::<[u8; 2]>(l4_off + ICMP6_ID_OFF) else {
                        return L4::Opaque;
                    };
                    let id = u16::from_be_bytes(id);
                    let request = icmp_type == ICMPV6_ECHO_REQUEST;
                    if request {
                        key.sport = id;
                    } else {
                        key.dport = id;
                    }
                    L4::IcmpEcho { request }
                }
                ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAM_PROBLEM => L4::IcmpError,
                _ => L4::Opaque,
            }
        }
        _ => L4::Opaque,
    }
}

#[inline(always)]
fn frag_key(key: &CtKey6, id: u32) -> FragKey6 {
    FragKey6 {
        saddr: key.saddr,
        daddr: key.daddr,
        id,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// Parses the packet behind the fixed IPv6 header (already checked: version, payload length),
/// stepping over hop-by-hop, routing and destination options headers and a fragment header.
/// `None` when the extension header chain cannot be followed.
#[inline(always)]
pub fn packet(ctx: &TcContext) -> Option<Ipv6Packet> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let (nexthdr, payload_len) =
        unsafe { ((*ip).nexthdr, usize::from(u16::from_be((*ip).payload_len))) };
    // Loaded as words (an `Addr6` holds the same 16 bytes).
    let saddr: Addr6 = ctx.load(SADDR_OFF).ok()?;
    let daddr: Addr6 = ctx.load(DADDR_OFF).ok()?;
    let end = ETH_HLEN + IPV6_HLEN + payload_len;
    let Upper::Proto { proto, off } = ipv6::upper(ctx, nexthdr) else {
        return None;
    };
    let mut key = CtKey6 {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto,
        _pad: [0; 3],
    };
    if proto != IPV6_NEXTHDR_FRAGMENT {
        let l4_len = end.saturating_sub(off);
        let l4 = transport(ctx, proto, off, l4_len, &mut key);
        return Some(Ipv6Packet {
            key,
            l4_off: off,
            l4_len,
            l4,
        });
    }
    // The fragment header: next header, reserved, offset and flags, identification.
    let [inner, _, off_hi, off_lo, id0, id1, id2, id3] = ctx.load::<[u8; 8]>(off).ok()?;
    let offset_flags = u16::from_be_bytes([off_hi, off_lo]);
    let id = u32::from_be_bytes([id0, id1, id2, id3]);
    key.proto = inner;
    let l4_off = off + IPV6_FRAG_HLEN;
    let l4_len = end.saturating_sub(l4_off);
    if offset_flags & IPV6_FRAG_OFFSET_MASK != 0 {
        // A later fragment: the ports are those its datagram's first fragment carried.
        // SAFETY: the value is copied out at once.
        let l4 = match unsafe { FRAGMENTS6.get(frag_key(&key, id)) }.copied() {
            Some(FragPorts { sport, dport }) => {
                key.sport = sport;
                key.dport = dport;
                L4::Fragment
            }
            None => L4::OrphanFragment,
        };
        return Some(Ipv6Packet {
            key,
            l4_off,
            l4_len,
            l4,
        });
    }
    let l4 = transport(ctx, inner, l4_off, l4_len, &mut key);
    if offset_flags & IPV6_FRAG_MORE != 0 && l4.has_tuple() {
        // The first fragment of a datagram: its later fragments will need its ports. A failed
        // insert leaves them without (then counted as untranslatable).
        let ports = FragPorts {
            sport: key.sport,
            dport: key.dport,
        };
        let _ = FRAGMENTS6.insert(frag_key(&key, id), ports, 0);
    }
    Some(Ipv6Packet {
        key,
        l4_off,
        l4_len,
        l4,
    })
}

/// Where the L4 checksum of `proto` is, and its extra flags. ICMPv6's covers the
/// pseudo-header too (unlike ICMP's).
#[inline(always)]
fn l4_csum(l4_off: usize, proto: u8) -> Option<(usize, u64)> {
    match proto {
        IPPROTO_TCP => Some((l4_off + TCP_CSUM_OFF, 0)),
        IPPROTO_UDP => Some((l4_off + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))),
        IPPROTO_ICMPV6 => Some((l4_off + ICMP6_CSUM_OFF, 0)),
        _ => None,
    }
}

/// The one's complement difference between two 16-byte addresses. Its own BPF function, so
/// the helper's two buffers take stack once, in a leaf frame, however many rewrites call it.
#[inline(never)]
fn addr_diff(from: &Addr6, to: &Addr6) -> Result<u64, RewriteFailed> {
    let mut f = *from;
    let mut t = *to;
    // SAFETY: both buffers are 16 bytes on this stack, a multiple of 4 as the helper needs.
    let diff = unsafe { bpf_csum_diff((&raw mut f).cast(), 16, (&raw mut t).cast(), 16, 0) };
    u64::try_from(diff).map_err(|_| RewriteFailed)
}

/// Replaces the 16-byte address at `off`, fixing the checksum at `csum` (`pseudo`: the
/// address is in that checksum's pseudo-header, not in its data).
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    off: usize,
    from: Addr6,
    to: Addr6,
    csum: Option<(usize, u64)>,
    pseudo: bool,
) -> Rewrite {
    if let Some((csum_off, flags)) = csum {
        let diff = addr_diff(&from, &to)?;
        let pseudo = if pseudo {
            u64::from(BPF_F_PSEUDO_HDR)
        } else {
            0
        };
        ok(ctx.l4_csum_replace(csum_off, 0, diff, pseudo | flags | CSUM_DIFF))?;
    }
    ok(ctx.store(off, &to, 0))
}

/// Replaces the 16-bit port (or identifier) at `off`, fixing the checksum at `csum`.
#[inline(always)]
fn set_port(
    ctx: &TcContext,
    off: usize,
    from: u16,
    to: u16,
    csum: Option<(usize, u64)>,
) -> Rewrite {
    let (f, t) = (from.to_be(), to.to_be());
    if let Some((csum_off, flags)) = csum {
        ok(ctx.l4_csum_replace(csum_off, u64::from(f), u64::from(t), flags | CSUM_16BIT))?;
    }
    ok(ctx.store(off, &t, 0))
}

/// Rewrites the packet's tuple from `pkt.key` to `nat` (a later fragment: addresses only).
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Ipv6Packet, nat: &CtNat6) -> Rewrite {
    let key = &pkt.key;
    let csum = match pkt.l4 {
        L4::Fragment | L4::OrphanFragment => None,
        _ => l4_csum(pkt.l4_off, key.proto),
    };
    if nat.saddr != key.saddr {
        set_addr(ctx, SADDR_OFF, key.saddr, nat.saddr, csum, true)?;
    }
    if nat.daddr != key.daddr {
        set_addr(ctx, DADDR_OFF, key.daddr, nat.daddr, csum, true)?;
    }
    match pkt.l4 {
        L4::Tcp { .. } | L4::Udp => {
            if nat.sport != key.sport {
                set_port(ctx, pkt.l4_off, key.sport, nat.sport, csum)?;
            }
            if nat.dport != key.dport {
                set_port(ctx, pkt.l4_off + 2, key.dport, nat.dport, csum)?;
            }
        }
        L4::IcmpEcho { request } => {
            let (from, to) = if request {
                (key.sport, nat.sport)
            } else {
                (key.dport, nat.dport)
            };
            if from != to {
                set_port(ctx, pkt.l4_off + ICMP6_ID_OFF, from, to, csum)?;
            }
        }
        L4::IcmpError | L4::Fragment | L4::OrphanFragment | L4::Opaque => {}
    }
    Ok(())
}

/// Takes one off the hop limit; `false` when it is 1 or less (the packet must not be
/// forwarded).
#[inline(always)]
fn hop(ctx: &TcContext) -> Result<bool, RewriteFailed> {
    let hop_limit: u8 = ctx.load(HOP_LIMIT_OFF).map_err(|_| RewriteFailed)?;
    if hop_limit <= 1 {
        return Ok(false);
    }
    ok(ctx.store(HOP_LIMIT_OFF, &(hop_limit - 1), 0))?;
    Ok(true)
}

/// The tuple a packet with `key` has after translation to `nat`.
#[inline(always)]
fn translated(key: &CtKey6, nat: &CtNat6) -> CtKey6 {
    CtKey6 {
        saddr: nat.saddr,
        daddr: nat.daddr,
        sport: nat.sport,
        dport: nat.dport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// The reason a packet of a translated flow (masqueraded, or to a service from outside) is
/// counted under.
#[inline(always)]
fn reason_for(kind: u8, dir: u8) -> u32 {
    match (kind, dir) {
        (ct_kind::DNAT, ct_dir::ORIGINAL) => reason::DNAT6,
        (ct_kind::DNAT, _) => reason::DNAT6_REPLY,
        (_, ct_dir::ORIGINAL) => reason::SNAT6,
        _ => reason::SNAT6_REPLY,
    }
}

/// The MTU of a pod's link (`ifindex`) if the packet is larger than it.
#[inline(always)]
fn too_big_for(ctx: &TcContext, ifindex: u32) -> Option<u32> {
    let mut mtu: u32 = 0;
    // SAFETY: `mtu` is a valid out-parameter on this stack; the helper reads the skb only.
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &raw mut mtu, 0, 0) };
    (rc == MTU_FRAG_NEEDED).then_some(mtu)
}

/// Delivers a translated packet whose tuple is now `dest`: into a local pod, or out by the
/// routing table.
#[inline(always)]
fn deliver(ctx: &TcContext, cfg: &NodeConfig, dest: &CtKey6, why: u32) -> (i32, u32) {
    match ipv6::endpoint(addr6_to_bytes(dest.daddr)) {
        Some(ep) => {
            if too_big_for(ctx, ep.ifindex).is_some() {
                // (An ICMPv6 error, whose size its sender chose: the kernel's.)
                return (TC_ACT_OK, reason::PASS_TOO_BIG);
            }
            forward::to_endpoint(ctx, cfg, &ep, Some(why))
        }
        None => fib6::send(ctx, &fib6::lookup(ctx, dest), why),
    }
}

/// Translates and delivers a packet of the live flow `entry` (masqueraded, or a service flow
/// from outside: [`crate::dnat6`]).
#[inline(always)]
pub fn translate_tracked(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    entry: *mut CtEntry6,
    from_pod: bool,
) -> (i32, u32) {
    // The configuration and the clock are read again rather than passed: a BPF function takes
    // at most five arguments (the result's pointer among them).
    let now = conntrack::now();
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    conntrack::on_packet(cfg, &pkt.key, entry, pkt.l4, now);
    // SAFETY: `entry` points at a live map value; it is copied out at once.
    let (nat, kind, dir) = unsafe { ((*entry).nat, (*entry).kind, (*entry).dir) };
    if kind != ct_kind::SNAT && kind != ct_kind::DNAT {
        // No other IPv6 translation exists yet: not ours.
        return (TC_ACT_OK, reason::PASS_NOT_IPV4);
    }
    if !from_pod
        && let Some(ep) = ipv6::endpoint(addr6_to_bytes(nat.daddr))
        && let Some(mtu) = too_big_for(ctx, ep.ifindex)
    {
        // Too big for the pod's link: answered with Packet Too Big, untranslated, by
        // `nat6_too_big` (the MTU handed over in `skb->cb`).
        // SAFETY: `ctx.skb.skb` is the program's own __sk_buff; `cb` is scratch for programs.
        unsafe { (*ctx.skb.skb).cb[crate::ptb6::CB_MTU] = mtu };
        return (TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::NAT6_TOO_BIG));
    }
    match hop(ctx) {
        Ok(true) => {}
        // From a pod: the kernel, untranslated, answers time exceeded as a router. From the
        // uplink (addressed to the node, which would take it for its own): dropped.
        Ok(false) if from_pod => return (TC_ACT_OK, reason::PASS_NOT_IPV4),
        Ok(false) => return (TC_ACT_SHOT, reason::DROP_TTL_EXCEEDED),
        Err(RewriteFailed) => return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED),
    }
    if rewrite(ctx, pkt, &nat).is_err() {
        return (TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED);
    }
    deliver(ctx, cfg, &translated(&pkt.key, &nat), reason_for(kind, dir))
}

/// Starts the masqueraded flow of the packet whose tuple `from_pod6_nat` left in
/// `NAT6_SCRATCH` (it checked that the packet may start one). The packet itself is translated
/// and sent by `from_pod6_nat` again, as the flow's first packet: the flow's creation (the
/// port search) and the rewrite would not fit one program's stack.
#[inline(always)]
fn snat(cfg: &NodeConfig) -> (i32, u32) {
    let Some(key) = NAT6_SCRATCH.get_ptr_mut(SCRATCH_TUPLE) else {
        return PASS;
    };
    // SAFETY: this CPU's entry of the per-CPU scratch array, which only this packet's programs
    // use while they run (one after the other, on this CPU).
    let key = unsafe { &*key };
    if !conntrack::admit_family::<Addr6>(cfg) {
        return (TC_ACT_SHOT, reason::DROP_CT_FULL);
    }
    let nat = CtNat6 {
        saddr: cfg.node_ip6,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
    };
    match create_snat(cfg, key, &nat) {
        Ok(()) => (TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::FROM_POD6_NAT)),
        Err(why) => (TC_ACT_SHOT, why),
    }
}

/// `conntrack::create` for a masqueraded IPv6 flow, in its own BPF function: the port search
/// and the entries take stack there, not in `from_pod6_snat`'s frame (the two together would
/// not fit the 512 bytes with the search's callback).
#[inline(never)]
fn create_snat(cfg: &NodeConfig, key: &CtKey6, nat: &CtNat6) -> Result<(), u32> {
    let now = conntrack::now();
    conntrack::create(cfg, key, *nat, ct_kind::SNAT, PortChoice::Allocate, now).map(|_| ())
}

/// The packet an ICMPv6 error quotes.
struct Quoted {
    /// Its tuple, as it left this node (translated).
    key: CtKey6,
    ip_off: usize,
    l4_off: usize,
    echo_request: bool,
}

/// Reads the headers an ICMPv6 error at `pkt.l4_off` quotes (no extension headers in the
/// quote: those are not translated).
#[inline(always)]
fn quoted(ctx: &TcContext, pkt: &Ipv6Packet) -> Option<Quoted> {
    if pkt.l4_len < ICMP6_HLEN + IPV6_HLEN + QUOTED_L4_LEN {
        return None;
    }
    let ip_off = pkt.l4_off + ICMP6_HLEN;
    if ctx.load::<u8>(ip_off).ok()? >> 4 != 6 {
        return None;
    }
    let proto: u8 = ctx.load(ip_off + HDR_NEXTHDR).ok()?;
    // Loaded as words: the same 16 bytes, as an `Addr6` holds them.
    let saddr: Addr6 = ctx.load(ip_off + HDR_SADDR).ok()?;
    let daddr: Addr6 = ctx.load(ip_off + HDR_DADDR).ok()?;
    let l4_off = ip_off + IPV6_HLEN;
    let mut key = CtKey6 {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto,
        _pad: [0; 3],
    };
    let mut echo_request = false;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let (sport, dport) = ports(ctx, l4_off)?;
            key.sport = sport;
            key.dport = dport;
        }
        IPPROTO_ICMPV6 => {
            if ctx.load::<u8>(l4_off).ok()? != ICMPV6_ECHO_REQUEST {
                return None;
            }
            let id: [u8; 2] = ctx.load(l4_off + ICMP6_ID_OFF).ok()?;
            key.sport = u16::from_be_bytes(id);
            echo_request = true;
        }
        _ => return None,
    }
    Some(Quoted {
        key,
        ip_off,
        l4_off,
        echo_request,
    })
}

/// Translates an ICMPv6 error about a masqueraded flow back towards the endpoint that sent the
/// quoted packet (see [`crate::translate::icmp_error`] for IPv4): the quoted packet becomes
/// `original` (addresses and ports), the outer source and destination `outer`, with the
/// ICMPv6 checksum updated for every change (the quote is data to it, the outer addresses its
/// pseudo-header). The quoted packet's own L4 checksum is left alone, as for IPv4.
#[inline(always)]
fn rewrite_icmp_error(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    q: &Quoted,
    original: &CtNat6,
    outer: &[Addr6; 2],
) -> Rewrite {
    let [from, to] = *outer;
    let csum = Some((pkt.l4_off + ICMP6_CSUM_OFF, 0));
    if q.key.saddr != original.saddr {
        set_addr(
            ctx,
            q.ip_off + HDR_SADDR,
            q.key.saddr,
            original.saddr,
            csum,
            false,
        )?;
    }
    if q.key.daddr != original.daddr {
        set_addr(
            ctx,
            q.ip_off + HDR_DADDR,
            q.key.daddr,
            original.daddr,
            csum,
            false,
        )?;
    }
    if q.echo_request {
        if q.key.sport != original.sport {
            set_port(
                ctx,
                q.l4_off + ICMP6_ID_OFF,
                q.key.sport,
                original.sport,
                csum,
            )?;
        }
    } else {
        if q.key.sport != original.sport {
            set_port(ctx, q.l4_off, q.key.sport, original.sport, csum)?;
        }
        if q.key.dport != original.dport {
            set_port(ctx, q.l4_off + 2, q.key.dport, original.dport, csum)?;
        }
    }
    if from != pkt.key.saddr {
        set_addr(ctx, SADDR_OFF, pkt.key.saddr, from, csum, true)?;
    }
    if to != pkt.key.daddr {
        set_addr(ctx, DADDR_OFF, pkt.key.daddr, to, csum, true)?;
    }
    Ok(())
}

/// Translates an ICMPv6 error about a masqueraded flow; `None` when it is about no flow podnet
/// tracks.
#[inline(always)]
fn icmp_error(ctx: &TcContext, pkt: &Ipv6Packet, from_pod: bool) -> Option<(i32, u32)> {
    let quoted = quoted(ctx, pkt)?;
    // A reply to the quoted packet carries the reversed tuple: its entry says how the quoted
    // (outgoing) packet was translated.
    let entry = conntrack::lookup(&quoted.key.reversed(), conntrack::now())?;
    // SAFETY: `entry` points at a live map value; it is copied out at once.
    let (nat, kind) = unsafe { ((*entry).nat, (*entry).kind) };
    if kind != ct_kind::SNAT {
        return None;
    }
    let original = CtNat6 {
        saddr: nat.daddr,
        daddr: nat.saddr,
        sport: nat.dport,
        dport: nat.sport,
    };
    match hop(ctx) {
        Ok(true) => {}
        Ok(false) if from_pod => return Some((TC_ACT_OK, reason::PASS_NOT_IPV4)),
        Ok(false) => return Some((TC_ACT_SHOT, reason::DROP_TTL_EXCEEDED)),
        Err(RewriteFailed) => return Some((TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)),
    }
    // An error from the quoted packet's destination itself speaks for it with the address the
    // sender used; one from a router on the way keeps the router's address.
    let from = if pkt.key.saddr == quoted.key.daddr {
        nat.saddr
    } else {
        pkt.key.saddr
    };
    if rewrite_icmp_error(ctx, pkt, &quoted, &original, &[from, nat.daddr]).is_err() {
        return Some((TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED));
    }
    // Delivered by `nat6_icmp_out`, in its own program (the rewrite and the delivery would not
    // fit one stack).
    Some((TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::NAT6_ICMP_OUT)))
}

/// Whether IPv6 masquerading is configured (a node IPv6 address and an IPv6 pod CIDR).
#[inline(always)]
pub fn enabled(cfg: &NodeConfig) -> bool {
    cfg.node_ip6 != [0; 4] && cfg.pod_prefix_len6 != 0
}

/// IPv6 from a pod to something that is not a local pod (the caller, `ipv6::from_pod`, has
/// done anti-spoofing and Neighbor Discovery): on to `from_pod6_nat` when IPv6 masquerade is
/// configured; `None` for the kernel (counted `pass_not_ipv4` there).
#[inline(always)]
pub fn from_pod(cfg: &NodeConfig) -> Option<(i32, u32)> {
    enabled(cfg).then_some((TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::FROM_POD6_NAT)))
}

const PASS: (i32, u32) = (TC_ACT_OK, reason::PASS_NOT_IPV4);

/// The body of `from_pod6_nat`: a packet of a masqueraded flow is translated; one for the
/// cluster, the link or a masquerade exclusion goes to the kernel; an ICMPv6 error goes on to
/// `nat6_icmp`, a new flow leaving the cluster to `from_pod6_snat`.
#[inline(always)]
pub fn pod_nat(ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    let Some(pkt) = packet(ctx) else {
        return PASS;
    };
    if pkt.l4.has_tuple()
        && let Some((entry, _)) = conntrack::lookup_timed(&pkt.key)
    {
        return translate_tracked(ctx, &pkt, entry, true);
    }
    let key = &pkt.key;
    if !in_prefix6(&key.saddr, &cfg.pod_cidr6, cfg.pod_prefix_len6)
        || in_prefix6(&key.daddr, &cfg.pod_cidr6, cfg.pod_prefix_len6)
        || in_prefix6(&key.daddr, &cfg.cluster_cidr6, cfg.cluster_prefix_len6)
        || is_link_local(&key.daddr)
        || key.daddr == cfg.node_ip6
    {
        // Not a pod's own address, or a destination inside the cluster (other nodes' pods:
        // never masqueraded) or on the link: the kernel's.
        return PASS;
    }
    if NON_MASQUERADE6
        .get(&aya_ebpf::btf_maps::lpm_trie::Key::new(128, key.daddr))
        .is_some()
    {
        return (TC_ACT_OK, reason::PASS_NON_MASQUERADE6);
    }
    match pkt.l4 {
        L4::IcmpError => return (TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::NAT6_ICMP)),
        // No ports (another protocol, a later fragment of a datagram that started no flow).
        L4::Fragment | L4::OrphanFragment | L4::Opaque => {
            return (TC_ACT_SHOT, reason::DROP_NAT6_UNSUPPORTED);
        }
        l4 if !conntrack::starts_flow(l4) => return (TC_ACT_SHOT, reason::DROP_CT_NO_STATE),
        _ => {}
    }
    if ctx
        .load::<u8>(HOP_LIMIT_OFF)
        .is_ok_and(|hop_limit| hop_limit <= 1)
    {
        // The kernel answers time exceeded (from the gateway), as a router does.
        return PASS;
    }
    let (Some(scratch), Some(probe)) = (
        NAT6_SCRATCH.get_ptr_mut(SCRATCH_TUPLE),
        NAT6_SCRATCH.get_ptr_mut(SCRATCH_PROBE),
    ) else {
        return PASS;
    };
    // SAFETY: this CPU's scratch entries (see `snat`).
    let probe = unsafe {
        *scratch = pkt.key;
        *probe = pkt.key;
        &mut *probe
    };
    probe.saddr = cfg.node_ip6;
    if matches!(fib6::lookup(ctx, probe), fib6::Route::NotForwarded) {
        // Not forwarded by the node (its own address, unreachable): the kernel's.
        return PASS;
    }
    (TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::FROM_POD6_SNAT))
}

/// The body of `from_pod6_snat`: starts the masqueraded flow `from_pod6_nat` decided on.
#[inline(always)]
pub fn pod_snat(_ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    snat(cfg)
}

/// The `monitor::hook` of the packet `nat6_icmp` runs on: from the uplink (or the tunnel), or
/// from a pod.
#[inline(always)]
pub fn icmp_hook(ctx: &TcContext) -> u8 {
    if from_a_pod(ctx) {
        podnet_ebpf::abi::monitor::hook::FROM_POD
    } else {
        podnet_ebpf::abi::monitor::hook::FROM_UPLINK
    }
}

/// Whether the packet came in on a pod's veth (not the uplink or the tunnel).
#[inline(always)]
fn from_a_pod(ctx: &TcContext) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's own, valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    crate::maps::ready_config()
        .is_some_and(|cfg| ifindex != cfg.uplink_ifindex && ifindex != cfg.tunnel_ifindex)
}

/// The body of `nat6_icmp`: an ICMPv6 error about a masqueraded flow, translated back. One
/// about no such flow goes to the kernel from the uplink (the node's own), and is dropped from
/// a pod (it would leave with the pod's address, as IPv4's is).
#[inline(always)]
pub fn icmp(ctx: &TcContext) -> (i32, u32) {
    if crate::maps::ready_config().is_none() {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    }
    let Some(pkt) = packet(ctx) else {
        return PASS;
    };
    let from_pod = from_a_pod(ctx);
    icmp_error(ctx, &pkt, from_pod).unwrap_or(if from_pod {
        (TC_ACT_SHOT, reason::DROP_NAT6_UNSUPPORTED)
    } else {
        PASS
    })
}

/// The body of `nat6_icmp_out`: delivers an ICMPv6 error `nat6_icmp` translated, to the pod
/// (or out by the routing table) its destination now names.
#[inline(always)]
pub fn icmp_out(ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    let (Ok(saddr), Ok(daddr)) = (ctx.load::<Addr6>(SADDR_OFF), ctx.load::<Addr6>(DADDR_OFF))
    else {
        return PASS;
    };
    let dest = CtKey6 {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: IPPROTO_ICMPV6,
        _pad: [0; 3],
    };
    deliver(ctx, cfg, &dest, reason::ICMP6_ERROR_TRANSLATED)
}

/// The body of `from_uplink6`: replies to masqueraded flows, translated back to the pod; an
/// ICMPv6 error for the node goes on to `nat6_icmp`; everything else to the kernel.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> (i32, u32) {
    let Some(cfg) = crate::maps::ready_config() else {
        return (TC_ACT_OK, reason::PASS_NOT_READY);
    };
    if !enabled(cfg) {
        return PASS;
    }
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return PASS;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let (version, payload_len) = unsafe {
        (
            (*ip).vtc_flow[0] >> 4,
            usize::from(u16::from_be((*ip).payload_len)),
        )
    };
    let l3_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    if version != 6
        || IPV6_HLEN + payload_len > l3_len
        || ctx.load::<Addr6>(DADDR_OFF).ok() != Some(cfg.node_ip6)
    {
        return PASS;
    }
    let Some(pkt) = packet(ctx) else {
        return PASS;
    };
    let done = match pkt.l4 {
        // Perhaps the node's own.
        L4::OrphanFragment => Some((TC_ACT_OK, reason::PASS_FRAGMENT)),
        L4::Opaque => None,
        L4::IcmpError => Some((TC_ACT_OK, ipv6_prog::handoff(ipv6_prog::NAT6_ICMP))),
        L4::Tcp { .. } | L4::Udp | L4::IcmpEcho { .. } | L4::Fragment => {
            conntrack::lookup_timed(&pkt.key)
                .map(|(entry, _)| translate_tracked(ctx, &pkt, entry, false))
        }
    };
    done.unwrap_or(PASS)
}
