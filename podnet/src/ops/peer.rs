//! The other nodes of the cluster: each with a name, a node IP and a pod CIDR carved from the
//! cluster CIDR. `node init --cluster FILE` reads a cluster description; `node peer add|del|list`
//! changes it live. Every peer is a `PEERS` LPM entry (pod CIDR -> node IP) that the programs
//! use to send a pod's packet to another node's pod straight to that node (native routing).
//! The records (`<state_dir>/peers.json`) are the source of truth; the map follows them.

use std::{net::Ipv4Addr, path::Path};

use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{VXLAN_VNI, peer_flag};

use super::{
    Ctx,
    error::{Error, Result},
};
use crate::{
    config::{NodeSettings, RoutingMode},
    model::peer::{ClusterFile, PeerNode},
    store,
    sys::link::LinkError,
};

/// The node's peers, by name.
pub fn list(ctx: &Ctx) -> Result<Vec<PeerNode>> {
    Ok(store::peers::load(&ctx.settings.state_dir)?)
}

/// Checks `peer` against the node itself and the other peers.
fn check(settings: &NodeSettings, peer: &PeerNode, others: &[PeerNode]) -> Result<()> {
    let name = peer.name.clone();
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid_name {
        return Err(Error::PeerName { name });
    }
    check_addresses(settings, peer, others)
}

/// Checks `peer`'s addresses (both families) against the node itself and the other peers, as
/// `node peer add` and a cluster file do (the agent checks Nodes with it; their names are
/// Kubernetes'). Changes nothing.
pub fn check_addresses(
    settings: &NodeSettings,
    peer: &PeerNode,
    others: &[PeerNode],
) -> Result<()> {
    let name = peer.name.clone();
    if peer.pod_cidr.network() != peer.pod_cidr.ip() {
        return Err(Error::PeerHostBits {
            name,
            pod_cidr: peer.pod_cidr,
        });
    }
    let cluster = settings.cluster_cidr;
    if !(cluster.contains(peer.pod_cidr.network()) && cluster.prefix() <= peer.pod_cidr.prefix()) {
        return Err(Error::PeerOutsideCluster {
            name,
            pod_cidr: peer.pod_cidr,
            cluster_cidr: cluster,
        });
    }
    let this = PeerNode {
        name: "this node".to_owned(),
        node_ip: settings.node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        pod_cidr: settings.pod_cidr,
        pod_cidr6: settings.pod_cidr6,
        node_ip6: settings.node_ip6,
    };
    for other in others.iter().chain([&this]) {
        let overlap = other.pod_cidr.contains(peer.pod_cidr.network())
            || peer.pod_cidr.contains(other.pod_cidr.network());
        if overlap {
            return Err(Error::PeerOverlap {
                name,
                pod_cidr: peer.pod_cidr,
                other: other.name.clone(),
                other_cidr: other.pod_cidr,
            });
        }
        if other.node_ip == peer.node_ip {
            return Err(Error::PeerDuplicateIp {
                name,
                node_ip: peer.node_ip,
                other: other.name.clone(),
            });
        }
    }
    let mut known = others.to_vec();
    known.push(this);
    super::peer6::check(settings, peer, &known)
}

/// Makes the `PEERS` map hold exactly `peers` (each pod CIDR, and each node IP as a /32
/// marked `NODE_IP`), and the node's routing table a route to each pod CIDR, for the node's own
/// traffic to other nodes' pods (kubelet's probes, host-network pods): `via nodeIP` in native
/// mode; in overlay mode through the VXLAN device, encapsulated to the node IP by the route
/// itself, from this node's IP.
fn sync(ctx: &Ctx, peers: &[PeerNode], before: &[PeerNode]) -> Result<()> {
    super::peer6::sync(ctx, peers, before)?;
    let mut maps = ctx.maps()?;
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
    drop(maps);
    let overlay = match ctx.settings.mode {
        RoutingMode::Native => None,
        RoutingMode::Vxlan => Some((
            ctx.settings.vxlan_device.clone(),
            ctx.settings.node_ip.ok_or_else(|| Error::NotInitialised {
                path: store::node::settings_file(&ctx.settings.state_dir),
            })?,
        )),
    };
    let routes: Vec<(Ipv4Network, Ipv4Addr)> =
        peers.iter().map(|p| (p.pod_cidr, p.node_ip)).collect();
    let gone: Vec<Ipv4Network> = stale.into_iter().filter(|c| c.prefix() < 32).collect();
    ctx.netlink(|nl| async move {
        let routed = async {
            let tunnel = match &overlay {
                Some((dev, node_ip)) => {
                    let link = nl.get(dev).await?.ok_or_else(|| LinkError::NotFound {
                        link: format!("{dev:?}"),
                    })?;
                    Some((link.index, *node_ip))
                }
                None => None,
            };
            for (dst, via) in routes {
                match tunnel {
                    Some((dev, src)) => {
                        nl.replace_encap_route(dst, dev, VXLAN_VNI, via, src)
                            .await?;
                    }
                    None => nl.replace_route(dst, via).await?,
                }
            }
            for dst in gone {
                nl.delete_route(dst).await?;
            }
            Ok(())
        };
        routed.await.map_err(Error::PeerRoutes)
    })
}

/// `node peer add`.
pub fn add(ctx: &Ctx, peer: PeerNode) -> Result<PeerNode> {
    let _lock = store::peers::lock(&ctx.settings.state_dir)?;
    let mut peers = list(ctx)?;
    if peers.iter().any(|p| p.name == peer.name) {
        return Err(Error::PeerExists { name: peer.name });
    }
    check(&ctx.settings, &peer, &peers)?;
    let before = peers.clone();
    peers.push(peer.clone());
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    sync(ctx, &peers, &before)?;
    store::peers::save(&ctx.settings.state_dir, &peers)?;
    Ok(peer)
}

/// `node peer del`.
pub fn del(ctx: &Ctx, name: &str) -> Result<PeerNode> {
    let _lock = store::peers::lock(&ctx.settings.state_dir)?;
    let mut peers = list(ctx)?;
    let index = peers
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| Error::PeerNotFound {
            name: name.to_owned(),
        })?;
    let before = peers.clone();
    let gone = peers.remove(index);
    sync(ctx, &peers, &before)?;
    store::peers::save(&ctx.settings.state_dir, &peers)?;
    Ok(gone)
}

/// Reads and checks a cluster file: every node but this one (recognised by its node IP)
/// becomes a peer. Nothing is changed.
pub fn read_cluster(settings: &NodeSettings, path: &Path) -> Result<Vec<PeerNode>> {
    let err = |msg: String| Error::ClusterFile {
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
            if node.pod_cidr6.is_some() && node.pod_cidr6 != settings.pod_cidr6 {
                return Err(err(format!(
                    "this node ({}) is listed with IPv6 pod CIDR {}, but runs with {}",
                    node.node_ip,
                    node.pod_cidr6.map_or_else(String::new, |c| c.to_string()),
                    settings
                        .pod_cidr6
                        .map_or_else(|| "none".to_owned(), |c| c.to_string())
                )));
            }
            continue;
        }
        if peers.iter().any(|p| p.name == node.name) {
            return Err(Error::PeerExists { name: node.name });
        }
        check(settings, &node, &peers)?;
        peers.push(node);
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(peers)
}

/// Replaces the peers with `peers` (from a cluster file at `node init`).
pub fn replace(ctx: &Ctx, mut peers: Vec<PeerNode>) -> Result<()> {
    let _lock = store::peers::lock(&ctx.settings.state_dir)?;
    let before = list(ctx)?;
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    sync(ctx, &peers, &before)?;
    store::peers::save(&ctx.settings.state_dir, &peers)?;
    Ok(())
}

/// Re-fills the map from the records (after `node init` re-created it).
pub fn restore(ctx: &Ctx) -> Result<()> {
    let _lock = store::peers::lock(&ctx.settings.state_dir)?;
    let peers = list(ctx)?;
    sync(ctx, &peers, &peers)
}

/// Forgets every peer (`node reset`): their routes go from the node's routing table (the map
/// goes with the pins), and the records with them. Returns how many routes were removed.
pub fn clear(ctx: &Ctx) -> Result<usize> {
    let peers = list(ctx)?;
    let routes: Vec<Ipv4Network> = peers.iter().map(|p| p.pod_cidr).collect();
    let removed6 = super::peer6::clear(ctx, &peers)?;
    let removed = ctx.netlink(|nl| async move {
        let mut removed = 0;
        for dst in routes {
            if nl.delete_route(dst).await.map_err(Error::PeerRoutes)? {
                removed += 1;
            }
        }
        Ok(removed)
    })?;
    store::peers::clear(&ctx.settings.state_dir)?;
    Ok(removed + removed6)
}
