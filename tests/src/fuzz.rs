//! Packet fuzzing support for `BPF_PROG_TEST_RUN` tests: a seeded PRNG (xorshift64*), byte
//! mutations of frames, and an independent reading of a frame (headers, which bytes NAT may
//! touch, checksums) to judge what a program did to it. Nothing here trusts the datapath's own
//! parsing or checksum updates.

use crate::packet::{ETH_HLEN, ETH_P_IP, csum};

/// Env var: how many inputs the fuzz test runs (`cargo xtask fuzz --iterations`).
pub const ITERATIONS_ENV: &str = "PODNET_FUZZ_ITERATIONS";
/// Env var: the seed of the fuzz test's inputs (`cargo xtask fuzz --seed`).
pub const SEED_ENV: &str = "PODNET_FUZZ_SEED";
/// Env var: replay one input, `<program>:<hex frame>` as a failure prints it.
pub const REPLAY_ENV: &str = "PODNET_FUZZ_REPLAY";

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
/// ICMP types that quote the packet they are about.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
const ICMP_ECHOES: [u8; 2] = [0, 8];
/// The ICMP header before an error's quoted packet.
const ICMP_HLEN: usize = 8;

/// SplitMix64: spreads a seed (or a seed and an index) over all 64 bits.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// xorshift64*: small, fast, and plenty for choosing mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed) | 1)
    }

    /// The generator of input `index` of a run with `seed`: each input can be regenerated
    /// without the ones before it.
    pub fn for_input(seed: u64, index: u64) -> Self {
        Self::new(seed ^ splitmix(index))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % n as u64).expect("below n")
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A frame in hex, for failure messages and replay.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (as [`hex`] writes it).
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn u16_at(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

/// A frame read as Ethernet + IPv4, with every length checked against the frame.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4View {
    /// IPv4 header length (IHL * 4).
    pub hlen: usize,
    /// The IPv4 total length.
    pub total: usize,
    pub proto: u8,
    /// More fragments set, or a fragment offset.
    pub fragment: bool,
    /// A fragment offset: a later fragment, with no L4 header (only its addresses are NAT's).
    pub later_fragment: bool,
    /// Offset of the L4 header in the frame.
    pub l4_off: usize,
    /// Bytes of L4 inside the IPv4 total length.
    pub l4_len: usize,
}

/// Reads `frame` as a well-formed IPv4 frame: EtherType IPv4, version 4, IHL at least 5, a
/// total length at least the header and no longer than the frame.
pub fn ipv4_view(frame: &[u8]) -> Option<Ipv4View> {
    if frame.len() < ETH_HLEN + 20 || u16_at(frame, 12) != ETH_P_IP {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16_at(ip, 2));
    if ip[0] >> 4 != 4 || hlen < 20 || total < hlen || total > ip.len() {
        return None;
    }
    Some(Ipv4View {
        hlen,
        total,
        proto: ip[9],
        fragment: u16_at(ip, 6) & (IP_MF | IP_OFFSET) != 0,
        later_fragment: u16_at(ip, 6) & IP_OFFSET != 0,
        l4_off: ETH_HLEN + hlen,
        l4_len: total - hlen,
    })
}

/// Whether the IPv4 header checksum verifies.
pub fn ip_header_ok(frame: &[u8], v: &Ipv4View) -> bool {
    csum(&frame[ETH_HLEN..ETH_HLEN + v.hlen], 0) == 0
}

/// The smallest complete L4 header of `proto` (the part NAT reads and writes).
fn l4_min_len(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(20),
        IPPROTO_UDP | IPPROTO_ICMP => Some(8),
        _ => None,
    }
}

/// Whether the L4 header of a TCP, UDP or ICMP packet lies wholly inside the IPv4 total
/// length (and the packet is not a fragment): only then is there an L4 checksum to verify.
pub fn l4_complete(v: &Ipv4View) -> bool {
    !v.fragment && l4_min_len(v.proto).is_some_and(|min| v.l4_len >= min)
}

/// Whether a packet that NAT may rewrite the ports of has its whole L4 header inside the IPv4
/// total length: every packet but a later fragment (a first fragment carries the header; its
/// checksum covers the whole datagram, so [`l4_complete`] does not hold for it).
pub fn l4_header_inside(v: &Ipv4View) -> bool {
    v.later_fragment || l4_min_len(v.proto).is_none_or(|min| v.l4_len >= min)
}

fn pseudo_sum(frame: &[u8], v: &Ipv4View) -> u32 {
    let ip = &frame[ETH_HLEN..];
    [
        u16_at(ip, 12),
        u16_at(ip, 14),
        u16_at(ip, 16),
        u16_at(ip, 18),
        u16::from(v.proto),
        u16::try_from(v.l4_len).expect("fits"),
    ]
    .iter()
    .map(|w| u32::from(*w))
    .sum()
}

/// Whether the TCP, UDP (0: none, valid) or ICMP checksum verifies; `None` when there is no
/// complete L4 header to verify ([`l4_complete`]).
pub fn l4_ok(frame: &[u8], v: &Ipv4View) -> Option<bool> {
    if !l4_complete(v) {
        return None;
    }
    let l4 = &frame[v.l4_off..v.l4_off + v.l4_len];
    Some(match v.proto {
        IPPROTO_UDP if l4[6..8] == [0, 0] => true,
        IPPROTO_ICMP => csum(l4, 0) == 0,
        _ => csum(l4, pseudo_sum(frame, v)) == 0,
    })
}

/// Offset of the IPv4 header an ICMP error quotes, when the frame is a complete ICMP error
/// quoting a header without options.
pub fn quoted_ip_off(frame: &[u8], v: &Ipv4View) -> Option<usize> {
    let q = v.l4_off + ICMP_HLEN;
    (v.proto == IPPROTO_ICMP
        && l4_complete(v)
        && ICMP_ERRORS.contains(&frame[v.l4_off])
        && v.l4_len >= ICMP_HLEN + 20
        && frame[q] == 0x45)
        .then_some(q)
}

/// Whether a quoted IPv4 header's checksum verifies; `None` when there is none.
pub fn quoted_ip_ok(frame: &[u8], v: &Ipv4View) -> Option<bool> {
    quoted_ip_off(frame, v).map(|q| csum(&frame[q..q + 20], 0) == 0)
}

/// Which bytes of `frame` NAT and delivery may change: the MACs, the IPv4 addresses and header
/// checksum, and, inside the IPv4 total length only, ports (or the echo identifier) and the L4
/// checksum, and for an ICMP error the quoted addresses, header checksum and ports. Everything
/// else (TTL, payload, padding after the IPv4 total length, ...) must leave as it came.
pub fn rewritable(frame: &[u8], v: &Ipv4View) -> Vec<bool> {
    let mut may = vec![false; frame.len()];
    let end = ETH_HLEN + v.total;
    let mut allow = |from: usize, len: usize| {
        for b in may.iter_mut().take((from + len).min(end)).skip(from) {
            *b = true;
        }
    };
    allow(0, 12);
    allow(ETH_HLEN + 10, 10);
    if v.later_fragment {
        return may;
    }
    let l4 = v.l4_off;
    match v.proto {
        IPPROTO_TCP => {
            allow(l4, 4);
            allow(l4 + 16, 2);
        }
        IPPROTO_UDP => {
            allow(l4, 4);
            allow(l4 + 6, 2);
        }
        IPPROTO_ICMP if v.l4_len >= 1 => {
            allow(l4 + 2, 2);
            if ICMP_ECHOES.contains(&frame[l4]) {
                allow(l4 + 4, 2);
            } else if ICMP_ERRORS.contains(&frame[l4]) {
                let q = l4 + ICMP_HLEN;
                allow(q + 10, 10);
                allow(q + 20, 6);
            }
        }
        _ => {}
    }
    may
}

/// Recomputes the IPv4 header checksum and, when the L4 header is complete, the L4 checksum
/// (a zero UDP checksum stays "none"), so a mutated frame is consistent again and the checks
/// on what the datapath does to it are strict. Frames that are not IPv4 are left alone.
pub fn fix_checksums(frame: &mut [u8]) {
    let Some(v) = ipv4_view(frame) else {
        return;
    };
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
    let check = csum(&frame[ETH_HLEN..ETH_HLEN + v.hlen], 0);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&check.to_be_bytes());
    if !l4_complete(&v) {
        return;
    }
    let (off, pseudo) = match v.proto {
        IPPROTO_TCP => (16, true),
        IPPROTO_UDP if u16_at(frame, v.l4_off + 6) == 0 => return,
        IPPROTO_UDP => (6, true),
        _ => (2, false),
    };
    let at = v.l4_off + off;
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let initial = if pseudo { pseudo_sum(frame, &v) } else { 0 };
    let mut check = csum(&frame[v.l4_off..v.l4_off + v.l4_len], initial);
    if v.proto == IPPROTO_UDP && check == 0 {
        check = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

/// Values that tend to sit on parser boundaries.
const INTERESTING: [u8; 10] = [0x00, 0x01, 0x05, 0x06, 0x08, 0x11, 0x40, 0x45, 0x7f, 0xff];

/// Applies `count` random byte-level mutations: bit flips, random or boundary values, inserted
/// and deleted bytes, mostly within the first 64 bytes where the headers are.
pub fn mutate_bytes(rng: &mut Rng, frame: &mut Vec<u8>, count: usize) {
    for _ in 0..count {
        if frame.is_empty() {
            frame.push(rng.byte());
            continue;
        }
        let span = if rng.chance(80) {
            frame.len().min(64)
        } else {
            frame.len()
        };
        let at = rng.below(span);
        match rng.below(5) {
            0 => frame[at] ^= 1 << rng.below(8),
            1 => frame[at] = rng.byte(),
            2 => frame[at] = *rng.pick(&INTERESTING),
            3 => frame.insert(at, rng.byte()),
            _ => {
                frame.remove(at);
            }
        }
    }
}
