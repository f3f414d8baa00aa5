//! Crafting and checking raw frames for `BPF_PROG_TEST_RUN` tests: Ethernet, IPv4 (with
//! options), TCP, UDP and ICMP, with checksums computed here independently of the datapath.

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_HLEN: usize = 14;

/// Internet checksum (RFC 1071) over `data`, starting from `initial` (a partial sum).
pub fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).expect("folded to 16 bits"))
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        u16::from(proto),
        u16::try_from(len).expect("L4 length fits"),
    ]
    .iter()
    .map(|w| u32::from(*w))
    .sum()
}

/// An Ethernet frame around `payload`.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet (header checksum filled in) around an L4 `payload`, with `options` (a
/// multiple of 4 bytes) after the fixed header.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options are 32-bit aligned");
    let hlen = 20 + options.len();
    let total = u16::try_from(hlen + payload.len()).expect("fits");
    let mut p = vec![0x40 | u8::try_from(hlen / 4).expect("IHL fits"), 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    let check = csum(&p[..hlen], 0);
    p[10..12].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A TCP segment with a correct checksum for `src` -> `dst`.
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + data.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(data);
    let check = csum(&t, pseudo_header_sum(src, dst, 6, t.len()));
    t[16..18].copy_from_slice(&check.to_be_bytes());
    t
}

/// A UDP datagram; `zero_checksum` leaves the checksum 0 ("none"), as IPv4 allows.
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    data: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let len = u16::try_from(8 + data.len()).expect("fits");
    let mut u = Vec::with_capacity(usize::from(len));
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    if !zero_checksum {
        let mut check = csum(&u, pseudo_header_sum(src, dst, 17, u.len()));
        if check == 0 {
            check = 0xffff;
        }
        u[6..8].copy_from_slice(&check.to_be_bytes());
    }
    u
}

/// An ICMP echo request.
pub fn icmp_echo(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&seq.to_be_bytes());
    i.extend_from_slice(data);
    let check = csum(&i, 0);
    i[2..4].copy_from_slice(&check.to_be_bytes());
    i
}

/// Whether the IPv4 header checksum of the frame is valid.
pub fn ipv4_header_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    csum(&ip[..hlen], 0) == 0
}

/// Whether the TCP/UDP checksum of the frame's IPv4 payload is valid (UDP 0 means none).
pub fn l4_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[hlen..total];
    match ip[9] {
        17 if l4[6..8] == [0, 0] => true,
        1 => csum(l4, 0) == 0,
        proto => csum(l4, pseudo_header_sum(src, dst, proto, l4.len())) == 0,
    }
}

/// An IPv4 address and a port.
pub type Addr = (Ipv4Addr, u16);

/// An Ethernet frame holding a TCP segment from `src` to `dst` with `flags` and `data`.
pub fn tcp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Addr,
    dst: Addr,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let seg = tcp(src.0, dst.0, src.1, dst.1, flags, data);
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &ipv4(src.0, dst.0, 6, &[], &seg),
    )
}

/// An Ethernet frame holding a UDP datagram from `src` to `dst` (checksum 0 if
/// `zero_checksum`).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Addr,
    dst: Addr,
    data: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let dgram = udp(src.0, dst.0, src.1, dst.1, data, zero_checksum);
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &ipv4(src.0, dst.0, 17, &[], &dgram),
    )
}
