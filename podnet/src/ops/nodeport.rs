//! NodePorts: `nodeIP:PORT/PROTO` spread over backends (local pods, by name or address), like a
//! Kubernetes NodePort service with kube-proxy's `iptables -t nat ... DNAT` rules, but held in
//! the `SERVICES` map that the datapath reads. The records in `<state_dir>/nodeports.json` keep
//! what the map cannot (pod names), and say what `nodeport list` shows.
//!
//! Map updates are ordered so the datapath never sees a slot that is not there: backend slots
//! are written before the count that exposes them, and the count is lowered before the slots it
//! no longer covers are removed. Existing connections keep their backend through conntrack, so
//! removing a backend stops only new connections to it.

use std::{collections::HashSet, net::Ipv4Addr};

use podnet_ebpf::abi::{MAX_BACKENDS, backend_flag, svc_flag};
use serde::Serialize;

use super::{
    Ctx,
    error::{Error, Result},
    peer,
};
use crate::{
    datapath::{
        DatapathError,
        services_map::{self, Frontend, Service, ServicesMap, ServicesMapError},
    },
    model::{
        nodeport::{
            Backend, BackendSpec, BackendTarget, HostPort, NodePort, NodePortSpec, Policy, Proto,
        },
        peer::PeerNode,
        pod::PodRecord,
        service::FrontendKind,
    },
    store,
    sys::procfs::{self, Transport},
};

/// The NodePorts the service table holds: not free for `nodeport add` or a host port.
fn service_nodeports(ctx: &Ctx) -> Result<HashSet<(u16, Proto)>> {
    let node_ip = ctx.settings.node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mut out = HashSet::new();
    for svc in store::services::load(&ctx.settings.state_dir)?.services {
        for fe in svc.frontends(node_ip)? {
            if fe.kind == FrontendKind::NodePort {
                out.insert((fe.port, fe.proto));
            }
        }
    }
    Ok(out)
}

fn transport(proto: Proto) -> Transport {
    match proto {
        Proto::Tcp => Transport::Tcp,
        Proto::Udp => Transport::Udp,
    }
}

fn frontend(port: u16, proto: Proto) -> Frontend {
    Frontend::nodeport(port, proto.number())
}

/// Writes `backends` for `port`/`proto` (replacing what the maps held for it). A NodePort left
/// with no backends keeps its entry, so the datapath refuses its new connections and counts
/// them.
fn program(
    maps: &mut ServicesMap,
    port: u16,
    proto: Proto,
    backends: &[Backend],
) -> Result<(), Error> {
    let svc = Service {
        frontend: frontend(port, proto),
        backends: backends
            .iter()
            .map(|b| services_map::Backend {
                addr: b.ip.into(),
                port: b.port,
                flags: backend_flag::READY | backend_flag::SERVING,
            })
            .collect(),
        flags: svc_flag::NODE_PORT,
        local_count: 0,
        affinity_timeout: 0,
    };
    maps.write(&svc).map_err(|e| match e {
        ServicesMapError::Datapath(e) => Error::Datapath(e),
        other => Error::BadBackend(other.to_string()),
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
    ctx: &'a Ctx,
    pods: Vec<PodRecord>,
    peers: Option<Vec<PeerNode>>,
}

impl<'a> Resolver<'a> {
    fn new(ctx: &'a Ctx) -> Result<Self> {
        Ok(Self {
            ctx,
            pods: store::pods::list(&ctx.settings.state_dir)?,
            peers: None,
        })
    }

    fn on_peer(&mut self, ip: Ipv4Addr) -> Result<bool> {
        if self.peers.is_none() {
            self.peers = Some(peer::list(self.ctx)?);
        }
        Ok(self
            .peers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|p| p.pod_cidr.contains(ip)))
    }

    /// Resolves and checks `specs` for a NodePort with `policy`.
    fn resolve(&mut self, specs: &[BackendSpec], policy: Policy) -> Result<Vec<Backend>> {
        if specs.is_empty() {
            return Err(Error::NoBackends);
        }
        if specs.len() > usize::from(MAX_BACKENDS) {
            return Err(Error::TooManyBackends { count: specs.len() });
        }
        let mut out: Vec<Backend> = Vec::with_capacity(specs.len());
        for spec in specs {
            let backend = match &spec.target {
                BackendTarget::Pod(name) => {
                    let pod = self.pods.iter().find(|p| &p.name == name).ok_or_else(|| {
                        Error::UnknownPod {
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
                    let allowed = self.ctx.settings.pod_cidr.contains(*ip)
                        || (policy == Policy::Cluster && self.on_peer(*ip)?);
                    if !allowed {
                        return Err(Error::NotLocal {
                            ip: *ip,
                            pod_cidr: self.ctx.settings.pod_cidr,
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
                return Err(Error::DuplicateBackend {
                    backend: backend.to_string(),
                });
            }
            out.push(backend);
        }
        Ok(out)
    }
}

/// `nodeport add`: a new NodePort.
pub fn add(
    ctx: &Ctx,
    port: u16,
    proto: Proto,
    specs: &[BackendSpec],
    policy: Policy,
) -> Result<NodePort> {
    if !ctx.settings.nodeport_range.contains(port) {
        return Err(Error::OutOfRange {
            port,
            range: ctx.settings.nodeport_range,
        });
    }
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let mut ports = store::nodeports::load(&ctx.settings.state_dir)?;
    if ports.iter().any(|np| np.port == port && np.proto == proto)
        || service_nodeports(ctx)?.contains(&(port, proto))
    {
        return Err(Error::PortInUse { port, proto });
    }
    if procfs::bound_ports(transport(proto)).contains(&port) {
        return Err(Error::SocketInUse { port, proto });
    }
    let backends = Resolver::new(ctx)?.resolve(specs, policy)?;
    let mut maps = ctx.services()?;
    program(&mut maps, port, proto, &backends)?;
    let np = NodePort {
        port,
        proto,
        backends,
        policy,
        owner: None,
    };
    ports.push(np.clone());
    store::nodeports::save(&ctx.settings.state_dir, &mut ports)?;
    Ok(np)
}

/// `nodeport set`: replaces the backends of an existing NodePort.
pub fn set(ctx: &Ctx, port: u16, proto: Proto, specs: &[BackendSpec]) -> Result<NodePort> {
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let mut ports = store::nodeports::load(&ctx.settings.state_dir)?;
    let np = ports
        .iter_mut()
        .find(|np| np.port == port && np.proto == proto)
        .ok_or(Error::NodePortNotFound { port, proto })?;
    let backends = Resolver::new(ctx)?.resolve(specs, np.policy)?;
    let mut maps = ctx.services()?;
    program(&mut maps, port, proto, &backends)?;
    np.backends = backends;
    let updated = np.clone();
    store::nodeports::save(&ctx.settings.state_dir, &mut ports)?;
    Ok(updated)
}

/// `nodeport del`: removes a NodePort. Established connections finish on their backends.
pub fn del(ctx: &Ctx, port: u16, proto: Proto) -> Result<NodePort> {
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let mut ports = store::nodeports::load(&ctx.settings.state_dir)?;
    let index = ports
        .iter()
        .position(|np| np.port == port && np.proto == proto)
        .ok_or(Error::NodePortNotFound { port, proto })?;
    let np = ports.remove(index);
    unprogram(&mut *ctx.services()?, &np)?;
    store::nodeports::save(&ctx.settings.state_dir, &mut ports)?;
    Ok(np)
}

/// `nodeport list`.
pub fn list(ctx: &Ctx) -> Result<Vec<NodePort>> {
    Ok(store::nodeports::load(&ctx.settings.state_dir)?)
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
pub fn apply(ctx: &Ctx, specs: &[NodePortSpec]) -> Result<ApplySummary> {
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let ports = store::nodeports::load(&ctx.settings.state_dir)?;
    let mut resolver = Resolver::new(ctx)?;
    let mut desired: Vec<NodePort> = Vec::with_capacity(specs.len());
    let mut seen = HashSet::with_capacity(specs.len());
    let bound = [Proto::Tcp, Proto::Udp].map(|p| procfs::bound_ports(transport(p)));
    let services = service_nodeports(ctx)?;
    for (index, spec) in specs.iter().enumerate() {
        let (port, proto) = (spec.port, spec.proto);
        let entry = |source: Error| Error::Entry {
            index: index + 1,
            port,
            proto,
            source: Box::new(source),
        };
        if !ctx.settings.nodeport_range.contains(port) {
            return Err(entry(Error::OutOfRange {
                port,
                range: ctx.settings.nodeport_range,
            }));
        }
        if !seen.insert((port, proto)) {
            return Err(entry(Error::Repeated { port, proto }));
        }
        let existing = ports.iter().find(|np| np.port == port && np.proto == proto);
        if existing.is_some_and(|np| np.owner.is_some()) || services.contains(&(port, proto)) {
            return Err(entry(Error::PortInUse { port, proto }));
        }
        let bound = &bound[usize::from(proto == Proto::Udp)];
        if existing.is_none() && bound.contains(&port) {
            return Err(entry(Error::SocketInUse { port, proto }));
        }
        let backend_specs = spec
            .backends
            .iter()
            .map(|b| b.parse::<BackendSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| entry(Error::BadBackend(e)))?;
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
    if needed > ctx.settings.services_max as usize {
        return Err(Error::ServicesFull {
            needed,
            max: ctx.settings.services_max,
        });
    }

    let mut maps = ctx.services()?;
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
    store::nodeports::save(&ctx.settings.state_dir, &mut all)?;
    Ok(summary)
}

/// Reads a `nodeport apply` file: a JSON array of [`NodePortSpec`]; `-` is standard input.
pub fn read_specs(path: &std::path::Path) -> Result<Vec<NodePortSpec>> {
    super::read_json_input(
        path,
        "a JSON array of {\"port\", \"proto\", \"backends\", \"policy\"}",
    )
}

/// Removes pod `name` from every NodePort's backends (the pod is being deleted). Returns how
/// many backends went.
pub fn forget_pod(ctx: &Ctx, name: &str) -> Result<usize> {
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let mut ports = store::nodeports::load(&ctx.settings.state_dir)?;
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
            None => maps.insert(ctx.services()?),
        };
        program(maps, np.port, np.proto, &kept)?;
        removed += before - kept.len();
        np.backends = kept;
    }
    if removed > 0 {
        store::nodeports::save(&ctx.settings.state_dir, &mut ports)?;
    }
    Ok(removed)
}

/// Adds `mappings` for `owner` (a CNI attachment), all or nothing. Host ports are not limited to
/// the NodePort range (that is what the `portmap` plugin allows too) but must be free.
pub fn add_host_ports(ctx: &Ctx, owner: &str, mappings: &[HostPort]) -> Result<Vec<NodePort>> {
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let mut ports = store::nodeports::load(&ctx.settings.state_dir)?;
    let services = service_nodeports(ctx)?;
    for (i, m) in mappings.iter().enumerate() {
        let taken_by_other = ports.iter().any(|np| {
            np.port == m.host_port && np.proto == m.proto && np.owner.as_deref() != Some(owner)
        });
        let repeated = mappings[..i]
            .iter()
            .any(|o| o.host_port == m.host_port && o.proto == m.proto);
        let service = services.contains(&(m.host_port, m.proto));
        if taken_by_other || repeated || service || m.host_port == 0 {
            return Err(Error::PortInUse {
                port: m.host_port,
                proto: m.proto,
            });
        }
    }
    let mut maps = ctx.services()?;
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
    store::nodeports::save(&ctx.settings.state_dir, &mut ports)?;
    Ok(added)
}

/// Removes every host port of `owner`. Returns how many went.
pub fn remove_host_ports(ctx: &Ctx, owner: &str) -> Result<usize> {
    let _lock = store::nodeports::lock(&ctx.settings.state_dir)?;
    let mut ports = store::nodeports::load(&ctx.settings.state_dir)?;
    let (gone, kept): (Vec<NodePort>, Vec<NodePort>) = ports
        .drain(..)
        .partition(|np| np.owner.as_deref() == Some(owner));
    if gone.is_empty() {
        return Ok(0);
    }
    let mut maps = ctx.services()?;
    for np in &gone {
        unprogram(&mut maps, np)?;
    }
    let mut kept = kept;
    store::nodeports::save(&ctx.settings.state_dir, &mut kept)?;
    Ok(gone.len())
}

/// The host ports of `owner` whose map entries are missing or wrong (for CNI CHECK).
pub fn missing_host_ports(ctx: &Ctx, owner: &str) -> Result<Vec<NodePort>> {
    let ports = store::nodeports::load(&ctx.settings.state_dir)?;
    let maps = ctx.services()?;
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
pub fn host_port_owners(ctx: &Ctx) -> Result<Vec<String>> {
    let mut owners: Vec<String> = store::nodeports::load(&ctx.settings.state_dir)?
        .into_iter()
        .filter_map(|np| np.owner)
        .collect();
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// Forgets every NodePort record (`node reset`: the map goes with the pins).
pub fn clear(settings: &crate::config::NodeSettings) -> Result<()> {
    Ok(store::nodeports::clear(&settings.state_dir)?)
}
