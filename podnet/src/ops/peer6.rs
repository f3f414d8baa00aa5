//! The IPv6 half of the peers on a dual-stack cluster: a peer may carry an IPv6 pod CIDR and
//! the IPv6 node address it is routed to. IPv6 is routed by the kernel (the programs and the
//! `PEERS` map are IPv4 only), so a peer's IPv6 pod CIDR becomes a route in the node's table,
//! `ip -6 route replace POD_CIDR6 via NODE_IP6`, for pods and the node alike (native routing;
//! the VXLAN overlay does not carry IPv6 yet). [`super::peer`] calls in here for its checks and
//! each change of the peer list.

use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;

use super::{
    Ctx,
    error::{Error, Result},
};
use crate::{
    config::{NodeSettings, RoutingMode},
    model::peer::PeerNode,
};

fn refuse(peer: &PeerNode, reason: String) -> Result<()> {
    Err(Error::Peer6 {
        name: peer.name.clone(),
        reason,
    })
}

/// Checks `peer`'s IPv6 fields against this node's settings and `known` (the other peers and
/// this node itself, by the name "this node").
pub fn check(settings: &NodeSettings, peer: &PeerNode, known: &[PeerNode]) -> Result<()> {
    let Some(cidr) = peer.pod_cidr6 else {
        return Ok(());
    };
    if cidr.network() != cidr.ip() {
        return refuse(peer, format!("IPv6 pod CIDR {cidr} has host bits set"));
    }
    let Some(node_ip6) = peer.node_ip6 else {
        return refuse(
            peer,
            format!(
                "IPv6 pod CIDR {cidr} needs the peer's IPv6 node address (node_ip6, --node-ip6) to be routed to"
            ),
        );
    };
    if settings.mode == RoutingMode::Vxlan {
        return refuse(
            peer,
            format!(
                "IPv6 pod CIDR {cidr}: the VXLAN overlay carries IPv4 only so far; use native routing for IPv6"
            ),
        );
    }
    if let Some(cluster) = settings.effective_cluster_cidr6()
        && !(cluster.contains(cidr.network()) && cluster.prefix() <= cidr.prefix())
    {
        return refuse(
            peer,
            format!("IPv6 pod CIDR {cidr} is not inside the IPv6 cluster CIDR {cluster}"),
        );
    }
    if cidr.contains(node_ip6) {
        return refuse(
            peer,
            format!("IPv6 node address {node_ip6} lies inside its own IPv6 pod CIDR {cidr}"),
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
        if other.node_ip6 == Some(node_ip6) {
            return refuse(
                peer,
                format!("IPv6 node address {node_ip6} is already {}'s", other.name),
            );
        }
    }
    Ok(())
}

/// The IPv6 routes `peers` ask for.
fn routes(peers: &[PeerNode]) -> Vec<(Ipv6Network, Ipv6Addr)> {
    peers
        .iter()
        .filter_map(|p| Some((p.pod_cidr6?, p.node_ip6?)))
        .collect()
}

/// Makes the node's IPv6 routes to peers follow the change from `before` to `peers`: a route
/// to each IPv6 pod CIDR now listed, none to those listed before only.
pub fn sync(ctx: &Ctx, peers: &[PeerNode], before: &[PeerNode]) -> Result<()> {
    let wanted = routes(peers);
    let gone: Vec<Ipv6Network> = routes(before)
        .into_iter()
        .map(|(cidr, _)| cidr)
        .filter(|cidr| !wanted.iter().any(|(w, _)| w == cidr))
        .collect();
    if wanted.is_empty() && gone.is_empty() {
        return Ok(());
    }
    ctx.netlink(|nl| async move {
        let routed = async {
            for (dst, via) in wanted {
                nl.replace_route6(dst, via).await?;
            }
            for dst in gone {
                nl.delete_route6(dst).await?;
            }
            Ok(())
        };
        routed.await.map_err(Error::PeerRoutes)
    })
}

/// Removes the IPv6 routes of `peers` (`node reset`); how many there were.
pub fn clear(ctx: &Ctx, peers: &[PeerNode]) -> Result<usize> {
    let gone: Vec<Ipv6Network> = routes(peers).into_iter().map(|(cidr, _)| cidr).collect();
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
        let mut overlay = settings();
        overlay.mode = RoutingMode::Vxlan;
        let msg = check(
            &overlay,
            &peer("b", Some("fd00:10:244:2::/64"), Some("fd00:198:18::11")),
            &known,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("VXLAN"), "{msg}");
    }

    #[test]
    fn routes_need_both_fields() {
        let peers = [
            peer("a", Some("fd00:10:244:2::/64"), Some("fd00:198:18::11")),
            peer("b", None, None),
        ];
        assert_eq!(
            routes(&peers),
            vec![(
                "fd00:10:244:2::/64".parse().unwrap(),
                "fd00:198:18::11".parse().unwrap()
            )]
        );
    }
}
