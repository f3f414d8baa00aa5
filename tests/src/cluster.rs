//! Several podnet nodes on one machine: each node a namespace whose uplink is a veth into a
//! shared "fabric" namespace (a plain bridge, like a top-of-rack switch), plus an "outside"
//! namespace on the same fabric that plays the rest of the world and the nodes' default
//! gateway. The fabric knows nothing about pod CIDRs. Every node runs `podnet node init` with a
//! cluster file naming all of them.
//!
//! Dropping the cluster resets every node and removes its directories, then the namespaces go.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde_json::json;

use crate::{
    CLUSTER_CIDR, InNetns as _, Netns, PodnetCli, addr, dual_stack::CLUSTER_CIDR6, route, unique,
    veth,
};

/// The outside host's address on the fabric (every node's default gateway).
pub const FABRIC_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// A fabric (a plain bridge) and the outside host on it at [`FABRIC_GATEWAY`]/24.
pub fn fabric() -> (Netns, Netns) {
    let fabric = Netns::new("fab");
    fabric.ok("ip link add br0 type bridge && ip link set br0 up");
    let outside = Netns::new("out");
    veth(&fabric, "fo", &outside, "eth0");
    fabric.ok("ip link set fo master br0");
    addr(&outside, "eth0", &format!("{FABRIC_GATEWAY}/24"));
    (fabric, outside)
}

/// A node namespace on `fabric` (port `f<i>`), with `ip`/24 on its `uplink0` and the outside
/// host as its default gateway.
pub fn fabric_node(fabric: &Netns, i: u8, ip: Ipv4Addr) -> Netns {
    let ns = Netns::new("nd");
    let port = format!("f{i}");
    veth(fabric, &port, &ns, "uplink0");
    fabric.ok(&format!("ip link set {port} master br0"));
    addr(&ns, "uplink0", &format!("{ip}/24"));
    route(&ns, &["default", "via", &FABRIC_GATEWAY.to_string()]);
    ns
}

/// One node of a [`Cluster`]; its `podnet` CLI through `Deref` ([`PodnetCli`]).
pub struct ClusterNode {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    /// The node's IPv6 address on the fabric and its IPv6 pod CIDR (dual-stack clusters).
    pub ip6: Option<Ipv6Addr>,
    pub pod_cidr6: Option<String>,
    pub cli: PodnetCli,
    pub pin_dir: PathBuf,
}

impl std::ops::Deref for ClusterNode {
    type Target = PodnetCli;

    fn deref(&self) -> &PodnetCli {
        &self.cli
    }
}

/// `n` podnet nodes and an outside host on one fabric.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub outside: Netns,
    pub fabric: Netns,
    cluster_file: PathBuf,
}

impl Cluster {
    /// Builds the fabric and `n` nodes (node `i` has IP 198.18.0.(11+i) and pod CIDR
    /// 10.244.(110+i).0/24), writes the cluster file and runs `node init` on every node.
    pub fn new(n: u8, extra_init: &[&str]) -> Self {
        Self::build(n, extra_init, false)
    }

    /// [`Cluster::new`] with dual-stack nodes: node `i` also has fd00:198:18::(11+i)/64 on the
    /// fabric (its IPv6 node address) and IPv6 pod CIDR fd00:10:244:(110+i)::/64 from
    /// [`CLUSTER_CIDR6`], in the cluster file and in its `node init`.
    pub fn dual_stack(n: u8, extra_init: &[&str]) -> Self {
        Self::build(n, extra_init, true)
    }

    fn build(n: u8, extra_init: &[&str], dual_stack: bool) -> Self {
        let (fabric, outside) = fabric();
        let id = unique("cl");
        let mut nodes = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(198, 18, 0, 11 + i);
            let ns = fabric_node(&fabric, i, ip);
            let ip6 = dual_stack.then(|| {
                let ip6 = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x11 + u16::from(i));
                ns.ok(&format!("ip -6 addr add {ip6}/64 dev uplink0 nodad"));
                ip6
            });
            nodes.push(ClusterNode {
                name: format!("node-{i}"),
                ns,
                ip,
                pod_cidr: format!("10.244.{}.0/24", 110 + u16::from(i)),
                ip6,
                pod_cidr6: dual_stack.then(|| format!("fd00:10:244:{}::/64", 110 + u16::from(i))),
                cli: PodnetCli {
                    state_dir: std::env::temp_dir().join(format!("podnet-test-{id}-{i}")),
                },
                pin_dir: PathBuf::from(format!("/sys/fs/bpf/podnet-test-{id}-{i}")),
            });
        }
        let cluster_file = std::env::temp_dir().join(format!("podnet-test-{id}-cluster.json"));
        let description = json!({
            "nodes": nodes.iter().map(|n| {
                let mut node = json!({
                    "name": n.name, "node_ip": n.ip.to_string(), "pod_cidr": n.pod_cidr,
                });
                if let (Some(ip6), Some(cidr6)) = (n.ip6, &n.pod_cidr6) {
                    node["node_ip6"] = json!(ip6.to_string());
                    node["pod_cidr6"] = json!(cidr6);
                }
                node
            }).collect::<Vec<_>>(),
        });
        std::fs::write(&cluster_file, description.to_string()).expect("cluster file");
        let cluster = Self {
            nodes,
            outside,
            fabric,
            cluster_file,
        };
        for node in &cluster.nodes {
            let mut args = vec![
                "node".to_owned(),
                "init".to_owned(),
                "--netns".to_owned(),
                node.ns.name().to_owned(),
                "--uplink".to_owned(),
                "uplink0".to_owned(),
                "--pod-cidr".to_owned(),
                node.pod_cidr.clone(),
                "--cluster-cidr".to_owned(),
                CLUSTER_CIDR.to_owned(),
                "--pin-dir".to_owned(),
                node.pin_dir.display().to_string(),
                "--cluster".to_owned(),
                cluster.cluster_file.display().to_string(),
            ];
            if let (Some(ip6), Some(cidr6)) = (node.ip6, &node.pod_cidr6) {
                args.extend([
                    "--pod-cidr".to_owned(),
                    cidr6.clone(),
                    "--cluster-cidr".to_owned(),
                    CLUSTER_CIDR6.to_owned(),
                    "--node-ip6".to_owned(),
                    ip6.to_string(),
                ]);
            }
            args.extend(extra_init.iter().map(|s| (*s).to_owned()));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            node.ok(&refs);
        }
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = node.podnet(&["node", "reset"]);
            let _ = std::fs::remove_dir_all(&node.state_dir);
            let _ = std::fs::remove_dir_all(&node.pin_dir);
        }
        let _ = std::fs::remove_file(&self.cluster_file);
    }
}
