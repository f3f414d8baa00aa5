//! The IPv6 half of the peers on a dual-stack cluster: a peer may carry an IPv6 pod CIDR and
//! the IPv6 node address it is reached at. Each becomes a `PEERS6` entry (the IPv6 pod CIDR,
//! and the IPv6 node address as a /128 marked `NODE_IP`), which the programs use to send a
//! pod's IPv6 straight to that node and to let the node's IPv6 straight into local pods; and a
//! route in the node's table for the node's own IPv6 traffic to the peer's pods: `ip -6 route
//! replace POD_CIDR6 via NODE_IP6` in native mode, through the VXLAN device with the tunnel key
//! in the route in overlay mode (`encap ip` to the peer's IPv4 node IP, or with the node
//! setting `ipv6_underlay` `encap ip6` to its IPv6 node address). [`super::peer`] calls in here
//! for its checks and each change of the peer list.

use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::Ipv6Network;
use podnet_ebpf::abi::{Peer6, VXLAN_VNI, peer_flag};

use super::{
    Ctx,
    error::{Error, Result},
};
use crate::{
    config::{NodeSettings, RoutingMode},
    model::peer::PeerNode,
    sys::link::LinkError,
};

fn refuse(peer: &PeerNode, reason: String) -> Result<()> {
    Err(Error::Peer6 {
        name: peer.name.clone(),
        reason,
    })
}

/// Whether a peer's IPv6 pod CIDR is reached through its IPv6 node address (native routing,
/// or the IPv6 underlay), which it must then have.
pub fn needs_node_ip6(settings: &NodeSettings) -> bool {
    settings.mode == RoutingMode::Native || settings.ipv6_underlay
}

/// Checks `peer`'s IPv6 fields against this node's settings and `known` (the other peers and
/// this node itself, by the name "this node").
pub fn check(settings: &NodeSettings, peer: &PeerNode, known: &[PeerNode]) -> Result<()> {
    if let Some(node_ip6) = peer.node_ip6 {
        for other in known {
            if other.node_ip6 == Some(node_ip6) {
                return refuse(
                    peer,
                    format!("IPv6 node address {node_ip6} is already {}'s", other.name),
                );
            }
        }
    }
    let Some(cidr) = peer.pod_cidr6 else {
        return Ok(());
    };
    if cidr.network() != cidr.ip() {
        return refuse(peer, format!("IPv6 pod CIDR {cidr} has host bits set"));
    }
    match peer.node_ip6 {
        None if needs_node_ip6(settings) => {
            let over = if settings.mode == RoutingMode::Native {
                "natively routed"
            } else {
                "over the IPv6 underlay"
            };
            return refuse(
                peer,
                format!(
                    "IPv6 pod CIDR {cidr} needs the peer's IPv6 node address (node_ip6, --node-ip6) to be reached {over}"
                ),
            );
        }
        Some(node_ip6) if cidr.contains(node_ip6) => {
            return refuse(
                peer,
                format!("IPv6 node address {node_ip6} lies inside its own IPv6 pod CIDR {cidr}"),
            );
        }
        _ => {}
    }
    if let Some(cluster) = settings.effective_cluster_cidr6()
        && !(cluster.contains(cidr.network()) && cluster.prefix() <= cidr.prefix())
    {
        return refuse(
            peer,
            format!("IPv6 pod CIDR {cidr} is not inside the IPv6 cluster CIDR {cluster}"),
        );
    }
    for other in known {
        if let Some(theirs) = other.pod_cidr6
            && (theirs.contains(cidr.network()) || cidr.contains(theirs.network()))
        {
            return refuse(
                peer,
                format!("IPv6 pod CIDR {cidr} overlaps {}'s {theirs}", other.name),
            );
        }
    }
    Ok(())
}

/// How the node's own IPv6 reaches a peer's IPv6 pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `via NODE_IP6` (native routing).
    Gateway(Ipv6Addr),
    /// Through the VXLAN device to this remote (`encap ip` or `encap ip6`).
    Tunnel(IpAddr),
}

/// The IPv6 routes `peers` ask for.
fn routes(settings: &NodeSettings, peers: &[PeerNode]) -> Vec<(Ipv6Network, Via)> {
    peers
        .iter()
        .filter_map(|p| {
            let cidr = p.pod_cidr6?;
            let via = match settings.mode {
                RoutingMode::Native => Via::Gateway(p.node_ip6?),
                RoutingMode::Vxlan if settings.ipv6_underlay => {
                    Via::Tunnel(IpAddr::V6(p.node_ip6?))
                }
                RoutingMode::Vxlan => Via::Tunnel(IpAddr::V4(p.node_ip)),
            };
            Some((cidr, via))
        })
        .collect()
}

/// The `PEERS6` entries `peers` ask for.
fn entries(settings: &NodeSettings, peers: &[PeerNode]) -> Vec<(Ipv6Network, Peer6)> {
    let underlay = if settings.ipv6_underlay {
        peer_flag::UNDERLAY6
    } else {
        0
    };
    let mut out = Vec::new();
    for p in peers {
        let value = Peer6 {
            node_ip6: p.node_ip6.map_or([0; 16], |ip| ip.octets()),
            node_ip: p.node_ip.octets(),
            flags: underlay,
        };
        if let Some(cidr) = p.pod_cidr6 {
            out.push((cidr, value));
        }
        if let Some(ip) = p.node_ip6 {
            let host = Ipv6Network::new(ip, 128).expect("/128 is valid");
            out.push((
                host,
                Peer6 {
                    flags: underlay | peer_flag::NODE_IP,
                    ..value
                },
            ));
        }
    }
    out
}

/// Makes `PEERS6` hold exactly what `peers` ask for, and the node's IPv6 routes to peers follow
/// the change from `before` to `peers`: a route to each IPv6 pod CIDR now listed, none to those
/// listed before only.
pub fn sync(ctx: &Ctx, peers: &[PeerNode], before: &[PeerNode]) -> Result<()> {
    let settings = &ctx.settings;
    let wanted_entries = entries(settings, peers);
    {
        let mut maps = ctx.maps()?;
        for (prefix, value) in &wanted_entries {
            maps.set_peer6(*prefix, *value)?;
        }
        let stale: Vec<Ipv6Network> = maps
            .peers6()?
            .into_iter()
            .map(|(prefix, _)| prefix)
            .filter(|prefix| !wanted_entries.iter().any(|(w, _)| w == prefix))
            .collect();
        for prefix in stale {
            maps.remove_peer6(prefix)?;
        }
    }
    let wanted = routes(settings, peers);
    let gone: Vec<Ipv6Network> = routes(settings, before)
        .into_iter()
        .map(|(cidr, _)| cidr)
        .filter(|cidr| !wanted.iter().any(|(w, _)| w == cidr))
        .collect();
    if wanted.is_empty() && gone.is_empty() {
        return Ok(());
    }
    let (device, src) = (settings.vxlan_device.clone(), settings.node_ip6);
    ctx.netlink(|nl| async move {
        let routed = async {
            let mut tunnel = None;
            for (dst, via) in wanted {
                match via {
                    Via::Gateway(gateway) => nl.replace_route6(dst, gateway).await?,
                    Via::Tunnel(remote) => {
                        let dev = match tunnel {
                            Some(dev) => dev,
                            None => {
                                let link =
                                    nl.get(&device).await?.ok_or_else(|| LinkError::NotFound {
                                        link: format!("{device:?}"),
                                    })?;
                                *tunnel.insert(link.index)
                            }
                        };
                        nl.replace_encap_route6(dst, dev, VXLAN_VNI, remote, src)
                            .await?;
                    }
                }
            }
            for dst in gone {
                nl.delete_route6(dst).await?;
            }
            Ok(())
        };
        routed.await.map_err(Error::PeerRoutes)
    })
}

/// Removes the IPv6 routes of `peers` (`node reset`; `PEERS6` goes with the pins); how many
/// there were.
pub fn clear(ctx: &Ctx, peers: &[PeerNode]) -> Result<usize> {
    let gone: Vec<Ipv6Network> = routes(&ctx.settings, peers)
        .into_iter()
        .map(|(cidr, _)| cidr)
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    ctx.netlink(|nl| async move {
        let mut removed = 0;
        for dst in gone {
            if nl.delete_route6(dst).await.map_err(Error::PeerRoutes)? {
                removed += 1;
            }
        }
        Ok(removed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> NodeSettings {
        serde_json::from_value(serde_json::json!({
            "pod_cidr": "10.244.1.0/24",
            "cluster_cidr": "10.244.0.0/16",
            "pod_cidr6": "fd00:10:244:1::/64",
            "cluster_cidr6": "fd00:10:244::/56",
            "node_ip6": "fd00:198:18::10",
            "uplink": "eth0",
        }))
        .unwrap()
    }

    fn peer(name: &str, cidr6: Option<&str>, ip6: Option<&str>) -> PeerNode {
        PeerNode {
            name: name.to_owned(),
            node_ip: "198.18.0.11".parse().unwrap(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            pod_cidr6: cidr6.map(|c| c.parse().unwrap()),
            node_ip6: ip6.map(|c| c.parse().unwrap()),
        }
    }

    fn this(s: &NodeSettings) -> PeerNode {
        PeerNode {
            name: "this node".to_owned(),
            node_ip: "198.18.0.10".parse().unwrap(),
            pod_cidr: s.pod_cidr,
            pod_cidr6: s.pod_cidr6,
            node_ip6: s.node_ip6,
        }
    }

    #[test]
    fn ipv6_peers_are_checked() {
        let s = settings();
        let known = [this(&s)];
        check(&s, &peer("b", None, None), &known).unwrap();
        check(
            &s,
            &peer("b", Some("fd00:10:244:2::/64"), Some("fd00:198:18::11")),
            &known,
        )
        .unwrap();
        for (cidr, ip, wanted) in [
            ("fd00:10:244:2::1/64", Some("fd00:198:18::11"), "host bits"),
            (
                "fd00:10:244:2::/64",
                None,
                "needs the peer's IPv6 node address",
            ),
            ("fd00:99::/64", Some("fd00:198:18::11"), "not inside"),
            (
                "fd00:10:244:1::/64",
                Some("fd00:198:18::11"),
                "overlaps this node's",
            ),
            (
                "fd00:10:244:2::/64",
                Some("fd00:198:18::10"),
                "already this node's",
            ),
            (
                "fd00:10:244:2::/64",
                Some("fd00:10:244:2::9"),
                "inside its own",
            ),
        ] {
            let msg = check(&s, &peer("b", Some(cidr), ip), &known)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(wanted), "{cidr} {ip:?}: {msg}");
        }
        // The overlay carries IPv6 to the peer's IPv4 node IP: no IPv6 node address needed,
        // unless the IPv6 underlay is asked for.
        let mut overlay = settings();
        overlay.mode = RoutingMode::Vxlan;
        check(
            &overlay,
            &peer("b", Some("fd00:10:244:2::/64"), None),
            &known,
        )
        .unwrap();
        overlay.ipv6_underlay = true;
        let msg = check(
            &overlay,
            &peer("b", Some("fd00:10:244:2::/64"), None),
            &known,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("over the IPv6 underlay"), "{msg}");
    }

    #[test]
    fn routes_and_entries_follow_the_mode() {
        let peers = [
            peer("a", Some("fd00:10:244:2::/64"), Some("fd00:198:18::11")),
            peer("b", None, None),
        ];
        let cidr: Ipv6Network = "fd00:10:244:2::/64".parse().unwrap();
        let ip6: Ipv6Addr = "fd00:198:18::11".parse().unwrap();
        let mut s = settings();
        assert_eq!(routes(&s, &peers), vec![(cidr, Via::Gateway(ip6))]);
        s.mode = RoutingMode::Vxlan;
        assert_eq!(
            routes(&s, &peers),
            vec![(cidr, Via::Tunnel("198.18.0.11".parse().unwrap()))]
        );
        let plain = entries(&s, &peers);
        assert_eq!(plain.len(), 2, "{plain:?}");
        assert_eq!(plain[0].0, cidr);
        assert_eq!(plain[0].1.flags, 0);
        assert_eq!(plain[0].1.node_ip, [198, 18, 0, 11]);
        assert_eq!(plain[1].0, Ipv6Network::new(ip6, 128).unwrap());
        assert_eq!(plain[1].1.flags, peer_flag::NODE_IP);
        s.ipv6_underlay = true;
        assert_eq!(
            routes(&s, &peers),
            vec![(cidr, Via::Tunnel(IpAddr::V6(ip6)))]
        );
        let under6 = entries(&s, &peers);
        assert_eq!(under6[0].1.flags, peer_flag::UNDERLAY6);
        assert_eq!(under6[0].1.node_ip6, ip6.octets());
        assert_eq!(under6[1].1.flags, peer_flag::UNDERLAY6 | peer_flag::NODE_IP);
    }
}
