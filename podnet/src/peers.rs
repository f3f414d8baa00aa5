//! The other nodes of the cluster: each with a name, a node IP and a pod CIDR carved from the
//! cluster CIDR. `node init --cluster FILE` reads a cluster description; `node peer add|del|list`
//! changes it live. Every peer is a `PEERS` LPM entry (pod CIDR -> node IP) that the programs
//! use to send a pod's packet to another node's pod straight to that node (native routing).
//! The records (`<state_dir>/peers.json`) are the source of truth; the map follows them.

use std::{net::Ipv4Addr, path::Path};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use podnet_ebpf::abi::peer_flag;

use crate::{
    datapath::{DatapathError, maps::PinnedMaps},
    node::NodeSettings,
    state::{self, FileLock, StateError},
};

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerNode {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
}

/// A cluster description: every node, this one included (it is recognised by its node IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub nodes: Vec<PeerNode>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {name}: pod CIDR {pod_cidr} is not inside the cluster CIDR {cluster_cidr}")]
    OutsideCluster {
        name: String,
        pod_cidr: Ipv4Network,
        cluster_cidr: Ipv4Network,
    },
    #[error("peer {name}: pod CIDR {pod_cidr} has host bits set")]
    HostBits { name: String, pod_cidr: Ipv4Network },
    #[error("peer {name}: pod CIDR {pod_cidr} overlaps {other}'s {other_cidr}")]
    Overlap {
        name: String,
        pod_cidr: Ipv4Network,
        other: String,
        other_cidr: Ipv4Network,
    },
    #[error("peer {name}: node IP {node_ip} is already node {other}'s")]
    DuplicateIp {
        name: String,
        node_ip: Ipv4Addr,
        other: String,
    },
    #[error("peer {name} already exists (delete it first)")]
    Exists { name: String },
    #[error("no peer named {name}")]
    NotFound { name: String },
    #[error("invalid peer name {name:?}: use 1-63 characters from [A-Za-z0-9_.-]")]
    InvalidName { name: String },
    #[error("reading cluster file {path}: {msg}")]
    ClusterFile { path: String, msg: String },
    #[error("updating the node's routes to other nodes' pods: {0}")]
    Routes(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

fn file(settings: &NodeSettings) -> std::path::PathBuf {
    settings.state_dir.join("peers.json")
}

fn lock(settings: &NodeSettings) -> Result<FileLock, StateError> {
    FileLock::exclusive(&settings.state_dir.join("peers.lock"))
}

/// The node's peers, by name.
pub fn list(settings: &NodeSettings) -> Result<Vec<PeerNode>, PeerError> {
    Ok(state::read_json(&file(settings))?.unwrap_or_default())
}

/// Checks `peer` against the node itself and the other peers.
fn check(settings: &NodeSettings, peer: &PeerNode, others: &[PeerNode]) -> Result<(), PeerError> {
    let name = peer.name.clone();
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid_name {
        return Err(PeerError::InvalidName { name });
    }
    if peer.pod_cidr.network() != peer.pod_cidr.ip() {
        return Err(PeerError::HostBits {
            name,
            pod_cidr: peer.pod_cidr,
        });
    }
    let cluster = settings.cluster_cidr;
    if !(cluster.contains(peer.pod_cidr.network()) && cluster.prefix() <= peer.pod_cidr.prefix()) {
        return Err(PeerError::OutsideCluster {
            name,
            pod_cidr: peer.pod_cidr,
            cluster_cidr: cluster,
        });
    }
    let this = PeerNode {
        name: "this node".to_owned(),
        node_ip: settings.node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        pod_cidr: settings.pod_cidr,
    };
    for other in others.iter().chain([&this]) {
        let overlap = other.pod_cidr.contains(peer.pod_cidr.network())
            || peer.pod_cidr.contains(other.pod_cidr.network());
        if overlap {
            return Err(PeerError::Overlap {
                name,
                pod_cidr: peer.pod_cidr,
                other: other.name.clone(),
                other_cidr: other.pod_cidr,
            });
        }
        if other.node_ip == peer.node_ip {
            return Err(PeerError::DuplicateIp {
                name,
                node_ip: peer.node_ip,
                other: other.name.clone(),
            });
        }
    }
    Ok(())
}

/// Makes the `PEERS` map hold exactly `peers` (each pod CIDR, and each node IP as a /32
/// marked `NODE_IP`), and the node's routing table a route `podCIDR via nodeIP` for each, for
/// the node's own traffic to other nodes' pods.
fn sync(settings: &NodeSettings, peers: &[PeerNode]) -> Result<(), PeerError> {
    let mut maps = PinnedMaps::open(&settings.pin_dir)?;
    let mut wanted = Vec::new();
    for p in peers {
        let host = Ipv4Network::new(p.node_ip, 32).expect("/32 is valid");
        maps.set_peer(p.pod_cidr, p.node_ip, 0)?;
        maps.set_peer(host, p.node_ip, peer_flag::NODE_IP)?;
        wanted.extend([p.pod_cidr, host]);
    }
    let stale: Vec<Ipv4Network> = maps
        .peers()?
        .into_iter()
        .map(|(cidr, _)| cidr)
        .filter(|cidr| !wanted.contains(cidr))
        .collect();
    for cidr in &stale {
        maps.remove_peer(*cidr)?;
    }
    // Kernel routes need the fabric to route pod traffic by node IP: native mode only.
    let native = settings.mode == crate::node::RoutingMode::Native;
    let routes: Vec<(Ipv4Network, Ipv4Addr)> = peers
        .iter()
        .filter(|_| native)
        .map(|p| (p.pod_cidr, p.node_ip))
        .collect();
    let gone: Vec<Ipv4Network> = stale.into_iter().filter(|c| c.prefix() < 32).collect();
    crate::node::with_netlink(|nl| async move {
        for (dst, via) in routes {
            nl.replace_route(dst, via).await?;
        }
        for dst in gone {
            nl.delete_route(dst).await?;
        }
        Ok(())
    })
    .map_err(|e| PeerError::Routes(e.to_string()))
}

/// `node peer add`.
pub fn add(settings: &NodeSettings, peer: PeerNode) -> Result<PeerNode, PeerError> {
    let _lock = lock(settings)?;
    let mut peers = list(settings)?;
    if peers.iter().any(|p| p.name == peer.name) {
        return Err(PeerError::Exists { name: peer.name });
    }
    check(settings, &peer, &peers)?;
    peers.push(peer.clone());
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    sync(settings, &peers)?;
    state::write_json(&file(settings), &peers)?;
    Ok(peer)
}

/// `node peer del`.
pub fn del(settings: &NodeSettings, name: &str) -> Result<PeerNode, PeerError> {
    let _lock = lock(settings)?;
    let mut peers = list(settings)?;
    let index = peers
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| PeerError::NotFound {
            name: name.to_owned(),
        })?;
    let gone = peers.remove(index);
    sync(settings, &peers)?;
    state::write_json(&file(settings), &peers)?;
    Ok(gone)
}

/// Reads and checks a cluster file: every node but this one (recognised by its node IP)
/// becomes a peer. Nothing is changed.
pub fn read_cluster(settings: &NodeSettings, path: &Path) -> Result<Vec<PeerNode>, PeerError> {
    let err = |msg: String| PeerError::ClusterFile {
        path: path.display().to_string(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let cluster: ClusterFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut peers: Vec<PeerNode> = Vec::new();
    for node in cluster.nodes {
        if Some(node.node_ip) == settings.node_ip {
            if node.pod_cidr != settings.pod_cidr {
                return Err(err(format!(
                    "this node ({}) is listed with pod CIDR {}, but runs with {}",
                    node.node_ip, node.pod_cidr, settings.pod_cidr
                )));
            }
            continue;
        }
        if peers.iter().any(|p| p.name == node.name) {
            return Err(PeerError::Exists { name: node.name });
        }
        check(settings, &node, &peers)?;
        peers.push(node);
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(peers)
}

/// Replaces the peers with `peers` (from a cluster file at `node init`).
pub fn replace(settings: &NodeSettings, mut peers: Vec<PeerNode>) -> Result<(), PeerError> {
    let _lock = lock(settings)?;
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    sync(settings, &peers)?;
    state::write_json(&file(settings), &peers)?;
    Ok(())
}

/// Re-fills the map from the records (after `node init` re-created it).
pub fn restore(settings: &NodeSettings) -> Result<(), PeerError> {
    let _lock = lock(settings)?;
    let peers = list(settings)?;
    sync(settings, &peers)
}
