//! What the agent knows of the cluster: the Nodes, Services and EndpointSlices the watches
//! delivered, and from them the desired state (peers, services). Pure: events go in, the keys
//! whose desired state changed come out, so one Service changing rewrites that Service only.
//!
//! Nodes become peers checked as `node peer add` checks them, against this node and the peers
//! admitted before (those programmed already come first, so a newcomer that conflicts with one
//! is the one left out). A Node whose IPv6 half cannot be routed (no IPv6 InternalIP where one
//! is needed, outside the IPv6 cluster CIDR, overlapping) stays an IPv4 peer, with a note.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::{Node, Service as K8sService},
    discovery::v1::EndpointSlice,
};

use super::convert::{self, Skipped};
use crate::{
    config::NodeSettings,
    model::{peer::PeerNode, service::Metadata, service::Service},
    ops,
};

/// The peers the Nodes make, what was skipped, and notes on what was left out of the peers
/// (their IPv6 half), by node name.
#[derive(Debug, Default)]
pub struct Peers {
    pub peers: Vec<PeerNode>,
    pub skipped: Vec<Skipped>,
    pub notes: BTreeMap<String, String>,
}

/// Every Service's desired state, what was skipped, and the notes worth logging by service
/// (why one was skipped, or what of it is left out).
#[derive(Debug, Default)]
pub struct Desired {
    pub services: Vec<Service>,
    pub skipped: Vec<Skipped>,
    pub notes: BTreeMap<String, String>,
}

/// The watched objects, by key.
#[derive(Debug, Default)]
pub struct Cluster {
    /// This node's name: it is not its own peer.
    pub own_node: String,
    /// Whether this node serves IPv6 Services (it has an IPv6 service CIDR): their IPv6
    /// ClusterIPs and IPv6 EndpointSlices are programmed; without, IPv6 is left out with a note.
    pub ipv6_services: bool,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<Metadata, K8sService>,
    /// Slices by (namespace, slice name), and which service each belongs to.
    slices: BTreeMap<(String, String), EndpointSlice>,
    slices_of: BTreeMap<Metadata, BTreeSet<(String, String)>>,
}

fn slice_key(s: &EndpointSlice) -> (String, String) {
    (
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

impl Cluster {
    pub fn new(own_node: &str) -> Self {
        Self {
            own_node: own_node.to_owned(),
            ..Self::default()
        }
    }

    /// A Node was added or changed (`Some`) or deleted (`None`, with its name).
    pub fn node(&mut self, name: String, node: Option<Node>) {
        match node {
            Some(node) => self.nodes.insert(name, node),
            None => self.nodes.remove(&name),
        };
    }

    /// Replaces every Node (a relist).
    pub fn replace_nodes(&mut self, nodes: Vec<Node>) {
        self.nodes = nodes
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
    }

    /// The peers: every Node but this one that has an IPv4 pod CIDR and InternalIP, valid and
    /// not conflicting with `settings` (this node) or with a peer admitted before it; those
    /// named in `programmed` are admitted first, the rest by name.
    pub fn peers(&self, settings: &NodeSettings, programmed: &[PeerNode]) -> Peers {
        let was = |name: &str| programmed.iter().any(|p| p.name == name);
        let mut order: Vec<(&String, &Node)> = self
            .nodes
            .iter()
            .filter(|(name, _)| **name != self.own_node)
            .collect();
        order.sort_by_key(|(name, _)| !was(name));
        let mut out = Peers::default();
        for (name, node) in order {
            let candidate = match convert::peer(node) {
                Ok(p) => p,
                Err(e) => {
                    out.notes.insert(name.clone(), e.to_string());
                    out.skipped.push(e);
                    continue;
                }
            };
            let ipv4 = PeerNode {
                pod_cidr6: None,
                node_ip6: None,
                ..candidate.clone()
            };
            if let Err(e) = ops::peer::check_addresses(settings, &ipv4, &out.peers) {
                let text = e.to_string();
                let why = text
                    .strip_prefix(&format!("peer {name}: "))
                    .unwrap_or(&text);
                let e = Skipped::Node(name.clone(), why.to_owned());
                out.notes.insert(name.clone(), e.to_string());
                out.skipped.push(e);
                continue;
            }
            let Some(cidr6) = candidate.pod_cidr6 else {
                out.peers.push(candidate);
                continue;
            };
            let ipv6_fault = if candidate.node_ip6.is_none() && ops::peer6::needs_node_ip6(settings)
            {
                Some("it has no IPv6 InternalIP to route it to".to_owned())
            } else {
                ops::peer::check_addresses(settings, &candidate, &out.peers)
                    .err()
                    .map(|e| e.to_string())
            };
            match ipv6_fault {
                None => out.peers.push(candidate),
                Some(why) => {
                    out.notes.insert(
                        name.clone(),
                        format!("node {name}: IPv6 pod CIDR {cidr6} not routed ({why}); peer over IPv4 only"),
                    );
                    out.peers.push(ipv4);
                }
            }
        }
        out.peers.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A Service was added or changed; returns its key.
    pub fn service(&mut self, svc: K8sService) -> Metadata {
        let key = convert::key(&svc.metadata);
        self.services.insert(key.clone(), svc);
        key
    }

    /// A Service was deleted; returns its key.
    pub fn service_deleted(&mut self, svc: &K8sService) -> Metadata {
        let key = convert::key(&svc.metadata);
        self.services.remove(&key);
        key
    }

    /// An EndpointSlice was added or changed; returns the services whose endpoints changed
    /// (its owner, and its former owner if the label moved).
    /// FQDN slices are not kept: they touch nothing. IPv4 and IPv6 slices are; which of them
    /// a Service uses depends on the families it is served in.
    pub fn slice(&mut self, slice: EndpointSlice) -> Vec<Metadata> {
        let key = slice_key(&slice);
        let mut touched = self.forget_slice(&key);
        if convert::slice_family(&slice).is_none() {
            return touched;
        }
        if let Some(owner) = convert::slice_owner(&slice) {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            touched.push(owner);
        }
        self.slices.insert(key, slice);
        touched
    }

    /// An EndpointSlice was deleted; returns the service it belonged to.
    pub fn slice_deleted(&mut self, slice: &EndpointSlice) -> Vec<Metadata> {
        self.forget_slice(&slice_key(slice))
    }

    fn forget_slice(&mut self, key: &(String, String)) -> Vec<Metadata> {
        let Some(old) = self.slices.remove(key) else {
            return Vec::new();
        };
        let Some(owner) = convert::slice_owner(&old) else {
            return Vec::new();
        };
        if let Some(set) = self.slices_of.get_mut(&owner) {
            set.remove(key);
            if set.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        vec![owner]
    }

    /// Replaces every Service (a relist).
    pub fn replace_services(&mut self, services: Vec<K8sService>) {
        self.services = services
            .into_iter()
            .map(|s| (convert::key(&s.metadata), s))
            .collect();
    }

    /// Replaces every EndpointSlice (a relist).
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) {
        self.slices.clear();
        self.slices_of.clear();
        for s in slices {
            self.slice(s);
        }
    }

    /// The desired state of service `key`: `Ok(None)` when there is no such Service (or it is
    /// skipped: then the error says why).
    pub fn desired(&self, key: &Metadata) -> Result<Option<Service>, Skipped> {
        Ok(self.desired_noted(key)?.map(|(svc, _)| svc))
    }

    /// [`Cluster::desired`], with the notes on what of the Service is left out.
    pub fn desired_noted(&self, key: &Metadata) -> Result<Option<(Service, Vec<String>)>, Skipped> {
        let Some(svc) = self.services.get(key) else {
            return Ok(None);
        };
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect();
        convert::service_noted(svc, &slices, self.ipv6_services).map(Some)
    }

    /// Every Service's desired state, what was skipped, and the notes.
    pub fn all_desired(&self) -> Desired {
        let mut out = Desired::default();
        for key in self.services.keys() {
            match self.desired_noted(key) {
                Ok(Some((s, notes))) => {
                    if !notes.is_empty() {
                        out.notes.insert(
                            key.to_string(),
                            format!("service {key}: {}", notes.join("; ")),
                        );
                    }
                    out.services.push(s);
                }
                Ok(None) => {}
                Err(e) => {
                    if e.worth_logging() {
                        out.notes.insert(key.to_string(), e.to_string());
                    }
                    out.skipped.push(e);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: &str) -> NodeSettings {
        serde_json::from_value(serde_json::json!({
            "pod_cidr": "10.244.1.0/24", "cluster_cidr": "10.244.0.0/16", "node_ip": "198.18.0.11",
            "pod_cidr6": "fd00:10:244:1::/64", "cluster_cidr6": "fd00:10:244::/48",
            "node_ip6": "fd00:198:18::11", "uplink": "eth0", "mode": mode,
        }))
        .unwrap()
    }

    fn node(name: &str, ip: &str, cidr: &str, ip6: Option<&str>, cidr6: Option<&str>) -> Node {
        let mut cidrs = vec![cidr];
        cidrs.extend(cidr6);
        let mut addresses = vec![serde_json::json!({"type": "InternalIP", "address": ip})];
        addresses.extend(ip6.map(|a| serde_json::json!({"type": "InternalIP", "address": a})));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": cidrs},
            "status": {"addresses": addresses}
        }))
        .unwrap()
    }

    #[test]
    fn peers_are_checked_and_a_conflicting_newcomer_is_the_one_left_out() {
        let s = settings("native");
        let mut c = Cluster::new("n1");
        c.replace_nodes(vec![
            node("n1", "198.18.0.11", "10.244.1.0/24", None, None),
            node(
                "n3",
                "198.18.0.13",
                "10.244.3.0/24",
                Some("fd00:198:18::13"),
                Some("fd00:10:244:3::/64"),
            ),
        ]);
        let first = c.peers(&s, &[]);
        assert_eq!(first.peers.len(), 1);
        assert_eq!(
            first.peers[0].pod_cidr6.map(|c| c.to_string()).as_deref(),
            Some("fd00:10:244:3::/64")
        );
        assert!(first.notes.is_empty(), "{:?}", first.notes);
        // "n2" sorts first but takes n3's pod CIDR: n3 stays, n2 is skipped, saying why.
        c.node(
            "n2".to_owned(),
            Some(node("n2", "198.18.0.12", "10.244.3.0/24", None, None)),
        );
        // A node overlapping this node's own pod CIDR, one outside the cluster CIDR.
        c.node(
            "n4".to_owned(),
            Some(node("n4", "198.18.0.14", "10.244.1.0/25", None, None)),
        );
        c.node(
            "n5".to_owned(),
            Some(node("n5", "198.18.0.15", "10.99.5.0/24", None, None)),
        );
        let next = c.peers(&s, &first.peers);
        assert_eq!(next.peers, first.peers);
        assert!(
            next.notes["n2"].contains("overlaps n3's"),
            "{:?}",
            next.notes
        );
        assert!(
            next.notes["n4"].contains("overlaps this node's"),
            "{:?}",
            next.notes
        );
        assert!(
            next.notes["n5"].contains("not inside the cluster CIDR"),
            "{:?}",
            next.notes
        );
        assert_eq!(next.skipped.len(), 3);
    }

    #[test]
    fn an_ipv6_half_that_cannot_be_routed_leaves_an_ipv4_peer() {
        let mut c = Cluster::new("n1");
        c.replace_nodes(vec![
            // No IPv6 InternalIP.
            node(
                "a",
                "198.18.0.12",
                "10.244.2.0/24",
                None,
                Some("fd00:10:244:2::/64"),
            ),
            // Outside the IPv6 cluster CIDR.
            node(
                "b",
                "198.18.0.13",
                "10.244.3.0/24",
                Some("fd00:198:18::13"),
                Some("fd00:99::/64"),
            ),
            // Overlapping this node's IPv6 pod CIDR.
            node(
                "c",
                "198.18.0.14",
                "10.244.4.0/24",
                Some("fd00:198:18::14"),
                Some("fd00:10:244:1::/64"),
            ),
        ]);
        let out = c.peers(&settings("native"), &[]);
        assert_eq!(out.peers.len(), 3, "{:?}", out.notes);
        assert!(out.peers.iter().all(|p| p.pod_cidr6.is_none()));
        assert!(out.skipped.is_empty());
        for (name, wanted) in [
            ("a", "no IPv6 InternalIP"),
            ("b", "not inside the IPv6 cluster CIDR"),
            ("c", "overlaps this node's"),
        ] {
            assert!(
                out.notes[name].contains(wanted) && out.notes[name].contains("IPv4 only"),
                "{name}: {:?}",
                out.notes
            );
        }
        // The overlay carries IPv6 too (to the IPv4 node IP): a good IPv6 half is kept there,
        // even without an IPv6 InternalIP.
        c.replace_nodes(vec![
            node(
                "d",
                "198.18.0.15",
                "10.244.5.0/24",
                Some("fd00:198:18::15"),
                Some("fd00:10:244:5::/64"),
            ),
            node(
                "e",
                "198.18.0.16",
                "10.244.6.0/24",
                None,
                Some("fd00:10:244:6::/64"),
            ),
        ]);
        let out = c.peers(&settings("vxlan"), &[]);
        assert!(
            out.peers.iter().all(|p| p.pod_cidr6.is_some()),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn ipv6_slices_are_kept_and_fqdn_slices_touch_nothing() {
        let mut c = Cluster::new("n1");
        let slice = |family: &str, address: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("web-{family}"), "namespace": "shop",
                             "labels": {convert::SERVICE_NAME_LABEL: "web"}},
                "addressType": family,
                "endpoints": [{"addresses": [address]}]
            }))
            .unwrap()
        };
        let web = Metadata {
            name: "web".to_owned(),
            namespace: "shop".to_owned(),
        };
        let v6 = slice("IPv6", "fd00:10:244:1::5");
        assert_eq!(c.slice(v6.clone()), std::slice::from_ref(&web));
        assert_eq!(c.slice_deleted(&v6), [web]);
        let fqdn = slice("FQDN", "web.example");
        assert!(c.slice(fqdn.clone()).is_empty());
        assert!(c.slice_deleted(&fqdn).is_empty());
    }
}
