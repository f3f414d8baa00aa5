//! `SOCK_REV_NAT` and `SOCK_REV_NAT6`: which frontend a socket balanced at the socket level
//! asked for, by socket cookie and backend. Read to tell a socket the balancer connected to a
//! backend from one that connected to the backend's address itself, and cleaned when such a
//! socket is destroyed. Both families behind one interface of socket addresses: an IPv4
//! backend (an IPv4-mapped one given as IPv4) is in `SOCK_REV_NAT`, an IPv6 one in
//! `SOCK_REV_NAT6`.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use podnet_ebpf::abi::{SockRevNat, SockRevNat6, SockRevNatKey, SockRevNatKey6, map_name};

use super::{PinnedMaps, is_not_found, open};
use crate::datapath::{DatapathError, batch};

/// The node's `SOCK_REV_NAT` and `SOCK_REV_NAT6` LRUs, opened from their pins.
pub struct SockRevNatMap {
    map: HashMap<MapData, SockRevNatKey, SockRevNat>,
    map6: HashMap<MapData, SockRevNatKey6, SockRevNat6>,
}

/// One remembered translation: the socket's cookie, the backend it was sent to, the frontend
/// it asked for.
pub type SockRevNatEntry = (u64, SocketAddr, SocketAddr);

fn key(cookie: u64, backend: SocketAddr) -> Result<SockRevNatKey, SockRevNatKey6> {
    match backend.ip().to_canonical() {
        IpAddr::V4(addr) => Ok(SockRevNatKey {
            cookie,
            addr: addr.octets(),
            port: backend.port(),
            _pad: [0; 2],
        }),
        IpAddr::V6(addr) => Err(SockRevNatKey6 {
            cookie,
            addr: addr.octets(),
            port: backend.port(),
            _pad: [0; 6],
        }),
    }
}

fn got<V>(
    read: Result<V, aya::maps::MapError>,
    name: &'static str,
) -> Result<Option<V>, DatapathError> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(PinnedMaps::map_err(name)(e)),
    }
}

/// Every entry of `map`, read in batches (one entry at a time on a kernel without batch
/// lookups).
fn all<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DatapathError> {
    use std::os::fd::AsFd as _;

    use aya::maps::IterableMap as _;
    match batch::lookup_all(map.map().fd().as_fd(), name) {
        Err(DatapathError::Io { source, .. }) if batch::unsupported(&source) => map
            .iter()
            .filter(|item| !matches!(item, Err(aya::maps::MapError::KeyNotFound)))
            .collect::<Result<_, _>>()
            .map_err(PinnedMaps::map_err(name)),
        read => read,
    }
}

impl SockRevNatMap {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let map = open(pin_dir, map_name::SOCK_REV_NAT)?
            .try_into()
            .map_err(PinnedMaps::map_err(map_name::SOCK_REV_NAT))?;
        let map6 = open(pin_dir, map_name::SOCK_REV_NAT6)?
            .try_into()
            .map_err(PinnedMaps::map_err(map_name::SOCK_REV_NAT6))?;
        Ok(Self { map, map6 })
    }

    /// The frontend socket `cookie` asked for when it was sent to `backend`, if remembered.
    pub fn get(
        &self,
        cookie: u64,
        backend: SocketAddr,
    ) -> Result<Option<SocketAddr>, DatapathError> {
        Ok(match key(cookie, backend) {
            Ok(k) => got(self.map.get(&k, 0), map_name::SOCK_REV_NAT)?
                .map(|f| SocketAddr::new(IpAddr::from(f.addr), f.port)),
            Err(k) => got(self.map6.get(&k, 0), map_name::SOCK_REV_NAT6)?
                .map(|f| SocketAddr::new(IpAddr::from(f.addr), f.port)),
        })
    }

    /// Every entry of both maps.
    pub fn entries(&self) -> Result<Vec<SockRevNatEntry>, DatapathError> {
        let v4 = all(&self.map, map_name::SOCK_REV_NAT)?
            .into_iter()
            .map(|(k, f)| {
                (
                    k.cookie,
                    SocketAddr::new(IpAddr::from(k.addr), k.port),
                    SocketAddr::new(IpAddr::from(f.addr), f.port),
                )
            });
        let v6 = all(&self.map6, map_name::SOCK_REV_NAT6)?
            .into_iter()
            .map(|(k, f)| {
                (
                    k.cookie,
                    SocketAddr::new(IpAddr::from(k.addr), k.port),
                    SocketAddr::new(IpAddr::from(f.addr), f.port),
                )
            });
        Ok(v4.chain(v6).collect())
    }

    /// Forgets an entry; `Ok(false)` when it was already gone.
    pub fn remove(&mut self, cookie: u64, backend: SocketAddr) -> Result<bool, DatapathError> {
        let (removed, name) = match key(cookie, backend) {
            Ok(k) => (self.map.remove(&k), map_name::SOCK_REV_NAT),
            Err(k) => (self.map6.remove(&k), map_name::SOCK_REV_NAT6),
        };
        Ok(got(removed, name)?.is_some())
    }
}
