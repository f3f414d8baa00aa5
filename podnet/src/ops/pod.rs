//! Pods on a node: `pod add` gives a namespace its network (veth pair with `eth0` inside, an
//! address from IPAM, default route, the host side plugged into the datapath; on a dual-stack
//! node also an IPv6 address and default route, see [`super::dual_stack`]); `pod del`
//! removes exactly that, and is idempotent; `pod list` reads the records.
//!
//! Crash safety (a `pod add` or `pod del` killed at any point): the pod's address is reserved
//! in IPAM first on add and released last on delete, and its record is written last on add and
//! removed just before the address is released. So a pod with a record is complete, and
//! whatever a killed operation left behind (namespace, veth, filter, endpoint) belongs to an
//! IPAM reservation `pod:NAME` without a record: `pod del NAME` removes it, a repeated
//! `pod add NAME` replaces it, and `podnet gc` finds and removes it (see [`leftovers`]).
//!
//! Every add and delete holds the node lock shared (so they run in parallel with each other);
//! `node init` and `podnet gc` hold it exclusively, so they never see an operation half-done.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnetwork::Ipv4Network;
use serde::Serialize;

use super::{
    Ctx,
    dual_stack::{self, PodV6},
    endpoint,
    error::{Error, Result},
    nodeport,
};
use crate::{
    config::NodeSettings,
    datapath::maps::format_mac,
    model::{
        names::{self, POD_IFNAME},
        pod::PodRecord,
    },
    store::{self, file::FileLock, ipam::Ipam},
    sys::{
        link::{InNetns as _, LinkError},
        netns::Netns,
    },
};

/// The node's IPAM over its pod CIDR, excluding the gateway.
pub fn ipam(settings: &NodeSettings) -> Result<Ipam> {
    Ok(Ipam::new(
        settings.ipam_dir(),
        settings.pod_cidr,
        settings.gateway(),
    )?)
}

/// Adds a pod. With `netns`, the pod joins that existing namespace; without, podnet creates one
/// under the node's `netns_dir`. On failure everything made so far is removed again.
pub fn add(ctx: &Ctx, name: &str, netns: Option<&Path>) -> Result<PodRecord> {
    let lock = store::node::lock_shared(&ctx.settings.state_dir)?;
    add_held(ctx, name, netns, POD_IFNAME, &lock)
}

/// [`add`] for a caller that already holds the node lock (shared or exclusive), naming the
/// pod's interface `ifname` (a CNI runtime chooses it).
pub fn add_held(
    ctx: &Ctx,
    name: &str,
    netns: Option<&Path>,
    ifname: &str,
    _node_lock: &FileLock,
) -> Result<PodRecord> {
    names::validate_pod_name(name)?;
    names::validate_ifname(ifname)?;
    if store::pods::exists(&ctx.settings.state_dir, name) {
        return Err(Error::PodExists {
            name: name.to_owned(),
        });
    }
    // Open a given namespace before allocating anything, so a bad path changes nothing.
    let given = netns.map(Netns::open).transpose()?;
    if let Some(ns) = &given
        && is_node_netns(ns)?
    {
        return Err(Error::NodeNetns {
            path: ns.path().to_path_buf(),
        });
    }
    let result = build(ctx, name, given, ifname);
    if result.is_err() {
        // Best effort: the error being returned matters more than a cleanup failure.
        let _ = teardown(ctx, name, None);
    }
    result
}

/// Whether `ns` is the namespace this thread runs in: the node's (every command enters it
/// first). A pod there would put its address and default route on the node itself.
pub fn is_node_netns(ns: &Netns) -> Result<bool> {
    Ok(Netns::current()?.inode() == ns.inode())
}

fn build(ctx: &Ctx, name: &str, given: Option<Netns>, ifname: &str) -> Result<PodRecord> {
    let settings = &ctx.settings;
    let ip = ipam(settings)?.allocate(&names::pod_owner(name))?;
    let v6 = dual_stack::allocate(settings, name)?;
    let owns_netns = given.is_none();
    let ns = match given {
        Some(ns) => ns,
        None => Netns::create_named(
            &settings.netns_dir,
            &names::default_netns_name(&settings.state_dir, name),
        )?,
    };
    let host_if = names::host_ifname(name);
    let tmp_if = names::peer_tmp_ifname(name);
    let address = Ipv4Network::new(ip, settings.pod_cidr.prefix()).expect("prefix is valid");
    let gateway = settings.gateway();
    let host = make_veth(ctx, &host_if, &tmp_if, &ns)?;
    let mac = configure_pod_side(&ns, tmp_if, ifname.to_owned(), address, gateway, v6)?;
    endpoint::plug(
        ctx,
        &endpoint::Plug {
            host_if: &host_if,
            host_ifindex: host.index,
            ip,
            ip6: v6.map(|v6| v6.address.ip()),
            mac,
            netns: &ns,
        },
    )?;
    let record = PodRecord {
        name: name.to_owned(),
        netns: ns.path().to_path_buf(),
        owns_netns,
        netns_ino: ns.inode(),
        host_if,
        host_ifindex: host.index,
        host_mac: format_mac(&host.mac),
        address,
        gateway,
        address6: v6.map(|v6| v6.address),
        gateway6: v6.map(|v6| v6.gateway),
        mac: format_mac(&mac),
        ifname: ifname.to_owned(),
    };
    store::pods::write(&settings.state_dir, &record)?;
    Ok(record)
}

/// The veth pair, the pod end made directly in `ns` under a temporary name, the host end
/// enslaved to the bridge and up.
fn make_veth(
    ctx: &Ctx,
    host_if: &str,
    tmp_if: &str,
    ns: &Netns,
) -> Result<crate::sys::link::LinkInfo> {
    let (host_if, tmp_if) = (host_if.to_owned(), tmp_if.to_owned());
    let bridge = ctx.settings.bridge.clone();
    let mtu = ctx.settings.mtu;
    let ns = Netns::open(ns.path())?;
    ctx.netlink(|nl| async move {
        // A leftover from a crashed add would make the create fail; it is ours to replace.
        nl.delete(&host_if).await?;
        let host = nl.create_veth(&host_if, &tmp_if, &ns, mtu).await?;
        let bridge = nl
            .get(&bridge)
            .await?
            .ok_or(Error::NoBridge { name: bridge })?;
        nl.set_controller(host.index, bridge.index).await?;
        nl.set_up(host.index).await?;
        Ok(host)
    })
}

/// Inside the pod: the interface renamed, addressed and up, `lo` up, the default route (per
/// family on a dual-stack node). Returns the interface's MAC.
fn configure_pod_side(
    ns: &Netns,
    tmp_if: String,
    ifname: String,
    address: Ipv4Network,
    gateway: Ipv4Addr,
    v6: Option<PodV6>,
) -> Result<[u8; 6]> {
    Ok(ns.run_netlink(move |nl| async move {
        let pod_if = nl.get(&tmp_if).await?.ok_or_else(|| LinkError::NotFound {
            link: tmp_if.clone(),
        })?;
        nl.rename(pod_if.index, &ifname).await?;
        nl.ensure_address(pod_if.index, address).await?;
        if let Some(v6) = v6 {
            dual_stack::add_address(&nl, pod_if.index, v6).await?;
        }
        nl.set_up(pod_if.index).await?;
        if let Some(lo) = nl.get("lo").await? {
            nl.set_up(lo.index).await?;
        }
        nl.ensure_default_route(gateway).await?;
        if let Some(v6) = v6 {
            dual_stack::add_default_route(&nl, v6).await?;
        }
        Ok::<_, LinkError>(pod_if.mac)
    })??)
}

/// What `pod del` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DelReport {
    pub name: String,
    pub existed: bool,
    pub released: Vec<Ipv4Addr>,
    /// IPv6 addresses released (dual-stack nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released6: Vec<Ipv6Addr>,
    pub endpoint_removed: bool,
    /// Backends of NodePorts that were this pod.
    pub nodeport_backends_removed: usize,
    /// Conntrack entries of the pod's flows.
    pub conntrack_entries_removed: u64,
    pub link_removed: bool,
    pub veth_removed: bool,
    pub netns_removed: bool,
}

/// Deletes a pod. Idempotent: deleting a pod that is (partly) gone succeeds.
pub fn del(ctx: &Ctx, name: &str) -> Result<DelReport> {
    let lock = store::node::lock_shared(&ctx.settings.state_dir)?;
    del_held(ctx, name, &lock)
}

/// [`del`] for a caller that already holds the node lock (shared or exclusive).
pub fn del_held(ctx: &Ctx, name: &str, _node_lock: &FileLock) -> Result<DelReport> {
    names::validate_pod_name(name)?;
    let record = store::pods::read(&ctx.settings.state_dir, name)?;
    teardown(ctx, name, record.as_ref())
}

fn teardown(ctx: &Ctx, name: &str, record: Option<&PodRecord>) -> Result<DelReport> {
    let settings = &ctx.settings;
    let mut report = DelReport {
        name: name.to_owned(),
        existed: record.is_some(),
        ..DelReport::default()
    };
    let host_if = names::host_ifname(name);
    let owner = names::pod_owner(name);
    // The record goes first: a pod del killed at any later point leaves an address reserved
    // for a pod without a record, which a repeated del or `podnet gc` finishes, never a
    // record whose endpoint, filter or veth is already gone (which gc would take for a live
    // pod). And it goes before the address, so a record always has its address reserved.
    store::pods::remove(&settings.state_dir, name)?;
    report.nodeport_backends_removed = nodeport::forget_pod(ctx, name)?;
    let ipam = ipam(settings)?;
    let held: Vec<Ipv4Addr> = ipam
        .list()?
        .into_iter()
        .filter(|a| a.owner == owner)
        .map(|a| a.ip)
        .chain(record.map(|r| r.address.ip()))
        .collect();
    let held6 = dual_stack::held(settings, name, record.and_then(|r| r.address6))?;
    let unplugged = endpoint::unplug(ctx, &host_if, &held, &held6)?;
    report.link_removed = unplugged.filter_removed;
    report.endpoint_removed = unplugged.endpoints_removed > 0;
    report.conntrack_entries_removed = unplugged.conntrack_entries_removed;
    report.veth_removed = ctx.netlink(|nl| async move { Ok(nl.delete(&host_if).await?) })?;
    if record.is_none_or(|r| r.owns_netns) {
        report.netns_removed = Netns::delete_named(
            &settings.netns_dir,
            &names::default_netns_name(&settings.state_dir, name),
        )?;
    }
    let mac = record.and_then(|r| parse_mac(&r.mac));
    dual_stack::forget_neighbours(ctx, held6, mac)?;
    report.released6 = dual_stack::release(settings, name)?;
    report.released = ipam.release_owner(&owner)?;
    Ok(report)
}

/// `aa:bb:cc:dd:ee:ff` as bytes (a record's MAC).
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// Pods that a killed `pod add` (or `pod del`) left half-made: an address reserved for
/// `pod:NAME` with no record of NAME. Only meaningful under the node lock held exclusively
/// (otherwise an add in progress looks the same).
pub fn leftovers(ctx: &Ctx, _node_lock: &FileLock) -> Result<Vec<String>> {
    let recorded: Vec<String> = list(ctx)?.into_iter().map(|p| p.name).collect();
    let mut found: Vec<String> = ipam(&ctx.settings)?
        .list()?
        .into_iter()
        .map(|a| a.owner)
        .chain(dual_stack::owners(&ctx.settings)?)
        .filter_map(|owner| names::pod_of_owner(&owner).map(str::to_owned))
        .filter(|name| names::validate_pod_name(name).is_ok() && !recorded.contains(name))
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// Deletes every pod of the node, half-made ones too (`node reset`); returns their names.
pub fn delete_all(ctx: &Ctx, lock: &FileLock) -> Result<Vec<String>> {
    let half_made = leftovers(ctx, lock)?;
    let pods = list(ctx)?.into_iter().map(|pod| pod.name);
    let mut deleted = Vec::new();
    for name in pods.chain(half_made) {
        del_held(ctx, &name, lock)?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// The record of pod `name`, if it exists.
pub fn get(ctx: &Ctx, name: &str) -> Result<Option<PodRecord>> {
    names::validate_pod_name(name)?;
    Ok(store::pods::read(&ctx.settings.state_dir, name)?)
}

/// Every pod on the node, by name.
pub fn list(ctx: &Ctx) -> Result<Vec<PodRecord>> {
    Ok(store::pods::list(&ctx.settings.state_dir)?)
}
