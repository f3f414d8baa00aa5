//! `NON_MASQUERADE`: the node's masquerade exclusions (LPM), destinations pods reach with their
//! own address. Opened on its own rather than with [`super::PinnedMaps`], so a node pinned by a
//! podnet without this map keeps working until its next `node init` creates it.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use ipnetwork::Ipv4Network;
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
