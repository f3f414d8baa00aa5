//! A node with no podnet at all, for kube-proxy's rule layouts: a node namespace with a Linux
//! bridge (`cbr0`, the pod subnet's `.1`), pods as namespaces on veths enslaved to it (the
//! reference `bridge` CNI plugin's wiring, hairpin mode on), IP forwarding on, and one of kube-proxy's layouts
//! ([`Layout`]) loaded into the node's netfilter from a [`ServiceTable`].
//!
//! Same-subnet replies from a backend to a client pod are bridged, so they reach conntrack
//! (and their reverse DNAT) through `bridge-nf-call-iptables`, which a new namespace has on,
//! as kube-proxy requires. Dropping the node deletes every namespace it made.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::kubeproxy::{self, Config};
use crate::{
    InNetns as _, Netns, addr, describe, route, service_table::ServiceTable, unique, veth,
};

/// The bridge of a kernel node.
pub const BRIDGE: &str = "cbr0";
/// A veth (both ends in the node namespace; this kernel has no dummy links) holding the node's
/// default route, as a real node has one: packets that no rule translates (a ClusterIP without
/// a rule) are routed there and go no further.
pub const UPLINK: &str = "uplink0";
/// How long loading one transaction may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Which of kube-proxy's modes a node's rules reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `--proxy-mode iptables`: `iptables-restore` (this machine's `iptables`, nf_tables
    /// backend).
    Iptables,
    /// `--proxy-mode nftables`: `nft -f`, table `ip kube-proxy`.
    Nftables,
}

impl Layout {
    pub const ALL: [Self; 2] = [Self::Iptables, Self::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
        }
    }

    /// The input kube-proxy would write for `table`, in transactions of at most `per`
    /// service ports.
    pub fn transactions(self, table: &ServiceTable, cfg: &Config, per: usize) -> Vec<String> {
        match self {
            Self::Iptables => kubeproxy::iptables_transactions(table, cfg, per),
            Self::Nftables => kubeproxy::nft_transactions(table, cfg, per),
        }
    }

    /// The shell command that loads the script at `path`, as kube-proxy runs it.
    fn load_command(self, path: &str) -> String {
        match self {
            Self::Iptables => format!("iptables-restore --noflush --counters < {path}"),
            Self::Nftables => format!("nft -f {path}"),
        }
    }
}

/// A pod of a [`KernelNode`].
pub struct KernelPod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Its veth's end in the node namespace (on the bridge).
    pub host_if: String,
}

/// A node namespace with a bridge and pods, and no podnet.
pub struct KernelNode {
    pub ns: Netns,
    /// The pod subnet's first three octets: pods are `.2` and up, the bridge `.1`.
    subnet: [u8; 3],
    pods: usize,
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl KernelNode {
    /// A node whose pods live in `subnet`.0/24 (e.g. `[10, 244, 200]`).
    pub fn new(subnet: [u8; 3]) -> Self {
        let ns = Netns::new("kn");
        let [a, b, c] = subnet;
        ns.ok(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && ip link add {BRIDGE} type bridge && \
             ip addr add {a}.{b}.{c}.1/24 dev {BRIDGE} && ip link set {BRIDGE} up && \
             ip link add {UPLINK} type veth peer name {UPLINK}p && \
             ip link set {UPLINK} up && ip link set {UPLINK}p up && \
             ip route add default dev {UPLINK}"
        ));
        Self {
            ns,
            subnet,
            pods: 0,
        }
    }

    /// The bridge's (the pods' gateway's) address.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A new pod on the bridge with the next free address.
    pub fn add_pod(&mut self) -> KernelPod {
        self.pods += 1;
        let host = u8::try_from(self.pods + 1).expect("at most 253 pods");
        let [a, b, c] = self.subnet;
        let ip = Ipv4Addr::new(a, b, c, host);
        let ns = Netns::new("knp");
        let host_if = unique("kv");
        veth(&self.ns, &host_if, &ns, "eth0");
        // Hairpin on, as the bridge plugin's `hairpinMode`: a pod reaching itself through a
        // service gets its own packets back out of the port they came in on.
        self.ns.ok(&format!(
            "ip link set {host_if} master {BRIDGE} && \
             ip link set dev {host_if} type bridge_slave hairpin on"
        ));
        addr(&ns, "eth0", &format!("{ip}/24"));
        route(&ns, &["default", "via", &self.gateway().to_string()]);
        KernelPod { ns, ip, host_if }
    }

    /// Loads `layout` for `table` into the node's netfilter as kube-proxy would, one full
    /// sync, in transactions of at most `per` service ports (`usize::MAX`: one, as kube-proxy
    /// does); returns the whole input and how long the load commands took together.
    pub fn load(
        &self,
        layout: Layout,
        table: &ServiceTable,
        cfg: &Config,
        per: usize,
    ) -> (String, Duration) {
        let mut took = Duration::ZERO;
        let transactions = layout.transactions(table, cfg, per);
        for (i, script) in transactions.iter().enumerate() {
            let file = TempFile(std::env::temp_dir().join(format!("{}.rules", unique("kp"))));
            std::fs::write(&file.0, script).expect("write the rules");
            let path = file.0.to_str().expect("utf-8 path");
            let start = Instant::now();
            let out = self.ns.command(&["sh", "-c", &layout.load_command(path)]);
            let out = crate::run_bounded(out, LOAD_TIMEOUT);
            took += start.elapsed();
            assert!(
                out.status.success(),
                "loading the {} layout (transaction {} of {}, {} bytes) failed: {}",
                layout.name(),
                i + 1,
                transactions.len(),
                script.len(),
                describe(&out)
            );
        }
        (transactions.concat(), took)
    }

    /// Conntrack entries of this node whose original destination is `ip` (read from
    /// `/proc/net/nf_conntrack` in the node's namespace).
    pub fn conntrack_entries_to(&self, ip: Ipv4Addr) -> usize {
        let out = self.ns.sh("cat /proc/net/nf_conntrack");
        let needle = format!(" dst={ip} ");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}
