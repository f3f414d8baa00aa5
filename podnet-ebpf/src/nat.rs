//! Packet rewriting for NAT: addresses, ports and ICMP echo identifiers, with the IPv4 header
//! checksum and the L4 checksum updated incrementally by the kernel's helpers
//! (`bpf_l3_csum_replace`, `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` for address changes,
//! and `BPF_F_MARK_MANGLED_0` for UDP, whose zero checksum means "none" and must stay zero).
//! Also translates ICMP errors about a translated flow, inner (quoted) headers included.
//!
//! All access is by offset through the helpers, so no packet pointer outlives a helper call that
//! may move the data.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use podnet_ebpf::abi::{
    CtKey, CtNat,
    proto::{ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN},
};

use crate::parse::{
    ICMP_CSUM_OFF, ICMP_HLEN, ICMP_ID_OFF, IP_CHECK_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4Packet,
    L4, ports,
};

/// The rewrite failed part-way (a helper refused); the packet must be dropped.
pub struct RewriteFailed;

type Result = core::result::Result<(), RewriteFailed>;

fn ok(rc: core::result::Result<(), i64>) -> Result {
    rc.map_err(|_| RewriteFailed)
}

/// Where a packet's L4 checksum lives and how address changes enter it.
#[derive(Clone, Copy)]
struct L4Csum {
    off: usize,
    /// Extra flags for `bpf_l4_csum_replace` (UDP's "zero means none").
    flags: u64,
    /// Whether the IPv4 pseudo-header (addresses) is covered (TCP, UDP; not ICMP).
    pseudo: bool,
}

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

#[inline(always)]
fn l4_csum(l4_off: usize, proto: u8) -> Option<L4Csum> {
    match proto {
        IPPROTO_TCP => Some(L4Csum {
            off: l4_off + TCP_CSUM_OFF,
            flags: 0,
            pseudo: true,
        }),
        IPPROTO_UDP => Some(L4Csum {
            off: l4_off + UDP_CSUM_OFF,
            flags: u64::from(BPF_F_MARK_MANGLED_0),
            pseudo: true,
        }),
        IPPROTO_ICMP => Some(L4Csum {
            off: l4_off + ICMP_CSUM_OFF,
            flags: 0,
            pseudo: false,
        }),
        _ => None,
    }
}

/// Replaces the IPv4 address at `off`, fixing the header checksum at `ip_check_off` and, when
/// given, the L4 checksum that covers it.
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    off: usize,
    ip_check_off: usize,
    from: [u8; 4],
    to: [u8; 4],
    csum: Option<L4Csum>,
) -> Result {
    let (f, t) = (
        u64::from(u32::from_ne_bytes(from)),
        u64::from(u32::from_ne_bytes(to)),
    );
    ok(ctx.l3_csum_replace(ip_check_off, f, t, 4))?;
    if let Some(c) = csum
        && c.pseudo
    {
        ok(ctx.l4_csum_replace(c.off, f, t, u64::from(BPF_F_PSEUDO_HDR) | c.flags | 4))?;
    }
    ok(ctx.store(off, &to, 0))
}

/// Replaces the 16-bit port (or identifier) at `off`, fixing the checksum that covers it.
#[inline(always)]
fn set_port(ctx: &TcContext, off: usize, from: u16, to: u16, csum: Option<L4Csum>) -> Result {
    let (f, t) = (from.to_be(), to.to_be());
    if let Some(c) = csum {
        ok(ctx.l4_csum_replace(c.off, u64::from(f), u64::from(t), c.flags | 2))?;
    }
    ok(ctx.store(off, &t, 0))
}

/// Rewrites the packet's tuple from `pkt.key` to `nat`. A later fragment gets its addresses
/// (and the IPv4 header checksum) rewritten only: its ports and the L4 checksum, which covers
/// the whole datagram, are in the first fragment, rewritten like any packet's.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Ipv4Packet, nat: &CtNat) -> Result {
    let key = &pkt.key;
    let csum = match pkt.l4 {
        L4::Fragment | L4::OrphanFragment => None,
        _ => l4_csum(pkt.l4_off, key.proto),
    };
    if nat.saddr != key.saddr {
        set_addr(ctx, IP_SADDR_OFF, IP_CHECK_OFF, key.saddr, nat.saddr, csum)?;
    }
    if nat.daddr != key.daddr {
        set_addr(ctx, IP_DADDR_OFF, IP_CHECK_OFF, key.daddr, nat.daddr, csum)?;
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
                set_port(ctx, pkt.l4_off + ICMP_ID_OFF, from, to, csum)?;
            }
        }
        L4::IcmpError | L4::Fragment | L4::OrphanFragment | L4::Opaque => {}
    }
    Ok(())
}

/// The packet an ICMP error quotes: its tuple and where its headers are.
pub struct Quoted {
    /// The quoted packet's tuple (as it left this node, i.e. already translated).
    pub key: CtKey,
    ip_off: usize,
    l4_off: usize,
    echo_request: bool,
}

/// Minimal IPv4 header length: quoted headers with options are not translated.
const QUOTED_IHL: u8 = 0x45;
const IP_PROTO_FIELD: usize = 9;
const IP_CHECK_FIELD: usize = 10;
const IP_SADDR_FIELD: usize = 12;
const IP_DADDR_FIELD: usize = 16;

/// Bytes after the quoted IPv4 header an ICMP error carries (RFC 792): ports, or an echo's
/// identifier.
const QUOTED_L4_LEN: usize = 8;
/// The quoted bytes an ICMP error must carry, inside its IPv4 total length, to be translated.
const QUOTED_MIN_LEN: usize = IPV4_MIN_HLEN + QUOTED_L4_LEN;

/// Reads the headers an ICMP error at `pkt.l4_off` quotes.
#[inline(always)]
pub fn quoted(ctx: &TcContext, pkt: &Ipv4Packet) -> Option<Quoted> {
    if pkt.l4_len < ICMP_HLEN + QUOTED_MIN_LEN {
        // A quote cut short by the IPv4 total length: the rest is padding, not headers.
        return None;
    }
    let ip_off = pkt.l4_off + ICMP_HLEN;
    if ctx.load::<u8>(ip_off).ok()? != QUOTED_IHL {
        return None;
    }
    let proto: u8 = ctx.load(ip_off + IP_PROTO_FIELD).ok()?;
    let saddr: [u8; 4] = ctx.load(ip_off + IP_SADDR_FIELD).ok()?;
    let daddr: [u8; 4] = ctx.load(ip_off + IP_DADDR_FIELD).ok()?;
    let l4_off = ip_off + IPV4_MIN_HLEN;
    let mut key = CtKey {
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
        IPPROTO_ICMP => {
            // Only echo requests are tracked as the quoted packet of an error.
            if ctx.load::<u8>(l4_off).ok()? != ICMP_ECHO_REQUEST {
                return None;
            }
            let id: [u8; 2] = ctx.load(l4_off + ICMP_ID_OFF).ok()?;
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

/// Translates an ICMP error about a flow back to the endpoint it concerns: the outer
/// source becomes `from_addr` and the outer destination `to_addr`, and the quoted header
/// becomes `quoted_nat` (its addresses,
/// its header checksum and its ports), with the ICMP checksum, which covers the quoted bytes,
/// updated for every change. The quoted L4 checksum is left alone: receivers do not verify it
/// (the quote is usually truncated).
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    q: &Quoted,
    quoted_nat: &CtNat,
    from_addr: [u8; 4],
    to_addr: [u8; 4],
) -> Result {
    let icmp_csum = L4Csum {
        off: pkt.l4_off + ICMP_CSUM_OFF,
        flags: 0,
        pseudo: false,
    };
    let inner_check_off = q.ip_off + IP_CHECK_FIELD;
    let check_before: u16 = ctx
        .load::<[u8; 2]>(inner_check_off)
        .map(u16::from_ne_bytes)
        .map_err(|_| RewriteFailed)?;
    for (field, from, to) in [
        (IP_SADDR_FIELD, q.key.saddr, quoted_nat.saddr),
        (IP_DADDR_FIELD, q.key.daddr, quoted_nat.daddr),
    ] {
        if from != to {
            let (f, t) = (
                u64::from(u32::from_ne_bytes(from)),
                u64::from(u32::from_ne_bytes(to)),
            );
            // The quoted header's own checksum, then the ICMP checksum over the quoted bytes.
            ok(ctx.l3_csum_replace(inner_check_off, f, t, 4))?;
            ok(ctx.l4_csum_replace(icmp_csum.off, f, t, 4))?;
            ok(ctx.store(q.ip_off + field, &to, 0))?;
        }
    }
    let check_after: u16 = ctx
        .load::<[u8; 2]>(inner_check_off)
        .map(u16::from_ne_bytes)
        .map_err(|_| RewriteFailed)?;
    if check_after != check_before {
        ok(ctx.l4_csum_replace(
            icmp_csum.off,
            u64::from(check_before),
            u64::from(check_after),
            2,
        ))?;
    }
    if q.echo_request {
        if q.key.sport != quoted_nat.sport {
            set_port(
                ctx,
                q.l4_off + ICMP_ID_OFF,
                q.key.sport,
                quoted_nat.sport,
                Some(icmp_csum),
            )?;
        }
    } else {
        if q.key.sport != quoted_nat.sport {
            set_port(
                ctx,
                q.l4_off,
                q.key.sport,
                quoted_nat.sport,
                Some(icmp_csum),
            )?;
        }
        if q.key.dport != quoted_nat.dport {
            set_port(
                ctx,
                q.l4_off + 2,
                q.key.dport,
                quoted_nat.dport,
                Some(icmp_csum),
            )?;
        }
    }
    if from_addr != pkt.key.saddr {
        set_addr(
            ctx,
            IP_SADDR_OFF,
            IP_CHECK_OFF,
            pkt.key.saddr,
            from_addr,
            None,
        )?;
    }
    if to_addr != pkt.key.daddr {
        set_addr(
            ctx,
            IP_DADDR_OFF,
            IP_CHECK_OFF,
            pkt.key.daddr,
            to_addr,
            None,
        )?;
    }
    Ok(())
}
