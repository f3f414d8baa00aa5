//! Garbage collection: what DEL never came for (a runtime crash, a container run detached) and
//! what killed operations left half-made. Shared by CNI GC (the runtime names the attachments to
//! keep) and `podnet gc` (keeps the attachments whose container namespace is alive). Runs under
//! the node lock held exclusively, so no ADD, DEL or `pod add|del` is in progress.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::{Ctx, attachment, conntrack, dual_stack, error::Result, nodeport, pod};
use crate::{
    datapath::services_map,
    model::{attachment::Attachment, names},
    store::{self, file::FileLock},
};

/// What a collection freed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub attachments: Vec<String>,
    pub host_ports: usize,
    /// Pods torn down: CNI pods without an attachment, and pods half-made by a killed
    /// `pod add` (an address reserved, no record).
    pub pods: Vec<String>,
    pub veths: Vec<String>,
    pub addresses: Vec<Ipv4Addr>,
    /// IPv6 addresses freed with those pods (dual-stack nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses6: Vec<Ipv6Addr>,
    /// Endpoints of addresses no pod or attachment holds.
    pub endpoints: Vec<Ipv4Addr>,
    /// IPv6 endpoints of addresses no pod or attachment holds (dual-stack nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints6: Vec<Ipv6Addr>,
    /// Temporary files of killed writes (pod and attachment records, IPAM).
    pub temp_files: usize,
    /// Socket programs that nodes whose network namespace is gone left attached to the cgroup
    /// (`podnet gc` only; see [`super::dead_nodes`]).
    pub sock_programs: Vec<String>,
}

impl GcReport {
    /// Whether nothing was freed.
    pub fn is_empty(&self) -> bool {
        let Self {
            attachments,
            host_ports,
            pods,
            veths,
            addresses,
            addresses6,
            endpoints,
            endpoints6,
            temp_files,
            sock_programs,
        } = self;
        attachments.is_empty()
            && *host_ports == 0
            && pods.is_empty()
            && veths.is_empty()
            && addresses.is_empty()
            && addresses6.is_empty()
            && endpoints.is_empty()
            && endpoints6.is_empty()
            && *temp_files == 0
            && sock_programs.is_empty()
    }
}

/// Frees every attachment not in `valid` (`(containerID, ifname)` pairs), host ports of no
/// attachment, pods and addresses that killed operations left half-made, podnet's stale host
/// veths, endpoints of no pod, and temporary files. The caller holds the node lock exclusively.
pub fn collect(ctx: &Ctx, valid: &[(String, String)], lock: &FileLock) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut kept = Vec::new();
    for a in attachment::list(ctx)? {
        if valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
            kept.push(a);
            continue;
        }
        attachment::undo(ctx, &a, lock)?;
        store::attachments::remove(&ctx.settings.state_dir, &a.container_id, &a.ifname)?;
        report.attachments.push(a.owner());
    }
    let owners: Vec<String> = kept.iter().map(Attachment::owner).collect();
    for owner in nodeport::host_port_owners(ctx)? {
        if !owners.contains(&owner) {
            report.host_ports += nodeport::remove_host_ports(ctx, &owner)?;
        }
    }
    remove_orphan_pods(ctx, &kept, lock, &mut report)?;
    remove_stale_veths(ctx, &kept, &mut report)?;
    remove_stale_endpoints(ctx, &kept, &mut report)?;
    let settings = &ctx.settings;
    report.temp_files = store::pods::remove_temp_files(&settings.state_dir)?
        + store::attachments::remove_temp_files(&settings.state_dir)?
        + pod::ipam(settings)?.remove_leftovers()?
        + dual_stack::remove_leftovers(settings)?;
    Ok(report)
}

/// CNI pods no kept attachment names (an ADD killed after making its pod), and pods whose
/// address is reserved without a record (a `pod add` or ADD killed part-way).
fn remove_orphan_pods(
    ctx: &Ctx,
    kept: &[Attachment],
    lock: &FileLock,
    report: &mut GcReport,
) -> Result<()> {
    let kept_pods: Vec<&str> = kept.iter().filter_map(|a| a.pod.as_deref()).collect();
    let orphans: Vec<String> = pod::list(ctx)?
        .into_iter()
        .map(|p| p.name)
        .filter(|name| names::is_cni_pod_name(name) && !kept_pods.contains(&name.as_str()))
        .chain(pod::leftovers(ctx, lock)?)
        .collect();
    for name in orphans {
        let del = pod::del_held(ctx, &name, lock)?;
        report.addresses.extend(del.released);
        report.addresses6.extend(del.released6);
        report.pods.push(name);
    }
    Ok(())
}

/// Host veths podnet named that belong to no pod and no kept attachment.
fn remove_stale_veths(ctx: &Ctx, kept: &[Attachment], report: &mut GcReport) -> Result<()> {
    let known: Vec<String> = pod::list(ctx)?
        .into_iter()
        .map(|p| p.host_if)
        .chain(kept.iter().map(|a| a.host_if.clone()))
        .collect();
    let removed = ctx.netlink(|nl| async move {
        let mut removed = Vec::new();
        for l in nl.list().await? {
            let stale = l.kind.as_deref() == Some("veth")
                && names::is_host_ifname(&l.name)
                && !known.contains(&l.name);
            if stale && nl.delete(&l.name).await? {
                removed.push(l.name);
            }
        }
        Ok(removed)
    })?;
    report.veths.extend(removed);
    Ok(())
}

/// Endpoints of addresses that no pod and no kept attachment holds.
fn remove_stale_endpoints(ctx: &Ctx, kept: &[Attachment], report: &mut GcReport) -> Result<()> {
    let live: Vec<Ipv4Addr> = pod::list(ctx)?
        .iter()
        .map(|p| p.address.ip())
        .chain(kept.iter().map(|a| a.ip))
        .collect();
    let stale: Vec<Ipv4Addr> = match ctx.maps_if_pinned() {
        Some(mut maps) => {
            let mut stale = Vec::new();
            for ep in maps.endpoints()? {
                if !live.contains(&ep.ip) && maps.remove_endpoint(ep.ip)? {
                    stale.push(ep.ip);
                }
            }
            stale
        }
        None => Vec::new(),
    };
    for ip in stale {
        conntrack::forget_addr(ctx, ip)?;
        report.endpoints.push(ip);
    }
    let live6: Vec<Ipv6Addr> = pod::list(ctx)?
        .iter()
        .filter_map(|p| p.address6.map(|a| a.ip()))
        .chain(kept.iter().filter_map(|a| a.ip6))
        .collect();
    if let Some(mut maps) = ctx.maps_if_pinned() {
        for ep in maps.endpoints6()? {
            if !live6.contains(&ep.ip) && maps.remove_endpoint6(ep.ip)? {
                report.endpoints6.push(ep.ip);
            }
        }
    }
    // Namespaces registered for socket balancing by pods that are gone (a removal cut short).
    if ctx.maps_if_pinned().is_some() {
        services_map::prune_pod_netns(&ctx.settings.pin_dir, |ip| live.contains(&ip))?;
    }
    Ok(())
}

/// `podnet gc`: frees every attachment whose container namespace is gone, plus [`collect`]'s
/// other leftovers, and detaches the socket programs of dead nodes from the node's cgroup.
/// `keep` lists `(containerID, ifname)` pairs to keep regardless.
pub fn gc_dead(ctx: &Ctx, keep: &[(String, String)]) -> Result<GcReport> {
    let lock = store::node::lock_exclusive(&ctx.settings.state_dir)?;
    let mut valid: Vec<(String, String)> = attachment::list(ctx)?
        .into_iter()
        .filter(attachment::is_alive)
        .map(|a| (a.container_id, a.ifname))
        .collect();
    valid.extend(keep.iter().cloned());
    let mut report = collect(ctx, &valid, &lock)?;
    report.sock_programs =
        super::dead_nodes::detach_dead(&super::node::cgroup_dir(&ctx.settings)?)?;
    Ok(report)
}
