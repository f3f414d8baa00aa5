//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): a lookup table of a prime number of entries, each
//! naming one backend, filled so that every backend gets an almost equal share and a change of
//! one backend out of N moves only about 1/N of the entries.
//!
//! Each backend's preference list is a permutation of the table given by two hashes of its
//! address and port (an offset and a skip); backends take turns claiming their next preferred
//! free entry until the table is full. The backends take their turns in address order, so the
//! table depends only on the set of backends: every node builds the same one.

use std::net::IpAddr;

/// 64-bit FNV-1a of `bytes`, from `basis`.
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// FNV-1a's offset basis, and a second basis for the independent skip hash.
const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const SKIP_BASIS: u64 = 0x6c62_272e_07bb_0142;

/// The table of `size` entries (a prime) for `backends` (IPv4 or IPv6 addresses; a backend's
/// name is its address's bytes and its port): entry `i` is an index into `backends`. Empty
/// when there are no backends.
pub fn table<A: Into<IpAddr> + Copy + Ord>(backends: &[(A, u16)], size: u32) -> Vec<u32> {
    let m = u64::from(size);
    if backends.is_empty() || m < 2 {
        return Vec::new();
    }
    // Turns in address order, so the input's order does not matter.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i]);
    order.dedup_by_key(|i| backends[*i]);
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let (addr, port) = backends[i];
            let mut name = match addr.into() {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            name.extend_from_slice(&port.to_be_bytes());
            let offset = fnv1a(OFFSET_BASIS, &name) % m;
            let skip = fnv1a(SKIP_BASIS, &name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut entry = vec![u32::MAX; usize::try_from(size).expect("table sizes fit usize")];
    let mut filled = 0u64;
    // Each turn fills one entry, so M turns fill the table; each search is bounded by M since
    // a backend's preference list is a permutation of the whole table.
    'fill: loop {
        for (turn, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[turn] * skip) % m;
            while entry[usize::try_from(c).expect("c < size")] != u32::MAX {
                next[turn] += 1;
                c = (offset + next[turn] * skip) % m;
            }
            entry[usize::try_from(c).expect("c < size")] =
                u32::try_from(order[turn]).expect("backend counts fit u32");
            next[turn] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// The share of entries that name a different backend in `after` than in `before` (for
/// measuring disruption: the share of new flows that would move). Entries are compared by the
/// backend they name, through each table's own backend list.
pub fn moved_share<A: PartialEq>(
    before: (&[u32], &[(A, u16)]),
    after: (&[u32], &[(A, u16)]),
) -> f64 {
    let n = before.0.len().min(after.0.len());
    if n == 0 {
        return 0.0;
    }
    let moved = before
        .0
        .iter()
        .zip(after.0)
        .filter(|(b, a)| {
            before.1[usize::try_from(**b).expect("fits")]
                != after.1[usize::try_from(**a).expect("fits")]
        })
        .count();
    #[expect(
        clippy::cast_precision_loss,
        reason = "a share of at most 2^32 entries"
    )]
    let share = moved as f64 / n as f64;
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 16_381;

    fn backends(n: u8) -> Vec<(std::net::Ipv4Addr, u16)> {
        (1..=n)
            .map(|i| (std::net::Ipv4Addr::new(10, 1, 0, i), 8080))
            .collect()
    }

    #[test]
    fn every_backend_gets_an_almost_equal_share() {
        let b = backends(10);
        let t = table(&b, M);
        assert_eq!(t.len(), M as usize);
        let mut counts = [0usize; 10];
        for &e in &t {
            counts[e as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 2, "shares {counts:?}");
    }

    #[test]
    fn the_table_does_not_depend_on_the_order_backends_are_given() {
        let b = backends(7);
        let mut r = b.clone();
        r.reverse();
        let (t, u) = (table(&b, M), table(&r, M));
        for (x, y) in t.iter().zip(&u) {
            assert_eq!(b[*x as usize], r[*y as usize]);
        }
    }

    #[test]
    fn removing_or_adding_one_of_n_moves_about_one_nth() {
        let b = backends(10);
        let t = table(&b, M);
        let fewer: Vec<_> = b[..9].to_vec();
        let moved = moved_share((&t, &b), (&table(&fewer, M), &fewer));
        // 1/10 must move (the removed backend's share); Maglev moves a little more.
        assert!((0.10..0.13).contains(&moved), "removal moved {moved}");
        let more = backends(11);
        let moved = moved_share((&t, &b), (&table(&more, M), &more));
        assert!(
            (1.0 / 11.0..0.12).contains(&moved),
            "addition moved {moved}"
        );
    }

    #[test]
    fn no_backends_no_table() {
        assert!(table::<std::net::Ipv4Addr>(&[], M).is_empty());
    }
}
