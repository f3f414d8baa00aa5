//! `ENDPOINTS` and `ENDPOINTS6`: local pod addresses (IPv4, IPv6) -> host veth, MAC and
//! namespace.

use std::net::{Ipv4Addr, Ipv6Addr};

use podnet_ebpf::abi::{Endpoint, EndpointKey, EndpointKey6, map_name};

use super::{PinnedMaps, format_mac, is_not_found};
use crate::datapath::DatapathError;

/// One endpoint as userspace reports it, by IPv4 (or, as [`Endpoint6Entry`], IPv6) address.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointEntry<A = Ipv4Addr> {
    pub ip: A,
    pub ifindex: u32,
    pub mac: String,
    pub flags: u32,
    pub netns_ino: u64,
}

/// One IPv6 endpoint as userspace reports it.
pub type Endpoint6Entry = EndpointEntry<Ipv6Addr>;

impl<A> EndpointEntry<A> {
    fn new(ip: A, ep: Endpoint) -> Self {
        let Endpoint {
            ifindex,
            flags,
            mac,
            _pad0: _,
            netns_ino,
        } = ep;
        Self {
            ip,
            ifindex,
            mac: format_mac(&mac),
            flags,
            netns_ino,
        }
    }
}

impl PinnedMaps {
    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, ep: &Endpoint) -> Result<(), DatapathError> {
        let key = EndpointKey { addr: ip.octets() };
        self.endpoints
            .insert(key, ep, 0)
            .map_err(Self::map_err(map_name::ENDPOINTS))
    }

    /// Removes the endpoint; `Ok(false)` if there was none.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, DatapathError> {
        let key = EndpointKey { addr: ip.octets() };
        match self.endpoints.remove(&key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::ENDPOINTS)(source)),
        }
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<Endpoint>, DatapathError> {
        let key = EndpointKey { addr: ip.octets() };
        match self.endpoints.get(&key, 0) {
            Ok(ep) => Ok(Some(ep)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Self::map_err(map_name::ENDPOINTS)(source)),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointEntry>, DatapathError> {
        let mut out = Vec::new();
        for item in self.endpoints.iter() {
            let (key, ep) = item.map_err(Self::map_err(map_name::ENDPOINTS))?;
            out.push(EndpointEntry::new(Ipv4Addr::from(key.addr), ep));
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }
}

/// `ENDPOINTS6`: the same, by IPv6 address.
impl PinnedMaps {
    pub fn upsert_endpoint6(&mut self, ip: Ipv6Addr, ep: &Endpoint) -> Result<(), DatapathError> {
        let key = EndpointKey6 { addr: ip.octets() };
        self.endpoints6
            .insert(key, ep, 0)
            .map_err(Self::map_err(map_name::ENDPOINTS6))
    }

    /// Removes the IPv6 endpoint; `Ok(false)` if there was none.
    pub fn remove_endpoint6(&mut self, ip: Ipv6Addr) -> Result<bool, DatapathError> {
        let key = EndpointKey6 { addr: ip.octets() };
        match self.endpoints6.remove(&key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::ENDPOINTS6)(source)),
        }
    }

    pub fn endpoint6(&self, ip: Ipv6Addr) -> Result<Option<Endpoint>, DatapathError> {
        let key = EndpointKey6 { addr: ip.octets() };
        match self.endpoints6.get(&key, 0) {
            Ok(ep) => Ok(Some(ep)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Self::map_err(map_name::ENDPOINTS6)(source)),
        }
    }

    pub fn endpoints6(&self) -> Result<Vec<Endpoint6Entry>, DatapathError> {
        let mut out = Vec::new();
        for item in self.endpoints6.iter() {
            let (key, ep) = item.map_err(Self::map_err(map_name::ENDPOINTS6))?;
            out.push(EndpointEntry::new(Ipv6Addr::from(key.addr), ep));
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }
}
