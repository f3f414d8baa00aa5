//! Typed access to a node's pinned maps, one module per map (its accessors and readable
//! forms). Every key and value type comes from `podnet_ebpf::abi`, the same definitions the
//! kernel programs are compiled with. A command opens the maps once ([`PinnedMaps::open`]) and
//! passes them down.

mod config;
mod conntrack;
mod endpoints;
pub mod non_masquerade;
mod peers;
mod sock_rev_nat;
mod stats;

pub use config::ConfigView;
pub use conntrack::{CtEntries, CtFamily};
pub use endpoints::{Endpoint6Entry, EndpointEntry};
pub use sock_rev_nat::{SockRevNatEntry, SockRevNatMap};
pub use stats::ReasonCount;

use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use podnet_ebpf::abi::{
    Counter, CtEntry, CtEntry6, CtKey, CtKey6, CtUsage, Endpoint, EndpointKey, EndpointKey6,
    NodeConfig, Peer, map_name,
};

use super::DatapathError;

/// The node's maps, opened from their pins.
pub struct PinnedMaps {
    pub config: Array<MapData, NodeConfig>,
    pub endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    pub endpoints6: HashMap<MapData, EndpointKey6, Endpoint>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub conntrack: HashMap<MapData, CtKey, CtEntry>,
    pub conntrack6: HashMap<MapData, CtKey6, CtEntry6>,
    pub ct_usage: Array<MapData, CtUsage>,
    pub peers: LpmTrie<MapData, [u8; 4], Peer>,
}

pub(in crate::datapath) fn open(pin_dir: &Path, name: &str) -> Result<Map, DatapathError> {
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

pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            config: typed!(pin_dir, map_name::CONFIG),
            endpoints: typed!(pin_dir, map_name::ENDPOINTS),
            endpoints6: typed!(pin_dir, map_name::ENDPOINTS6),
            stats: typed!(pin_dir, map_name::STATS),
            conntrack: typed!(pin_dir, map_name::CONNTRACK),
            conntrack6: typed!(pin_dir, map_name::CONNTRACK6),
            ct_usage: typed!(pin_dir, map_name::CT_USAGE),
            peers: typed!(pin_dir, map_name::PEERS),
        })
    }

    pub(in crate::datapath) fn map_err(
        name: &str,
    ) -> impl FnOnce(aya::maps::MapError) -> DatapathError + '_ {
        move |source| DatapathError::Map {
            name: name.to_owned(),
            source,
        }
    }
}

pub(in crate::datapath) fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
