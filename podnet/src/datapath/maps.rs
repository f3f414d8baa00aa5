//! Typed access to a node's pinned maps. Every key and value type comes from
//! `podnet_ebpf::abi`, the same definitions the kernel programs are compiled with.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{
    CT_USAGE_COLLECTOR, CT_USAGE_PROGRAMS, Counter, CtEntry, CtKey, CtUsage, Endpoint, EndpointKey,
    NodeConfig, Peer, STATS_SLOTS, map_name, reason,
};

use super::DatapathError;

/// The node's maps, opened from their pins.
pub struct PinnedMaps {
    pub config: Array<MapData, NodeConfig>,
    pub endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub conntrack: HashMap<MapData, CtKey, CtEntry>,
    pub ct_usage: Array<MapData, CtUsage>,
    pub peers: LpmTrie<MapData, [u8; 4], Peer>,
}

fn open(pin_dir: &Path, name: &str) -> Result<Map, DatapathError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(DatapathError::NotInitialised {
            path: pin_dir.to_path_buf(),
        });
    }
    let err = |source| DatapathError::Map {
        name: name.to_owned(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    Map::from_map_data(data).map_err(err)
}

macro_rules! typed {
    ($pin_dir:expr, $name:expr) => {
        open($pin_dir, $name)?
            .try_into()
            .map_err(|source| DatapathError::Map {
                name: $name.to_owned(),
                source,
            })?
    };
}

/// One endpoint as userspace reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointEntry {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub mac: String,
    pub flags: u32,
    pub netns_ino: u64,
}

/// A counter summed over all CPUs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReasonCount {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            config: typed!(pin_dir, map_name::CONFIG),
            endpoints: typed!(pin_dir, map_name::ENDPOINTS),
            stats: typed!(pin_dir, map_name::STATS),
            conntrack: typed!(pin_dir, map_name::CONNTRACK),
            ct_usage: typed!(pin_dir, map_name::CT_USAGE),
            peers: typed!(pin_dir, map_name::PEERS),
        })
    }

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

    /// Usage as the programs and the collector recorded it: `(programs, collector)`.
    pub fn ct_usage(&self) -> Result<(CtUsage, CtUsage), DatapathError> {
        let get = |slot| {
            self.ct_usage
                .get(&slot, 0)
                .map_err(Self::map_err(map_name::CT_USAGE))
        };
        Ok((get(CT_USAGE_PROGRAMS)?, get(CT_USAGE_COLLECTOR)?))
    }

    /// Adds `n` to the collector's removed count. Only the collector writes this slot.
    pub fn ct_collected(&mut self, n: u64) -> Result<(), DatapathError> {
        let (_, mut collector) = self.ct_usage()?;
        collector.removed += n;
        self.ct_usage
            .set(CT_USAGE_COLLECTOR, collector, 0)
            .map_err(Self::map_err(map_name::CT_USAGE))
    }

    /// Every conntrack entry. Entries that vanish during the walk are skipped.
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.conntrack.iter() {
            match item {
                Ok(pair) => out.push(pair),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(Self::map_err(map_name::CONNTRACK)(source)),
            }
        }
        Ok(out)
    }

    /// Removes a conntrack entry; `Ok(false)` if it was already gone.
    pub fn ct_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        match self.conntrack.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::CONNTRACK)(source)),
        }
    }

    pub(crate) fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> DatapathError + '_ {
        move |source| DatapathError::Map {
            name: name.to_owned(),
            source,
        }
    }

    pub fn config(&self) -> Result<NodeConfig, DatapathError> {
        self.config
            .get(&0, 0)
            .map_err(Self::map_err(map_name::CONFIG))
    }

    pub fn set_config(&mut self, config: &NodeConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(Self::map_err(map_name::CONFIG))
    }

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

    /// Every named reason's counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<ReasonCount>, DatapathError> {
        const _: () = assert!(reason::COUNT <= STATS_SLOTS);
        let mut out = Vec::with_capacity(reason::NAMES.len());
        for (index, name) in (0u32..).zip(reason::NAMES) {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(Self::map_err(map_name::STATS))?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            out.push(ReasonCount {
                reason: name,
                packets,
                bytes,
            });
        }
        Ok(out)
    }
}

pub(crate) fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Paths of every map pin under `pin_dir`.
pub fn map_pins(pin_dir: &Path) -> Vec<PathBuf> {
    map_name::ALL
        .iter()
        .map(|name| pin_dir.join(name))
        .collect()
}

/// The `CONFIG` entry in readable form.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigView {
    pub abi_version: u32,
    pub ready: bool,
    pub node_ip: Ipv4Addr,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: String,
    pub pod_cidr: String,
    pub cluster_cidr: String,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    pub snat_ports: String,
    pub anti_spoof: bool,
    pub ct_limit: u32,
    pub ct_timeouts: podnet_ebpf::abi::CtTimeouts,
    pub netns_cookie: u64,
    pub service_cidr: Option<String>,
    pub socket_lb: bool,
}

impl From<NodeConfig> for ConfigView {
    fn from(config: NodeConfig) -> Self {
        let NodeConfig {
            abi_version,
            flags,
            node_ip,
            gateway_ip,
            pod_cidr,
            pod_prefix_len,
            cluster_prefix_len,
            _pad0: _,
            cluster_cidr,
            gateway_mac,
            _pad1: _,
            uplink_ifindex,
            bridge_ifindex,
            snat_port_min,
            snat_port_max,
            ct_limit,
            ct_timeouts,
            tunnel_ifindex: _,
            netns_cookie,
            service_cidr,
            service_prefix_len,
            _pad2: _,
        } = config;
        Self {
            abi_version,
            ready: flags & podnet_ebpf::abi::config_flag::READY != 0,
            node_ip: node_ip.into(),
            gateway_ip: gateway_ip.into(),
            gateway_mac: format_mac(&gateway_mac),
            pod_cidr: format!("{}/{pod_prefix_len}", Ipv4Addr::from(pod_cidr)),
            cluster_cidr: format!("{}/{cluster_prefix_len}", Ipv4Addr::from(cluster_cidr)),
            uplink_ifindex,
            bridge_ifindex,
            snat_ports: format!("{snat_port_min}-{snat_port_max}"),
            anti_spoof: flags & podnet_ebpf::abi::config_flag::ANTI_SPOOF != 0,
            ct_limit,
            ct_timeouts,
            netns_cookie,
            service_cidr: (service_prefix_len != 0)
                .then(|| format!("{}/{service_prefix_len}", Ipv4Addr::from(service_cidr))),
            socket_lb: flags & podnet_ebpf::abi::config_flag::SOCKET_LB != 0,
        }
    }
}

impl std::fmt::Display for ConfigView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "abi v{} ready={} node_ip={} gateway={} ({}) pod_cidr={} cluster_cidr={} uplink_ifindex={} bridge_ifindex={} snat_ports={} ct_limit={}",
            self.abi_version,
            self.ready,
            self.node_ip,
            self.gateway_ip,
            self.gateway_mac,
            self.pod_cidr,
            self.cluster_cidr,
            self.uplink_ifindex,
            self.bridge_ifindex,
            self.snat_ports,
            self.ct_limit
        )
    }
}
