//! Kubernetes Services as podnet holds them: what a Service and its EndpointSlices say, in
//! Kubernetes' own field names, so the agent maps the API objects to it field by field and a
//! user can write the same JSON by hand (`podnet service apply -f FILE`). Checking a table
//! ([`ServiceTable::check`]) needs only the node's settings and changes nothing.
//!
//! A service becomes one datapath frontend per (address, port, protocol): each ClusterIP, each
//! externalIP and each LoadBalancer ingress IP with the service's ports, and the node IP with
//! each port's NodePort. Its backends are the endpoints' addresses with the port's target port.
//!
//! Both address families: a service has a ClusterIP of each family it has (`clusterIPs`,
//! `ipFamilies`, `ipFamilyPolicy`: SingleStack one, RequireDualStack both, PreferDualStack one
//! or both); its externalIPs, LoadBalancer IPs and endpoints must be of those families, and a
//! frontend's backends are the endpoints of its family. A NodePort is offered on the node's
//! address of each family the service has (an IPv6 NodePort frontend is shown as `[::]`).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::{nodeport::Proto, port_range::PortRange};

/// Longest `sessionAffinityConfig.clientIP.timeoutSeconds` Kubernetes accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// Kubernetes' default affinity timeout (three hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// The whole table `service apply` makes the node's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceTable {
    /// The service CIDRs the table was made for (optional): they must be the node's
    /// (`node init --service-cidr`), so a table for another cluster is refused whole.
    #[serde(
        default,
        rename = "serviceCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cidrs: Vec<IpNetwork>,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
    #[serde(default)]
    pub status: ServiceStatus,
    /// The endpoints of every EndpointSlice of the service, merged.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl std::fmt::Display for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// A DNS alias: nothing for a proxy to do; refused in a table.
    ExternalName,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Backends on any node.
    #[default]
    Cluster,
    /// Only this node's backends; the client's address is kept.
    Local,
}

/// `sessionAffinity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    /// Every new connection from one client address goes to the same backend until the
    /// timeout passes without traffic.
    ClientIP,
}

/// `spec.ipFamilies`: the address families a service has ClusterIPs of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> Self {
        if addr.is_ipv4() {
            Self::IPv4
        } else {
            Self::IPv6
        }
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    /// One ClusterIP.
    SingleStack,
    /// Both families if the cluster has them (one ClusterIP of each), else one.
    PreferDualStack,
    /// A ClusterIP of each family.
    RequireDualStack,
}

/// How a new connection's backend is chosen (podnet's own field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancing {
    #[default]
    Random,
    Maglev,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type", default)]
    pub service_type: ServiceType,
    /// Empty or `["None"]`: headless (no frontend).
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default)]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
    /// podnet's own: `random` or `maglev`; unset, the node's setting (`random` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// The families of the ClusterIPs (Kubernetes' `ipFamilies`), in the order of
    /// `clusterIPs`; optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<IpFamily>,
    /// Kubernetes' `ipFamilyPolicy`; optional (checked against the ClusterIPs when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<IpFamilyPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: ClientIpConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub port: u16,
    /// The backends' port; the service port when not given.
    #[serde(default)]
    pub target_port: Option<u16>,
    #[serde(default)]
    pub node_port: Option<u16>,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

impl ServicePort {
    /// The backends' port.
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub load_balancer: LoadBalancerStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    pub ip: IpAddr,
}

/// One EndpointSlice endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub conditions: Conditions,
    #[serde(default)]
    pub node_name: Option<String>,
}

/// KEP-1669's endpoint conditions. Absent fields mean what Kubernetes says they mean: ready
/// and serving unless told otherwise, not terminating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default = "yes")]
    pub serving: bool,
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// What can be wrong with a service table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service {service}: {what}")]
    Invalid { service: String, what: String },
    #[error(
        "the table's service CIDR {table} is not the node's {node} (set with `node init --service-cidr`)"
    )]
    Cidr { table: IpNetwork, node: String },
    #[error("service {service} is listed twice")]
    Repeated { service: String },
    #[error("{frontend} is a frontend of both {first} and {second}")]
    Clash {
        frontend: String,
        first: String,
        second: String,
    },
}

/// One frontend: where clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub kind: FrontendKind,
}

/// Which field of the service a frontend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// Whether externalTrafficPolicy (rather than internalTrafficPolicy) governs it.
    pub fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(addr) => write!(f, "{addr}:{}/{}", self.port, self.proto),
            IpAddr::V6(addr) => write!(f, "[{addr}]:{}/{}", self.port, self.proto),
        }
    }
}

/// What [`ServiceTable::check`] checks against: the node's settings.
pub struct Limits<'a> {
    pub service_cidr: Ipv4Network,
    /// The IPv6 service CIDR, if the node has one (else IPv6 ClusterIPs are refused).
    pub service_cidr6: Option<Ipv6Network>,
    pub nodeport_range: PortRange,
    pub node_ip: Ipv4Addr,
    pub max_backends: usize,
    /// Frontends other owners hold (NodePorts of `nodeport add` and CNI host ports).
    pub taken: &'a HashSet<(IpAddr, u16, Proto)>,
}

impl Service {
    fn invalid(&self, what: impl Into<String>) -> ServiceError {
        ServiceError::Invalid {
            service: self.metadata.to_string(),
            what: what.into(),
        }
    }

    /// The ClusterIPs, parsed (empty for a headless service).
    pub fn cluster_ips(&self) -> Result<Vec<IpAddr>, ServiceError> {
        let ips = &self.spec.cluster_ips;
        if ips.is_empty() || ips.iter().any(|ip| ip == "None") {
            return Ok(Vec::new());
        }
        ips.iter()
            .map(|ip| {
                ip.parse()
                    .map_err(|_| self.invalid(format!("clusterIP {ip:?} is not an IP address")))
            })
            .collect()
    }

    /// The families of the service's ClusterIPs, in order (none when headless).
    pub fn families(&self) -> Result<Vec<IpFamily>, ServiceError> {
        Ok(self.cluster_ips()?.iter().map(IpFamily::of).collect())
    }

    /// Whether the service has no ClusterIP (headless: no frontend, no balancing).
    pub fn is_headless(&self) -> bool {
        self.cluster_ips().is_ok_and(|ips| ips.is_empty())
    }

    /// The affinity timeout in seconds, when sessionAffinity is ClientIP.
    pub fn affinity_timeout(&self) -> Option<u32> {
        (self.spec.session_affinity == SessionAffinity::ClientIP).then(|| {
            self.spec
                .session_affinity_config
                .as_ref()
                .map_or(DEFAULT_AFFINITY_TIMEOUT_S, |c| c.client_ip.timeout_seconds)
        })
    }

    /// Every frontend of the service (none when headless). NodePorts are on `node_ip` for
    /// IPv4 and on the unspecified IPv6 address (`[::]`, any of the node's) for IPv6, each for
    /// a family the service has a ClusterIP of.
    pub fn frontends(&self, node_ip: Ipv4Addr) -> Result<Vec<Frontend>, ServiceError> {
        let cluster = self.cluster_ips()?;
        if cluster.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for port in &self.spec.ports {
            let proto = self.proto(port)?;
            let mut add = |addr, port, kind| {
                out.push(Frontend {
                    addr,
                    port,
                    proto,
                    kind,
                });
            };
            for ip in &cluster {
                add(*ip, port.port, FrontendKind::ClusterIp);
            }
            for ip in &self.spec.external_ips {
                add(*ip, port.port, FrontendKind::ExternalIp);
            }
            for ingress in &self.status.load_balancer.ingress {
                add(ingress.ip, port.port, FrontendKind::LoadBalancer);
            }
            if let Some(node_port) = port.node_port {
                for ip in &cluster {
                    let node = match ip {
                        IpAddr::V4(_) => IpAddr::V4(node_ip),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    };
                    add(node, node_port, FrontendKind::NodePort);
                }
            }
        }
        Ok(out)
    }

    fn proto(&self, port: &ServicePort) -> Result<Proto, ServiceError> {
        match port.protocol.as_str() {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(self.invalid(format!(
                "port {}: protocol {other:?} is not TCP or UDP",
                port.port
            ))),
        }
    }

    /// The backend addresses of the service, deduplicated, in the order given, each with its
    /// conditions and whether it runs on `node`.
    pub fn backends(&self) -> Vec<(IpAddr, Conditions, Option<&str>)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for ep in &self.endpoints {
            for addr in &ep.addresses {
                if seen.insert(*addr) {
                    out.push((*addr, ep.conditions, ep.node_name.as_deref()));
                }
            }
        }
        out
    }

    /// Checks one service against the node's limits.
    fn check(&self, limits: &Limits<'_>) -> Result<(), ServiceError> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        };
        if !name_ok(&self.metadata.name) || !name_ok(&self.metadata.namespace) {
            return Err(self.invalid("names must be DNS labels ([a-z0-9.-], 1-253 characters)"));
        }
        if self.spec.service_type == ServiceType::ExternalName {
            return Err(self.invalid("ExternalName services are DNS aliases, not proxied"));
        }
        self.check_families(limits)?;
        if self.spec.ports.is_empty() && !self.is_headless() {
            return Err(self.invalid("a service with a ClusterIP needs at least one port"));
        }
        let mut ports = HashSet::new();
        for port in &self.spec.ports {
            let proto = self.proto(port)?;
            if port.port == 0 || port.target_port == Some(0) {
                return Err(self.invalid("ports are 1-65535"));
            }
            if !ports.insert((port.port, proto)) {
                return Err(self.invalid(format!("port {}/{proto} is listed twice", port.port)));
            }
            if let Some(np) = port.node_port {
                if self.spec.service_type == ServiceType::ClusterIP {
                    return Err(self.invalid("a ClusterIP service has no nodePort"));
                }
                if !limits.nodeport_range.contains(np) {
                    return Err(self.invalid(format!(
                        "nodePort {np} is outside the NodePort range {}",
                        limits.nodeport_range
                    )));
                }
            }
        }
        self.check_semantics(limits)
    }

    /// ClusterIPs (at most one per family, each in its family's service CIDR), `ipFamilies`
    /// and `ipFamilyPolicy` (consistent with them), and the families of externalIPs,
    /// LoadBalancer IPs and endpoints (each one the service has a ClusterIP of).
    fn check_families(&self, limits: &Limits<'_>) -> Result<(), ServiceError> {
        let cluster = self.cluster_ips()?;
        let families: Vec<IpFamily> = cluster.iter().map(IpFamily::of).collect();
        if cluster.len() > 2 || (cluster.len() == 2 && families[0] == families[1]) {
            return Err(self.invalid(format!(
                "clusterIPs {:?}: at most one IPv4 and one IPv6 ClusterIP",
                self.spec.cluster_ips
            )));
        }
        for ip in &cluster {
            match ip {
                IpAddr::V4(v4) if !limits.service_cidr.contains(*v4) => {
                    return Err(self.invalid(format!(
                        "clusterIP {ip} is outside the service CIDR {}",
                        limits.service_cidr
                    )));
                }
                IpAddr::V6(v6) => match limits.service_cidr6 {
                    None => {
                        return Err(self.invalid(format!(
                            "clusterIP {ip} is IPv6 but the node has no IPv6 service CIDR (set one with `node init --service-cidr fd00:10:96::/112`, next to the IPv4 one)"
                        )));
                    }
                    Some(cidr) if !cidr.contains(*v6) => {
                        return Err(self.invalid(format!(
                            "clusterIP {ip} is outside the IPv6 service CIDR {cidr}"
                        )));
                    }
                    Some(_) => {}
                },
                IpAddr::V4(_) => {}
            }
        }
        let given = &self.spec.ip_families;
        if !given.is_empty() && !cluster.is_empty() && *given != families {
            return Err(self.invalid(format!(
                "ipFamilies {given:?} do not match the families of clusterIPs {:?} ({families:?})",
                self.spec.cluster_ips
            )));
        }
        if !cluster.is_empty() {
            match self.spec.ip_family_policy {
                Some(IpFamilyPolicy::SingleStack) if cluster.len() > 1 => {
                    return Err(self.invalid(
                        "ipFamilyPolicy SingleStack with two clusterIPs (use PreferDualStack or RequireDualStack)",
                    ));
                }
                Some(IpFamilyPolicy::RequireDualStack) if cluster.len() < 2 => {
                    return Err(self.invalid(format!(
                        "ipFamilyPolicy RequireDualStack needs a ClusterIP of each family, clusterIPs are {:?}",
                        self.spec.cluster_ips
                    )));
                }
                _ => {}
            }
        }
        if cluster.is_empty() {
            return Ok(());
        }
        let addresses = self
            .spec
            .external_ips
            .iter()
            .map(|ip| ("externalIP", *ip))
            .chain(
                self.status
                    .load_balancer
                    .ingress
                    .iter()
                    .map(|i| ("LoadBalancer IP", i.ip)),
            )
            .chain(
                self.endpoints
                    .iter()
                    .flat_map(|ep| ep.addresses.iter().map(|a| ("endpoint", *a))),
            );
        for (what, addr) in addresses {
            if !families.contains(&IpFamily::of(&addr)) {
                return Err(self.invalid(format!(
                    "{what} {addr} is {:?} but the service has no {:?} ClusterIP (clusterIPs {:?}): a frontend's backends are of its family",
                    IpFamily::of(&addr),
                    IpFamily::of(&addr),
                    self.spec.cluster_ips
                )));
            }
        }
        Ok(())
    }

    /// Affinity, policies, health-check port and endpoints.
    fn check_semantics(&self, limits: &Limits<'_>) -> Result<(), ServiceError> {
        if let Some(timeout) = self.affinity_timeout()
            && !(1..=MAX_AFFINITY_TIMEOUT_S).contains(&timeout)
        {
            return Err(self.invalid(format!(
                "sessionAffinityConfig.clientIP.timeoutSeconds {timeout} is outside 1-{MAX_AFFINITY_TIMEOUT_S}"
            )));
        }
        if let Some(hc) = self.spec.health_check_node_port {
            let external = matches!(
                self.spec.service_type,
                ServiceType::NodePort | ServiceType::LoadBalancer
            );
            if !external || self.spec.external_traffic_policy != TrafficPolicy::Local {
                return Err(self.invalid(
                    "healthCheckNodePort needs type LoadBalancer or NodePort with externalTrafficPolicy Local",
                ));
            }
            if hc == 0 {
                return Err(self.invalid("healthCheckNodePort 0 is not a port"));
            }
        }
        let mut seen = HashSet::new();
        for ep in &self.endpoints {
            if ep.addresses.is_empty() {
                return Err(self.invalid("an endpoint has no address"));
            }
            for addr in &ep.addresses {
                if !seen.insert(*addr) {
                    return Err(self.invalid(format!("endpoint {addr} is listed twice")));
                }
            }
        }
        if seen.len() > limits.max_backends {
            return Err(self.invalid(format!(
                "{} endpoints; a service has at most {}",
                seen.len(),
                limits.max_backends
            )));
        }
        Ok(())
    }
}

impl ServiceTable {
    /// The table's service CIDRs, if it names any, must be the node's (of their family).
    pub fn check_cidrs(
        &self,
        node: Ipv4Network,
        node6: Option<Ipv6Network>,
    ) -> Result<(), ServiceError> {
        for cidr in &self.service_cidrs {
            match cidr {
                IpNetwork::V4(c) if *c != node => {
                    return Err(ServiceError::Cidr {
                        table: *cidr,
                        node: node.to_string(),
                    });
                }
                IpNetwork::V6(c) if Some(*c) != node6 => {
                    return Err(ServiceError::Cidr {
                        table: *cidr,
                        node: node6.map_or_else(|| "none (IPv6)".to_owned(), |n| n.to_string()),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks the whole table: every service on its own, no service twice, and no frontend
    /// held by two services or by another owner. Changes nothing.
    pub fn check(&self, limits: &Limits<'_>) -> Result<(), ServiceError> {
        self.check_cidrs(limits.service_cidr, limits.service_cidr6)?;
        let mut names = HashSet::new();
        let mut owners: std::collections::HashMap<(IpAddr, u16, Proto), &Metadata> =
            std::collections::HashMap::new();
        for svc in &self.services {
            svc.check(limits)?;
            if !names.insert(&svc.metadata) {
                return Err(ServiceError::Repeated {
                    service: svc.metadata.to_string(),
                });
            }
            for fe in svc.frontends(limits.node_ip)? {
                let key = (fe.addr, fe.port, fe.proto);
                if limits.taken.contains(&key) {
                    return Err(ServiceError::Clash {
                        frontend: fe.to_string(),
                        first: "a NodePort or CNI host port".to_owned(),
                        second: svc.metadata.to_string(),
                    });
                }
                if let Some(first) = owners.insert(key, &svc.metadata)
                    && first != &svc.metadata
                {
                    return Err(ServiceError::Clash {
                        frontend: fe.to_string(),
                        first: first.to_string(),
                        second: svc.metadata.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(taken: &HashSet<(IpAddr, u16, Proto)>) -> Limits<'_> {
        Limits {
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            service_cidr6: Some("fd00:10:96::/112".parse().unwrap()),
            nodeport_range: "30000-32767".parse().unwrap(),
            node_ip: Ipv4Addr::new(198, 18, 0, 10),
            max_backends: 1024,
            taken,
        }
    }

    fn table(json: serde_json::Value) -> ServiceTable {
        serde_json::from_value(json).expect("parses")
    }

    fn web(spec: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({"services": [{
            "metadata": {"name": "web"},
            "spec": spec,
            "endpoints": [{"addresses": ["10.244.1.2"]}]
        }]})
    }

    #[test]
    fn frontends_of_every_kind() {
        let t = table(serde_json::json!({"services": [{
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["198.18.0.50"],
                     "ports": [{"protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.60"}]}},
            "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": false, "terminating": true}}]
        }]}));
        let taken = HashSet::new();
        t.check(&limits(&taken)).unwrap();
        let fes = t.services[0]
            .frontends(Ipv4Addr::new(198, 18, 0, 10))
            .unwrap();
        let kinds: Vec<FrontendKind> = fes.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FrontendKind::ClusterIp,
                FrontendKind::ExternalIp,
                FrontendKind::LoadBalancer,
                FrontendKind::NodePort
            ]
        );
        assert_eq!(fes[3].port, 30053);
        assert_eq!(t.services[0].spec.ports[0].target(), 5353);
        let (_, cond, _) = t.services[0].backends()[0];
        assert!(!cond.ready && cond.serving && cond.terminating);
    }

    #[test]
    fn bad_tables_are_refused() {
        let taken = HashSet::from([(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)), 30080, Proto::Tcp)]);
        let bad = [
            web(&serde_json::json!({"clusterIPs": ["10.0.0.10"], "ports": [{"port": 80}]})),
            web(
                &serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}, {"port": 80}]}),
            ),
            web(
                &serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80, "protocol": "SCTP"}]}),
            ),
            web(
                &serde_json::json!({"type": "NodePort", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80, "nodePort": 8080}]}),
            ),
            web(
                &serde_json::json!({"type": "NodePort", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
            web(
                &serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
            ),
            web(
                &serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
            ),
            web(&serde_json::json!({"type": "ExternalName", "ports": []})),
        ];
        for json in bad {
            assert!(
                table(json.clone()).check(&limits(&taken)).is_err(),
                "{json}"
            );
        }
        for unparsable in [
            web(
                &serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}], "externalTrafficPolicy": "Nearest"}),
            ),
            web(&serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 70000}]})),
        ] {
            assert!(serde_json::from_value::<ServiceTable>(unparsable).is_err());
        }
        let twice = serde_json::json!({"services": [{
            "metadata": {"name": "web"},
            "spec": {"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}]},
            "endpoints": [{"addresses": ["10.244.1.2"]}, {"addresses": ["10.244.1.2"]}]
        }]});
        assert!(table(twice).check(&limits(&taken)).is_err());
    }

    fn web6(spec: &serde_json::Value, endpoints: &[&str]) -> serde_json::Value {
        serde_json::json!({"services": [{
            "metadata": {"name": "web"},
            "spec": spec,
            "endpoints": [{"addresses": endpoints}]
        }]})
    }

    #[test]
    fn ipv6_and_dual_stack_services_have_frontends_of_each_family() {
        let taken = HashSet::new();
        let t = table(web6(
            &serde_json::json!({"type": "NodePort", "clusterIPs": ["fd00:10:96::10", "10.96.0.10"],
                "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
                "externalIPs": ["2001:db8::50"],
                "ports": [{"port": 80, "nodePort": 30080}]}),
            &["10.244.1.2", "fd00:10:244:1::2"],
        ));
        t.check(&limits(&taken)).unwrap();
        let fes: Vec<String> = t.services[0]
            .frontends(Ipv4Addr::new(198, 18, 0, 10))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            fes,
            [
                "[fd00:10:96::10]:80/tcp",
                "10.96.0.10:80/tcp",
                "[2001:db8::50]:80/tcp",
                "[::]:30080/tcp",
                "198.18.0.10:30080/tcp"
            ]
        );
        // IPv6 only, with IPv6 endpoints.
        table(web6(
            &serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}]}),
            &["fd00:10:244:1::2"],
        ))
        .check(&limits(&taken))
        .unwrap();
    }

    #[test]
    fn bad_ipv6_services_are_refused_saying_why() {
        let taken = HashSet::new();
        for (spec, endpoints, wanted) in [
            (
                serde_json::json!({"clusterIPs": ["fd00:99::10"], "ports": [{"port": 80}]}),
                vec!["fd00:10:244:1::2"],
                "outside the IPv6 service CIDR fd00:10:96::/112",
            ),
            (
                serde_json::json!({"clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}]}),
                vec!["fd00:10:244:1::2"],
                "endpoint fd00:10:244:1::2 is IPv6 but the service has no IPv6 ClusterIP",
            ),
            (
                serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}]}),
                vec!["10.244.1.2"],
                "endpoint 10.244.1.2 is IPv4 but the service has no IPv4 ClusterIP",
            ),
            (
                serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}],
                    "externalIPs": ["198.51.100.7"]}),
                vec!["fd00:10:244:1::2"],
                "externalIP 198.51.100.7 is IPv4",
            ),
            (
                serde_json::json!({"clusterIPs": ["fd00:10:96::10", "fd00:10:96::11"], "ports": [{"port": 80}]}),
                vec!["fd00:10:244:1::2"],
                "at most one IPv4 and one IPv6 ClusterIP",
            ),
            (
                serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}],
                    "ipFamilies": ["IPv4"]}),
                vec!["fd00:10:244:1::2"],
                "do not match the families",
            ),
            (
                serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}],
                    "ipFamilyPolicy": "RequireDualStack"}),
                vec!["fd00:10:244:1::2"],
                "RequireDualStack needs a ClusterIP of each family",
            ),
            (
                serde_json::json!({"clusterIPs": ["10.96.0.10", "fd00:10:96::10"], "ports": [{"port": 80}],
                    "ipFamilyPolicy": "SingleStack"}),
                vec!["fd00:10:244:1::2"],
                "SingleStack with two clusterIPs",
            ),
            (
                serde_json::json!({"clusterIPs": ["fd00:10:96::zz"], "ports": [{"port": 80}]}),
                vec!["fd00:10:244:1::2"],
                "is not an IP address",
            ),
        ] {
            let msg = table(web6(&spec, &endpoints))
                .check(&limits(&taken))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(wanted), "{spec}: {msg}");
        }
        // A node without an IPv6 service CIDR refuses IPv6 ClusterIPs and says how to set one.
        let no6 = Limits {
            service_cidr6: None,
            ..limits(&taken)
        };
        let msg = table(web6(
            &serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}]}),
            &["fd00:10:244:1::2"],
        ))
        .check(&no6)
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("no IPv6 service CIDR") && msg.contains("--service-cidr"),
            "{msg}"
        );
        // The table's own service CIDRs must be the node's, per family.
        let mut t = table(web6(
            &serde_json::json!({"clusterIPs": ["fd00:10:96::10"], "ports": [{"port": 80}]}),
            &["fd00:10:244:1::2"],
        ));
        t.service_cidrs = vec!["fd00:10:96::/112".parse().unwrap()];
        t.check(&limits(&taken)).unwrap();
        t.service_cidrs = vec!["fd00:10:97::/112".parse().unwrap()];
        assert!(t.check(&limits(&taken)).is_err());
        assert!(
            serde_json::from_value::<ServiceTable>(web(
                &serde_json::json!({"clusterIPs": ["10.96.0.10"],
                "ports": [{"port": 80}], "ipFamilies": ["IPv5"]})
            ))
            .is_err()
        );
    }

    #[test]
    fn headless_services_have_no_frontend() {
        let t = table(web(
            &serde_json::json!({"clusterIPs": ["None"], "ports": [{"port": 80}]}),
        ));
        let taken = HashSet::new();
        t.check(&limits(&taken)).unwrap();
        assert!(t.services[0].is_headless());
        assert!(
            t.services[0]
                .frontends(Ipv4Addr::LOCALHOST)
                .unwrap()
                .is_empty()
        );
    }
}
