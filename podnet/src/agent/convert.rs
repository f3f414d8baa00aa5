//! Kubernetes objects to podnet's records: a Node to a peer (its pod CIDR and InternalIP), a
//! Service and its EndpointSlices to a [`Service`]. kube-proxy's rules on what to skip are
//! kept: ExternalName and headless services, services carrying the
//! `service.kubernetes.io/service-proxy-name` label (another proxy's), slices of another address
//! family, and endpoints without addresses. A Node gives both families. Services: on a node
//! with an IPv6 service CIDR every family is served (SingleStack IPv4 or IPv6, and both
//! halves of PreferDualStack and RequireDualStack), each ClusterIP with the endpoints of its
//! family (IPv4 and IPv6 EndpointSlices); on a node without one, IPv4 only: a dual-stack
//! Service keeps its IPv4 ClusterIP and notes the IPv6 one, an IPv6-only or
//! `RequireDualStack` Service is skipped with the reason.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service as K8sService, ServiceSpec as K8sServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{
    config::split_by_family,
    model::{
        peer::PeerNode,
        service::{
            ClientIpConfig, Conditions, Endpoint, IpFamily, IpFamilyPolicy, LoadBalancerIngress,
            LoadBalancerStatus, LoadBalancing, Metadata, Service, ServicePort, ServiceSpec,
            ServiceStatus, ServiceType, SessionAffinity, SessionAffinityConfig, TrafficPolicy,
        },
    },
};

/// The label by which a Service asks for another proxy (kube-proxy skips those too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why an object was left out (counted in the agent's metrics).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("node {0}: not a podnet node (no IPv4 pod CIDR or InternalIP)")]
    NodeIncomplete(String),
    /// A Node whose addresses are malformed or conflict with this node or another peer.
    #[error("node {0}: {1}")]
    Node(String, String),
    /// A Service kube-proxy leaves out too (headless, ExternalName, another proxy's): expected,
    /// so not logged.
    #[error("service {0}: {1}")]
    NotProxied(String, &'static str),
    /// A Service podnet cannot serve: a value it does not know, or IPv6 only.
    #[error("service {0}: {1}")]
    Service(String, String),
}

impl Skipped {
    /// Whether this skip deserves a line in the log (kube-proxy's expected skips do not).
    pub fn worth_logging(&self) -> bool {
        !matches!(self, Self::NotProxied(..))
    }
}

/// The addresses a Node gives, at most one of each family: `spec.podCIDRs` (else
/// `spec.podCIDR`) and the first InternalIP of each family in `status.addresses`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub pod_cidr: Option<Ipv4Network>,
    pub pod_cidr6: Option<Ipv6Network>,
    pub node_ip: Option<Ipv4Addr>,
    pub node_ip6: Option<Ipv6Addr>,
}

/// A Node's [`NodeAddresses`], or why they cannot be used: a pod CIDR or InternalIP that does
/// not parse, two pod CIDRs of one family, host bits set, or `podCIDR` disagreeing with
/// `podCIDRs` (the same rules as `node init --pod-cidr`).
pub fn node_addresses(node: &Node) -> Result<NodeAddresses, String> {
    let mut out = NodeAddresses::default();
    if let Some(spec) = &node.spec {
        let listed: Vec<&String> = spec.pod_cidrs.iter().flatten().collect();
        if let (Some(single), Some(first)) = (&spec.pod_cidr, listed.first())
            && single != *first
        {
            return Err(format!(
                "spec.podCIDR {single} is not spec.podCIDRs' first entry {first}"
            ));
        }
        let texts: Vec<&String> = if listed.is_empty() {
            spec.pod_cidr.iter().collect()
        } else {
            listed
        };
        let mut nets = Vec::new();
        for text in texts {
            let net: IpNetwork = text
                .parse()
                .map_err(|_| format!("pod CIDR {text:?} is not a CIDR"))?;
            if net.network() != net.ip() {
                return Err(format!("pod CIDR {net} has host bits set"));
            }
            nets.push(net);
        }
        let split = split_by_family("spec.podCIDRs", &nets).map_err(|e| match e {
            crate::config::ConfigError::Invalid(msg) => msg,
            other => other.to_string(),
        })?;
        (out.pod_cidr, out.pod_cidr6) = (split.v4, split.v6);
    }
    let internal = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP");
    for a in internal {
        let ip: IpAddr = a
            .address
            .parse()
            .map_err(|_| format!("InternalIP {:?} is not an IP address", a.address))?;
        match ip {
            IpAddr::V4(v4) => _ = out.node_ip.get_or_insert(v4),
            IpAddr::V6(v6) => _ = out.node_ip6.get_or_insert(v6),
        }
    }
    Ok(out)
}

/// The peer a Node is, with both families as the Node gives them (whether the IPv6 half can be
/// routed is decided against this node and the other peers: [`super::cluster`]).
pub fn peer(node: &Node) -> Result<PeerNode, Skipped> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let addresses = node_addresses(node).map_err(|why| Skipped::Node(name.clone(), why))?;
    match addresses {
        NodeAddresses {
            pod_cidr: Some(pod_cidr),
            node_ip: Some(node_ip),
            pod_cidr6,
            node_ip6,
        } => Ok(PeerNode {
            name,
            node_ip,
            pod_cidr,
            pod_cidr6,
            node_ip6,
        }),
        _ => Err(Skipped::NodeIncomplete(name)),
    }
}

/// `namespace/name` of an object's metadata.
pub fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Metadata {
    Metadata {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    }
}

/// The Service an EndpointSlice belongs to.
pub fn slice_owner(slice: &EndpointSlice) -> Option<Metadata> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(Metadata {
        name: name.clone(),
        namespace: slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    })
}

/// A traffic policy; `None` for a name Kubernetes does not have.
fn policy(p: Option<&String>) -> Option<TrafficPolicy> {
    match p.map(String::as_str) {
        None | Some("Cluster") => Some(TrafficPolicy::Cluster),
        Some("Local") => Some(TrafficPolicy::Local),
        Some(_) => None,
    }
}

/// The annotation that chooses a Service's backend selection (podnet's own; unset: the
/// node's setting).
pub const LOAD_BALANCING_ANNOTATION: &str = "podnet.io/load-balancing";

/// The backend selection the Service's annotation asks for; `Err` for a value podnet does not
/// have.
fn load_balancing(svc: &K8sService) -> Result<Option<LoadBalancing>, &'static str> {
    let value = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOAD_BALANCING_ANNOTATION));
    match value.map(String::as_str) {
        None => Ok(None),
        Some("random") => Ok(Some(LoadBalancing::Random)),
        Some("maglev") => Ok(Some(LoadBalancing::Maglev)),
        Some(_) => Err("podnet.io/load-balancing is neither random nor maglev"),
    }
}

/// How a Service's connections are balanced: its affinity, traffic policies and podnet's
/// backend selection.
struct Semantics {
    session_affinity: SessionAffinity,
    session_affinity_config: Option<SessionAffinityConfig>,
    external_traffic_policy: TrafficPolicy,
    internal_traffic_policy: TrafficPolicy,
    load_balancing: Option<LoadBalancing>,
}

/// The Service's [`Semantics`], or why it cannot be served (a name Kubernetes or podnet does
/// not have).
fn semantics(svc: &K8sService, spec: &K8sServiceSpec) -> Result<Semantics, &'static str> {
    let affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => false,
        Some("ClientIP") => true,
        Some(_) => return Err("unknown sessionAffinity"),
    };
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok());
    let (Some(external_traffic_policy), Some(internal_traffic_policy)) = (
        policy(spec.external_traffic_policy.as_ref()),
        policy(spec.internal_traffic_policy.as_ref()),
    ) else {
        return Err("unknown externalTrafficPolicy or internalTrafficPolicy");
    };
    Ok(Semantics {
        session_affinity: if affinity {
            SessionAffinity::ClientIP
        } else {
            SessionAffinity::None
        },
        session_affinity_config: timeout.filter(|_| affinity).map(|t| SessionAffinityConfig {
            client_ip: ClientIpConfig { timeout_seconds: t },
        }),
        external_traffic_policy,
        internal_traffic_policy,
        load_balancing: load_balancing(svc)?,
    })
}

/// What a Service's address fields (`clusterIP`, `clusterIPs`, `ipFamilies`,
/// `ipFamilyPolicy`) come to on this node: the ClusterIPs it serves (in the API's order), the
/// families and policy as podnet's record keeps them, and the ClusterIPs left out (IPv6 ones
/// on a node without an IPv6 service CIDR).
struct Families {
    cluster_ips: Vec<IpAddr>,
    ip_families: Vec<IpFamily>,
    ip_family_policy: Option<IpFamilyPolicy>,
    left_out: Vec<Ipv6Addr>,
}

impl Families {
    /// Whether the served ClusterIPs include one of `family`.
    fn serves(&self, family: IpFamily) -> bool {
        self.cluster_ips.iter().any(|ip| family_of(*ip) == family)
    }
}

/// Why an IPv6 ClusterIP is not programmed on a node without an IPv6 service CIDR.
const NO_IPV6_SERVICE_CIDR: &str =
    "this node has no IPv6 service CIDR (node init/agent --service-cidr with an IPv6 CIDR)";

/// Why a Service's address fields are refused: kube-proxy's skip (headless) or podnet's.
enum Refusal {
    NotProxied(&'static str),
    Invalid(String),
}

/// The API's names of the address families.
fn family(name: &str) -> Option<IpFamily> {
    match name {
        "IPv4" => Some(IpFamily::IPv4),
        "IPv6" => Some(IpFamily::IPv6),
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> IpFamily {
    if ip.is_ipv4() {
        IpFamily::IPv4
    } else {
        IpFamily::IPv6
    }
}

/// Reads and checks the address fields (the API server's own rules: at most one ClusterIP per
/// family, in the order of `ipFamilies`, one only with `SingleStack`, `clusterIP` the first of
/// `clusterIPs`, both with `RequireDualStack`). With `ipv6` (the node has an IPv6 service
/// CIDR) every ClusterIP is served; without, an IPv6-only or `RequireDualStack` Service is
/// refused and a dual-stack one keeps its IPv4 half.
fn families(spec: &K8sServiceSpec, ipv6: bool) -> Result<Families, Refusal> {
    let (ips, listed_families, ip_family_policy) = address_fields(spec)?;
    if ipv6 {
        return Ok(Families {
            ip_families: if listed_families.is_empty() {
                Vec::new()
            } else {
                ips.iter().map(|ip| family_of(*ip)).collect()
            },
            cluster_ips: ips,
            ip_family_policy,
            left_out: Vec::new(),
        });
    }
    if ip_family_policy == Some(IpFamilyPolicy::RequireDualStack) {
        return Err(Refusal::Invalid(format!(
            "ipFamilyPolicy RequireDualStack: {NO_IPV6_SERVICE_CIDR}, so it cannot serve both families"
        )));
    }
    let left_out: Vec<Ipv6Addr> = ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
        .collect();
    let Some(cluster_ip) = ips.iter().find(|ip| ip.is_ipv4()).copied() else {
        let shown: Vec<String> = left_out.iter().map(ToString::to_string).collect();
        return Err(Refusal::Invalid(format!(
            "IPv6-only (clusterIPs {}): {NO_IPV6_SERVICE_CIDR}",
            shown.join(", ")
        )));
    };
    Ok(Families {
        cluster_ips: vec![cluster_ip],
        // The record lists the family it serves; the IPv6 half is reported, not kept.
        ip_families: if listed_families.is_empty() {
            Vec::new()
        } else {
            vec![IpFamily::IPv4]
        },
        ip_family_policy,
        left_out,
    })
}

/// A Service's ClusterIPs, its listed `ipFamilies` and its `ipFamilyPolicy`.
type AddressFields = (Vec<IpAddr>, Vec<IpFamily>, Option<IpFamilyPolicy>);

/// The ClusterIPs, the listed `ipFamilies` and the `ipFamilyPolicy`, checked by the API
/// server's rules (see [`families`]).
fn address_fields(spec: &K8sServiceSpec) -> Result<AddressFields, Refusal> {
    let invalid = |msg: String| Err(Refusal::Invalid(msg));
    let ip_family_policy = match spec.ip_family_policy.as_deref() {
        None => None,
        Some("SingleStack") => Some(IpFamilyPolicy::SingleStack),
        Some("PreferDualStack") => Some(IpFamilyPolicy::PreferDualStack),
        Some("RequireDualStack") => Some(IpFamilyPolicy::RequireDualStack),
        Some(other) => return invalid(format!("unknown ipFamilyPolicy {other:?}")),
    };
    let mut listed_families = Vec::new();
    for name in spec.ip_families.iter().flatten() {
        let Some(f) = family(name) else {
            return invalid(format!("unknown ipFamilies entry {name:?}"));
        };
        if listed_families.contains(&f) {
            return invalid(format!("ipFamilies lists {name} twice"));
        }
        listed_families.push(f);
    }
    let listed: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if let (Some(single), Some(first)) = (&spec.cluster_ip, listed.first())
        && single != *first
    {
        return invalid(format!(
            "clusterIP {single} is not clusterIPs' first entry {first}"
        ));
    }
    let texts: Vec<&String> = if listed.is_empty() {
        spec.cluster_ip.iter().collect()
    } else {
        listed
    };
    if texts
        .first()
        .is_none_or(|ip| ip.is_empty() || *ip == "None")
    {
        return Err(Refusal::NotProxied("headless (no ClusterIP)"));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for text in texts {
        let Ok(ip) = text.parse::<IpAddr>() else {
            return invalid(format!("clusterIP {text:?} is not an IP address"));
        };
        if ips.iter().any(|seen| family_of(*seen) == family_of(ip)) {
            return invalid(format!(
                "clusterIPs holds two addresses of one family ({ip} is the second)"
            ));
        }
        ips.push(ip);
    }
    for (ip, f) in ips.iter().zip(&listed_families) {
        if family_of(*ip) != *f {
            return invalid(format!(
                "clusterIP {ip} does not match its ipFamilies entry {f:?}"
            ));
        }
    }
    if ip_family_policy == Some(IpFamilyPolicy::SingleStack) && ips.len() > 1 {
        return invalid("ipFamilyPolicy SingleStack with two clusterIPs".to_owned());
    }
    if ip_family_policy == Some(IpFamilyPolicy::RequireDualStack) && ips.len() < 2 {
        return invalid(
            "ipFamilyPolicy RequireDualStack with a ClusterIP of one family only".to_owned(),
        );
    }
    Ok((ips, listed_families, ip_family_policy))
}

/// The Service with the endpoints of all its slices merged, or why it is skipped, on a node
/// that serves IPv6 services when `ipv6` (it has an IPv6 service CIDR).
pub fn service(
    svc: &K8sService,
    slices: &[&EndpointSlice],
    ipv6: bool,
) -> Result<Service, Skipped> {
    service_noted(svc, slices, ipv6).map(|(service, _)| service)
}

/// [`service`], with notes on what of a served Service is left out: a ClusterIP, externalIP
/// or load-balancer IP of a family the node does not serve (IPv6 without an IPv6 service
/// CIDR) or the Service has no ClusterIP of.
pub fn service_noted(
    svc: &K8sService,
    slices: &[&EndpointSlice],
    ipv6: bool,
) -> Result<(Service, Vec<String>), Skipped> {
    let metadata = key(&svc.metadata);
    let skip = |why| Err(Skipped::NotProxied(metadata.to_string(), why));
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return skip("served by another proxy (service-proxy-name label)");
    }
    let Some(spec) = &svc.spec else {
        return skip("no spec");
    };
    let refuse = |why: &str| Err(Skipped::Service(metadata.to_string(), why.to_owned()));
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return skip("ExternalName (a DNS alias)"),
        Some(_) => return refuse("unknown type"),
    };
    let families = match families(spec, ipv6) {
        Ok(f) => f,
        Err(Refusal::NotProxied(why)) => return skip(why),
        Err(Refusal::Invalid(why)) => return refuse(&why),
    };
    let served: Vec<String> = families
        .cluster_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut notes: Vec<String> = families
        .left_out
        .iter()
        .map(|ip| {
            format!(
                "IPv6 ClusterIP {ip} not programmed ({NO_IPV6_SERVICE_CIDR}); ClusterIP {} is",
                served.join(", ")
            )
        })
        .collect();
    let cluster_ips = served.clone();
    // The slices of the families served (kube-proxy likewise takes a family's endpoints from
    // that family's slices).
    let slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| slice_family(s).is_some_and(|f| families.serves(f)))
        .collect();
    let slices = slices.as_slice();
    let slice_ports = slice_ports(slices);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePort {
            name: p.name.clone(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            port: u16::try_from(p.port).unwrap_or(0),
            target_port: target_port(p.target_port.as_ref(), p.name.as_deref(), &slice_ports),
            node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
        })
        .collect();
    let semantics = match semantics(svc, spec) {
        Ok(s) => s,
        Err(why) => return refuse(why),
    };
    let (external_ips, ingress) = external_addresses(svc, spec, &families, &mut notes);
    let service = Service {
        metadata,
        spec: ServiceSpec {
            service_type,
            cluster_ips,
            external_ips,
            ports,
            session_affinity: semantics.session_affinity,
            session_affinity_config: semantics.session_affinity_config,
            external_traffic_policy: semantics.external_traffic_policy,
            internal_traffic_policy: semantics.internal_traffic_policy,
            health_check_node_port: spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok()),
            load_balancing: semantics.load_balancing,
            ip_families: families.ip_families,
            ip_family_policy: families.ip_family_policy,
        },
        status: ServiceStatus {
            load_balancer: LoadBalancerStatus { ingress },
        },
        endpoints: endpoints(slices),
    };
    Ok((service, notes))
}

/// The externalIPs and load-balancer ingress IPs of a Service of the families it is served in;
/// one of another family gets a note.
fn external_addresses(
    svc: &K8sService,
    spec: &K8sServiceSpec,
    families: &Families,
    notes: &mut Vec<String>,
) -> (Vec<IpAddr>, Vec<LoadBalancerIngress>) {
    let mut served = |what: &str, text: &str| -> Option<IpAddr> {
        let ip = text.parse::<IpAddr>().ok()?;
        if families.serves(family_of(ip)) {
            return Some(ip);
        }
        let why = if ip.is_ipv6() && !families.left_out.is_empty() {
            NO_IPV6_SERVICE_CIDR
        } else {
            "the Service has no ClusterIP of its family"
        };
        notes.push(format!(
            "{:?} {what} {ip} not programmed ({why})",
            family_of(ip)
        ));
        None
    };
    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| served("externalIP", ip))
        .collect();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| served("load-balancer IP", i.ip.as_ref()?))
        .map(|ip| LoadBalancerIngress { ip })
        .collect();
    (external_ips, ingress)
}

/// The family of an EndpointSlice's addresses (`addressType`); `None` for FQDN slices, which
/// no proxy serves.
pub fn slice_family(slice: &EndpointSlice) -> Option<IpFamily> {
    family(&slice.address_type)
}

/// The port numbers the slices give each named port (the controller resolves named target
/// ports per pod; podnet takes the first number a name has).
fn slice_ports(slices: &[&EndpointSlice]) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    for slice in slices {
        for p in slice.ports.iter().flatten() {
            if let (Some(port), name) = (p.port, p.name.clone().unwrap_or_default()) {
                out.entry(name)
                    .or_insert_with(|| u16::try_from(port).unwrap_or(0));
            }
        }
    }
    out
}

fn target_port(
    target: Option<&IntOrString>,
    name: Option<&str>,
    slice_ports: &BTreeMap<String, u16>,
) -> Option<u16> {
    match target {
        Some(IntOrString::Int(port)) => u16::try_from(*port).ok(),
        // A named (or defaulted) target port: the number the endpoints carry for this service
        // port; without endpoints there is nothing to reach anyway.
        Some(IntOrString::String(_)) | None => slice_ports.get(name.unwrap_or_default()).copied(),
    }
}

/// The endpoints of every slice, in slice order (each address of its slice's family).
fn endpoints(slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for slice in slices {
        let family = slice_family(slice);
        for ep in slice.endpoints.iter().flatten() {
            let addresses: Vec<IpAddr> = ep
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .filter(|a| Some(family_of(*a)) == family)
                .filter(|a| seen.insert(*a))
                .collect();
            if addresses.is_empty() {
                continue;
            }
            let c = ep.conditions.as_ref();
            out.push(Endpoint {
                addresses,
                conditions: Conditions {
                    ready: c.and_then(|c| c.ready).unwrap_or(true),
                    serving: c
                        .and_then(|c| c.serving)
                        .or_else(|| c.and_then(|c| c.ready))
                        .unwrap_or(true),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                },
                node_name: ep.node_name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    #[test]
    fn nodes_become_peers() {
        let node: Node = from(serde_json::json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00::/64"]},
            "status": {"addresses": [{"type": "Hostname", "address": "n2"},
                                     {"type": "InternalIP", "address": "198.18.0.20"}]}
        }));
        let p = peer(&node).unwrap();
        assert_eq!(p.pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(p.node_ip, Ipv4Addr::new(198, 18, 0, 20));
        let bare: Node = from(serde_json::json!({"metadata": {"name": "n3"}}));
        assert!(peer(&bare).is_err());
    }

    fn node(spec: &serde_json::Value, addresses: &[&str]) -> Node {
        let addresses: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| serde_json::json!({"type": "InternalIP", "address": a}))
            .collect();
        from(serde_json::json!({
            "metadata": {"name": "n2"}, "spec": spec, "status": {"addresses": addresses}
        }))
    }

    #[test]
    fn dual_stack_nodes_give_both_families_and_bad_values_say_why() {
        let dual = node(
            &serde_json::json!({"podCIDR": "10.244.2.0/24",
                               "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]}),
            &["fd00:198:18::12", "198.18.0.12", "198.18.0.99"],
        );
        let p = peer(&dual).unwrap();
        assert_eq!(p.pod_cidr6.unwrap().to_string(), "fd00:10:244:2::/64");
        assert_eq!(p.node_ip6.unwrap().to_string(), "fd00:198:18::12");
        assert_eq!(
            p.node_ip.to_string(),
            "198.18.0.12",
            "the first IPv4 InternalIP"
        );
        for (spec, addresses, wanted) in [
            (
                serde_json::json!({"podCIDRs": ["10.244.2.0/24", "10.244.3.0/24"]}),
                vec!["198.18.0.12"],
                "two IPv4 CIDRs",
            ),
            (
                serde_json::json!({"podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64", "fd00:10:244:3::/64"]}),
                vec!["198.18.0.12"],
                "two IPv6 CIDRs",
            ),
            (
                serde_json::json!({"podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::1/64"]}),
                vec!["198.18.0.12"],
                "host bits",
            ),
            (
                serde_json::json!({"podCIDRs": ["10.244.2.0/24", "fd00::zz/64"]}),
                vec!["198.18.0.12"],
                "is not a CIDR",
            ),
            (
                serde_json::json!({"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.2.0/24"]}),
                vec!["198.18.0.12"],
                "is not spec.podCIDRs' first entry",
            ),
            (
                serde_json::json!({"podCIDRs": ["10.244.2.0/24"]}),
                vec!["198.18.0.12", "fd00::xyz"],
                "is not an IP address",
            ),
        ] {
            let err = peer(&node(&spec, &addresses)).unwrap_err();
            assert!(
                matches!(err, Skipped::Node(..)) && err.to_string().contains(wanted),
                "{spec}: {err}"
            );
        }
        // IPv6 only: not a podnet peer (IPv4 is required), said as such.
        let v6 = node(
            &serde_json::json!({"podCIDRs": ["fd00:10:244:2::/64"]}),
            &["fd00:198:18::12"],
        );
        assert_eq!(peer(&v6), Err(Skipped::NodeIncomplete("n2".to_owned())));
    }

    fn web(spec: &serde_json::Value) -> K8sService {
        let mut full = serde_json::json!({"type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        from(serde_json::json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": full}))
    }

    #[test]
    fn a_dual_stack_service_keeps_its_ipv4_half_and_notes_the_rest() {
        let dual = web(&serde_json::json!({
            "clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack",
            "externalIPs": ["198.51.100.7", "2001:db8::7"]
        }));
        let (s, notes) = service_noted(&dual, &[], false).unwrap();
        assert_eq!(s.spec.cluster_ips, vec!["10.96.0.10".to_owned()]);
        assert_eq!(s.spec.ip_families, vec![IpFamily::IPv4]);
        assert_eq!(
            s.spec.ip_family_policy,
            Some(IpFamilyPolicy::PreferDualStack)
        );
        assert_eq!(
            s.spec.external_ips,
            vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))]
        );
        assert!(
            notes[0].contains("IPv6 ClusterIP fd00:96::10 not programmed")
                && notes[0].contains("10.96.0.10 is"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("IPv6 externalIP 2001:db8::7"),
            "{notes:?}"
        );
        // An IPv4 single-stack Service says so and has nothing to note.
        let single = web(&serde_json::json!({
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"
        }));
        let (s, notes) = service_noted(&single, &[], false).unwrap();
        assert_eq!(s.spec.ip_family_policy, Some(IpFamilyPolicy::SingleStack));
        assert!(notes.is_empty(), "{notes:?}");

        for (spec, wanted) in [
            (
                serde_json::json!({"clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10"], "ipFamilies": ["IPv6"]}),
                "IPv6-only (clusterIPs fd00:96::10)",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                                   "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
                "RequireDualStack",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv6"]}),
                "does not match its ipFamilies entry",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "10.96.0.11"]}),
                "two addresses of one family",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ipFamilyPolicy": "SingleStack"}),
                "SingleStack with two clusterIPs",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.10"]}),
                "is not clusterIPs' first entry",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.300"}),
                "is not an IP address",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.10", "ipFamilies": ["IPv5"]}),
                "unknown ipFamilies entry",
            ),
            (
                serde_json::json!({"clusterIP": "10.96.0.10", "ipFamilyPolicy": "Both"}),
                "unknown ipFamilyPolicy",
            ),
        ] {
            let err = service(&web(&spec), &[], false).unwrap_err();
            assert!(
                err.worth_logging() && err.to_string().contains(wanted),
                "{spec}: {err}"
            );
        }
    }

    #[test]
    fn with_an_ipv6_service_cidr_every_family_is_served_with_its_own_slices() {
        let slice = |family: &str, ip: &str, port: u16| -> EndpointSlice {
            from(serde_json::json!({
                "metadata": {"name": format!("web-{family}"), "namespace": "shop",
                             "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": family,
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]
            }))
        };
        let (v6, v4) = (
            slice("IPv6", "fd00:10:244:1::5", 8080),
            slice("IPv4", "10.244.1.5", 8080),
        );
        let dual = web(&serde_json::json!({
            "clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
            "externalIPs": ["198.51.100.7", "2001:db8::7"]
        }));
        let (s, notes) = service_noted(&dual, &[&v6, &v4], true).unwrap();
        assert_eq!(s.spec.cluster_ips, ["fd00:96::10", "10.96.0.10"]);
        assert_eq!(s.spec.ip_families, [IpFamily::IPv6, IpFamily::IPv4]);
        assert_eq!(s.spec.external_ips.len(), 2);
        assert_eq!(s.backends().len(), 2, "one endpoint of each family");
        assert!(notes.is_empty(), "{notes:?}");
        // IPv6 only: the IPv6 slice's endpoints, not the IPv4 one's; an IPv4 externalIP noted.
        let only6 = web(&serde_json::json!({
            "clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10"], "ipFamilies": ["IPv6"],
            "ipFamilyPolicy": "SingleStack", "externalIPs": ["198.51.100.7"]
        }));
        let (s, notes) = service_noted(&only6, &[&v6, &v4], true).unwrap();
        assert_eq!(s.spec.cluster_ips, ["fd00:96::10"]);
        let backends: Vec<IpAddr> = s.backends().iter().map(|b| b.0).collect();
        assert_eq!(backends, ["fd00:10:244:1::5".parse::<IpAddr>().unwrap()]);
        assert!(s.spec.external_ips.is_empty());
        assert!(
            notes[0].contains("IPv4 externalIP 198.51.100.7 not programmed")
                && notes[0].contains("no ClusterIP of its family"),
            "{notes:?}"
        );
        // RequireDualStack with one family is refused even so.
        let err = service(
            &web(&serde_json::json!({"clusterIP": "fd00:96::10", "ipFamilyPolicy": "RequireDualStack"})),
            &[],
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("one family only"), "{err}");
    }

    #[test]
    fn ipv6_slices_give_no_endpoints_and_no_port_numbers() {
        let svc = web(&serde_json::json!({"clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}));
        let slice = |family: &str, ip: &str, port: u16| -> EndpointSlice {
            from(serde_json::json!({
                "metadata": {"name": format!("web-{family}"), "namespace": "shop",
                             "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": family,
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]
            }))
        };
        let (v6, v4) = (
            slice("IPv6", "fd00:10:244:1::5", 9090),
            slice("IPv4", "10.244.1.5", 8080),
        );
        let s = service(&svc, &[&v6, &v4], false).unwrap();
        assert_eq!(s.spec.ports[0].target(), 8080);
        assert_eq!(s.backends().len(), 1);
        let s = service(&svc, &[&v6], false).unwrap();
        assert!(s.endpoints.is_empty() && s.spec.ports[0].target_port.is_none());
    }

    #[test]
    fn services_and_slices_merge_and_skips_follow_kube_proxy() {
        let svc: K8sService = from(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}],
                     "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
        }));
        let slice = |name: &str, ip: &str, ready: bool| -> EndpointSlice {
            from(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "terminating": !ready}, "nodeName": "n1"}]
            }))
        };
        let (a, b) = (
            slice("web-a", "10.244.1.2", true),
            slice("web-b", "10.244.1.3", false),
        );
        assert_eq!(slice_owner(&a).unwrap().to_string(), "shop/web");
        let s = service(&svc, &[&a, &b], false).unwrap();
        assert_eq!(s.spec.ports[0].target(), 8080);
        assert_eq!(s.spec.ports[0].node_port, Some(30080));
        assert_eq!(s.endpoints.len(), 2);
        assert!(!s.endpoints[1].conditions.ready && s.endpoints[1].conditions.terminating);
        assert_eq!(s.affinity_timeout(), Some(60));
        assert_eq!(s.spec.external_traffic_policy, TrafficPolicy::Local);

        let mut headless = svc.clone();
        let spec = headless.spec.as_mut().unwrap();
        spec.cluster_ip = Some("None".to_owned());
        spec.cluster_ips = Some(vec!["None".to_owned()]);
        assert!(service(&headless, &[], false).is_err());
        let mut other = svc.clone();
        other.metadata.labels = Some(
            [(SERVICE_PROXY_NAME_LABEL.to_owned(), "other".to_owned())]
                .into_iter()
                .collect(),
        );
        assert!(service(&other, &[], false).is_err());
        let alias: K8sService = from(serde_json::json!({
            "metadata": {"name": "alias"}, "spec": {"type": "ExternalName", "externalName": "x.example"}
        }));
        assert!(service(&alias, &[], false).is_err());
    }

    #[test]
    fn backend_selection_comes_from_the_annotation_and_unknown_names_are_skipped() {
        let svc = |annotations: serde_json::Value, spec_extra: serde_json::Value| -> K8sService {
            let mut spec = serde_json::json!({"clusterIP": "10.96.0.10",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]});
            for (k, v) in spec_extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            from(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
                "spec": spec
            }))
        };
        let none = serde_json::json!({});
        let maglev = serde_json::json!({LOAD_BALANCING_ANNOTATION: "maglev"});
        assert_eq!(
            service(&svc(none.clone(), none.clone()), &[], false)
                .unwrap()
                .spec
                .load_balancing,
            None
        );
        assert_eq!(
            service(&svc(maglev, none.clone()), &[], false)
                .unwrap()
                .spec
                .load_balancing,
            Some(LoadBalancing::Maglev)
        );
        for (annotations, spec) in [
            (
                serde_json::json!({LOAD_BALANCING_ANNOTATION: "roundrobin"}),
                none.clone(),
            ),
            (
                none.clone(),
                serde_json::json!({"externalTrafficPolicy": "Nearest"}),
            ),
            (
                none.clone(),
                serde_json::json!({"internalTrafficPolicy": "Zone"}),
            ),
            (
                none.clone(),
                serde_json::json!({"sessionAffinity": "Cookie"}),
            ),
        ] {
            assert!(
                service(&svc(annotations.clone(), spec.clone()), &[], false).is_err(),
                "{annotations} {spec}"
            );
        }
    }
}
