//! Services: the node's service table in the datapath. `service apply` (and the agent's full
//! sync) makes the table exactly a given one, all or nothing: the table is checked whole
//! against the node (service CIDR, NodePort range, frontends other owners hold) before anything
//! changes, and then only frontends whose map entries differ are written, compared against the
//! maps themselves (so a restart after a crash converges), removed ones first. The agent's
//! single changes go through [`Programmed::upsert`] and [`Programmed::remove`], which touch that
//! service's frontends only. Established connections keep their backend through conntrack,
//! except those to a backend that left its frontend (see [`stale`]): their flows and
//! balanced sockets are removed right after the maps stop offering it, by
//! [`Programmed::forget_stale`], which every change's caller runs once the change is written
//! (the agent after recording the change's programming latency, before the next change).
//!
//! What a Service says, in the datapath (per frontend: the backends in its slots):
//! - endpoints: ready ones; when none is ready, the serving ones that are terminating
//!   (KEP-1669); a frontend with none refuses new connections at once, and counts them;
//! - `externalTrafficPolicy: Local` (NodePort, LoadBalancer, externalIP frontends) and
//!   `internalTrafficPolicy: Local` (ClusterIP frontends): only this node's endpoints (those
//!   in its pod CIDR), so the client's address is kept;
//! - `sessionAffinity` and Maglev are carried as flags and the affinity timeout;
//! - families: each frontend gets the endpoints of its own family (an IPv6 ClusterIP the IPv6
//!   endpoints), so a dual-stack service is two sets of frontends over one list of endpoints;
//!   an endpoint is local when it is in the node's pod CIDR of its family.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Instant,
};

use podnet_ebpf::abi::{MAX_BACKENDS, backend_flag, svc_flag};
use serde::Serialize;

use super::{
    Ctx,
    error::{Error, Result},
    stale::{self, StaleReport},
};
use crate::{
    config::PodCidrs,
    datapath::services_map::{self, ServicesMapError},
    model::{
        nodeport::Proto,
        service::{
            Frontend, FrontendKind, Limits, LoadBalancing, Metadata, Service, ServicePort,
            ServiceTable, TrafficPolicy,
        },
    },
    store,
};

/// A frontend as the clash checks see it: address, port, protocol (NodePorts on the node IP).
type FrontendKey = (IpAddr, u16, Proto);

fn key_of(fe: &Frontend) -> FrontendKey {
    (fe.addr, fe.port, fe.proto)
}

/// Reads a service table: JSON (see [`ServiceTable`]); `-` is standard input.
pub fn read_table(path: &Path) -> Result<ServiceTable> {
    super::read_json_input(path, "{\"services\": [...]}")
}

/// What an apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Frontends written and removed in the maps.
    pub frontends_written: usize,
    pub frontends_removed: usize,
    /// Frontends and backend slots the table holds now.
    pub frontends: usize,
    pub backends: usize,
    /// Backends that left their frontends, and the flows and sockets of theirs removed.
    pub stale: StaleReport,
    pub elapsed_ms: u128,
}

fn node_ip(ctx: &Ctx) -> Result<Ipv4Addr> {
    ctx.settings.node_ip.ok_or_else(|| Error::NotInitialised {
        path: store::node::settings_file(&ctx.settings.state_dir),
    })
}

/// The frontends other owners hold on the node IP: NodePorts and CNI host ports.
fn nodeport_frontends(ctx: &Ctx, node_ip: Ipv4Addr) -> Result<HashSet<FrontendKey>> {
    Ok(store::nodeports::load(&ctx.settings.state_dir)?
        .into_iter()
        .map(|np| (IpAddr::V4(node_ip), np.port, np.proto))
        .collect())
}

/// The map frontend of a model frontend (NodePorts live under the NodePort address of their
/// family).
fn map_frontend(fe: &Frontend) -> services_map::Frontend {
    match fe.kind {
        FrontendKind::NodePort if fe.addr.is_ipv6() => {
            services_map::Frontend::nodeport6(fe.port, fe.proto.number())
        }
        FrontendKind::NodePort => services_map::Frontend::nodeport(fe.port, fe.proto.number()),
        _ => services_map::Frontend {
            addr: fe.addr,
            port: fe.port,
            proto: fe.proto.number(),
        },
    }
}

/// The service port a frontend of `svc` comes from.
fn service_port<'a>(svc: &'a Service, fe: &Frontend) -> &'a ServicePort {
    svc.spec
        .ports
        .iter()
        .find(|p| {
            p.protocol.eq_ignore_ascii_case(&fe.proto.to_string())
                && match fe.kind {
                    FrontendKind::NodePort => p.node_port == Some(fe.port),
                    _ => p.port == fe.port,
                }
        })
        .expect("every frontend comes from one of the service's ports")
}

/// Every endpoint of `svc` (whatever its conditions), per map frontend, as
/// `address:targetPort` -> serving: what [`stale::left`] keeps.
fn listed(
    svc: &Service,
    node_ip: Ipv4Addr,
) -> Result<Vec<(services_map::Frontend, stale::Listed)>> {
    let mut out = Vec::new();
    for fe in svc.frontends(node_ip)? {
        let target = service_port(svc, &fe).target();
        let endpoints = svc
            .backends()
            .into_iter()
            .map(|(addr, c, _)| (SocketAddr::new(addr, target), c.serving || c.ready))
            .collect();
        out.push((map_frontend(&fe), endpoints));
    }
    Ok(out)
}

/// The datapath entries of one service: one per frontend, with the backends that frontend
/// may use, this node's first.
fn entries(
    svc: &Service,
    node_ip: Ipv4Addr,
    pod_cidrs: PodCidrs,
    node_lb: LoadBalancing,
) -> Result<Vec<services_map::Service>> {
    let all = svc.backends();
    // KEP-1669: ready endpoints; when there are none, serving ones that are terminating.
    let ready: Vec<_> = all.iter().filter(|(_, c, _)| c.ready).collect();
    let usable: Vec<_> = if ready.is_empty() {
        all.iter()
            .filter(|(_, c, _)| c.serving && c.terminating)
            .collect()
    } else {
        ready
    };
    let mut out = Vec::new();
    for fe in svc.frontends(node_ip)? {
        let port = service_port(svc, &fe);
        let (kind_flag, local_only) = match fe.kind {
            FrontendKind::ClusterIp => (
                svc_flag::CLUSTER_IP,
                svc.spec.internal_traffic_policy == TrafficPolicy::Local,
            ),
            FrontendKind::NodePort => (
                svc_flag::NODE_PORT,
                svc.spec.external_traffic_policy == TrafficPolicy::Local,
            ),
            FrontendKind::ExternalIp => (
                svc_flag::EXTERNAL_IP,
                svc.spec.external_traffic_policy == TrafficPolicy::Local,
            ),
            FrontendKind::LoadBalancer => (
                svc_flag::LOAD_BALANCER,
                svc.spec.external_traffic_policy == TrafficPolicy::Local,
            ),
        };
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for (addr, c, _) in usable
            .iter()
            .filter(|(a, _, _)| a.is_ipv4() == fe.addr.is_ipv4())
        {
            let is_local = match addr {
                IpAddr::V4(a) => pod_cidrs.v4.is_some_and(|c| c.contains(*a)),
                IpAddr::V6(a) => pod_cidrs.v6.is_some_and(|c| c.contains(*a)),
            };
            let mut flags = 0;
            for (on, bit) in [
                (c.ready, backend_flag::READY),
                (c.serving, backend_flag::SERVING),
                (c.terminating, backend_flag::TERMINATING),
                (is_local, backend_flag::LOCAL),
            ] {
                if on {
                    flags |= bit;
                }
            }
            let backend = services_map::Backend {
                addr: *addr,
                port: port.target(),
                flags,
            };
            if is_local {
                local.push(backend);
            } else if !local_only {
                remote.push(backend);
            }
        }
        let local_count = u16::try_from(local.len()).unwrap_or(MAX_BACKENDS);
        local.extend(remote);
        let mut flags = kind_flag;
        if local_only {
            flags |= if fe.kind == FrontendKind::ClusterIp {
                svc_flag::INT_LOCAL
            } else {
                svc_flag::EXT_LOCAL
            };
        }
        let affinity_timeout = svc.affinity_timeout();
        if affinity_timeout.is_some() {
            flags |= svc_flag::AFFINITY;
        }
        if svc.spec.load_balancing.unwrap_or(node_lb) == LoadBalancing::Maglev {
            flags |= svc_flag::MAGLEV;
        }
        out.push(services_map::Service {
            frontend: map_frontend(&fe),
            backends: local,
            flags,
            local_count,
            affinity_timeout: affinity_timeout.unwrap_or(0),
        });
    }
    Ok(out)
}

/// The node's pod CIDRs, by family (an endpoint in them is local).
fn pod_cidrs(ctx: &Ctx) -> PodCidrs {
    PodCidrs {
        v4: Some(ctx.settings.pod_cidr),
        v6: ctx.settings.pod_cidr6,
    }
}

fn map_err(e: ServicesMapError) -> Error {
    match e {
        ServicesMapError::Datapath(e) => Error::Datapath(e),
        other => Error::BadBackend(other.to_string()),
    }
}

/// The node's service table as programmed: the services, and which frontend each holds.
#[derive(Debug, Default)]
pub struct Programmed {
    services: BTreeMap<Metadata, Service>,
    owners: HashMap<FrontendKey, Metadata>,
    /// Backend addresses over all services, kept as services come and go.
    backends: usize,
    /// Why sockets of backends that left could not be cleaned, since last taken.
    stale_errors: Vec<String>,
    /// Backends that left their frontends in changes written since the last
    /// [`Self::forget_stale`], whose flows and sockets are still to go.
    stale_pending: Vec<stale::Left>,
}

impl Programmed {
    /// The table as last saved (the maps may be ahead of it: a full sync compares with them).
    pub fn load(ctx: &Ctx) -> Result<Self> {
        let table = store::services::load(&ctx.settings.state_dir)?;
        let node_ip = node_ip(ctx)?;
        let mut me = Self::default();
        for svc in table.services {
            me.index(&svc, node_ip)?;
            me.services.insert(svc.metadata.clone(), svc);
        }
        Ok(me)
    }

    fn index(&mut self, svc: &Service, node_ip: Ipv4Addr) -> Result<()> {
        for fe in svc.frontends(node_ip)? {
            self.owners.insert(key_of(&fe), svc.metadata.clone());
        }
        self.backends += svc.backends().len();
        Ok(())
    }

    fn unindex(&mut self, svc: &Service, node_ip: Ipv4Addr) -> Result<()> {
        for fe in svc.frontends(node_ip)? {
            if self.owners.get(&key_of(&fe)) == Some(&svc.metadata) {
                self.owners.remove(&key_of(&fe));
            }
        }
        self.backends = self.backends.saturating_sub(svc.backends().len());
        Ok(())
    }

    /// Saves the table (the agent saves at most once a second; the maps are always current).
    pub fn save(&self, ctx: &Ctx) -> Result<()> {
        let table = ServiceTable {
            service_cidrs: Vec::new(),
            services: self.services.values().cloned().collect(),
        };
        Ok(store::services::save(&ctx.settings.state_dir, &table)?)
    }

    /// Removes the flows and balanced sockets of the backends that left in the changes written
    /// since the last call (see [`stale`]); call it after each change. A failure to clean
    /// sockets is kept for [`Self::take_stale_errors`], not returned: the maps are already
    /// right.
    pub fn forget_stale(&mut self, ctx: &Ctx) -> Result<StaleReport> {
        let left = std::mem::take(&mut self.stale_pending);
        let report = stale::forget(ctx, &left, node_ip(ctx)?)?;
        self.stale_errors
            .extend(report.socket_errors.iter().cloned());
        Ok(report)
    }

    /// Why sockets of backends that left could not be destroyed, since the last call.
    pub fn take_stale_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.stale_errors)
    }

    /// Services and backend addresses in the table.
    pub fn size(&self) -> (usize, usize) {
        (self.services.len(), self.backends)
    }

    /// The services, by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// Adds or replaces one service: checked against the node and the other services, then
    /// only its frontends are written (and the ones it no longer has removed).
    pub fn upsert(&mut self, ctx: &Ctx, svc: Service) -> Result<bool> {
        let node_ip = node_ip(ctx)?;
        if self.services.get(&svc.metadata) == Some(&svc) {
            return Ok(false);
        }
        let taken = nodeport_frontends(ctx, node_ip)?;
        ServiceTable {
            service_cidrs: Vec::new(),
            services: vec![svc.clone()],
        }
        .check(&limits(ctx, node_ip, &taken))?;
        // Frontends of the other services (an index lookup each, not a copy of the index).
        for fe in svc.frontends(node_ip)? {
            if let Some(owner) = self.owners.get(&key_of(&fe))
                && *owner != svc.metadata
            {
                return Err(crate::model::service::ServiceError::Clash {
                    frontend: fe.to_string(),
                    first: owner.to_string(),
                    second: svc.metadata.to_string(),
                }
                .into());
            }
        }
        let pod_cidrs = pod_cidrs(ctx);
        let new = entries(&svc, node_ip, pod_cidrs, ctx.settings.load_balancing)?;
        let before = match self.services.get(&svc.metadata) {
            Some(old) => entries(old, node_ip, pod_cidrs, ctx.settings.load_balancing)?,
            None => Vec::new(),
        };
        let mut maps = ctx.services()?;
        let kept: HashSet<services_map::Frontend> = new.iter().map(|e| e.frontend).collect();
        for e in &before {
            if !kept.contains(&e.frontend) {
                maps.delete(&e.frontend)?;
            }
        }
        maps.write_many(&new).map_err(map_err)?;
        drop(maps);
        let after = new.iter().map(|e| (e.frontend, e)).collect();
        let listed = listed(&svc, node_ip)?.into_iter().collect();
        let left = stale::left(&before, &after, &listed);
        if let Some(old) = self.services.remove(&svc.metadata) {
            self.unindex(&old, node_ip)?;
        }
        self.index(&svc, node_ip)?;
        self.services.insert(svc.metadata.clone(), svc);
        self.stale_pending.extend(left);
        Ok(true)
    }

    /// Removes one service's frontends; whether it existed.
    pub fn remove(&mut self, ctx: &Ctx, name: &Metadata) -> Result<Option<Service>> {
        let Some(old) = self.services.remove(name) else {
            return Ok(None);
        };
        let node_ip = node_ip(ctx)?;
        let before = entries(&old, node_ip, pod_cidrs(ctx), ctx.settings.load_balancing)?;
        let mut maps = ctx.services()?;
        for e in &before {
            maps.delete(&e.frontend)?;
        }
        drop(maps);
        self.unindex(&old, node_ip)?;
        self.stale_pending
            .extend(stale::left(&before, &HashMap::new(), &HashMap::new()));
        Ok(Some(old))
    }

    /// Makes the table exactly `services`, comparing with what the maps hold.
    pub fn replace_all(&mut self, ctx: &Ctx, services: Vec<Service>) -> Result<ApplyReport> {
        let started = Instant::now();
        let node_ip = node_ip(ctx)?;
        let table = ServiceTable {
            service_cidrs: Vec::new(),
            services,
        };
        let nodeports = nodeport_frontends(ctx, node_ip)?;
        table.check(&limits(ctx, node_ip, &nodeports))?;
        let mut report = ApplyReport::default();
        for svc in &table.services {
            match self.services.get(&svc.metadata) {
                Some(old) if old == svc => report.unchanged += 1,
                Some(_) => report.updated += 1,
                None => report.added += 1,
            }
        }
        let wanted: HashSet<&Metadata> = table.services.iter().map(|s| &s.metadata).collect();
        report.removed = self.services.keys().filter(|k| !wanted.contains(k)).count();
        let pod_cidrs = pod_cidrs(ctx);
        let mut desired = Vec::new();
        let mut endpoints = HashMap::new();
        for svc in &table.services {
            desired.extend(entries(
                svc,
                node_ip,
                pod_cidrs,
                ctx.settings.load_balancing,
            )?);
            endpoints.extend(listed(svc, node_ip)?);
        }
        report.frontends = desired.len();
        report.backends = desired.iter().map(|e| e.backends.len()).sum();
        let synced = sync_maps(ctx, &desired, &nodeports)?;
        report.frontends_written = synced.written;
        report.frontends_removed = synced.removed;
        let after = desired.iter().map(|e| (e.frontend, e)).collect();
        let left = stale::left(&synced.before, &after, &endpoints);
        self.services.clear();
        self.owners.clear();
        self.backends = 0;
        for svc in table.services {
            self.index(&svc, node_ip)?;
            self.services.insert(svc.metadata.clone(), svc);
        }
        self.stale_pending.extend(left);
        report.elapsed_ms = started.elapsed().as_millis();
        Ok(report)
    }
}

/// What [`sync_maps`] did.
struct Synced {
    written: usize,
    removed: usize,
    /// The table's frontends as the maps held them before (not the NodePorts of other owners).
    before: Vec<services_map::Service>,
}

/// Makes the service maps hold `desired` (and the NodePorts `nodeports`, which are not this
/// table's): removes every other frontend first, then writes the ones that differ.
fn sync_maps(
    ctx: &Ctx,
    desired: &[services_map::Service],
    nodeports: &HashSet<FrontendKey>,
) -> Result<Synced> {
    let mut maps = ctx.services()?;
    let current: HashMap<services_map::Frontend, services_map::Service> =
        maps.list()?.into_iter().map(|s| (s.frontend, s)).collect();
    let wanted: HashSet<services_map::Frontend> = desired.iter().map(|e| e.frontend).collect();
    let kept_nodeports: HashSet<services_map::Frontend> = nodeports
        .iter()
        .map(|(_, port, proto)| services_map::Frontend::nodeport(*port, proto.number()))
        .collect();
    let mut removed = 0;
    for fe in current.keys() {
        if !wanted.contains(fe) && !kept_nodeports.contains(fe) && maps.delete(fe)? {
            removed += 1;
        }
    }
    let changed: Vec<services_map::Service> = desired
        .iter()
        .filter(|e| current.get(&e.frontend) != Some(*e))
        .cloned()
        .collect();
    maps.write_many(&changed).map_err(map_err)?;
    let before = current
        .into_iter()
        .filter(|(fe, _)| wanted.contains(fe) || !kept_nodeports.contains(fe))
        .map(|(_, s)| s)
        .collect();
    Ok(Synced {
        written: changed.len(),
        removed,
        before,
    })
}

fn limits<'a>(ctx: &Ctx, node_ip: Ipv4Addr, taken: &'a HashSet<FrontendKey>) -> Limits<'a> {
    Limits {
        service_cidr: ctx.settings.service_cidr,
        service_cidr6: ctx.settings.service_cidr6,
        nodeport_range: ctx.settings.nodeport_range,
        node_ip,
        max_backends: usize::from(MAX_BACKENDS),
        taken,
    }
}

/// `service apply`: makes the node's table exactly `table`, and saves it.
pub fn apply(ctx: &Ctx, table: ServiceTable) -> Result<ApplyReport> {
    table.check_cidrs(ctx.settings.service_cidr, ctx.settings.service_cidr6)?;
    let _lock = store::services::lock(&ctx.settings.state_dir)?;
    let mut programmed = Programmed::load(ctx)?;
    let mut report = programmed.replace_all(ctx, table.services)?;
    let cleaning = Instant::now();
    report.stale = programmed.forget_stale(ctx)?;
    report.elapsed_ms += cleaning.elapsed().as_millis();
    programmed.save(ctx)?;
    Ok(report)
}

/// One service as `service list|show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub namespace: String,
    #[serde(rename = "type")]
    pub service_type: String,
    pub frontends: Vec<Frontend>,
    /// `ADDRESS:PORT` of each endpoint, with its state when not ready and its node.
    pub backends: Vec<String>,
    pub service: Service,
}

fn view(svc: &Service, node_ip: Ipv4Addr) -> Result<ServiceView> {
    let mut backends = Vec::new();
    for (addr, c, node) in svc.backends() {
        let mut state = Vec::new();
        if !c.ready {
            state.push("not-ready");
        }
        if c.terminating {
            state.push("terminating");
        }
        let node = node.map_or_else(String::new, |n| format!("@{n}"));
        let state = if state.is_empty() {
            String::new()
        } else {
            format!(" ({})", state.join(","))
        };
        backends.push(format!("{addr}{node}{state}"));
    }
    Ok(ServiceView {
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        service_type: format!("{:?}", svc.spec.service_type),
        frontends: svc.frontends(node_ip)?,
        backends,
        service: svc.clone(),
    })
}

/// `service list`.
pub fn list(ctx: &Ctx) -> Result<Vec<ServiceView>> {
    let node_ip = node_ip(ctx)?;
    store::services::load(&ctx.settings.state_dir)?
        .services
        .iter()
        .map(|s| view(s, node_ip))
        .collect()
}

/// Parses `NAMESPACE/NAME` (or `NAME`, in `default`).
pub fn parse_name(name: &str) -> Metadata {
    match name.split_once('/') {
        Some((namespace, name)) => Metadata {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        },
        None => Metadata {
            name: name.to_owned(),
            namespace: "default".to_owned(),
        },
    }
}

/// `service show NAMESPACE/NAME`.
pub fn show(ctx: &Ctx, name: &str) -> Result<ServiceView> {
    let wanted = parse_name(name);
    let table = store::services::load(&ctx.settings.state_dir)?;
    let svc = table
        .services
        .iter()
        .find(|s| s.metadata == wanted)
        .ok_or_else(|| Error::ServiceNotFound {
            name: wanted.to_string(),
        })?;
    view(svc, node_ip(ctx)?)
}

/// `service del NAMESPACE/NAME`: the service's frontends go; its established TCP connections
/// finish on their backends, its UDP flows and balanced UDP sockets go (see [`stale`]).
pub fn del(ctx: &Ctx, name: &str) -> Result<ServiceView> {
    let wanted = parse_name(name);
    let _lock = store::services::lock(&ctx.settings.state_dir)?;
    let mut programmed = Programmed::load(ctx)?;
    let gone = programmed
        .remove(ctx, &wanted)?
        .ok_or_else(|| Error::ServiceNotFound {
            name: wanted.to_string(),
        })?;
    programmed.forget_stale(ctx)?;
    programmed.save(ctx)?;
    view(&gone, node_ip(ctx)?)
}

/// Forgets the table (`node reset`: the maps go with the pins).
pub fn clear(settings: &crate::config::NodeSettings) -> Result<()> {
    Ok(store::services::clear(&settings.state_dir)?)
}
