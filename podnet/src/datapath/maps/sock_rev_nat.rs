//! `SOCK_REV_NAT`: which frontend a socket balanced at the socket level asked for, by socket
//! cookie and backend. Read to tell a socket the balancer connected to a backend from one that
//! connected to the backend's address itself, and cleaned when such a socket is destroyed.

use std::path::Path;

use aya::maps::{HashMap, MapData};
use podnet_ebpf::abi::{SockRevNat, SockRevNatKey, map_name};

use super::{PinnedMaps, is_not_found, open};
use crate::datapath::{DatapathError, batch};

/// The node's `SOCK_REV_NAT` LRU, opened from its pin.
pub struct SockRevNatMap {
    map: HashMap<MapData, SockRevNatKey, SockRevNat>,
}

impl SockRevNatMap {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let map = open(pin_dir, map_name::SOCK_REV_NAT)?
            .try_into()
            .map_err(PinnedMaps::map_err(map_name::SOCK_REV_NAT))?;
        Ok(Self { map })
    }

    /// The frontend socket `cookie` asked for when it was sent to `addr:port`, if remembered.
    pub fn get(&self, key: &SockRevNatKey) -> Result<Option<SockRevNat>, DatapathError> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(PinnedMaps::map_err(map_name::SOCK_REV_NAT)(e)),
        }
    }

    /// Every entry, read in batches (one entry at a time on a kernel without batch lookups).
    pub fn entries(&self) -> Result<Vec<(SockRevNatKey, SockRevNat)>, DatapathError> {
        use std::os::fd::AsFd as _;

        use aya::maps::IterableMap as _;
        match batch::lookup_all(self.map.map().fd().as_fd(), map_name::SOCK_REV_NAT) {
            Err(DatapathError::Io { source, .. }) if batch::unsupported(&source) => self
                .map
                .iter()
                .filter(|item| !matches!(item, Err(aya::maps::MapError::KeyNotFound)))
                .collect::<Result<_, _>>()
                .map_err(PinnedMaps::map_err(map_name::SOCK_REV_NAT)),
            read => read,
        }
    }

    /// Forgets an entry; `Ok(false)` when it was already gone.
    pub fn remove(&mut self, key: &SockRevNatKey) -> Result<bool, DatapathError> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(PinnedMaps::map_err(map_name::SOCK_REV_NAT)(e)),
        }
    }
}
