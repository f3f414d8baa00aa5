//! Plugging a host veth into the datapath and unplugging it: the one place that attaches
//! `from_pod` to a pod's host-side interface and registers (or removes) its endpoints (IPv4,
//! and IPv6 on a dual-stack node). Used by
//! `pod add|del` and by the chained CNI path alike. Plugging also registers the pod's network
//! namespace for socket-level service balancing.

use std::net::{Ipv4Addr, Ipv6Addr};

use podnet_ebpf::abi::{Endpoint, endpoint_flag, program_name};

use super::{Ctx, conntrack, error::Result};
use crate::{
    datapath::{attach, services_map},
    sys::{link, netns::Netns},
};

/// What the datapath needs to know about a pod's interface.
pub struct Plug<'a> {
    /// The host-side interface, in the node's namespace.
    pub host_if: &'a str,
    pub host_ifindex: u32,
    /// The pod's address and the MAC of its interface.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack node.
    pub ip6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    /// The pod's network namespace (its sockets are balanced at the socket too).
    pub netns: &'a Netns,
}

/// Attaches the pinned `from_pod` to the host interface and registers the endpoints (IPv4, and
/// IPv6 on a dual-stack node). Plugging the same pod again keeps what the datapath recorded
/// about it (`endpoint_flag::NAT_REPLIES`: it serves translated flows whose replies must be
/// looked up; an IPv4 matter, so the IPv6 endpoint has no such flag).
pub fn plug(ctx: &Ctx, p: &Plug<'_>) -> Result<()> {
    attach::attach_ingress(&ctx.settings.pin_dir, program_name::FROM_POD, p.host_if)?;
    let mut maps = ctx.maps()?;
    let netns_ino = p.netns.inode();
    let kept = maps.endpoint(p.ip)?.map_or(0, |ep| {
        if ep.ifindex == p.host_ifindex && ep.netns_ino == netns_ino {
            ep.flags & endpoint_flag::NAT_REPLIES
        } else {
            0
        }
    });
    let ep = Endpoint {
        ifindex: p.host_ifindex,
        flags: kept,
        mac: p.mac,
        _pad0: [0; 2],
        netns_ino,
    };
    maps.upsert_endpoint(p.ip, &ep)?;
    if let Some(ip6) = p.ip6 {
        maps.upsert_endpoint6(ip6, &Endpoint { flags: 0, ..ep })?;
    }
    drop(maps);
    services_map::register_pod_netns(&ctx.settings.pin_dir, p.netns, p.ip, p.ip6)?;
    Ok(())
}

/// Registers the IPv6 endpoint of each `(IPv4, IPv6)` address pair of a pod whose IPv4
/// endpoint exists and whose IPv6 one does not (pods made before `ENDPOINTS6` existed, kept
/// across `node init`), with the IPv4 endpoint's value (the same veth, MAC and namespace):
/// with anti-spoofing on, a dual-stack pod without its IPv6 endpoint could not send IPv6.
/// Returns how many were added.
pub fn backfill6(ctx: &Ctx, pairs: &[(Ipv4Addr, Ipv6Addr)]) -> Result<usize> {
    let Some(mut maps) = ctx.maps_if_pinned() else {
        return Ok(0);
    };
    let mut added = 0;
    for (ip, ip6) in pairs {
        if maps.endpoint6(*ip6)?.is_none()
            && let Some(ep) = maps.endpoint(*ip)?
        {
            let flags = ep.flags & endpoint_flag::NO_PEER_REDIRECT;
            maps.upsert_endpoint6(*ip6, &Endpoint { flags, ..ep })?;
            added += 1;
        }
    }
    Ok(added)
}

/// What [`unplug`] removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unplugged {
    pub filter_removed: bool,
    pub endpoints_removed: usize,
    pub conntrack_entries_removed: u64,
}

/// Detaches the program from `host_if` (if it still exists) and removes the endpoints of
/// `ips` and `ips6` that still point at it (an address may already belong to a newer pod), with
/// every conntrack entry of their (IPv4) flows. Tolerates anything already gone.
pub fn unplug(ctx: &Ctx, host_if: &str, ips: &[Ipv4Addr], ips6: &[Ipv6Addr]) -> Result<Unplugged> {
    let mut done = Unplugged {
        filter_removed: attach::detach_ingress(host_if)?,
        ..Unplugged::default()
    };
    let ours = link::ifindex(host_if);
    if let Some(mut maps) = ctx.maps_if_pinned() {
        for ip in ips {
            let current = maps.endpoint(*ip)?;
            if current.is_some_and(|ep| ours.is_none_or(|i| i == ep.ifindex))
                && maps.remove_endpoint(*ip)?
            {
                done.endpoints_removed += 1;
            }
        }
        for ip in ips6 {
            let current = maps.endpoint6(*ip)?;
            if current.is_some_and(|ep| ours.is_none_or(|i| i == ep.ifindex))
                && maps.remove_endpoint6(*ip)?
            {
                done.endpoints_removed += 1;
            }
        }
        drop(maps);
        for ip in ips {
            services_map::forget_pod_netns(&ctx.settings.pin_dir, *ip)?;
        }
    }
    for ip in ips {
        done.conntrack_entries_removed += conntrack::forget_addr(ctx, *ip)?;
    }
    for ip in ips6 {
        done.conntrack_entries_removed += conntrack::forget_addr6(ctx, *ip)?;
    }
    Ok(done)
}
