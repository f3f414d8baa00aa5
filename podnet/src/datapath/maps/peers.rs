//! `PEERS`: other nodes' pod CIDRs (LPM) -> their node IP; `PEERS6`: their IPv6 pod CIDRs and
//! IPv6 node addresses (LPM) -> the node's addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use ipnetwork::{Ipv4Network, Ipv6Network};
use podnet_ebpf::abi::{Peer, Peer6, map_name};

use super::{PinnedMaps, is_not_found};
use crate::datapath::DatapathError;

impl PinnedMaps {
    pub fn set_peer(
        &mut self,
        pod_cidr: Ipv4Network,
        node_ip: Ipv4Addr,
        flags: u32,
    ) -> Result<(), DatapathError> {
        let key = Key::new(u32::from(pod_cidr.prefix()), pod_cidr.network().octets());
        let peer = Peer {
            node_ip: node_ip.octets(),
            flags,
        };
        self.peers
            .insert(&key, peer, 0)
            .map_err(Self::map_err(map_name::PEERS))
    }

    pub fn remove_peer(&mut self, pod_cidr: Ipv4Network) -> Result<bool, DatapathError> {
        let key = Key::new(u32::from(pod_cidr.prefix()), pod_cidr.network().octets());
        match self.peers.remove(&key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::PEERS)(source)),
        }
    }

    /// Every peer pod CIDR in the map, with its node IP.
    pub fn peers(&self) -> Result<Vec<(Ipv4Network, Ipv4Addr)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (key, peer) = item.map_err(Self::map_err(map_name::PEERS))?;
            let prefix = u8::try_from(key.prefix_len()).unwrap_or(32);
            if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(key.data()), prefix) {
                out.push((net, Ipv4Addr::from(peer.node_ip)));
            }
        }
        Ok(out)
    }

    /// Sets the `PEERS6` entry of `prefix` (an IPv6 pod CIDR, or a node's IPv6 address as a
    /// /128).
    pub fn set_peer6(&mut self, prefix: Ipv6Network, peer: Peer6) -> Result<(), DatapathError> {
        let key = Key::new(u32::from(prefix.prefix()), prefix.network().octets());
        self.peers6
            .insert(&key, peer, 0)
            .map_err(Self::map_err(map_name::PEERS6))
    }

    pub fn remove_peer6(&mut self, prefix: Ipv6Network) -> Result<bool, DatapathError> {
        let key = Key::new(u32::from(prefix.prefix()), prefix.network().octets());
        match self.peers6.remove(&key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::PEERS6)(source)),
        }
    }

    /// Every prefix in `PEERS6`, with its entry.
    pub fn peers6(&self) -> Result<Vec<(Ipv6Network, Peer6)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.peers6.iter() {
            let (key, peer) = item.map_err(Self::map_err(map_name::PEERS6))?;
            let prefix = u8::try_from(key.prefix_len()).unwrap_or(128);
            if let Ok(net) = Ipv6Network::new(Ipv6Addr::from(key.data()), prefix) {
                out.push((net, peer));
            }
        }
        Ok(out)
    }
}
