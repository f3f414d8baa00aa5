//! Stale flows: when a backend leaves a service frontend, what still points at it goes, so
//! clients move to a live backend at once instead of waiting for a timeout.
//!
//! Which backends left ([`left`]): a backend in a frontend's slots before a change and not
//! after, unless the service still lists it, as serving for UDP, at all for TCP (KEP-1669:
//! established connections to a terminating backend carry on). When a whole frontend goes
//! (its service deleted), its UDP backends leave and its TCP connections finish on their
//! backends. A change that keeps a backend leaves its flows alone.
//!
//! What goes ([`forget`]), for each backend that left:
//! - the per-packet path's flows through that frontend to it: both conntrack entries of each
//!   (the next UDP datagram starts a new flow and picks a live backend; the next TCP segment
//!   finds no state and is answered with a RST by the datapath);
//! - sockets that the socket-level balancer connected to it through that frontend: destroyed
//!   with `SOCK_DESTROY` ([`crate::sys::sockdiag`]) in the node's namespace and in every pod
//!   namespace podnet recorded (pods and CNI attachments). A socket counts as balanced when
//!   `SOCK_REV_NAT` remembers it (socket cookie + backend -> the frontend); a socket that
//!   connected to the backend's address itself is never touched.
//!
//! Cost, paid after every change that removes a backend (on the agent's programming thread,
//! before its next change): one batched read of each conntrack table and one of `SOCK_REV_NAT`; the
//! conntrack collection lock only when there are flows to remove; and the socket search (a
//! `sock_diag` dump per namespace, each pod namespace entered on a thread of its own) only
//! when `SOCK_REV_NAT` remembers a socket sent through the frontend to a backend that left,
//! and only until every such socket is found.
//!
//! Both families: IPv6 sockets balanced through `SOCK_REV_NAT6` are found in the namespaces'
//! IPv6 socket dumps, and so are IPv6 sockets talking IPv4 through mapped addresses (the
//! balancer remembers those in `SOCK_REV_NAT`). Per-packet flows of both: `CONNTRACK` and
//! `CONNTRACK6` (IPv6 service traffic from outside, translated at the uplink).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use podnet_ebpf::abi::{
    Addr6, CtEntry, CtKey, config_flag, ct_dir, ct_kind,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use super::{Ctx, error::Result};
use crate::{
    datapath::{
        maps::{CtFamily, SockRevNatMap},
        services_map,
    },
    store,
    sys::{
        netns::{Netns, NetnsError},
        sockdiag::{InetSocket, SockDiag},
    },
};

/// A backend that left a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Left {
    pub frontend: services_map::Frontend,
    pub backend: SocketAddr,
}

/// The endpoints a frontend's service lists after a change: `address:targetPort` -> serving.
pub type Listed = HashMap<SocketAddr, bool>;

/// The node's addresses, which NodePort frontends stand for.
#[derive(Debug, Clone, Copy)]
struct NodeIps {
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
}

/// What [`forget`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StaleReport {
    /// (frontend, backend) pairs that left.
    pub backends_left: usize,
    /// Conntrack entries removed (two per flow).
    pub flow_entries_removed: u64,
    /// Sockets destroyed.
    pub sockets_destroyed: usize,
    /// Namespaces whose sockets could not be cleaned, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub socket_errors: Vec<String>,
}

/// The backends that left: every backend of `before`'s frontends that `after` no longer has in
/// the same frontend's slots and that `listed` (the services' endpoints after the change, per
/// frontend) does not keep; see the module's rules.
pub fn left(
    before: &[services_map::Service],
    after: &HashMap<services_map::Frontend, &services_map::Service>,
    listed: &HashMap<services_map::Frontend, Listed>,
) -> Vec<Left> {
    let mut out = Vec::new();
    for old in before {
        let fe = old.frontend;
        let slots: HashSet<SocketAddr> = after.get(&fe).map_or_else(HashSet::new, |s| {
            s.backends
                .iter()
                .map(|b| SocketAddr::new(b.addr, b.port))
                .collect()
        });
        let endpoints = listed.get(&fe);
        for b in &old.backends {
            let backend = SocketAddr::new(b.addr, b.port);
            if slots.contains(&backend) {
                continue;
            }
            let listed_as = endpoints.and_then(|l| l.get(&backend).copied());
            let stays = match fe.proto {
                // A deleted service's connections finish; a listed backend keeps its own.
                IPPROTO_TCP => endpoints.is_none() || listed_as.is_some(),
                _ => listed_as == Some(true),
            };
            if !stays {
                out.push(Left {
                    frontend: fe,
                    backend,
                });
            }
        }
    }
    out
}

/// Whether `front`, the frontend as packets or sockets saw it, is `left`'s frontend (a
/// NodePort on the node's address of its family).
fn same_frontend(left: &Left, front: SocketAddr, node: NodeIps) -> bool {
    let fe = left.frontend;
    let addr = front.ip().to_canonical();
    let node_ip = match addr {
        IpAddr::V4(_) => Some(IpAddr::V4(node.v4)),
        IpAddr::V6(_) => node.v6.map(IpAddr::V6),
    };
    fe.port == front.port()
        && (fe.addr == addr
            || (fe.is_nodeport() && fe.addr.is_ipv4() == addr.is_ipv4() && Some(addr) == node_ip))
}

/// A socket's peer as the balancer keys it: an IPv4-mapped address as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The frontend and backend of a service flow's entry: an original entry goes from the
/// frontend to (its translation) the backend; a reply entry comes from the backend and is
/// translated back to the frontend. `None` for SNAT flows.
fn flow_ends<A: CtFamily>(key: &CtKey<A>, entry: &CtEntry<A>) -> Option<(SocketAddr, SocketAddr)> {
    if entry.kind == ct_kind::SNAT {
        return None;
    }
    let at = |addr: A, port| SocketAddr::new(A::ip(addr), port);
    if entry.dir == ct_dir::ORIGINAL {
        Some((
            at(key.daddr, key.dport),
            at(entry.nat.daddr, entry.nat.dport),
        ))
    } else {
        Some((
            at(entry.nat.saddr, entry.nat.sport),
            at(key.saddr, key.sport),
        ))
    }
}

/// Removes both entries of every flow through a frontend to a backend that left, in both
/// tables (`CONNTRACK`, `CONNTRACK6`); returns how many entries went.
fn forget_flows(ctx: &Ctx, left: &[Left], node: NodeIps) -> Result<u64> {
    Ok(forget_flows_of::<[u8; 4]>(ctx, left, node)? + forget_flows_of::<Addr6>(ctx, left, node)?)
}

/// [`forget_flows`] in table `A`. The table is read (in batches) without the collection lock,
/// which only the removals and the collector's count need: an entry the collector removes
/// meanwhile is not counted twice (a removal says whether the entry was still there).
fn forget_flows_of<A: CtFamily>(ctx: &Ctx, left: &[Left], node: NodeIps) -> Result<u64> {
    let by_backend: HashMap<(SocketAddr, u8), Vec<&Left>> =
        left.iter().fold(HashMap::new(), |mut m, l| {
            m.entry((l.backend, l.frontend.proto)).or_default().push(l);
            m
        });
    let mut stale = HashSet::new();
    let entries = A::entries(&*ctx.maps()?)?;
    for (key, entry) in entries {
        let Some((front, backend)) = flow_ends(&key, &entry) else {
            continue;
        };
        let through_left = by_backend
            .get(&(backend, key.proto))
            .is_some_and(|ls| ls.iter().any(|l| same_frontend(l, front, node)));
        if through_left {
            stale.extend([key, crate::ops::conntrack::twin(&key, &entry)]);
        }
    }
    if stale.is_empty() {
        return Ok(0);
    }
    let _lock = store::conntrack::lock(&ctx.settings.state_dir)?;
    let mut maps = ctx.maps()?;
    let mut removed = 0;
    for k in &stale {
        if A::remove(&mut maps, k)? {
            removed += 1;
        }
    }
    if removed > 0 {
        maps.ct_collected_of::<A>(removed)?;
    }
    Ok(removed)
}

/// The namespaces whose sockets the balancer serves, other than the node's own: those of the
/// pods podnet made and of the CNI attachments it recorded, each opened and checked against
/// the inode recorded at add (a path that now names another namespace is skipped), once each.
fn pod_namespaces(ctx: &Ctx, node: &Netns, errors: &mut Vec<String>) -> Result<Vec<Netns>> {
    let state_dir = &ctx.settings.state_dir;
    let mut recorded: Vec<(PathBuf, Option<u64>)> = store::pods::list(state_dir)?
        .into_iter()
        .map(|p| (p.netns, Some(p.netns_ino)))
        .collect();
    recorded.extend(
        store::attachments::list(state_dir)?
            .into_iter()
            .filter_map(|a| Some((a.netns?, a.netns_ino))),
    );
    let mut seen = HashSet::from([node.inode()]);
    let mut out = Vec::new();
    for (path, ino) in recorded {
        let ns = match Netns::open(&path) {
            Ok(ns) => ns,
            // Gone since (the pod is being deleted): nothing of it to destroy.
            Err(NetnsError::NotFound { .. } | NetnsError::NotANetns { .. }) => continue,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if ino.is_some_and(|i| i != ns.inode()) || !seen.insert(ns.inode()) {
            continue;
        }
        out.push(ns);
    }
    Ok(out)
}

/// The sockets of the calling thread's namespace whose peer is one of `backends`: IPv4
/// sockets for IPv4 backends, IPv6 sockets for IPv6 ones and for IPv4 ones reached through
/// IPv4-mapped addresses.
fn candidates(backends: &HashSet<(SocketAddr, u8)>) -> Result<Vec<InetSocket>> {
    let mut diag = SockDiag::open()?;
    let mut out = Vec::new();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let ours: Vec<&SocketAddr> = backends
            .iter()
            .filter(|(_, p)| *p == proto)
            .map(|(b, _)| b)
            .collect();
        if ours.is_empty() {
            continue;
        }
        let mut families = vec![true];
        if ours.iter().any(|b| b.is_ipv4()) {
            families.push(false);
        }
        for ipv6 in families {
            out.extend(
                diag.connected(proto, ipv6)?
                    .into_iter()
                    .filter(|s| backends.contains(&(canonical(s.peer), proto))),
            );
        }
    }
    Ok(out)
}

/// Destroys `sockets`; those that were still there.
fn destroy_all(sockets: Vec<InetSocket>) -> Result<Vec<InetSocket>> {
    let mut diag = SockDiag::open()?;
    let mut out = Vec::new();
    for s in sockets {
        if diag.destroy(&s)? {
            out.push(s);
        }
    }
    Ok(out)
}

/// The sockets destroyed in every namespace, and why a namespace could not be cleaned.
#[derive(Default)]
struct Sockets {
    destroyed: usize,
    errors: Vec<String>,
}

/// Destroys the sockets the balancer connected to a backend that left, through the frontend
/// it left, namespace by namespace: a namespace that fails (a kernel without
/// `CONFIG_INET_DIAG_DESTROY`, a namespace gone meanwhile) is reported and the others still
/// cleaned.
fn forget_sockets(ctx: &Ctx, left: &[Left], node: NodeIps) -> Result<Sockets> {
    let mut rev = SockRevNatMap::open(&ctx.settings.pin_dir)?;
    // What the balancer remembers sending through a frontend to a backend that left (socket
    // cookie, backend). Nothing: no socket to look for, in any namespace.
    let mut doomed: HashSet<(u64, SocketAddr)> = rev
        .entries()?
        .into_iter()
        .filter_map(|(cookie, backend, front)| {
            left.iter()
                .any(|l| l.backend == backend && same_frontend(l, front, node))
                .then_some((cookie, backend))
        })
        .collect();
    let mut done = Sockets::default();
    if doomed.is_empty() {
        return Ok(done);
    }
    let backends: HashSet<(SocketAddr, u8)> = left
        .iter()
        .filter(|l| doomed.iter().any(|(_, b)| *b == l.backend))
        .map(|l| (l.backend, l.frontend.proto))
        .collect();
    // Of a namespace's candidates, those the balancer sent through a frontend they left.
    let balanced = |rev: &SockRevNatMap, sockets: Vec<InetSocket>| -> Result<Vec<InetSocket>> {
        let mut out = Vec::new();
        for s in sockets {
            let peer = canonical(s.peer);
            let Some(front) = rev.get(s.cookie, peer)? else {
                continue;
            };
            let through = left.iter().any(|l| {
                l.backend == peer && l.frontend.proto == s.proto && same_frontend(l, front, node)
            });
            if through {
                out.push(s);
            }
        }
        Ok(out)
    };
    // The node's own namespace is the caller's (every command and the agent run in it).
    let node = Netns::current()?;
    let mut namespaces = vec![None];
    // Pods' sockets are balanced only with socket balancing for pods on.
    if ctx.maps()?.config()?.flags & config_flag::SOCKET_LB != 0 {
        namespaces.extend(
            pod_namespaces(ctx, &node, &mut done.errors)?
                .into_iter()
                .map(Some),
        );
    }
    for ns in &namespaces {
        // A cookie names one socket of one namespace: once every remembered socket is found,
        // the other namespaces have none.
        if doomed.is_empty() {
            break;
        }
        let in_ns = |f: &(dyn Fn() -> Result<Vec<InetSocket>> + Sync)| match ns {
            None => f(),
            Some(ns) => ns.run(f)?,
        };
        let cleaned = in_ns(&|| candidates(&backends)).and_then(|found| {
            let doomed = balanced(&rev, found)?;
            if doomed.is_empty() {
                return Ok(Vec::new());
            }
            in_ns(&|| destroy_all(doomed.clone()))
        });
        match cleaned {
            Ok(destroyed) => {
                for s in &destroyed {
                    let peer = canonical(s.peer);
                    rev.remove(s.cookie, peer)?;
                    doomed.remove(&(s.cookie, peer));
                }
                done.destroyed += destroyed.len();
            }
            Err(e) => {
                let name = ns.as_ref().map_or(node.path(), Netns::path);
                done.errors.push(format!("{}: {e}", name.display()));
            }
        }
    }
    Ok(done)
}

/// Removes what points at the backends that `left`: their flows, and the sockets connected
/// straight to them. Call it after the maps no longer offer them. A failure to clean sockets
/// is reported in [`StaleReport::socket_errors`], not returned: the maps are already right.
pub fn forget(ctx: &Ctx, left: &[Left], node_ip: Ipv4Addr) -> Result<StaleReport> {
    if left.is_empty() {
        return Ok(StaleReport::default());
    }
    let node = NodeIps {
        v4: node_ip,
        v6: ctx.settings.node_ip6,
    };
    let flow_entries_removed = forget_flows(ctx, left, node)?;
    let sockets = forget_sockets(ctx, left, node)?;
    Ok(StaleReport {
        backends_left: left.len(),
        flow_entries_removed,
        sockets_destroyed: sockets.destroyed,
        socket_errors: sockets.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(proto: u8) -> services_map::Frontend {
        services_map::Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 53,
            proto,
        }
    }

    fn svc(proto: u8, backends: &[[u8; 4]]) -> services_map::Service {
        services_map::Service {
            frontend: fe(proto),
            backends: backends
                .iter()
                .map(|a| services_map::Backend {
                    addr: Ipv4Addr::from(*a).into(),
                    port: 5353,
                    flags: 0,
                })
                .collect(),
            flags: 0,
            local_count: 0,
            affinity_timeout: 0,
        }
    }

    fn at(a: [u8; 4]) -> SocketAddr {
        SocketAddr::new(IpAddr::from(a), 5353)
    }

    const A: [u8; 4] = [10, 244, 0, 2];
    const B: [u8; 4] = [10, 244, 0, 3];

    #[test]
    fn only_backends_that_left_are_stale() {
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            let before = vec![svc(proto, &[A, B])];
            let kept = svc(proto, &[A, B]);
            let after = HashMap::from([(fe(proto), &kept)]);
            let listed = HashMap::from([(fe(proto), Listed::from([(at(A), true), (at(B), true)]))]);
            assert!(left(&before, &after, &listed).is_empty(), "nothing changed");

            let one = svc(proto, &[B]);
            let after = HashMap::from([(fe(proto), &one)]);
            let listed = HashMap::from([(fe(proto), Listed::from([(at(B), true)]))]);
            assert_eq!(
                left(&before, &after, &listed),
                vec![Left {
                    frontend: fe(proto),
                    backend: at(A)
                }],
                "A deleted"
            );
        }
    }

    #[test]
    fn terminating_and_deleted_services_follow_the_protocol() {
        // A terminating (still serving) backend out of the slots keeps its flows.
        let before = vec![svc(IPPROTO_UDP, &[A, B])];
        let one = svc(IPPROTO_UDP, &[B]);
        let after = HashMap::from([(fe(IPPROTO_UDP), &one)]);
        let serving = HashMap::from([(
            fe(IPPROTO_UDP),
            Listed::from([(at(A), true), (at(B), true)]),
        )]);
        assert!(left(&before, &after, &serving).is_empty());
        // No longer serving: UDP flows leave, TCP ones (still listed) stay.
        let not_serving = Listed::from([(at(A), false), (at(B), true)]);
        let listed = HashMap::from([(fe(IPPROTO_UDP), not_serving.clone())]);
        assert_eq!(left(&before, &after, &listed).len(), 1);
        let before_tcp = vec![svc(IPPROTO_TCP, &[A, B])];
        let one_tcp = svc(IPPROTO_TCP, &[B]);
        let after_tcp = HashMap::from([(fe(IPPROTO_TCP), &one_tcp)]);
        let listed_tcp = HashMap::from([(fe(IPPROTO_TCP), not_serving)]);
        assert!(left(&before_tcp, &after_tcp, &listed_tcp).is_empty());
        // The whole frontend gone: UDP backends leave, TCP connections finish.
        let none = HashMap::new();
        assert_eq!(left(&before, &none, &HashMap::new()).len(), 2);
        assert!(left(&before_tcp, &none, &HashMap::new()).is_empty());
    }

    #[test]
    fn nodeport_frontends_match_the_node_ip() {
        let l = Left {
            frontend: services_map::Frontend::nodeport(30053, IPPROTO_UDP),
            backend: at(A),
        };
        let node_ip6: Ipv6Addr = "fd00:198:18::10".parse().unwrap();
        let node = NodeIps {
            v4: Ipv4Addr::new(192, 0, 2, 1),
            v6: Some(node_ip6),
        };
        let front = |ip: &str, port| SocketAddr::new(ip.parse().unwrap(), port);
        assert!(same_frontend(&l, front("192.0.2.1", 30053), node));
        assert!(
            same_frontend(&l, front("::ffff:192.0.2.1", 30053), node),
            "an IPv4-mapped node IP"
        );
        assert!(!same_frontend(&l, front("10.96.0.1", 30053), node));
        assert!(!same_frontend(&l, front("192.0.2.1", 30054), node));
        assert!(
            !same_frontend(&l, front("fd00:198:18::10", 30053), node),
            "the IPv4 NodePort is not the IPv6 one"
        );
        let l6 = Left {
            frontend: services_map::Frontend::nodeport6(30053, IPPROTO_UDP),
            backend: front("fd00:10:244::2", 5353),
        };
        assert!(same_frontend(&l6, front("fd00:198:18::10", 30053), node));
        assert!(!same_frontend(&l6, front("192.0.2.1", 30053), node));
    }

    #[test]
    fn both_entries_of_a_flow_name_the_same_ends() {
        use podnet_ebpf::abi::CtNat;
        let client = [10, 244, 0, 9];
        let vip = [10, 96, 0, 10];
        let key = CtKey {
            saddr: client,
            daddr: vip,
            sport: 40000,
            dport: 53,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let original = CtEntry {
            nat: CtNat {
                saddr: client,
                daddr: A,
                sport: 40000,
                dport: 5353,
            },
            kind: ct_kind::DNAT,
            dir: ct_dir::ORIGINAL,
            ..CtEntry::default()
        };
        let reply_key = crate::ops::conntrack::twin(&key, &original);
        let reply = CtEntry {
            nat: CtNat {
                saddr: vip,
                daddr: client,
                sport: 53,
                dport: 40000,
            },
            kind: ct_kind::DNAT,
            dir: ct_dir::REPLY,
            ..CtEntry::default()
        };
        let ends = flow_ends(&key, &original);
        assert_eq!(ends, Some((SocketAddr::new(IpAddr::from(vip), 53), at(A))));
        assert_eq!(flow_ends(&reply_key, &reply), ends);
        assert_eq!(crate::ops::conntrack::twin(&reply_key, &reply), key);
        let snat = CtEntry {
            kind: ct_kind::SNAT,
            ..original
        };
        assert_eq!(flow_ends(&key, &snat), None);
    }
}
