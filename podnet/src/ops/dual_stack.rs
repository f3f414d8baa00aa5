//! The IPv6 half of a dual-stack node and its pods: the node's IPv6 address and gateway, IPv6
//! forwarding, the IPv6 address pool, and a pod's IPv6 address and default route.
//!
//! IPv6 goes through the kernel: the programs pass every IPv6 packet unchanged, so a pod's IPv6
//! traffic is switched by the bridge and routed by the node. The design mirrors IPv4's slow
//! path: the bridge carries the first address of the IPv6 pod CIDR (the pods' gateway) with
//! the CIDR's prefix, so the node has a connected route to every pod and resolves pods (and
//! pods resolve the gateway) by Neighbor Discovery across the bridge; no per-pod route or
//! proxy-NDP is needed. Nothing of IPv6 is in the maps (endpoints stay IPv4).

use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;

use super::{
    Ctx,
    error::{Error, Result},
};
use crate::{
    config::NodeSettings,
    model::names,
    store::{self, ipam::Ipam6},
    sys::link::{self, Netlink},
};

/// The node's IPv6 pool over its IPv6 pod CIDR, excluding the gateway; `None` on an IPv4-only
/// node. It shares the IPv4 pool's directory and lock.
pub fn ipam6(settings: &NodeSettings) -> Result<Option<Ipam6>> {
    let (Some(cidr), Some(gateway)) = (settings.pod_cidr6, settings.gateway6()) else {
        return Ok(None);
    };
    Ok(Some(Ipam6::new(settings.ipam_dir(), cidr, gateway)?))
}

/// The node's IPv6 address at `node init`: as given; else, on a dual-stack node, the uplink's
/// first global IPv6 address, if it has one (without one, peers cannot route IPv6 pod CIDRs
/// here, but pods still reach the outside through the node).
pub fn node_ip6(ctx: &Ctx, uplink_index: u32) -> Result<Option<Ipv6Addr>> {
    let settings = &ctx.settings;
    if settings.node_ip6.is_some() || settings.pod_cidr6.is_none() {
        return Ok(settings.node_ip6);
    }
    ctx.netlink(|nl| async move {
        Ok(nl
            .addresses6(uplink_index)
            .await?
            .first()
            .map(ipnetwork::Ipv6Network::ip))
    })
}

/// A node with pods keeps its IPv6 pod CIDR: their addresses come from it.
pub fn refuse_pod_cidr6_change(settings: &NodeSettings) -> Result<()> {
    if let Some(current) = store::node::load(&settings.state_dir)?
        && current.pod_cidr6 != settings.pod_cidr6
    {
        let pods = store::pods::list(&current.state_dir)?.len();
        if pods > 0 {
            let show =
                |c: Option<Ipv6Network>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
            return Err(Error::PodCidr6InUse {
                current: show(current.pod_cidr6),
                requested: show(settings.pod_cidr6),
                pods,
            });
        }
    }
    Ok(())
}

/// On a dual-stack node: the IPv6 gateway on the bridge (`bridge_index`) and IPv6 forwarding
/// on, in the node's namespace (this thread's). An IPv4-only node is left as it was.
pub fn plumb(ctx: &Ctx, bridge_index: u32) -> Result<()> {
    let (Some(cidr), Some(gateway)) = (ctx.settings.pod_cidr6, ctx.settings.gateway6()) else {
        return Ok(());
    };
    let gateway =
        Ipv6Network::new(gateway, cidr.prefix()).expect("the prefix comes from a valid network");
    ctx.netlink(|nl| async move { Ok(nl.ensure_address6(bridge_index, gateway).await?) })?;
    link::enable_ipv6_forwarding()?;
    Ok(())
}

/// A pod's IPv6 side: its address (with the pod CIDR's prefix) and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodV6 {
    pub address: Ipv6Network,
    pub gateway: Ipv6Addr,
}

/// Reserves pod `name`'s IPv6 address, if the node is dual-stack.
pub fn allocate(settings: &NodeSettings, name: &str) -> Result<Option<PodV6>> {
    let (Some(pool), Some(cidr)) = (ipam6(settings)?, settings.pod_cidr6) else {
        return Ok(None);
    };
    let ip = pool.allocate(&names::pod_owner(name))?;
    Ok(Some(PodV6 {
        address: Ipv6Network::new(ip, cidr.prefix()).expect("prefix is valid"),
        gateway: pool.gateway(),
    }))
}

/// Inside the pod, on interface `index` (before it is up): the IPv6 address.
pub async fn add_address(nl: &Netlink, index: u32, v6: PodV6) -> Result<(), link::LinkError> {
    nl.ensure_address6(index, v6.address).await
}

/// Inside the pod, once the interface is up (the gateway is on-link through the address's
/// prefix route): the IPv6 default route.
pub async fn add_default_route(nl: &Netlink, v6: PodV6) -> Result<(), link::LinkError> {
    nl.ensure_default_route6(v6.gateway).await
}

/// Every IPv6 address pod `name` holds (its own IPAM owner) and the one its record names.
pub fn held(
    settings: &NodeSettings,
    name: &str,
    recorded: Option<Ipv6Network>,
) -> Result<Vec<Ipv6Addr>> {
    let owner = names::pod_owner(name);
    let mut held: Vec<Ipv6Addr> = match ipam6(settings)? {
        Some(pool) => pool
            .list()?
            .into_iter()
            .filter(|a| a.owner == owner)
            .map(|a| a.ip)
            .collect(),
        None => Vec::new(),
    };
    held.extend(recorded.map(|a| a.ip()));
    held.sort();
    held.dedup();
    Ok(held)
}

/// Forgets what the node learnt of a deleted pod on the bridge: the neighbour entries of its
/// IPv6 addresses `addrs`, and every entry (ARP and ND, link-local ones too) with its MAC
/// `mac`, so a later pod given the same address is resolved afresh and nothing of the pod is
/// left. Tolerates a missing bridge or entry.
pub fn forget_neighbours(ctx: &Ctx, addrs: Vec<Ipv6Addr>, mac: Option<[u8; 6]>) -> Result<()> {
    if addrs.is_empty() && mac.is_none() {
        return Ok(());
    }
    let bridge = ctx.settings.bridge.clone();
    ctx.netlink(|nl| async move {
        if let Some(br) = nl.get(&bridge).await? {
            for ip in addrs {
                nl.delete_neighbour6(br.index, ip).await?;
            }
            if let Some(mac) = mac {
                nl.delete_neighbours_of(br.index, mac).await?;
            }
        }
        Ok(())
    })
}

/// Releases pod `name`'s IPv6 addresses; returns them.
pub fn release(settings: &NodeSettings, name: &str) -> Result<Vec<Ipv6Addr>> {
    match ipam6(settings)? {
        Some(pool) => Ok(pool.release_owner(&names::pod_owner(name))?),
        None => Ok(Vec::new()),
    }
}

/// Pod names that hold an IPv6 address (for leftovers of killed adds).
pub fn owners(settings: &NodeSettings) -> Result<Vec<String>> {
    Ok(match ipam6(settings)? {
        Some(pool) => pool.list()?.into_iter().map(|a| a.owner).collect(),
        None => Vec::new(),
    })
}

/// How many IPv6 addresses are allocated.
pub fn allocated(settings: &NodeSettings) -> Result<usize> {
    Ok(match ipam6(settings)? {
        Some(pool) => pool.list()?.len(),
        None => 0,
    })
}

/// Removes crash leftovers of the IPv6 pool (the IPv4 pool removes the shared temporary files
/// too; this adds torn IPv6 records).
pub fn remove_leftovers(settings: &NodeSettings) -> Result<usize> {
    Ok(match ipam6(settings)? {
        Some(pool) => pool.remove_leftovers()?,
        None => 0,
    })
}
