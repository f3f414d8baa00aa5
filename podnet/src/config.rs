//! Node settings: what identifies and configures one node (pod and cluster CIDRs, uplink,
//! bridge, per-node directories, the namespace it lives in, table sizes, timeouts), their
//! defaults, and their validation. Pure data: nothing here touches the system, so every other
//! layer may use it. The settings are recorded in `<state_dir>/node.json` by `node init`
//! ([`crate::store::node`] owns that file).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use podnet_ebpf::abi::{
    CtTimeouts, DEFAULT_CT_LIMIT, DEFAULT_ENDPOINTS_MAX, DEFAULT_NODEPORT_MAX,
    DEFAULT_NODEPORT_MIN, DEFAULT_SERVICES_MAX, DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN,
    NON_MASQUERADE_MAX,
};
use serde::{Deserialize, Serialize};

use crate::model::names::{self, NameError};
pub use crate::model::port_range::PortRange;

mod dual_stack;
pub use dual_stack::{MAX_POD_PREFIX_V6, MIN_SERVICE_PREFIX_V6, PodCidrs, split_by_family};

/// Settings that cannot work, found without touching the system.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid node settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Everything that identifies and configures one node. Several nodes may share a machine: each
/// has its own namespace, pin directory, state directory and IPAM directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's pod CIDR (addresses for its pods).
    pub pod_cidr: Ipv4Network,
    /// The cluster CIDR, which every node's pod CIDR is carved from.
    pub cluster_cidr: Ipv4Network,
    /// This node's IPv6 pod CIDR on a dual-stack node: pods get an address of it too. IPv6 is
    /// routed by the kernel (the programs pass it unchanged); see [`dual_stack`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Network>,
    /// The IPv6 cluster CIDR; the IPv6 pod CIDR itself when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr6: Option<Ipv6Network>,
    /// The node's IPv6 address (peers route IPv6 pod CIDRs to it); the uplink's first global
    /// IPv6 address when not given, none if it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip6: Option<Ipv6Addr>,
    /// The uplink interface, in the node's namespace.
    pub uplink: String,
    /// The node's IP; the uplink's first IPv4 address when not given.
    #[serde(default)]
    pub node_ip: Option<Ipv4Addr>,
    /// The bridge that carries the gateway address and the slow path.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// bpffs directory for this node's maps, programs and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Directory for node.json, pod records and locks.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Directory for IPAM records; `<state_dir>/ipam` when not given.
    #[serde(default)]
    pub ipam_dir: Option<PathBuf>,
    /// The node's network namespace; `None` means the namespace podnet runs in.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Where `pod add` creates pod namespaces (like `ip netns add`).
    #[serde(default = "default_netns_dir")]
    pub netns_dir: PathBuf,
    /// MTU for pod interfaces; the uplink's MTU when not given.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Entries in the endpoints map.
    #[serde(default = "default_endpoints_max")]
    pub endpoints_max: u32,
    /// Per-packet debug logging compiled into the programs at load time.
    #[serde(default)]
    pub debug: bool,
    /// Ports SNAT allocates from (also ICMP echo identifiers).
    #[serde(default = "default_snat_ports")]
    pub snat_ports: PortRange,
    /// Ports `nodeport add` accepts.
    #[serde(default = "default_nodeport_range")]
    pub nodeport_range: PortRange,
    /// Conntrack entries admitted (two per flow) before new flows are refused.
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: u32,
    /// Entries in the services map (one per NodePort plus one per backend).
    #[serde(default = "default_services_max")]
    pub services_max: u32,
    /// Conntrack idle timeouts in seconds.
    #[serde(default)]
    pub ct_timeouts: CtTimeouts,
    /// Pods may only send from their own IP and MAC; spoofed packets are dropped and counted.
    #[serde(default = "default_anti_spoof")]
    pub anti_spoof: bool,
    /// How pods reach other nodes' pods: `native` routing over the fabric, or a `vxlan`
    /// overlay for fabrics that know nothing about pod CIDRs.
    #[serde(default)]
    pub mode: RoutingMode,
    /// The overlay's VXLAN device (overlay mode).
    #[serde(default = "default_vxlan_device")]
    pub vxlan_device: String,
    /// A cluster description (every node's name, node IP and pod CIDR) to take the peers from
    /// at `node init`; `node peer add|del` change them afterwards.
    #[serde(default)]
    pub cluster: Option<PathBuf>,
    /// Seconds between conntrack collection passes by the node's collector process; 0 turns
    /// the collector off (then run `podnet conntrack gc` yourself).
    #[serde(default = "default_gc_interval")]
    pub gc_interval: u32,
    /// cgroup (v2) whose sockets reach NodePorts on the node IP through `connect4`; the root
    /// of the cgroup2 hierarchy when not given.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The service CIDR ClusterIPs come from (kube-apiserver's `--service-cluster-ip-range`).
    /// Traffic to it that matches no service is left to the kernel, never SNATed.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Network,
    /// The IPv6 service CIDR of a dual-stack (or IPv6) cluster: IPv6 ClusterIPs come from it.
    /// None by default (Kubernetes has no default either): IPv6 ClusterIPs are then refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr6: Option<Ipv6Network>,
    /// Balance services at the socket (cgroup `connect4`, `sendmsg4`, `recvmsg4`,
    /// `getpeername4`) for the node and its pods; off, pods' traffic takes the TC path alone.
    #[serde(default = "default_socket_lb")]
    pub socket_lb: bool,
    /// How new connections to a service pick a backend when the service does not say
    /// (`random` or `maglev`).
    #[serde(default)]
    pub load_balancing: crate::model::service::LoadBalancing,
    /// Masquerade exclusions (ip-masq-agent's `nonMasqueradeCIDRs`): destinations outside the
    /// cluster that pods reach with their own address, never SNATed to the node IP (networks
    /// that route the pod CIDRs back: a peered VPC, an on-premises network). At most
    /// `NON_MASQUERADE_MAX` (256) prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_masquerade_cidrs: Vec<Ipv4Network>,
    /// The IPv6 masquerade exclusions (dual-stack nodes): pods' IPv6 to them keeps the pod's
    /// address. At most `NON_MASQUERADE6_MAX` (256) prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_masquerade_cidrs6: Vec<Ipv6Network>,
}

pub fn default_service_cidr() -> Ipv4Network {
    Ipv4Network::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 12).expect("a valid network")
}

pub fn default_socket_lb() -> bool {
    true
}

/// How pods reach other nodes' pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Straight over the fabric to the node's IP (the fabric delivers node IPs).
    #[default]
    Native,
    /// Encapsulated in VXLAN between node IPs.
    Vxlan,
}

pub fn default_anti_spoof() -> bool {
    true
}

pub fn default_vxlan_device() -> String {
    "podnet-vxlan".to_owned()
}

pub fn default_bridge() -> String {
    "podnet0".to_owned()
}
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/podnet")
}
pub fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/podnet")
}
pub fn default_netns_dir() -> PathBuf {
    PathBuf::from("/run/netns")
}
pub fn default_endpoints_max() -> u32 {
    DEFAULT_ENDPOINTS_MAX
}
pub fn default_snat_ports() -> PortRange {
    PortRange {
        min: DEFAULT_SNAT_PORT_MIN,
        max: DEFAULT_SNAT_PORT_MAX,
    }
}
pub fn default_nodeport_range() -> PortRange {
    PortRange {
        min: DEFAULT_NODEPORT_MIN,
        max: DEFAULT_NODEPORT_MAX,
    }
}
pub fn default_conntrack_max() -> u32 {
    DEFAULT_CT_LIMIT
}
pub fn default_services_max() -> u32 {
    DEFAULT_SERVICES_MAX
}

pub fn default_gc_interval() -> u32 {
    10
}

impl NodeSettings {
    /// The gateway: the first host address of the pod CIDR, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1).unwrap_or(self.pod_cidr.network())
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ipam"))
    }

    /// Checks the settings, without touching the system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.pod_cidr.prefix() > 30 {
            return invalid(format!(
                "pod CIDR {} is too small: it needs room for a network, gateway, broadcast and at least one pod (/30 or larger)",
                self.pod_cidr
            ));
        }
        if self.pod_cidr.network() != self.pod_cidr.ip() {
            return invalid(format!(
                "pod CIDR {} has host bits set; did you mean {}/{}?",
                self.pod_cidr,
                self.pod_cidr.network(),
                self.pod_cidr.prefix()
            ));
        }
        if self.cluster_cidr.network() != self.cluster_cidr.ip() {
            return invalid(format!(
                "cluster CIDR {} has host bits set",
                self.cluster_cidr
            ));
        }
        if !(self.cluster_cidr.contains(self.pod_cidr.network())
            && self.cluster_cidr.prefix() <= self.pod_cidr.prefix())
        {
            return invalid(format!(
                "pod CIDR {} is not inside cluster CIDR {}",
                self.pod_cidr, self.cluster_cidr
            ));
        }
        if let Some(ip) = self.node_ip
            && self.cluster_cidr.contains(ip)
        {
            return invalid(format!(
                "node IP {ip} lies inside the cluster CIDR {}",
                self.cluster_cidr
            ));
        }
        names::validate_ifname(&self.uplink)?;
        names::validate_ifname(&self.bridge)?;
        names::validate_ifname(&self.vxlan_device)?;
        if self.endpoints_max == 0 {
            return invalid("endpoints_max must be at least 1".to_owned());
        }
        if self.conntrack_max < 2 {
            return invalid("conntrack_max must be at least 2 (one flow)".to_owned());
        }
        if self.services_max == 0 {
            return invalid("services_max must be at least 1".to_owned());
        }
        if self.service_cidr.network() != self.service_cidr.ip() {
            return invalid(format!(
                "service CIDR {} has host bits set",
                self.service_cidr
            ));
        }
        let (svc, cluster) = (self.service_cidr, self.cluster_cidr);
        if svc.contains(cluster.network()) || cluster.contains(svc.network()) {
            return invalid(format!(
                "service CIDR {svc} overlaps the cluster CIDR {cluster}"
            ));
        }
        if self.snat_ports.overlaps(&self.nodeport_range) {
            return invalid(format!(
                "SNAT ports {} overlap the NodePort range {}: a translated flow could take a NodePort",
                self.snat_ports, self.nodeport_range
            ));
        }
        let t = self.ct_timeouts;
        if [
            t.tcp_syn,
            t.tcp_established,
            t.tcp_closing,
            t.tcp_time_wait,
            t.udp,
            t.udp_stream,
            t.icmp,
        ]
        .contains(&0)
        {
            return invalid("conntrack timeouts must be at least 1 second".to_owned());
        }
        if let Some(mtu) = self.mtu
            && !(576..=65_535).contains(&mtu)
        {
            return invalid(format!("MTU {mtu} is outside 576..=65535"));
        }
        self.validate_non_masquerade()?;
        self.validate_ipv6()
    }

    /// Masquerade exclusions: networks (no host bits), at most `NON_MASQUERADE_MAX`.
    fn validate_non_masquerade(&self) -> Result<(), ConfigError> {
        let cidrs = &self.non_masquerade_cidrs;
        if let Some(bad) = cidrs.iter().find(|c| c.network() != c.ip()) {
            return Err(ConfigError::Invalid(format!(
                "masquerade exclusion {bad} has host bits set; did you mean {}/{}?",
                bad.network(),
                bad.prefix()
            )));
        }
        if cidrs.len() > NON_MASQUERADE_MAX as usize {
            return Err(ConfigError::Invalid(format!(
                "{} masquerade exclusions where at most {NON_MASQUERADE_MAX} fit",
                cidrs.len()
            )));
        }
        let cidrs6 = &self.non_masquerade_cidrs6;
        if let Some(bad) = cidrs6.iter().find(|c| c.network() != c.ip()) {
            return Err(ConfigError::Invalid(format!(
                "masquerade exclusion {bad} has host bits set; did you mean {}/{}?",
                bad.network(),
                bad.prefix()
            )));
        }
        let max6 = podnet_ebpf::abi::NON_MASQUERADE6_MAX;
        if cidrs6.len() > max6 as usize {
            return Err(ConfigError::Invalid(format!(
                "{} IPv6 masquerade exclusions where at most {max6} fit",
                cidrs6.len()
            )));
        }
        Ok(())
    }
}
