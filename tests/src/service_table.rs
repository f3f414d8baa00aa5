//! The node's service table as `podnet service apply -f FILE` takes it (the shared plan in
//! `/work/service-table.md`): Kubernetes' Service and EndpointSlice fields, camelCase, so a
//! table can be written for podnet and turned into kube-proxy's rule layouts
//! ([`crate::bench::kubeproxy`]) from the same value.
//!
//! This is the tests crate's own copy of the shape, for the service benchmark and the layout
//! tests; podnet's model is the authority and the two are to be unified.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The whole table: it replaces the node's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTable {
    #[serde(
        default,
        rename = "serviceCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cidrs: Vec<String>,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
}

/// One Service and its endpoints (EndpointSlice endpoints, merged over slices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// Empty (or `["None"]`): headless, no frontend.
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower case, as kube-proxy hashes it and as iptables and nft spell it.
    pub fn lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// May be empty for a service with a single port.
    #[serde(default)]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The backend port (a number here).
    pub target_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub const READY: Self = Self {
        ready: true,
        serving: true,
        terminating: false,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<String>,
    pub conditions: Conditions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

impl Service {
    /// `namespace/name`, as kube-proxy names a service.
    pub fn namespaced_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// The ClusterIPs that make a frontend (none for a headless service).
    pub fn frontend_cluster_ips(&self) -> impl Iterator<Item = &str> {
        self.spec
            .cluster_ips
            .iter()
            .map(String::as_str)
            .filter(|ip| *ip != "None" && !ip.is_empty())
    }

    /// The addresses of the endpoints kube-proxy would use for Cluster traffic policy: the
    /// ready ones, or if none is ready, the serving and terminating ones (KEP-1669).
    pub fn usable_endpoint_ips(&self) -> Vec<&str> {
        let pick = |f: fn(&Conditions) -> bool| -> Vec<&str> {
            self.endpoints
                .iter()
                .filter(|e| f(&e.conditions))
                .flat_map(|e| e.addresses.iter().map(String::as_str))
                .collect()
        };
        let ready = pick(|c| c.ready);
        if ready.is_empty() {
            pick(|c| c.serving && c.terminating)
        } else {
            ready
        }
    }
}

/// A ClusterIP service `name` in namespace `bench` at `ip` with `ports`, one ready endpoint
/// per address in `backends`.
pub fn cluster_ip_service(
    name: &str,
    ip: Ipv4Addr,
    ports: Vec<ServicePort>,
    backends: &[Ipv4Addr],
) -> Service {
    Service {
        metadata: Metadata {
            name: name.to_owned(),
            namespace: "bench".to_owned(),
        },
        spec: ServiceSpec {
            kind: ServiceType::ClusterIP,
            cluster_ips: vec![ip.to_string()],
            external_ips: Vec::new(),
            ports,
        },
        endpoints: backends
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Conditions::READY,
                node_name: None,
            })
            .collect(),
    }
}

/// A TCP or UDP port `name`: `port` -> `target_port`.
pub fn port(name: &str, protocol: Protocol, port: u16, target_port: u16) -> ServicePort {
    ServicePort {
        name: name.to_owned(),
        protocol,
        port,
        target_port,
        node_port: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_shared_json_shape() {
        let text = r#"{
          "serviceCIDRs": ["10.96.0.0/12"],
          "services": [{
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["198.18.0.50"],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                "targetPort": 8080, "nodePort": 30080}]},
            "endpoints": [{"addresses": ["10.244.1.2"],
                           "conditions": {"ready": true, "serving": true, "terminating": false},
                           "nodeName": "node-a"}]
          }]
        }"#;
        let table: ServiceTable = serde_json::from_str(text).expect("the shared shape parses");
        let svc = &table.services[0];
        assert_eq!(svc.spec.kind, ServiceType::NodePort);
        assert_eq!(svc.spec.ports[0].node_port, Some(30080));
        assert_eq!(svc.usable_endpoint_ips(), ["10.244.1.2"]);
        let again: ServiceTable =
            serde_json::from_str(&serde_json::to_string(&table).expect("serialises"))
                .expect("parses back");
        assert_eq!(again, table);
    }

    #[test]
    fn terminating_endpoints_only_when_none_is_ready() {
        let mut svc = cluster_ip_service(
            "s",
            Ipv4Addr::new(10, 96, 0, 1),
            vec![port("", Protocol::Tcp, 80, 80)],
            &[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        );
        svc.endpoints[0].conditions = Conditions {
            ready: false,
            serving: true,
            terminating: true,
        };
        assert_eq!(svc.usable_endpoint_ips(), ["10.0.0.2"]);
        svc.endpoints[1].conditions.ready = false;
        assert_eq!(svc.usable_endpoint_ips(), ["10.0.0.1"]);
    }
}
