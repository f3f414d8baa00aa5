//! `NON_MASQUERADE`: the node's masquerade exclusions (LPM), destinations pods reach with their
//! own address, and `NON_MASQUERADE6`, the IPv6 ones. Opened on its own rather than with [`super::PinnedMaps`], so a node pinned by a
//! podnet without this map keeps working until its next `node init` creates it.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use ipnetwork::{Ipv4Network, Ipv6Network};
use podnet_ebpf::abi::{NON_MASQUERADE_PRESENT, map_name};

use super::{PinnedMaps, is_not_found, open};
use crate::datapath::DatapathError;

type Trie = LpmTrie<MapData, [u8; 4], u32>;

fn trie(pin_dir: &Path) -> Result<Trie, DatapathError> {
    open(pin_dir, map_name::NON_MASQUERADE)?
        .try_into()
        .map_err(PinnedMaps::map_err(map_name::NON_MASQUERADE))
}

fn key(net: Ipv4Network) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}

fn entries(trie: &Trie) -> Result<BTreeSet<Ipv4Network>, DatapathError> {
    let mut out = BTreeSet::new();
    for item in trie.keys() {
        let key = item.map_err(PinnedMaps::map_err(map_name::NON_MASQUERADE))?;
        let prefix = u8::try_from(key.prefix_len()).unwrap_or(32);
        if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(key.data()), prefix) {
            out.insert(net);
        }
    }
    Ok(out)
}

/// The exclusions in the map.
pub fn list(pin_dir: &Path) -> Result<Vec<Ipv4Network>, DatapathError> {
    Ok(entries(&trie(pin_dir)?)?.into_iter().collect())
}

/// Makes the map hold exactly `cidrs` (new ones added first, then stale ones removed, so an
/// exclusion kept across the change never lapses).
pub fn replace(pin_dir: &Path, cidrs: &[Ipv4Network]) -> Result<(), DatapathError> {
    let mut trie = trie(pin_dir)?;
    let current = entries(&trie)?;
    let wanted: BTreeSet<Ipv4Network> = cidrs
        .iter()
        .map(|c| Ipv4Network::new(c.network(), c.prefix()).unwrap_or(*c))
        .collect();
    for net in wanted.difference(&current) {
        trie.insert(&key(*net), NON_MASQUERADE_PRESENT, 0)
            .map_err(PinnedMaps::map_err(map_name::NON_MASQUERADE))?;
    }
    for net in current.difference(&wanted) {
        match trie.remove(&key(*net)) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(source) => return Err(PinnedMaps::map_err(map_name::NON_MASQUERADE)(source)),
        }
    }
    Ok(())
}

type Trie6 = LpmTrie<MapData, [u8; 16], u32>;

fn key6(net: Ipv6Network) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}

/// Makes `NON_MASQUERADE6` hold exactly `cidrs` (added first, then stale ones removed).
pub fn replace6(pin_dir: &Path, cidrs: &[Ipv6Network]) -> Result<(), DatapathError> {
    let name = map_name::NON_MASQUERADE6;
    let mut trie: Trie6 = open(pin_dir, name)?
        .try_into()
        .map_err(PinnedMaps::map_err(name))?;
    let mut current = BTreeSet::new();
    for item in trie.keys() {
        let key = item.map_err(PinnedMaps::map_err(name))?;
        let prefix = u8::try_from(key.prefix_len()).unwrap_or(128);
        if let Ok(net) = Ipv6Network::new(Ipv6Addr::from(key.data()), prefix) {
            current.insert(net);
        }
    }
    let wanted: BTreeSet<Ipv6Network> = cidrs
        .iter()
        .map(|c| Ipv6Network::new(c.network(), c.prefix()).unwrap_or(*c))
        .collect();
    for net in wanted.difference(&current) {
        trie.insert(&key6(*net), NON_MASQUERADE_PRESENT, 0)
            .map_err(PinnedMaps::map_err(name))?;
    }
    for net in current.difference(&wanted) {
        match trie.remove(&key6(*net)) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(source) => return Err(PinnedMaps::map_err(name)(source)),
        }
    }
    Ok(())
}
