//! Kubernetes objects to podnet's records: a Node to a peer (its pod CIDR and InternalIP), a
//! Service and its EndpointSlices to a [`Service`]. kube-proxy's rules on what to skip are
//! kept: ExternalName and headless services, services carrying the
//! `service.kubernetes.io/service-proxy-name` label (another proxy's), slices of another address
//! family, and endpoints without addresses. Addresses are IPv4 (the IPv6 family comes with
//! dual-stack support).

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service as K8sService, ServiceSpec as K8sServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::model::{
    peer::PeerNode,
    service::{
        ClientIpConfig, Conditions, Endpoint, LoadBalancerIngress, LoadBalancerStatus,
        LoadBalancing, Metadata, Service, ServicePort, ServiceSpec, ServiceStatus, ServiceType,
        SessionAffinity, SessionAffinityConfig, TrafficPolicy,
    },
};

/// The label by which a Service asks for another proxy (kube-proxy skips those too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why an object was left out (counted in the agent's metrics).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("{0}: not a podnet node (no IPv4 pod CIDR or InternalIP)")]
    NodeIncomplete(String),
    #[error("{0}: {1}")]
    Service(String, &'static str),
}

/// A node's pod CIDR (the first IPv4 of `spec.podCIDRs`, else `spec.podCIDR`).
pub fn pod_cidr(node: &Node) -> Option<Ipv4Network> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse::<Ipv4Network>().ok())
}

/// A node's InternalIP (the first IPv4 one).
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The peer a Node is.
pub fn peer(node: &Node) -> Result<PeerNode, Skipped> {
    let name = node.metadata.name.clone().unwrap_or_default();
    match (pod_cidr(node), internal_ip(node)) {
        (Some(pod_cidr), Some(node_ip)) => Ok(PeerNode {
            name,
            node_ip,
            pod_cidr,
            pod_cidr6: None,
            node_ip6: None,
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

/// The Service with the endpoints of all its slices merged, or why it is skipped.
pub fn service(svc: &K8sService, slices: &[&EndpointSlice]) -> Result<Service, Skipped> {
    let metadata = key(&svc.metadata);
    let skip = |why| Err(Skipped::Service(metadata.to_string(), why));
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
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return skip("ExternalName (a DNS alias)"),
        Some(_) => return skip("unknown type"),
    };
    let cluster_ips: Vec<String> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
        .take(1)
        .cloned()
        .collect();
    if cluster_ips.is_empty() {
        return skip("headless or without an IPv4 ClusterIP");
    }
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
        Err(why) => return skip(why),
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .map(|ip| LoadBalancerIngress { ip })
        .collect();
    Ok(Service {
        metadata,
        spec: ServiceSpec {
            service_type,
            cluster_ips,
            external_ips: spec
                .external_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            ports,
            session_affinity: semantics.session_affinity,
            session_affinity_config: semantics.session_affinity_config,
            external_traffic_policy: semantics.external_traffic_policy,
            internal_traffic_policy: semantics.internal_traffic_policy,
            health_check_node_port: spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok()),
            load_balancing: semantics.load_balancing,
            ip_families: Vec::new(),
            ip_family_policy: None,
        },
        status: ServiceStatus {
            load_balancer: LoadBalancerStatus { ingress },
        },
        endpoints: endpoints(slices),
    })
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

/// The endpoints of every IPv4 slice, in slice order.
fn endpoints(slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        for ep in slice.endpoints.iter().flatten() {
            let addresses: Vec<Ipv4Addr> = ep
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
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
        let s = service(&svc, &[&a, &b]).unwrap();
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
        assert!(service(&headless, &[]).is_err());
        let mut other = svc.clone();
        other.metadata.labels = Some(
            [(SERVICE_PROXY_NAME_LABEL.to_owned(), "other".to_owned())]
                .into_iter()
                .collect(),
        );
        assert!(service(&other, &[]).is_err());
        let alias: K8sService = from(serde_json::json!({
            "metadata": {"name": "alias"}, "spec": {"type": "ExternalName", "externalName": "x.example"}
        }));
        assert!(service(&alias, &[]).is_err());
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
            service(&svc(none.clone(), none.clone()), &[])
                .unwrap()
                .spec
                .load_balancing,
            None
        );
        assert_eq!(
            service(&svc(maglev, none.clone()), &[])
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
                service(&svc(annotations.clone(), spec.clone()), &[]).is_err(),
                "{annotations} {spec}"
            );
        }
    }
}
