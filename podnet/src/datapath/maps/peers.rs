//! `PEERS`: other nodes' pod CIDRs (LPM) -> their node IP.

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{Peer, map_name};

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
}
