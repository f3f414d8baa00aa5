//! Bounds-checked access to packet headers. Every accessor proves to the verifier that the bytes
//! it hands out lie inside the packet; a packet too short for a header yields `None`, and callers
//! then pass it on unchanged.

use aya_ebpf::programs::TcContext;
use podnet_ebpf::abi::proto::{ETH_HLEN, ETH_P_IP, IPV4_MIN_HLEN};

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

/// True for broadcast and multicast MACs (the group bit).
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}
