//! NodePorts as records: `nodeIP:PORT/PROTO` spread over backends, how the command line and
//! `nodeport apply` write them, and CNI host ports (which are NodePorts owned by an attachment).

use std::{net::Ipv4Addr, str::FromStr};

use podnet_ebpf::abi::proto::{IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};

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

/// A CNI port mapping: `hostPort` on the node IP to `ip:container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub host_port: u16,
    pub proto: Proto,
    pub ip: Ipv4Addr,
    pub container_port: u16,
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
