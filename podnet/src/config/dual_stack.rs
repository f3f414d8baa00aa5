//! The IPv6 half of a dual-stack node's settings: its IPv6 pod CIDR, cluster CIDR and node
//! address, their checks, the IPv6 gateway, and the split of mixed-family flags
//! (`--pod-cidr 10.244.1.0/24 --pod-cidr fd00:10:244:1::/64`) into one CIDR per family.
//!
//! The programs deliver IPv6 between pods (on the node and across nodes) and pass the rest to
//! the kernel, whose routing serves it (the bridge carries the IPv6 gateway, forwarding is on).

use std::net::Ipv6Addr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::{ConfigError, NodeSettings};

/// Longest IPv6 pod CIDR prefix: a /126 leaves the network (subnet-router anycast) address, the
/// gateway, the last address and one pod, as a /30 does for IPv4.
pub const MAX_POD_PREFIX_V6: u8 = 126;

/// Shortest IPv6 service CIDR prefix: kube-apiserver's `--service-cluster-ip-range` takes at
/// most a /108 for IPv6 (20 bits of ClusterIPs).
pub const MIN_SERVICE_PREFIX_V6: u8 = 108;

/// IPv6 prefixes that cannot be a pod CIDR, with the reason.
const RESERVED_V6: [(&str, &str); 4] = [
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/8", "reserved (loopback, unspecified, IPv4-compatible)"),
];

/// At most one CIDR per address family, from a flag that may be repeated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCidrs {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

/// Splits the values of a repeatable flag (`what` names it in errors) by family. Two of one
/// family are refused: a node has one pod CIDR per family, as Kubernetes' `podCIDRs`.
pub fn split_by_family(what: &str, cidrs: &[IpNetwork]) -> Result<PodCidrs, ConfigError> {
    let mut split = PodCidrs::default();
    for cidr in cidrs {
        match *cidr {
            IpNetwork::V4(net) => {
                if let Some(first) = split.v4.replace(net) {
                    return Err(ConfigError::Invalid(format!(
                        "{what} given two IPv4 CIDRs ({first} and {net}): a node has at most one per family"
                    )));
                }
            }
            IpNetwork::V6(net) => {
                if let Some(first) = split.v6.replace(net) {
                    return Err(ConfigError::Invalid(format!(
                        "{what} given two IPv6 CIDRs ({first} and {net}): a node has at most one per family"
                    )));
                }
            }
        }
    }
    Ok(split)
}

fn has_host_bits(net: Ipv6Network) -> bool {
    net.network() != net.ip()
}

fn overlaps(a: Ipv6Network, b: Ipv6Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

impl NodeSettings {
    /// The IPv6 gateway of a dual-stack node: the first address after the IPv6 pod CIDR's
    /// network address, on the bridge (as the IPv4 gateway is).
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.pod_cidr6
            .map(|net| Ipv6Addr::from(u128::from(net.network()) + 1))
    }

    /// The IPv6 cluster CIDR: as given, else the IPv6 pod CIDR itself.
    pub fn effective_cluster_cidr6(&self) -> Option<Ipv6Network> {
        self.cluster_cidr6.or(self.pod_cidr6)
    }

    /// Checks the IPv6 settings (called by [`NodeSettings::validate`]).
    pub(super) fn validate_ipv6(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.ipv6_underlay
            && (self.mode != super::RoutingMode::Vxlan || self.pod_cidr6.is_none())
        {
            return invalid(
                "ipv6_underlay (--ipv6-underlay) needs overlay mode (--mode vxlan) and an IPv6 pod CIDR"
                    .to_owned(),
            );
        }
        if let Some(cluster) = self.cluster_cidr6 {
            if self.pod_cidr6.is_none() {
                return invalid(format!(
                    "IPv6 cluster CIDR {cluster} given without an IPv6 pod CIDR"
                ));
            }
            if has_host_bits(cluster) {
                return invalid(format!("IPv6 cluster CIDR {cluster} has host bits set"));
            }
        }
        if let Some(svc) = self.service_cidr6 {
            if has_host_bits(svc) {
                return invalid(format!("IPv6 service CIDR {svc} has host bits set"));
            }
            if svc.prefix() < MIN_SERVICE_PREFIX_V6 {
                return invalid(format!(
                    "IPv6 service CIDR {svc} is too large: Kubernetes allows at most a /{MIN_SERVICE_PREFIX_V6} (kube-apiserver refuses larger IPv6 service ranges)"
                ));
            }
            if let Some(cluster) = self.effective_cluster_cidr6()
                && overlaps(svc, cluster)
            {
                return invalid(format!(
                    "IPv6 service CIDR {svc} overlaps the IPv6 cluster CIDR {cluster}"
                ));
            }
        }
        let Some(pod) = self.pod_cidr6 else {
            return Ok(());
        };
        if pod.prefix() > MAX_POD_PREFIX_V6 || pod.prefix() == 0 {
            return invalid(format!(
                "IPv6 pod CIDR {pod} cannot hold pods: it needs room for the network address, the gateway, the last address and at least one pod (/{MAX_POD_PREFIX_V6} or larger, but not ::/0; nodes usually get a /64)"
            ));
        }
        if has_host_bits(pod) {
            return invalid(format!(
                "IPv6 pod CIDR {pod} has host bits set; did you mean {}/{}?",
                pod.network(),
                pod.prefix()
            ));
        }
        for (reserved, what) in RESERVED_V6 {
            let reserved: Ipv6Network = reserved.parse().expect("a valid network");
            if overlaps(reserved, pod) {
                return invalid(format!(
                    "IPv6 pod CIDR {pod} overlaps {reserved}, which is {what}: pods need global or unique-local (fc00::/7) addresses"
                ));
            }
        }
        let cluster = self.effective_cluster_cidr6().unwrap_or(pod);
        if !(cluster.contains(pod.network()) && cluster.prefix() <= pod.prefix()) {
            return invalid(format!(
                "IPv6 pod CIDR {pod} is not inside IPv6 cluster CIDR {cluster}"
            ));
        }
        if let Some(ip) = self.node_ip6
            && cluster.contains(ip)
        {
            return invalid(format!(
                "node IPv6 address {ip} lies inside the IPv6 cluster CIDR {cluster}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pod6: Option<&str>, cluster6: Option<&str>) -> NodeSettings {
        let mut s: NodeSettings = serde_json::from_value(serde_json::json!({
            "pod_cidr": "10.244.1.0/24",
            "cluster_cidr": "10.244.0.0/16",
            "uplink": "eth0",
        }))
        .unwrap();
        s.pod_cidr6 = pod6.map(|c| c.parse().unwrap());
        s.cluster_cidr6 = cluster6.map(|c| c.parse().unwrap());
        s
    }

    fn error(s: &NodeSettings) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn dual_stack_settings_are_checked() {
        let ok = settings(Some("fd00:10:244:1::/64"), Some("fd00:10:244::/56"));
        ok.validate().unwrap();
        assert_eq!(ok.gateway6(), Some("fd00:10:244:1::1".parse().unwrap()));
        // Without a cluster CIDR the pod CIDR is its own.
        let alone = settings(Some("fd00:10:244:1::/64"), None);
        alone.validate().unwrap();
        assert_eq!(alone.effective_cluster_cidr6(), alone.pod_cidr6);
        // IPv4-only settings stay valid, and serialise without any IPv6 field.
        let v4 = settings(None, None);
        v4.validate().unwrap();
        assert_eq!(v4.gateway6(), None);
        let json = serde_json::to_string(&v4).unwrap();
        assert!(
            !json.contains("pod_cidr6") && !json.contains("node_ip6"),
            "{json}"
        );

        for (pod, cluster, wanted) in [
            ("fd00::/127", None, "/126 or larger"),
            ("fd00::/128", None, "/126 or larger"),
            ("fd00::1/64", None, "host bits"),
            ("fe80::/64", None, "link-local"),
            ("ff02::/64", None, "multicast"),
            ("::ffff:10.0.0.0/120", None, "IPv4-mapped"),
            ("fd00:1::/64", Some("fd00:2::/48"), "not inside"),
            ("fd00:1::/64", Some("fd00:1::1/48"), "host bits"),
        ] {
            let msg = error(&settings(Some(pod), cluster));
            assert!(msg.contains(wanted), "{pod} {cluster:?}: {msg}");
        }
        let msg = error(&settings(None, Some("fd00::/48")));
        assert!(msg.contains("without an IPv6 pod CIDR"), "{msg}");
        let mut inside = settings(Some("fd00:1::/64"), Some("fd00::/16"));
        inside.node_ip6 = Some("fd00:1::9".parse().unwrap());
        assert!(error(&inside).contains("node IPv6 address"));
    }

    #[test]
    fn the_ipv6_underlay_needs_the_overlay_and_an_ipv6_pod_cidr() {
        let mut s = settings(Some("fd00:10:244:1::/64"), None);
        s.ipv6_underlay = true;
        assert!(error(&s).contains("--ipv6-underlay"));
        s.mode = crate::config::RoutingMode::Vxlan;
        s.validate().unwrap();
        assert!(
            serde_json::to_string(&s)
                .unwrap()
                .contains("\"ipv6_underlay\":true")
        );
        s.pod_cidr6 = None;
        assert!(error(&s).contains("IPv6 pod CIDR"));
        // Off, it is not written at all.
        let off = settings(None, None);
        assert!(
            !serde_json::to_string(&off)
                .unwrap()
                .contains("ipv6_underlay")
        );
    }

    #[test]
    fn flags_split_by_family() {
        let parse =
            |v: &[&str]| -> Vec<IpNetwork> { v.iter().map(|c| c.parse().unwrap()).collect() };
        let both = split_by_family("--pod-cidr", &parse(&["10.244.1.0/24", "fd00::/64"])).unwrap();
        assert_eq!(both.v4, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(both.v6, Some("fd00::/64".parse().unwrap()));
        let msg = split_by_family("--pod-cidr", &parse(&["fd00::/64", "fd01::/64"]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("two IPv6 CIDRs (fd00::/64 and fd01::/64)"),
            "{msg}"
        );
        assert!(split_by_family("--pod-cidr", &parse(&["10.0.0.0/24", "10.1.0.0/24"])).is_err());
        assert_eq!(
            split_by_family("--pod-cidr", &[]).unwrap(),
            PodCidrs::default()
        );
    }
}
