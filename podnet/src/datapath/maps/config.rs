//! `CONFIG`: the node's configuration as the programs read it, and its readable form.

use std::net::Ipv4Addr;

use podnet_ebpf::abi::{NodeConfig, map_name};

use super::{PinnedMaps, format_mac};
use crate::datapath::DatapathError;

impl PinnedMaps {
    pub fn config(&self) -> Result<NodeConfig, DatapathError> {
        self.config
            .get(&0, 0)
            .map_err(Self::map_err(map_name::CONFIG))
    }

    pub fn set_config(&mut self, config: &NodeConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(Self::map_err(map_name::CONFIG))
    }
}

/// The `CONFIG` entry in readable form.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigView {
    pub abi_version: u32,
    pub ready: bool,
    pub node_ip: Ipv4Addr,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: String,
    pub pod_cidr: String,
    pub cluster_cidr: String,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    pub snat_ports: String,
    pub anti_spoof: bool,
    pub ct_limit: u32,
    pub ct_timeouts: podnet_ebpf::abi::CtTimeouts,
    pub netns_cookie: u64,
    pub service_cidr: Option<String>,
    pub socket_lb: bool,
    /// The source of masqueraded IPv6 (dual-stack nodes with an IPv6 uplink address).
    pub node_ip6: Option<std::net::Ipv6Addr>,
    pub cluster_cidr6: Option<String>,
    pub ct6_limit: u32,
}

impl From<NodeConfig> for ConfigView {
    fn from(config: NodeConfig) -> Self {
        let NodeConfig {
            abi_version,
            flags,
            node_ip,
            gateway_ip,
            pod_cidr,
            pod_prefix_len,
            cluster_prefix_len,
            _pad0: _,
            cluster_cidr,
            gateway_mac,
            _pad1: _,
            uplink_ifindex,
            bridge_ifindex,
            snat_port_min,
            snat_port_max,
            ct_limit,
            ct_timeouts,
            tunnel_ifindex: _,
            _pad3: _,
            netns_cookie,
            service_cidr,
            service_prefix_len,
            _pad2: _,
            node_ip6,
            pod_cidr6: _,
            cluster_cidr6,
            pod_prefix_len6: _,
            cluster_prefix_len6,
            _pad4: _,
            ct6_limit,
        } = config;
        Self {
            abi_version,
            ready: flags & podnet_ebpf::abi::config_flag::READY != 0,
            node_ip: node_ip.into(),
            gateway_ip: gateway_ip.into(),
            gateway_mac: format_mac(&gateway_mac),
            pod_cidr: format!("{}/{pod_prefix_len}", Ipv4Addr::from(pod_cidr)),
            cluster_cidr: format!("{}/{cluster_prefix_len}", Ipv4Addr::from(cluster_cidr)),
            uplink_ifindex,
            bridge_ifindex,
            snat_ports: format!("{snat_port_min}-{snat_port_max}"),
            anti_spoof: flags & podnet_ebpf::abi::config_flag::ANTI_SPOOF != 0,
            ct_limit,
            ct_timeouts,
            netns_cookie,
            service_cidr: (service_prefix_len != 0)
                .then(|| format!("{}/{service_prefix_len}", Ipv4Addr::from(service_cidr))),
            socket_lb: flags & podnet_ebpf::abi::config_flag::SOCKET_LB != 0,
            node_ip6: (node_ip6 != [0; 4])
                .then(|| podnet_ebpf::abi::addr6_to_bytes(node_ip6).into()),
            cluster_cidr6: (cluster_prefix_len6 != 0).then(|| {
                format!(
                    "{}/{cluster_prefix_len6}",
                    std::net::Ipv6Addr::from(podnet_ebpf::abi::addr6_to_bytes(cluster_cidr6))
                )
            }),
            ct6_limit,
        }
    }
}

impl std::fmt::Display for ConfigView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "abi v{} ready={} node_ip={} gateway={} ({}) pod_cidr={} cluster_cidr={} uplink_ifindex={} bridge_ifindex={} snat_ports={} ct_limit={}",
            self.abi_version,
            self.ready,
            self.node_ip,
            self.gateway_ip,
            self.gateway_mac,
            self.pod_cidr,
            self.cluster_cidr,
            self.uplink_ifindex,
            self.bridge_ifindex,
            self.snat_ports,
            self.ct_limit
        )?;
        if let Some(ip6) = self.node_ip6 {
            write!(f, " node_ip6={ip6}")?;
        }
        if let Some(cidr) = &self.service_cidr {
            write!(f, " service_cidr={cidr}")?;
        }
        if let Some(cidr) = &self.cluster_cidr6 {
            write!(f, " cluster_cidr6={cidr}")?;
        }
        Ok(())
    }
}
