//! IPv6 addresses, routes and neighbours over the same [`Netlink`] connection, and the IPv6
//! forwarding sysctl: what a dual-stack node and its pods need from the kernel (the IPv6 the
//! programs do not deliver themselves is routed by it).
//!
//! Addresses are added with `IFA_F_NODAD`: podnet hands them out from its own IPAM, so nobody
//! else on the link can hold them, and duplicate address detection would only keep them
//! unusable (tentative) for a second after every pod add.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
    pin::pin,
};

use futures::TryStreamExt;
use ipnetwork::Ipv6Network;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAddress, RouteScope},
    },
};

use super::{LinkError, Netlink, main_default_gateway, nl_err, tolerate};

/// The sysctl that turns IPv6 forwarding on for every interface of a namespace.
const FORWARDING_SYSCTL_V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Turns duplicate address detection off for link `name` (`net.ipv6.conf.NAME.accept_dad` =
/// 0) in the calling thread's namespace; a kernel without IPv6 (no such file) is fine. For
/// links podnet makes itself before it sets them up: the bridge's link-local address comes
/// from its random MAC, and while it is tentative (a second after the first pod joins) the
/// kernel sends no Neighbor Solicitation from it, so the first packets towards a new pod
/// wait a full retransmission timer.
pub(super) fn disable_dad(name: &str) -> Result<(), LinkError> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(name)
        .join("accept_dad");
    if !path.exists() {
        return Ok(());
    }
    std::fs::write(&path, b"0\n").map_err(|source| LinkError::Io {
        op: "write",
        path,
        source,
    })
}

impl Netlink {
    /// Adds the IPv6 address `addr` to link `index` without duplicate address detection; an
    /// address that is already there is fine.
    pub async fn ensure_address6(&self, index: u32, addr: Ipv6Network) -> Result<(), LinkError> {
        let mut request = self
            .handle
            .address()
            .add(index, addr.ip().into(), addr.prefix());
        let message = request.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        let result = request.execute().await;
        tolerate(result, libc::EEXIST, || {
            format!("add address {addr} to link {index}")
        })?;
        Ok(())
    }

    /// The IPv6 addresses of link `index` whose scope is global (no link-local ones).
    pub async fn addresses6(&self, index: u32) -> Result<Vec<Ipv6Network>, LinkError> {
        let mut stream = pin!(
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
        );
        let mut addrs = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl_err(format!("list addresses of link {index}")))?
        {
            if msg.header.family != AddressFamily::Inet6 {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V6(ip)) = attr
                    && !is_link_local(*ip)
                    && let Ok(net) = Ipv6Network::new(*ip, msg.header.prefix_len)
                {
                    addrs.push(net);
                }
            }
        }
        Ok(addrs)
    }

    /// Adds `::/0 via gateway` to the main table. Already there is fine; a default route via
    /// another gateway is an error ([`LinkError::DefaultRouteConflict6`]).
    pub async fn ensure_default_route6(&self, gateway: Ipv6Addr) -> Result<(), LinkError> {
        let message = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway)
            .build();
        let result = self.handle.route().add(message).execute().await;
        let added = tolerate(result, libc::EEXIST, || {
            format!("add IPv6 default route via {gateway}")
        })?;
        if added {
            return Ok(());
        }
        let gateways = self.default_gateways6().await?;
        match gateways.first() {
            Some(existing) if !gateways.contains(&gateway) => {
                Err(LinkError::DefaultRouteConflict6 {
                    existing: *existing,
                    wanted: gateway,
                })
            }
            _ => Ok(()),
        }
    }

    /// The gateways of the IPv6 default routes in the main table.
    pub async fn default_gateways6(&self) -> Result<Vec<Ipv6Addr>, LinkError> {
        let query = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut stream = pin!(self.handle.route().get(query).execute());
        let mut gateways = Vec::new();
        while let Some(route) = stream
            .try_next()
            .await
            .map_err(nl_err("list IPv6 routes"))?
        {
            if let Some(RouteAddress::Inet6(gw)) = main_default_gateway(&route) {
                gateways.push(*gw);
            }
        }
        Ok(gateways)
    }

    /// `ip -6 route replace DST via GATEWAY`: another node's IPv6 pod CIDR through its IPv6
    /// node address.
    pub async fn replace_route6(
        &self,
        dst: Ipv6Network,
        gateway: Ipv6Addr,
    ) -> Result<(), LinkError> {
        let message = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("replace route {dst} via {gateway}")))
    }

    /// `ip -6 route replace DST dev DEV encap ip id VNI dst REMOTE` (an IPv4 remote: IPv6 inside
    /// the IPv4 underlay) or `... encap ip6 id VNI dst REMOTE csum` (an IPv6 remote: the IPv6
    /// underlay, whose UDP must carry a checksum), from `src` when given: the node's own IPv6
    /// to another node's IPv6 pods through the collect_md tunnel device `dev`.
    pub async fn replace_encap_route6(
        &self,
        dst: Ipv6Network,
        dev: u32,
        vni: u32,
        remote: IpAddr,
        src: Option<Ipv6Addr>,
    ) -> Result<(), LinkError> {
        use rtnetlink::packet_route::route::{
            RouteAttribute, RouteIp6Tunnel, RouteIp6TunnelFlags, RouteIpTunnel, RouteLwEnCapType,
            RouteLwTunnelEncap,
        };
        let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(dev);
        if let Some(src) = src {
            builder = builder.pref_source(src);
        }
        let mut message = builder.build();
        let (kind, encap) = match remote {
            IpAddr::V4(remote) => (
                RouteLwEnCapType::Ip,
                vec![
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(u64::from(vni))),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(remote)),
                ],
            ),
            IpAddr::V6(remote) => (
                RouteLwEnCapType::Ip6,
                vec![
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Id(u64::from(vni))),
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(remote)),
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Flags(RouteIp6TunnelFlags::Checksum)),
                ],
            ),
        };
        message.attributes.push(RouteAttribute::EncapType(kind));
        message.attributes.push(RouteAttribute::Encap(encap));
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "replace route {dst} dev {dev} encap id {vni} dst {remote}"
            )))
    }

    /// `ip -6 route del DST`; `Ok(false)` if there was no such route.
    pub async fn delete_route6(&self, dst: Ipv6Network) -> Result<bool, LinkError> {
        let message = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .scope(RouteScope::NoWhere)
            .build();
        let result = self.handle.route().del(message).execute().await;
        tolerate(result, libc::ESRCH, || format!("delete route {dst}"))
    }

    /// `ip -6 neigh del IP dev INDEX`: forgets a pod's neighbour entry on the bridge;
    /// `Ok(false)` if there was none.
    pub async fn delete_neighbour6(&self, index: u32, ip: Ipv6Addr) -> Result<bool, LinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)));
        let result = self.handle.neighbours().del(message).execute().await;
        tolerate(result, libc::ENOENT, || {
            format!("delete neighbour {ip} of link {index}")
        })
    }

    /// Forgets every neighbour entry (ARP and ND, link-local ones too) of link `index` whose
    /// link-layer address is `mac`: what the node learnt of a deleted pod. Returns how many.
    pub async fn delete_neighbours_of(&self, index: u32, mac: [u8; 6]) -> Result<usize, LinkError> {
        let mut stream = pin!(self.handle.neighbours().get().execute());
        let mut theirs = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl_err(format!("list neighbours of link {index}")))?
        {
            let has_mac = msg.attributes.iter().any(
                |a| matches!(a, NeighbourAttribute::LinkLayerAddress(l) if l.as_slice() == mac),
            );
            if msg.header.ifindex == index && has_mac {
                theirs.push(msg);
            }
        }
        let mut removed = 0;
        for msg in theirs {
            let result = self.handle.neighbours().del(msg).execute().await;
            if tolerate(result, libc::ENOENT, || {
                format!("delete a neighbour of link {index}")
            })? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// fe80::/10.
fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Turns IPv6 forwarding on (`net.ipv6.conf.all.forwarding` = 1) in the calling thread's
/// network namespace, as [`super::enable_ip_forwarding`] does for IPv4; a value already 1 is
/// not written. Note the kernel then ignores router advertisements on interfaces whose
/// `accept_ra` is 1 (a router does not autoconfigure).
pub fn enable_ipv6_forwarding() -> Result<(), LinkError> {
    let path = Path::new(FORWARDING_SYSCTL_V6);
    let current = std::fs::read_to_string(path).map_err(|source| LinkError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    if current.trim() != "1" {
        std::fs::write(path, b"1\n").map_err(|source| LinkError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}
