//! CNI attachments as use cases: what ADD, DEL and CHECK do to the node, whatever the protocol
//! around them. Chained (after `bridge` + `host-local`): the runtime's veth is plugged into the
//! datapath. Standalone: a pod is made, as `pod add` makes it. Either may own host ports. Every
//! attachment is recorded ([`crate::store::attachments`]) after everything it made, and removed
//! before what it made goes, so DEL removes exactly what ADD made.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    Ctx, endpoint,
    error::{Error, Result},
    nodeport, pod,
};
use crate::{
    datapath::attach,
    model::{
        attachment::Attachment,
        names::{attachment_owner, cni_pod_name},
        nodeport::{HostPort, Proto},
        pod::PodRecord,
    },
    store::{self, file::FileLock},
    sys::{link::InNetns as _, netns::Netns},
};

/// The attachment recorded for `container_id`/`ifname`, if any.
pub fn get(ctx: &Ctx, container_id: &str, ifname: &str) -> Result<Option<Attachment>> {
    Ok(store::attachments::read(
        &ctx.settings.state_dir,
        container_id,
        ifname,
    )?)
}

/// Every recorded attachment of the node.
pub fn list(ctx: &Ctx) -> Result<Vec<Attachment>> {
    Ok(store::attachments::list(&ctx.settings.state_dir)?)
}

/// Chained ADD: plugs the runtime's veth (the host end of `ifname` in `netns`) for address `ip`.
/// An IPv6 address `ip6` (dual-stack, from the same `prevResult`) is checked against the
/// node's IPv6 pod CIDR, recorded and plugged too (other local pods reach it by the IPv6 fast
/// path; with anti-spoofing it is the only IPv6 source the container may use besides
/// link-local ones).
pub fn add_chained(
    ctx: &Ctx,
    container_id: &str,
    ifname: &str,
    netns: &Netns,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
) -> Result<Attachment> {
    if !ctx.settings.pod_cidr.contains(ip) {
        return Err(Error::OutsidePodCidr {
            ip,
            pod_cidr: ctx.settings.pod_cidr,
        });
    }
    if let (Some(ip6), Some(pod_cidr)) = (ip6, ctx.settings.pod_cidr6)
        && !pod_cidr.contains(ip6)
    {
        return Err(Error::OutsidePodCidr6 { ip: ip6, pod_cidr });
    }
    let name = ifname.to_owned();
    let container_if = netns
        .run_netlink(move |nl| async move { nl.get(&name).await })??
        .ok_or_else(|| Error::NoContainerInterface {
            ifname: ifname.to_owned(),
        })?;
    let peer = container_if.peer_index.ok_or_else(|| Error::NotAVeth {
        ifname: ifname.to_owned(),
    })?;
    let host = ctx
        .netlink(|nl| async move { Ok(nl.get_by_index(peer).await?) })?
        .ok_or_else(|| Error::NoHostEnd {
            ifname: ifname.to_owned(),
        })?;
    endpoint::plug(
        ctx,
        &endpoint::Plug {
            host_if: &host.name,
            host_ifindex: host.index,
            ip,
            ip6: ip6.filter(|_| ctx.settings.pod_cidr6.is_some()),
            mac: container_if.mac,
            netns,
        },
    )?;
    Ok(Attachment {
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        chained: true,
        netns: Some(netns.path().to_path_buf()),
        netns_ino: Some(netns.inode()),
        host_if: host.name,
        ip,
        ip6,
        pod: None,
        result: None,
    })
}

/// Standalone ADD: makes the attachment's pod in `netns`. There is no attachment record
/// (checked by the caller, under the lock), so a pod of this name was left by an ADD killed
/// after making it: it is removed first. (Anything an ADD killed earlier left, the pod add
/// replaces.)
pub fn add_standalone(
    ctx: &Ctx,
    container_id: &str,
    ifname: &str,
    netns: &Netns,
    lock: &FileLock,
) -> Result<(Attachment, PodRecord)> {
    let name = cni_pod_name(container_id, ifname);
    if pod::get(ctx, &name)?.is_some() {
        pod::del_held(ctx, &name, lock)?;
    }
    let record = pod::add_held(ctx, &name, Some(netns.path()), ifname, lock)?;
    let attachment = Attachment {
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        chained: false,
        netns: Some(netns.path().to_path_buf()),
        netns_ino: Some(netns.inode()),
        host_if: record.host_if.clone(),
        ip: record.address.ip(),
        ip6: record.address6.map(|a| a.ip()),
        pod: Some(name),
        result: None,
    };
    Ok((attachment, record))
}

/// Finishes an ADD: the attachment's host ports, then its record. On failure, what the ADD
/// made is removed again.
pub fn commit(ctx: &Ctx, a: &Attachment, host_ports: &[HostPort], lock: &FileLock) -> Result<()> {
    let done = (|| {
        if !host_ports.is_empty() {
            nodeport::add_host_ports(ctx, &a.owner(), host_ports)?;
        }
        store::attachments::write(&ctx.settings.state_dir, a)?;
        Ok(())
    })();
    if done.is_err() {
        // Best effort: the error being returned matters more than a cleanup failure.
        let _ = undo(ctx, a, lock);
    }
    done
}

/// Removes what an attachment made. Tolerates anything already gone. The caller holds the node
/// lock.
pub fn undo(ctx: &Ctx, a: &Attachment, lock: &FileLock) -> Result<()> {
    nodeport::remove_host_ports(ctx, &a.owner())?;
    match &a.pod {
        Some(pod) => {
            pod::del_held(ctx, pod, lock)?;
        }
        None => {
            let ips6: Vec<_> = a.ip6.into_iter().collect();
            endpoint::unplug(ctx, &a.host_if, &[a.ip], &ips6)?;
        }
    }
    Ok(())
}

/// DEL: removes the attachment and what it made. A container podnet never saw (or already
/// deleted) may still have host ports (ADD makes them before the record) and, standalone, a pod
/// from an ADD killed half-way: those go too. The caller holds the node lock.
pub fn del(
    ctx: &Ctx,
    container_id: &str,
    ifname: &str,
    standalone: bool,
    lock: &FileLock,
) -> Result<()> {
    match get(ctx, container_id, ifname)? {
        Some(a) => undo(ctx, &a, lock)?,
        None => {
            nodeport::remove_host_ports(ctx, &attachment_owner(container_id, ifname))?;
            if standalone {
                pod::del_held(ctx, &cni_pod_name(container_id, ifname), lock)?;
            }
        }
    }
    store::attachments::remove(&ctx.settings.state_dir, container_id, ifname)?;
    Ok(())
}

/// CHECK: what is wrong with attachment `a` (its veth, program, endpoint and the host ports
/// `wanted`), or `None` when all of it is in place.
pub fn check(ctx: &Ctx, a: &Attachment, wanted: &[(u16, Proto)]) -> Result<Option<String>> {
    let host_if = a.host_if.clone();
    let (host, filtered) = ctx.netlink(|nl| async move {
        let Some(host) = nl.get(&host_if).await? else {
            return Ok((None, false));
        };
        let filtered = nl
            .has_bpf_ingress_filter(host.index, attach::FILTER_PRIORITY)
            .await?;
        Ok((Some(host), filtered))
    })?;
    let Some(host) = host else {
        return Ok(Some(format!("host veth {} is gone", a.host_if)));
    };
    if !filtered {
        return Ok(Some(format!(
            "podnet's program is not attached to {}",
            a.host_if
        )));
    }
    match ctx.maps()?.endpoint(a.ip)? {
        Some(ep) if ep.ifindex == host.index => {}
        _ => return Ok(Some(format!("endpoint {} is missing from the map", a.ip))),
    }
    if let Some(what) = missing_ipv6(a)? {
        return Ok(Some(what));
    }
    let missing = nodeport::missing_host_ports(ctx, &a.owner())?;
    if let Some(np) = missing.first() {
        return Ok(Some(format!(
            "host port {}/{} is missing from the map",
            np.port, np.proto
        )));
    }
    let have: Vec<(u16, Proto)> = nodeport::list(ctx)?
        .into_iter()
        .filter(|np| np.owner.as_deref() == Some(a.owner().as_str()))
        .map(|np| (np.port, np.proto))
        .collect();
    if let Some((port, proto)) = wanted.iter().find(|w| !have.contains(w)) {
        return Ok(Some(format!(
            "port mapping {port}/{proto} is not installed"
        )));
    }
    Ok(None)
}

/// A dual-stack attachment's IPv6 address, if the container's interface lost it (the kernel
/// routes IPv6, so the address on the interface is all there is to check).
fn missing_ipv6(a: &Attachment) -> Result<Option<String>> {
    let (Some(ip6), Some(path)) = (a.ip6, &a.netns) else {
        return Ok(None);
    };
    let ifname = a.ifname.clone();
    let have = Netns::open(path)?.run_netlink(move |nl| async move {
        let Some(link) = nl.get(&ifname).await? else {
            return Ok::<_, crate::sys::link::LinkError>(Vec::new());
        };
        nl.addresses6(link.index).await
    })??;
    Ok((!have.iter().any(|net| net.ip() == ip6))
        .then(|| format!("IPv6 address {ip6} is missing from {}", a.ifname)))
}

/// Whether the attachment's container still exists: its namespace path opens and is the same
/// namespace (same inode) as at ADD.
pub fn is_alive(a: &Attachment) -> bool {
    let Some(path) = &a.netns else {
        return false;
    };
    match Netns::open(path) {
        Ok(ns) => a.netns_ino.is_none_or(|ino| ino == ns.inode()),
        Err(_) => false,
    }
}

/// What [`forget_all`] undid.
#[derive(Debug, Clone, Default)]
pub struct Forgotten {
    /// Chained attachments whose program came off the runtime's veth.
    pub chained: usize,
    /// Standalone attachments' pods, deleted.
    pub pods: Vec<String>,
}

/// Undoes every attachment (`node reset`), so chained ones lose podnet's program on the
/// runtime's veth, standalone ones their pod, and every host port goes; the records stay for
/// the store to clear.
pub fn forget_all(ctx: &Ctx, lock: &FileLock) -> Result<Forgotten> {
    let mut done = Forgotten::default();
    for a in list(ctx)? {
        undo(ctx, &a, lock)?;
        match a.pod {
            Some(pod) => done.pods.push(pod),
            None => done.chained += 1,
        }
    }
    Ok(done)
}
