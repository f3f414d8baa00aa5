//! The drop and refusal events (`MONITOR_EVENTS`, see `podnet_ebpf::abi::monitor`) as userspace
//! reads them: the pinned ring buffer, each record decoded from the packet bytes it carries
//! (addresses, ports, protocol; for a refused connection that was answered, the client's
//! packet the answer stands for), and the rate limit's totals (`MONITOR_BUDGET`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::Path,
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use podnet_ebpf::abi::{
    map_name,
    monitor::{DropEvent, EVENT_LEN, MonitorBudget, hook},
    proto::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ICMP_DEST_UNREACH, ICMP_PARAMETER_PROBLEM,
        ICMP_TIME_EXCEEDED, IP_OFFSET, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
        IPV4_MIN_HLEN, IPV6_HLEN,
    },
    reason,
};
use serde::Serialize;

use super::{DatapathError, maps};

/// Bytes of an ICMP header before the datagram an error quotes.
const ICMP_HLEN: usize = 8;

/// The node's event ring, opened from its pin.
pub struct EventRing {
    ring: RingBuf<MapData>,
}

impl EventRing {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let map = maps::open(pin_dir, map_name::MONITOR_EVENTS)?;
        let ring = RingBuf::try_from(map).map_err(|source| DatapathError::Map {
            name: map_name::MONITOR_EVENTS.to_owned(),
            source,
        })?;
        Ok(Self { ring })
    }

    /// Waits until an event is ready or `timeout` has passed (a signal ends the wait early).
    pub fn wait(&self, timeout: Duration) {
        let mut fd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for a descriptor `self.ring` keeps open; a bounded wait.
        unsafe { libc::poll(&raw mut fd, 1, millis) };
    }

    /// The next event in the ring, if any (a record too short to be an event is skipped).
    pub fn next_event(&mut self) -> Option<DropEvent> {
        loop {
            let item = self.ring.next()?;
            if item.len() >= EVENT_LEN {
                // SAFETY: the record holds at least `EVENT_LEN` bytes, and `DropEvent` is plain
                // integers and bytes (any bit pattern is valid); read unaligned, as a copy.
                return Some(unsafe { item.as_ptr().cast::<DropEvent>().read_unaligned() });
            }
        }
    }
}

/// What the rate limit held back, summed over CPUs, since the maps were created.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BudgetTotals {
    /// Events not reported because a CPU had reported its share of the second.
    pub suppressed: u64,
    /// Events lost to a full ring buffer.
    pub lost: u64,
}

pub fn budget_totals(pin_dir: &Path) -> Result<BudgetTotals, DatapathError> {
    let err = |source| DatapathError::Map {
        name: map_name::MONITOR_BUDGET.to_owned(),
        source,
    };
    let budget: PerCpuArray<MapData, MonitorBudget> =
        maps::open(pin_dir, map_name::MONITOR_BUDGET)?
            .try_into()
            .map_err(err)?;
    let per_cpu = budget.get(&0, 0).map_err(err)?;
    Ok(per_cpu
        .iter()
        .fold(BudgetTotals::default(), |total, cpu| BudgetTotals {
            suppressed: total.suppressed + cpu.suppressed,
            lost: total.lost + cpu.lost,
        }))
}

/// One event, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropRecord {
    /// CLOCK_MONOTONIC when the packet was counted, in nanoseconds.
    pub time_ns: u64,
    pub reason: String,
    /// The program that saw it: `from_pod` or `from_uplink`.
    pub hook: &'static str,
    pub ifindex: u32,
    /// `dropped`, or `answered` (a refused connection's packet turned into its answer).
    pub action: &'static str,
    /// The packet's length when counted.
    pub len: u32,
    /// Events this CPU held back (rate limit, full ring) since its previous event.
    pub suppressed_before: u32,
    #[serde(flatten)]
    pub packet: PacketSummary,
}

/// What the captured bytes say about the packet (for an answered refusal: the client's packet
/// it answers). Fields the bytes do not reach are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PacketSummary {
    /// `ipv4`, `ipv6`, or the EtherType of anything else (`0x0806`), or absent if not even
    /// that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// `tcp`, `udp`, `icmp`, `ipv6-icmp`, or the protocol number (IPv6: the header after the
    /// fixed one, an extension header's number included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// ICMP type and code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<(u8, u8)>,
    /// A later fragment (no ports in it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
}

/// The name of a `reason::*` index (`reason_N` for one this build does not know).
pub fn reason_name(index: u32) -> String {
    usize::try_from(index)
        .ok()
        .and_then(|i| reason::NAMES.get(i))
        .map_or_else(|| format!("reason_{index}"), |name| (*name).to_owned())
}

impl DropRecord {
    pub fn decode(event: &DropEvent) -> Self {
        let DropEvent {
            ktime_ns,
            reason,
            ifindex,
            packet_len,
            suppressed_before,
            captured,
            hook,
            dropped,
            _pad,
            data,
        } = event;
        let bytes = &data[..usize::from(*captured).min(data.len())];
        let name = reason_name(*reason);
        let answered = *dropped == 0 && name.starts_with("reject_");
        let packet = if answered {
            answered_original(bytes)
        } else {
            summarise(bytes)
        };
        Self {
            time_ns: *ktime_ns,
            reason: name,
            hook: if *hook == hook::FROM_POD {
                "from_pod"
            } else {
                "from_uplink"
            },
            ifindex: *ifindex,
            action: if *dropped == 0 { "answered" } else { "dropped" },
            len: *packet_len,
            suppressed_before: *suppressed_before,
            packet,
        }
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn addr(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(b)))
}

fn addr6(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

/// Decodes an Ethernet frame's first bytes.
pub fn summarise(frame: &[u8]) -> PacketSummary {
    let Some(ethertype) = be16(frame, ETH_HLEN - 2) else {
        return PacketSummary::default();
    };
    if ethertype == ETH_P_IPV6 {
        let mut summary = ipv6(frame.get(ETH_HLEN..).unwrap_or_default());
        summary.l3 = Some("ipv6".to_owned());
        return summary;
    }
    if ethertype != ETH_P_IP {
        return PacketSummary {
            l3: Some(format!("{ethertype:#06x}")),
            ..PacketSummary::default()
        };
    }
    let mut summary = ipv4(frame.get(ETH_HLEN..).unwrap_or_default());
    summary.l3 = Some("ipv4".to_owned());
    summary
}

/// Decodes an IPv6 packet's first bytes: addresses, the next header, and ports or the ICMPv6
/// type when it follows the fixed header directly.
fn ipv6(ip: &[u8]) -> PacketSummary {
    let mut s = PacketSummary {
        src: addr6(ip, 8),
        dst: addr6(ip, 24),
        ..PacketSummary::default()
    };
    let Some(&next) = ip.get(6) else {
        return s;
    };
    s.proto = Some(crate::model::names::proto_name(next));
    let l4 = ip.get(IPV6_HLEN..).unwrap_or_default();
    match next {
        IPPROTO_TCP | IPPROTO_UDP => {
            s.sport = be16(l4, 0);
            s.dport = be16(l4, 2);
        }
        IPPROTO_ICMPV6 => {
            s.icmp = l4.first().zip(l4.get(1)).map(|(t, c)| (*t, *c));
        }
        _ => {}
    }
    s
}

/// Decodes an IPv4 packet's first bytes (as much as they reach).
fn ipv4(ip: &[u8]) -> PacketSummary {
    let mut s = PacketSummary::default();
    let Some(&version_ihl) = ip.first() else {
        return s;
    };
    s.src = addr(ip, 12);
    s.dst = addr(ip, 16);
    let Some(&proto) = ip.get(9) else {
        return s;
    };
    s.proto = Some(crate::model::names::proto_name(proto));
    s.fragment = be16(ip, 6).is_some_and(|f| f & IP_OFFSET != 0);
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if s.fragment || ihl < IPV4_MIN_HLEN {
        return s;
    }
    let l4 = ip.get(ihl..).unwrap_or_default();
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            s.sport = be16(l4, 0);
            s.dport = be16(l4, 2);
        }
        IPPROTO_ICMP => {
            s.icmp = l4.first().zip(l4.get(1)).map(|(t, c)| (*t, *c));
        }
        _ => {}
    }
    s
}

/// For a refused connection whose packet was turned into the answer: the client's packet, as
/// far as the answer shows it (a TCP RST has the ends swapped; an ICMP error quotes it).
fn answered_original(frame: &[u8]) -> PacketSummary {
    let answer = summarise(frame);
    match answer.proto.as_deref() {
        Some("tcp") => PacketSummary {
            src: answer.dst,
            dst: answer.src,
            sport: answer.dport,
            dport: answer.sport,
            ..answer
        },
        Some("icmp")
            if matches!(
                answer.icmp,
                Some((
                    ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM,
                    _
                ))
            ) =>
        {
            let ihl = frame
                .get(ETH_HLEN)
                .map_or(IPV4_MIN_HLEN, |b| usize::from(b & 0x0f) * 4);
            let quoted = frame.get(ETH_HLEN + ihl + ICMP_HLEN..).unwrap_or_default();
            PacketSummary {
                l3: answer.l3,
                ..ipv4(quoted)
            }
        }
        _ => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn a_dropped_neighbor_advertisement_shows_its_ipv6_ends_and_icmpv6_type() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00::2".parse().expect("IPv6"),
            "ff02::1".parse().expect("IPv6"),
        );
        let mut f = vec![0u8; ETH_HLEN];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, IPPROTO_ICMPV6, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&[136, 0, 0, 0]);
        let r = DropRecord::decode(&event(reason::DROP_ND_SPOOFED, 1, &f));
        assert_eq!(r.reason, "drop_nd_spoofed");
        assert_eq!(r.packet.l3.as_deref(), Some("ipv6"));
        assert_eq!(
            (r.packet.src, r.packet.dst),
            (Some(IpAddr::V6(src)), Some(IpAddr::V6(dst)))
        );
        assert_eq!(r.packet.proto.as_deref(), Some("ipv6-icmp"));
        assert_eq!(r.packet.icmp, Some((136, 0)));
    }

    /// An Ethernet + IPv4 (no options) frame carrying `l4`.
    fn frame(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let mut ip = [0u8; IPV4_MIN_HLEN];
        ip[0] = 0x45;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn event(why: u32, dropped: u8, bytes: &[u8]) -> DropEvent {
        let mut data = [0u8; podnet_ebpf::abi::monitor::CAPTURE_LEN];
        data[..bytes.len()].copy_from_slice(bytes);
        DropEvent {
            ktime_ns: 1,
            reason: why,
            ifindex: 7,
            packet_len: 60,
            suppressed_before: 0,
            captured: u16::try_from(bytes.len()).unwrap(),
            hook: hook::FROM_POD,
            dropped,
            _pad: 0,
            data,
        }
    }

    #[test]
    fn a_dropped_udp_datagram_shows_its_ends() {
        let f = frame(IPPROTO_UDP, [10, 0, 0, 5], [10, 0, 0, 9], &[4, 210, 0, 80]);
        let r = DropRecord::decode(&event(reason::DROP_SPOOFED, 1, &f));
        assert_eq!(r.reason, "drop_spoofed");
        assert_eq!(r.action, "dropped");
        assert_eq!(r.packet.src, Some(v4(10, 0, 0, 5)));
        assert_eq!(r.packet.dst, Some(v4(10, 0, 0, 9)));
        assert_eq!((r.packet.sport, r.packet.dport), (Some(1234), Some(80)));
        assert_eq!(r.packet.proto.as_deref(), Some("udp"));
    }

    #[test]
    fn an_answered_rst_shows_the_clients_packet() {
        let rst = frame(IPPROTO_TCP, [10, 96, 0, 1], [10, 0, 0, 5], &[0, 80, 4, 210]);
        let r = DropRecord::decode(&event(reason::REJECT_NO_BACKEND, 0, &rst));
        assert_eq!(r.action, "answered");
        assert_eq!(r.packet.src, Some(v4(10, 0, 0, 5)));
        assert_eq!(r.packet.dst, Some(v4(10, 96, 0, 1)));
        assert_eq!((r.packet.sport, r.packet.dport), (Some(1234), Some(80)));
    }

    #[test]
    fn an_answered_port_unreachable_shows_the_quoted_datagram() {
        let quoted =
            &frame(IPPROTO_UDP, [10, 0, 0, 5], [10, 96, 0, 1], &[4, 210, 0, 53])[ETH_HLEN..];
        let mut icmp = vec![ICMP_DEST_UNREACH, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let answer = frame(IPPROTO_ICMP, [10, 96, 0, 1], [10, 0, 0, 5], &icmp);
        let r = DropRecord::decode(&event(reason::REJECT_NO_BACKEND, 0, &answer));
        assert_eq!(r.packet.src, Some(v4(10, 0, 0, 5)));
        assert_eq!(r.packet.dst, Some(v4(10, 96, 0, 1)));
        assert_eq!(r.packet.proto.as_deref(), Some("udp"));
        assert_eq!(r.packet.dport, Some(53));
    }

    #[test]
    fn short_and_odd_captures_report_what_they_can() {
        assert_eq!(summarise(&[]), PacketSummary::default());
        let f = frame(IPPROTO_UDP, [10, 0, 0, 5], [10, 0, 0, 9], &[]);
        let s = summarise(&f[..ETH_HLEN + 16]);
        assert_eq!(s.src, Some(v4(10, 0, 0, 5)));
        assert_eq!((s.dst, s.sport), (None, None));
        let mut arp = vec![0u8; ETH_HLEN];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(summarise(&arp).l3.as_deref(), Some("0x0806"));
        let mut frag = frame(IPPROTO_UDP, [1, 1, 1, 1], [2, 2, 2, 2], &[0, 1, 0, 2]);
        frag[ETH_HLEN + 7] = 1;
        let s = summarise(&frag);
        assert!(s.fragment);
        assert_eq!(s.sport, None);
        assert_eq!(reason_name(63), "reason_63");
    }
}
