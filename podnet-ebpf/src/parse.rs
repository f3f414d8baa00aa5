//! Bounds-checked access to packet headers. Every accessor proves to the verifier that the bytes
//! it hands out lie inside the packet; a packet too short for a header yields `None`, and callers
//! then pass it on unchanged.

use aya_ebpf::programs::TcContext;
use podnet_ebpf::abi::{
    CtKey,
    proto::{
        ARPHRD_ETHER, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY,
        ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, IP_MF, IP_OFFSET,
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN,
    },
};

/// Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// EtherType, network order.
    pub proto: u16,
}

/// IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// A pointer to a `T` at `offset`, if the packet is long enough to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The parsed start of an IPv4 frame.
pub struct Ipv4Frame {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

/// What the first bytes of a frame are.
pub enum Frame {
    Ipv4(Ipv4Frame),
    /// Some other EtherType (ARP, IPv6, VLAN, ...).
    NotIpv4,
    /// Too short, or an IPv4 header that is not well formed.
    Malformed,
}

/// Parses Ethernet and the fixed IPv4 header, checking version, IHL and total length.
#[inline(always)]
pub fn frame(ctx: &TcContext) -> Frame {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Frame::Malformed;
    };
    // SAFETY: `ptr_at` checked that the whole header lies inside the packet.
    if u16::from_be(unsafe { (*eth).proto }) != ETH_P_IP {
        return Frame::NotIpv4;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Frame::Malformed;
    };
    // SAFETY: as above, for the fixed IPv4 header.
    let (version_ihl, tot_len) = unsafe { ((*ip).version_ihl, u16::from_be((*ip).tot_len)) };
    let hlen = usize::from(version_ihl & 0x0f) * 4;
    // skb->len, not data_end: a GSO or paged skb holds only its headers in the linear part.
    let l3_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    if version_ihl >> 4 != 4
        || hlen < IPV4_MIN_HLEN
        || usize::from(tot_len) < hlen
        || usize::from(tot_len) > l3_len
    {
        return Frame::Malformed;
    }
    Frame::Ipv4(Ipv4Frame { eth, ip })
}

/// An ARP packet for IPv4 over Ethernet (RFC 826), as it follows the Ethernet header.
#[repr(C)]
pub struct ArpIpv4 {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub oper: u16,
    /// Sender hardware and protocol address: what a receiver's neighbour table learns.
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The Ethernet source and the ARP sender (hardware, protocol address) of an ARP frame for
/// IPv4 over Ethernet; `None` for anything else, a short frame included.
#[inline(always)]
pub fn arp_sender(ctx: &TcContext) -> Option<([u8; 6], [u8; 6], [u8; 4])> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let arp = ptr_at::<ArpIpv4>(ctx, ETH_HLEN)?;
    // SAFETY: `ptr_at` checked that both headers lie inside the packet.
    let (eth, arp) = unsafe { (&*eth, &*arp) };
    let ipv4_over_ethernet = u16::from_be(eth.proto) == ETH_P_ARP
        && u16::from_be(arp.htype) == ARPHRD_ETHER
        && u16::from_be(arp.ptype) == ETH_P_IP
        && arp.hlen == 6
        && arp.plen == 4;
    ipv4_over_ethernet.then_some((eth.src, arp.sha, arp.spa))
}

/// True for broadcast and multicast MACs (the group bit).
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Offsets of IPv4 header fields in the frame (the header starts right after Ethernet).
pub const IP_CHECK_OFF: usize = ETH_HLEN + 10;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// What follows the IPv4 header, as far as NAT cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP, with its flags byte.
    Tcp {
        flags: u8,
    },
    Udp,
    /// ICMP echo: the identifier is the source port of a request, the destination port of a
    /// reply.
    IcmpEcho {
        request: bool,
    },
    /// ICMP destination unreachable, time exceeded or parameter problem: quotes the headers of
    /// the packet it is about.
    IcmpError,
    /// A later fragment of a datagram (offset not 0): no L4 header. Its ports come from the
    /// datagram's first fragment (see [`crate::frag`]) and are in the key, so it follows that
    /// fragment's flow. (A first fragment parses as its protocol, like an unfragmented packet.)
    Fragment,
    /// A later fragment whose first fragment has not been seen (out of order, or lost): ports 0.
    /// (Fieldless like [`Self::Fragment`]: a payload byte here makes LLVM store an undefined
    /// byte from any register for the other variants, a pointer included, which the verifier
    /// refuses.)
    OrphanFragment,
    /// Anything else: other protocols, other ICMP types, or an L4 header cut short.
    Opaque,
}

impl L4 {
    /// True when the packet has a 5-tuple conntrack can key on.
    #[inline(always)]
    pub fn has_tuple(self) -> bool {
        matches!(
            self,
            Self::Tcp { .. } | Self::Udp | Self::IcmpEcho { .. } | Self::Fragment
        )
    }
}

/// An IPv4 packet's conntrack view: its tuple, where L4 starts, and what L4 is.
pub struct Ipv4Packet {
    /// Ports are 0 unless [`L4::has_tuple`].
    pub key: CtKey,
    pub l4_off: usize,
    /// Bytes of L4 inside the IPv4 total length (anything after it is link-layer padding).
    pub l4_len: usize,
    pub l4: L4,
}

/// Reads the L4 part of a parsed IPv4 frame: straight from the packet when the ports (and TCP
/// flags) are in its linear part, otherwise through `bpf_skb_load_bytes`, so paged (GSO)
/// packets need no special casing. A first
/// fragment's ports are remembered for the later ones, which get them back ([`crate::frag`]);
/// the fragment map is touched only by fragments.
#[inline(always)]
pub fn ipv4_packet(ctx: &TcContext, frame: &Ipv4Frame) -> Ipv4Packet {
    // SAFETY: the parser bounds-checked the fixed header and nothing has changed the packet.
    let (version_ihl, tot_len, id, frag_off, protocol, saddr, daddr) = unsafe {
        let ip = &*frame.ip;
        (
            ip.version_ihl,
            u16::from_be(ip.tot_len),
            u16::from_be(ip.id),
            u16::from_be(ip.frag_off),
            ip.protocol,
            ip.saddr,
            ip.daddr,
        )
    };
    let hlen = usize::from(version_ihl & 0x0f) * 4;
    let l4_off = ETH_HLEN + hlen;
    // `frame` checked that the total length covers the header.
    let l4_len = usize::from(tot_len).saturating_sub(hlen);
    let mut key = CtKey {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: protocol,
        _pad: [0; 3],
    };
    let l4 = if frag_off & IP_OFFSET != 0 {
        // A later fragment: the ports are those its datagram's first fragment carried.
        match crate::frag::ports_of_later(&key, id) {
            Some(ports) => {
                key.sport = ports.sport;
                key.dport = ports.dport;
                L4::Fragment
            }
            None => L4::OrphanFragment,
        }
    } else if l4_len < l4_min_len(protocol) {
        // The L4 header is cut short by the IPv4 total length: whatever follows is padding,
        // not ports, and rewriting it would write past the packet.
        L4::Opaque
    } else {
        match protocol {
            IPPROTO_TCP | IPPROTO_UDP => match transport(ctx, l4_off, protocol) {
                Some((sport, dport, Some(flags))) => {
                    key.sport = sport;
                    key.dport = dport;
                    L4::Tcp { flags }
                }
                Some((sport, dport, None)) if protocol == IPPROTO_UDP => {
                    key.sport = sport;
                    key.dport = dport;
                    L4::Udp
                }
                // Not in the linear part (or TCP cut short there): read through the helper.
                _ => match ports(ctx, l4_off) {
                    Some((sport, dport)) => {
                        key.sport = sport;
                        key.dport = dport;
                        if protocol == IPPROTO_UDP {
                            L4::Udp
                        } else {
                            match ctx.load::<u8>(l4_off + TCP_FLAGS_OFF) {
                                Ok(flags) => L4::Tcp { flags },
                                Err(_) => L4::Opaque,
                            }
                        }
                    }
                    None => L4::Opaque,
                },
            },
            IPPROTO_ICMP => icmp(ctx, l4_off, &mut key),
            _ => L4::Opaque,
        }
    };
    if frag_off & IP_MF != 0 && frag_off & IP_OFFSET == 0 && l4.has_tuple() {
        // The first fragment of a datagram: its later fragments will need its ports.
        crate::frag::remember_first(&key, id);
    }
    Ipv4Packet {
        key,
        l4_off,
        l4_len,
        l4,
    }
}

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;
/// TCP header without options: NAT reads the flags and rewrites the checksum at 16.
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// The L4 header bytes NAT needs inside the IPv4 total length to read and rewrite `proto`.
#[inline(always)]
fn l4_min_len(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => TCP_MIN_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_ICMP => ICMP_HLEN,
        _ => 0,
    }
}
/// Offset of the identifier in an ICMP echo header.
pub const ICMP_ID_OFF: usize = 4;
/// Offset of the checksum in an ICMP header.
pub const ICMP_CSUM_OFF: usize = 2;
/// Length of the ICMP header before an error's quoted packet.
pub const ICMP_HLEN: usize = 8;

/// The TCP header as far as the flags byte.
const TCP_THROUGH_FLAGS: usize = TCP_FLAGS_OFF + 1;

/// Source and destination port (host order) and, for TCP, the flags byte, read straight from
/// the packet's linear part (no helper call: the common case, as a local sender always puts the
/// headers there); `None` when they are not all in it.
#[inline(always)]
fn transport(ctx: &TcContext, off: usize, protocol: u8) -> Option<(u16, u16, Option<u8>)> {
    if protocol == IPPROTO_TCP {
        let tcp = ptr_at::<[u8; TCP_THROUGH_FLAGS]>(ctx, off)?;
        // SAFETY: `ptr_at` checked that these bytes lie inside the packet.
        let tcp = unsafe { &*tcp };
        Some((
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
            Some(tcp[TCP_FLAGS_OFF]),
        ))
    } else {
        let udp = ptr_at::<[u8; 4]>(ctx, off)?;
        // SAFETY: as above.
        let udp = unsafe { &*udp };
        Some((
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
            None,
        ))
    }
}

/// Source and destination port (host order) at `off`.
#[inline(always)]
pub fn ports(ctx: &TcContext, off: usize) -> Option<(u16, u16)> {
    let raw: [u8; 4] = ctx.load(off).ok()?;
    Some((
        u16::from_be_bytes([raw[0], raw[1]]),
        u16::from_be_bytes([raw[2], raw[3]]),
    ))
}

#[inline(always)]
fn icmp(ctx: &TcContext, l4_off: usize, key: &mut CtKey) -> L4 {
    let Ok(icmp_type) = ctx.load::<u8>(l4_off) else {
        return L4::Opaque;
    };
    match icmp_type {
        ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
            let Ok(id) = ctx.load::<[u8; 2]>(l4_off + ICMP_ID_OFF) else {
                return L4::Opaque;
            };
            let id = u16::from_be_bytes(id);
            let request = icmp_type == ICMP_ECHO_REQUEST;
            if request {
                key.sport = id;
            } else {
                key.dport = id;
            }
            L4::IcmpEcho { request }
        }
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => L4::IcmpError,
        _ => L4::Opaque,
    }
}

/// Whether `addr` lies in `net/prefix_len` (both in network order).
#[inline(always)]
pub fn in_prefix(addr: [u8; 4], net: [u8; 4], prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let shift = 32 - u32::from(prefix_len.min(32));
    let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(net) & mask
}

/// The start every classifier shares: the node's configuration and the packet's IPv4 frame,
/// or the verdict and reason for a packet to hand to the kernel unchanged (node not ready yet,
/// not IPv4, malformed).
#[inline(always)]
pub fn ready_ipv4(
    ctx: &TcContext,
) -> Result<(&'static podnet_ebpf::abi::NodeConfig, Ipv4Frame), (i32, u32)> {
    use aya_ebpf::bindings::TC_ACT_OK;
    use podnet_ebpf::abi::reason;

    let Some(cfg) = crate::maps::ready_config() else {
        return Err((TC_ACT_OK, reason::PASS_NOT_READY));
    };
    match frame(ctx) {
        Frame::Ipv4(frame) => Ok((cfg, frame)),
        Frame::NotIpv4 => Err((TC_ACT_OK, reason::PASS_NOT_IPV4)),
        Frame::Malformed => Err((TC_ACT_OK, reason::PASS_MALFORMED)),
    }
}
