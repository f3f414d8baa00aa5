//! NodePorts: `nodeIP:PORT/PROTO` spread over backends (local pods, by name or address), like a
//! Kubernetes NodePort service with kube-proxy's `iptables -t nat ... DNAT` rules, but held in
//! the service maps that the datapath reads (as NodePort frontends, through
//! [`crate::datapath::services_map`]). The records in `<state_dir>/nodeports.json` keep
//! what the map cannot (pod names), and say what `nodeport list` shows.
//!
//! Map updates are ordered so the datapath never sees a slot that is not there (see
//! `services_map`). Existing connections keep their backend through conntrack, so
//! removing a backend stops only new connections to it.

use std::{net::Ipv4Addr, path::PathBuf, str::FromStr};

use podnet_ebpf::abi::{
    MAX_BACKENDS, backend_flag,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    svc_flag,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{
        DatapathError,
        services_map::{self, Frontend, Service, ServicesMap, ServicesMapError},
    },
    node::NodeSettings,
    state::{self, FileLock, StateError},
};

/// A NodePort's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("protocol {s:?} is not tcp or udp")),
        }
    }
}

/// Kubernetes' `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Backends on any node; a connection to a backend on another node is forwarded there
    /// with this node's IP as its source, so the replies come back through this node.
    #[default]
    Cluster,
    /// Backends on this node only; the client's address is always preserved.
    Local,
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cluster" => Ok(Self::Cluster),
            "local" => Ok(Self::Local),
            _ => Err(format!("policy {s:?} is not cluster or local")),
        }
    }
}

/// A backend as given on the command line: `POD:PORT` or `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub target: BackendTarget,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    Pod(String),
    Ip(Ipv4Addr),
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("backend {s:?} is not POD:PORT or IP:PORT"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("backend {s:?}: {port:?} is not a port (1-65535)"))?;
        if target.is_empty() {
            return Err(format!("backend {s:?} has no pod name or address"));
        }
        let target = match target.parse::<Ipv4Addr>() {
            Ok(ip) => BackendTarget::Ip(ip),
            Err(_) => BackendTarget::Pod(target.to_owned()),
        };
        Ok(Self { target, port })
    }
}

/// A resolved backend, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The pod it was given as, if given by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pod {
            Some(pod) => write!(f, "{pod}({}):{}", self.ip, self.port),
            None => write!(f, "{}:{}", self.ip, self.port),
        }
    }
}

/// One NodePort and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePort {
    pub port: u16,
    pub proto: Proto,
    pub backends: Vec<Backend>,
    /// Which backends may serve it.
    #[serde(default)]
    pub policy: Policy,
    /// Set for a CNI `portMappings` host port: the attachment (`containerID/ifname`) it
    /// belongs to, which removes it on DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodePortError {
    #[error(
        "port {port} is outside the NodePort range {range} (set with `node init --nodeport-range`)"
    )]
    OutOfRange {
        port: u16,
        range: crate::node::PortRange,
    },
    #[error("{proto} port {port} is already a NodePort (delete it first, or use `nodeport set`)")]
    InUse { port: u16, proto: Proto },
    #[error("{proto} port {port} is in use by a socket in the node's namespace")]
    SocketInUse { port: u16, proto: Proto },
    #[error("no {proto} NodePort {port}")]
    NotFound { port: u16, proto: Proto },
    #[error("backend {backend}: no pod named {pod} on this node")]
    UnknownPod { backend: String, pod: String },
    #[error(
        "backend {ip} is neither in this node's pod CIDR {pod_cidr} nor (with policy cluster) in a peer's"
    )]
    NotLocal {
        ip: Ipv4Addr,
        pod_cidr: ipnetwork::Ipv4Network,
    },
    #[error("a NodePort needs at least one --backend")]
    NoBackends,
    #[error("{count} backends given; a NodePort has at most {MAX_BACKENDS}")]
    TooManyBackends { count: usize },
    #[error("backend {backend} is given twice")]
    Duplicate { backend: String },
    #[error("reading the node's peers: {0}")]
    Peers(String),
    #[error("{proto} port {port} is listed twice")]
    Repeated { port: u16, proto: Proto },
    #[error("{0}")]
    BadBackend(String),
    #[error(
        "the NodePorts need {needed} service map entries (one per NodePort plus one per backend); the map holds {max} (set with `node init --services-max`)"
    )]
    ServicesFull { needed: usize, max: u32 },
    #[error("NodePort {port}/{proto} (entry {index} of the file): {source}")]
    Entry {
        index: usize,
        port: u16,
        proto: Proto,
        source: Box<NodePortError>,
    },
    #[error("reading {path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Node(#[from] Box<crate::node::NodeError>),
}

/// The NodePort records of a node.
pub struct NodePorts;

impl NodePorts {
    pub fn file(settings: &NodeSettings) -> PathBuf {
        settings.state_dir.join("nodeports.json")
    }

    fn lock(settings: &NodeSettings) -> Result<FileLock, StateError> {
        FileLock::exclusive(&settings.state_dir.join("nodeports.lock"))
    }

    fn load(settings: &NodeSettings) -> Result<Vec<NodePort>, StateError> {
        Ok(state::read_json(&Self::file(settings))?.unwrap_or_default())
    }

    fn save(settings: &NodeSettings, ports: &mut [NodePort]) -> Result<(), StateError> {
        ports.sort_by_key(|np| (np.port, np.proto));
        state::write_json(&Self::file(settings), &ports)
    }
}

fn frontend(port: u16, proto: Proto) -> Frontend {
    Frontend::nodeport(port, proto.number())
}

/// Writes `backends` for `port`/`proto` (replacing what the map held for it). A NodePort left
/// with no backends keeps its entry, so the datapath counts its connections as `drop_no_backend`.
fn program(
    maps: &mut ServicesMap,
    port: u16,
    proto: Proto,
    backends: &[Backend],
) -> Result<(), NodePortError> {
    let svc = Service {
        frontend: frontend(port, proto),
        backends: backends
            .iter()
            .map(|b| services_map::Backend {
                addr: b.ip,
                port: b.port,
                flags: backend_flag::READY | backend_flag::SERVING,
            })
            .collect(),
        flags: svc_flag::NODE_PORT,
        local_count: 0,
        affinity_timeout: 0,
    };
    maps.write(&svc).map_err(|e| match e {
        ServicesMapError::Datapath(e) => NodePortError::Datapath(e),
        other => NodePortError::BadBackend(other.to_string()),
    })
}

/// Removes `np` from the maps (master entry first, so no packet sees a count without slots).
fn unprogram(maps: &mut ServicesMap, np: &NodePort) -> Result<(), DatapathError> {
    maps.delete(&frontend(np.port, np.proto))?;
    Ok(())
}

/// Resolves backend specs against the node's pods and peers, each read once however many
/// NodePorts are resolved.
struct Resolver<'a> {
    settings: &'a NodeSettings,
    pods: Vec<crate::pod::PodRecord>,
    peers: Option<Vec<crate::peers::PeerNode>>,
}

impl<'a> Resolver<'a> {
    fn new(settings: &'a NodeSettings) -> Result<Self, NodePortError> {
        Ok(Self {
            settings,
            pods: crate::pod::list(settings).map_err(Box::new)?,
            peers: None,
        })
    }

    fn on_peer(&mut self, ip: Ipv4Addr) -> Result<bool, NodePortError> {
        if self.peers.is_none() {
            self.peers = Some(
                crate::peers::list(self.settings)
                    .map_err(|e| NodePortError::Peers(e.to_string()))?,
            );
        }
        Ok(self
            .peers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|p| p.pod_cidr.contains(ip)))
    }

    /// Resolves and checks `specs` for a NodePort with `policy`.
    fn resolve(
        &mut self,
        specs: &[BackendSpec],
        policy: Policy,
    ) -> Result<Vec<Backend>, NodePortError> {
        if specs.is_empty() {
            return Err(NodePortError::NoBackends);
        }
        if specs.len() > usize::from(MAX_BACKENDS) {
            return Err(NodePortError::TooManyBackends { count: specs.len() });
        }
        let mut out: Vec<Backend> = Vec::with_capacity(specs.len());
        for spec in specs {
            let backend = match &spec.target {
                BackendTarget::Pod(name) => {
                    let pod = self.pods.iter().find(|p| &p.name == name).ok_or_else(|| {
                        NodePortError::UnknownPod {
                            backend: format!("{name}:{}", spec.port),
                            pod: name.clone(),
                        }
                    })?;
                    Backend {
                        pod: Some(name.clone()),
                        ip: pod.address.ip(),
                        port: spec.port,
                    }
                }
                BackendTarget::Ip(ip) => {
                    let allowed = self.settings.pod_cidr.contains(*ip)
                        || (policy == Policy::Cluster && self.on_peer(*ip)?);
                    if !allowed {
                        return Err(NodePortError::NotLocal {
                            ip: *ip,
                            pod_cidr: self.settings.pod_cidr,
                        });
                    }
                    Backend {
                        pod: self
                            .pods
                            .iter()
                            .find(|p| p.address.ip() == *ip)
                            .map(|p| p.name.clone()),
                        ip: *ip,
                        port: spec.port,
                    }
                }
            };
            if out
                .iter()
                .any(|b| b.ip == backend.ip && b.port == backend.port)
            {
                return Err(NodePortError::Duplicate {
                    backend: backend.to_string(),
                });
            }
            out.push(backend);
        }
        Ok(out)
    }
}

/// The ports sockets in the calling thread's namespace hold for `proto` (any address), as
/// `/proc/net/{tcp,udp}` shows: such a port cannot also be a NodePort, as with kube-proxy.
/// (Reading the file costs milliseconds, so callers checking many ports read it once.)
fn bound_ports(proto: Proto) -> std::collections::HashSet<u16> {
    let file = match proto {
        Proto::Tcp => "/proc/self/net/tcp",
        Proto::Udp => "/proc/self/net/udp",
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return std::collections::HashSet::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            // TCP: only listening sockets (state 0A) hold the port for new connections.
            if proto == Proto::Tcp && state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

/// Whether a socket in the calling thread's namespace holds `port` (see [`bound_ports`]).
fn socket_bound(proto: Proto, port: u16) -> bool {
    bound_ports(proto).contains(&port)
}

/// `nodeport add`: a new NodePort.
pub fn add(
    settings: &NodeSettings,
    port: u16,
    proto: Proto,
    specs: &[BackendSpec],
    policy: Policy,
) -> Result<NodePort, NodePortError> {
    if !settings.nodeport_range.contains(port) {
        return Err(NodePortError::OutOfRange {
            port,
            range: settings.nodeport_range,
        });
    }
    let _lock = NodePorts::lock(settings)?;
    let mut ports = NodePorts::load(settings)?;
    if ports.iter().any(|np| np.port == port && np.proto == proto) {
        return Err(NodePortError::InUse { port, proto });
    }
    if socket_bound(proto, port) {
        return Err(NodePortError::SocketInUse { port, proto });
    }
    let backends = Resolver::new(settings)?.resolve(specs, policy)?;
    let mut maps = ServicesMap::open(&settings.pin_dir)?;
    program(&mut maps, port, proto, &backends)?;
    let np = NodePort {
        port,
        proto,
        backends,
        policy,
        owner: None,
    };
    ports.push(np.clone());
    NodePorts::save(settings, &mut ports)?;
    Ok(np)
}

/// `nodeport set`: replaces the backends of an existing NodePort.
pub fn set(
    settings: &NodeSettings,
    port: u16,
    proto: Proto,
    specs: &[BackendSpec],
) -> Result<NodePort, NodePortError> {
    let _lock = NodePorts::lock(settings)?;
    let mut ports = NodePorts::load(settings)?;
    let np = ports
        .iter_mut()
        .find(|np| np.port == port && np.proto == proto)
        .ok_or(NodePortError::NotFound { port, proto })?;
    let backends = Resolver::new(settings)?.resolve(specs, np.policy)?;
    let mut maps = ServicesMap::open(&settings.pin_dir)?;
    program(&mut maps, port, proto, &backends)?;
    np.backends = backends;
    let updated = np.clone();
    NodePorts::save(settings, &mut ports)?;
    Ok(updated)
}

/// `nodeport del`: removes a NodePort. Established connections finish on their backends.
pub fn del(settings: &NodeSettings, port: u16, proto: Proto) -> Result<NodePort, NodePortError> {
    let _lock = NodePorts::lock(settings)?;
    let mut ports = NodePorts::load(settings)?;
    let index = ports
        .iter()
        .position(|np| np.port == port && np.proto == proto)
        .ok_or(NodePortError::NotFound { port, proto })?;
    let np = ports.remove(index);
    unprogram(&mut ServicesMap::open(&settings.pin_dir)?, &np)?;
    NodePorts::save(settings, &mut ports)?;
    Ok(np)
}

/// `nodeport list`.
pub fn list(settings: &NodeSettings) -> Result<Vec<NodePort>, NodePortError> {
    Ok(NodePorts::load(settings)?)
}

/// One NodePort as `nodeport apply` reads it: `{"port": 30080, "proto": "tcp",
/// "backends": ["web:80", "10.244.1.7:80"], "policy": "cluster"}` (proto and policy optional).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePortSpec {
    pub port: u16,
    #[serde(default = "default_proto")]
    pub proto: Proto,
    pub backends: Vec<String>,
    #[serde(default)]
    pub policy: Policy,
}

fn default_proto() -> Proto {
    Proto::Tcp
}

/// What `nodeport apply` changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApplySummary {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// `nodeport apply`: makes the node's NodePorts exactly `specs` (CNI host ports are left
/// alone), in one locked step, the way kube-proxy syncs a whole service table. Everything is
/// checked before anything changes, so a bad entry changes nothing. Removed NodePorts go first,
/// so the map never needs room for both the old and the new set.
pub fn apply(
    settings: &NodeSettings,
    specs: &[NodePortSpec],
) -> Result<ApplySummary, NodePortError> {
    let _lock = NodePorts::lock(settings)?;
    let ports = NodePorts::load(settings)?;
    let mut resolver = Resolver::new(settings)?;
    let mut desired: Vec<NodePort> = Vec::with_capacity(specs.len());
    let mut seen = std::collections::HashSet::with_capacity(specs.len());
    let bound = [Proto::Tcp, Proto::Udp].map(bound_ports);
    for (index, spec) in specs.iter().enumerate() {
        let (port, proto) = (spec.port, spec.proto);
        let entry = |source: NodePortError| NodePortError::Entry {
            index: index + 1,
            port,
            proto,
            source: Box::new(source),
        };
        if !settings.nodeport_range.contains(port) {
            return Err(entry(NodePortError::OutOfRange {
                port,
                range: settings.nodeport_range,
            }));
        }
        if !seen.insert((port, proto)) {
            return Err(entry(NodePortError::Repeated { port, proto }));
        }
        let existing = ports.iter().find(|np| np.port == port && np.proto == proto);
        if existing.is_some_and(|np| np.owner.is_some()) {
            return Err(entry(NodePortError::InUse { port, proto }));
        }
        let bound = &bound[usize::from(proto == Proto::Udp)];
        if existing.is_none() && bound.contains(&port) {
            return Err(entry(NodePortError::SocketInUse { port, proto }));
        }
        let backend_specs = spec
            .backends
            .iter()
            .map(|b| b.parse::<BackendSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| entry(NodePortError::BadBackend(e)))?;
        let backends = resolver
            .resolve(&backend_specs, spec.policy)
            .map_err(entry)?;
        desired.push(NodePort {
            port,
            proto,
            backends,
            policy: spec.policy,
            owner: None,
        });
    }
    let (host_ports, managed): (Vec<NodePort>, Vec<NodePort>) =
        ports.into_iter().partition(|np| np.owner.is_some());
    let entries = |nps: &[NodePort]| nps.iter().map(|np| 1 + np.backends.len()).sum::<usize>();
    let needed = entries(&host_ports) + entries(&desired);
    if needed > settings.services_max as usize {
        return Err(NodePortError::ServicesFull {
            needed,
            max: settings.services_max,
        });
    }

    let mut maps = ServicesMap::open(&settings.pin_dir)?;
    let mut summary = ApplySummary::default();
    for old in &managed {
        if !seen.contains(&(old.port, old.proto)) {
            unprogram(&mut maps, old)?;
            summary.removed += 1;
        }
    }
    for np in &desired {
        let old = managed
            .iter()
            .find(|o| o.port == np.port && o.proto == np.proto);
        match old {
            Some(o) if o == np => summary.unchanged += 1,
            Some(_) => {
                program(&mut maps, np.port, np.proto, &np.backends)?;
                summary.updated += 1;
            }
            None => {
                program(&mut maps, np.port, np.proto, &np.backends)?;
                summary.added += 1;
            }
        }
    }
    let mut all = host_ports;
    all.extend(desired);
    NodePorts::save(settings, &mut all)?;
    Ok(summary)
}

/// Reads a `nodeport apply` file: a JSON array of [`NodePortSpec`]; `-` is standard input.
pub fn read_specs(path: &std::path::Path) -> Result<Vec<NodePortSpec>, NodePortError> {
    let bad = |reason: String| NodePortError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| bad(e.to_string()))?
    } else {
        std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?
    };
    serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "{e} (expected a JSON array of {{\"port\", \"proto\", \"backends\", \"policy\"}})"
        ))
    })
}

/// Removes pod `name` from every NodePort's backends (the pod is being deleted). Returns how
/// many backends went.
pub fn forget_pod(settings: &NodeSettings, name: &str) -> Result<usize, NodePortError> {
    let _lock = NodePorts::lock(settings)?;
    let mut ports = NodePorts::load(settings)?;
    let mut removed = 0;
    let mut maps = None;
    for np in &mut ports {
        let before = np.backends.len();
        let kept: Vec<Backend> = np
            .backends
            .iter()
            .filter(|b| b.pod.as_deref() != Some(name))
            .cloned()
            .collect();
        if kept.len() == before {
            continue;
        }
        let maps = match &mut maps {
            Some(m) => m,
            None => maps.insert(ServicesMap::open(&settings.pin_dir)?),
        };
        program(maps, np.port, np.proto, &kept)?;
        removed += before - kept.len();
        np.backends = kept;
    }
    if removed > 0 {
        NodePorts::save(settings, &mut ports)?;
    }
    Ok(removed)
}

/// A CNI port mapping: `hostPort` on the node IP to `ip:container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub host_port: u16,
    pub proto: Proto,
    pub ip: Ipv4Addr,
    pub container_port: u16,
}

/// Adds `mappings` for `owner` (a CNI attachment), all or nothing. Host ports are not limited to
/// the NodePort range (that is what the `portmap` plugin allows too) but must be free.
pub fn add_host_ports(
    settings: &NodeSettings,
    owner: &str,
    mappings: &[HostPort],
) -> Result<Vec<NodePort>, NodePortError> {
    let _lock = NodePorts::lock(settings)?;
    let mut ports = NodePorts::load(settings)?;
    for (i, m) in mappings.iter().enumerate() {
        let taken_by_other = ports.iter().any(|np| {
            np.port == m.host_port && np.proto == m.proto && np.owner.as_deref() != Some(owner)
        });
        let repeated = mappings[..i]
            .iter()
            .any(|o| o.host_port == m.host_port && o.proto == m.proto);
        if taken_by_other || repeated || m.host_port == 0 {
            return Err(NodePortError::InUse {
                port: m.host_port,
                proto: m.proto,
            });
        }
    }
    let mut maps = ServicesMap::open(&settings.pin_dir)?;
    let mut added = Vec::with_capacity(mappings.len());
    for m in mappings {
        let backends = vec![Backend {
            pod: None,
            ip: m.ip,
            port: m.container_port,
        }];
        let old = ports
            .iter()
            .position(|np| np.port == m.host_port && np.proto == m.proto);
        program(&mut maps, m.host_port, m.proto, &backends)?;
        let np = NodePort {
            port: m.host_port,
            proto: m.proto,
            backends,
            policy: Policy::Local,
            owner: Some(owner.to_owned()),
        };
        match old {
            Some(i) => ports[i] = np.clone(),
            None => ports.push(np.clone()),
        }
        added.push(np);
    }
    NodePorts::save(settings, &mut ports)?;
    Ok(added)
}

/// Removes every host port of `owner`. Returns how many went.
pub fn remove_host_ports(settings: &NodeSettings, owner: &str) -> Result<usize, NodePortError> {
    let _lock = NodePorts::lock(settings)?;
    let mut ports = NodePorts::load(settings)?;
    let (gone, kept): (Vec<NodePort>, Vec<NodePort>) = ports
        .drain(..)
        .partition(|np| np.owner.as_deref() == Some(owner));
    if gone.is_empty() {
        return Ok(0);
    }
    let mut maps = ServicesMap::open(&settings.pin_dir)?;
    for np in &gone {
        unprogram(&mut maps, np)?;
    }
    let mut kept = kept;
    NodePorts::save(settings, &mut kept)?;
    Ok(gone.len())
}

/// The host ports of `owner` whose map entries are missing or wrong (for CNI CHECK).
pub fn missing_host_ports(
    settings: &NodeSettings,
    owner: &str,
) -> Result<Vec<NodePort>, NodePortError> {
    let ports = NodePorts::load(settings)?;
    let maps = ServicesMap::open(&settings.pin_dir)?;
    let mut missing = Vec::new();
    for np in ports
        .into_iter()
        .filter(|np| np.owner.as_deref() == Some(owner))
    {
        let held = maps.get(&frontend(np.port, np.proto))?;
        let ok = held.is_some_and(|svc| {
            svc.backends.len() == np.backends.len()
                && svc
                    .backends
                    .iter()
                    .zip(&np.backends)
                    .all(|(have, want)| have.addr == want.ip && have.port == want.port)
        });
        if !ok {
            missing.push(np);
        }
    }
    Ok(missing)
}

/// Owners of host ports, for CNI GC.
pub fn host_port_owners(settings: &NodeSettings) -> Result<Vec<String>, NodePortError> {
    let mut owners: Vec<String> = NodePorts::load(settings)?
        .into_iter()
        .filter_map(|np| np.owner)
        .collect();
    owners.sort();
    owners.dedup();
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs_parse() {
        assert_eq!(
            "web:80".parse::<BackendSpec>().unwrap(),
            BackendSpec {
                target: BackendTarget::Pod("web".into()),
                port: 80
            }
        );
        assert_eq!(
            "10.244.1.2:8080".parse::<BackendSpec>().unwrap(),
            BackendSpec {
                target: BackendTarget::Ip(Ipv4Addr::new(10, 244, 1, 2)),
                port: 8080
            }
        );
        for bad in ["web", "web:0", "web:http", ":80", "web:65536"] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn protocols_parse() {
        assert_eq!("TCP".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("udp".parse::<Proto>().unwrap(), Proto::Udp);
        assert!("sctp".parse::<Proto>().is_err());
    }
}
