//! What the agent knows of the cluster: the Nodes, Services and EndpointSlices the watches
//! delivered, and from them the desired state (peers, services). Pure: events go in, the keys
//! whose desired state changed come out, so one Service changing rewrites that Service only.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::{Node, Service as K8sService},
    discovery::v1::EndpointSlice,
};

use super::convert::{self, Skipped};
use crate::model::{peer::PeerNode, service::Metadata, service::Service};

/// The watched objects, by key.
#[derive(Debug, Default)]
pub struct Cluster {
    /// This node's name: it is not its own peer.
    pub own_node: String,
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

    /// The peers: every Node but this one that has an IPv4 pod CIDR and InternalIP, by name.
    pub fn peers(&self) -> (Vec<PeerNode>, Vec<Skipped>) {
        let (mut peers, mut skipped) = (Vec::new(), Vec::new());
        for (name, node) in &self.nodes {
            if *name == self.own_node {
                continue;
            }
            match convert::peer(node) {
                Ok(p) => peers.push(p),
                Err(e) => skipped.push(e),
            }
        }
        (peers, skipped)
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
    pub fn slice(&mut self, slice: EndpointSlice) -> Vec<Metadata> {
        let key = slice_key(&slice);
        let mut touched = self.forget_slice(&key);
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
        convert::service(svc, &slices).map(Some)
    }

    /// Every Service's desired state, and what was skipped.
    pub fn all_desired(&self) -> (Vec<Service>, Vec<Skipped>) {
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        for key in self.services.keys() {
            match self.desired(key) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(e) => skipped.push(e),
            }
        }
        (out, skipped)
    }
}
