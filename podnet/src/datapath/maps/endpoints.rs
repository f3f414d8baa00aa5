//! `ENDPOINTS`: local pod addresses -> host veth, MAC and namespace.

use std::net::Ipv4Addr;

use podnet_ebpf::abi::{Endpoint, EndpointKey, map_name};

use super::{PinnedMaps, format_mac, is_not_found};
use crate::datapath::DatapathError;

/// One endpoint as userspace reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointEntry {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub mac: String,
    pub flags: u32,
    pub netns_ino: u64,
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
            let Endpoint {
                ifindex,
                flags,
                mac,
                _pad0: _,
                netns_ino,
            } = ep;
            out.push(EndpointEntry {
                ip: Ipv4Addr::from(key.addr),
                ifindex,
                mac: format_mac(&mac),
                flags,
                netns_ino,
            });
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }
}
