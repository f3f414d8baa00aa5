//! Privileged integration-test harness for podnet.
//!
//! Everything here lives in network namespaces the fixtures create; nothing touches the root
//! namespace's links, addresses, routes or firewall, and every packet stays between test
//! namespaces. Fixtures clean up on drop, also when a test panics, and every wait is bounded.
//!
//! - [`require_root!`]: skip (or under `PODNET_TESTS_REQUIRE_ROOT=1`, fail) unless root.
//! - [`Netns`] (owned) and [`Pod`] (made by the product), both [`InNetns`].
//! - [`veth`] / [`addr`] / [`route`]: wiring between namespaces.
//! - [`Topology`]: the standard node + outside fixture on 198.18.0.0/24.
//! - [`podnet_bin`], [`netprobe_bin`] and the `netprobe` helpers ([`serve_tcp`],
//!   [`connect_tcp`], [`peer_ip_of`], ...), and for thousands of concurrent connections
//!   [`serve_many`] and [`hold_tcp`].
//! - [`bpf_stats`]: per-program run counts and run time (`kernel.bpf_stats_enabled`).
//! - [`fuzz`]: a seeded PRNG, frame mutations and independent frame checks for fuzzing.
//! - [`Cni`] / [`CniNode`]: a libcni-like driver running podnet's CNI plugin and the reference
//!   plugins inside a node namespace.
//! - [`cri`]: containerd with its CRI plugin in a test namespace, a CRI client, and a sandbox
//!   image built by hand.
//! - [`Snapshot`] / [`Watch`]: everything a node owns (files, links, addresses, routes, tc
//!   filters, namespaces), to show that a refused command changed nothing.

pub mod agent_cluster;
pub mod apiserver;
pub mod bench;
pub mod bpf_stats;
pub mod cluster;
pub mod cni;
pub mod cri;
pub mod dual_stack;
pub mod fuzz;
pub mod netns;
pub mod node;
pub mod packet;
pub mod privilege;
pub mod probe;
pub mod process;
pub mod robustness;
pub mod service_table;
pub mod snapshot;
pub mod testrun;
pub mod topology;

use std::time::{Duration, Instant};

pub use cluster::{Cluster, ClusterNode, FABRIC_GATEWAY};
pub use cni::{
    AddResult, CHAINED_BRIDGE, CHAINED_CNI_VERSION, Cni, CniBinDir, CniError, CniNode, CniOutput,
    Invocation, PODNET_CNI_VERSIONS, RuntimeConf, STANDALONE_BRIDGE, STANDALONE_CNI_VERSION,
    SpecError, container_address, gateway_of, host_peer, in_cidr, ip_records_under,
};
pub use dual_stack::{CLUSTER_CIDR6, NODE_IP6, OUTSIDE_IP6, addr6};
pub use netns::{
    InNetns, NETNS_RUN_DIR, Netns, Pod, VethPair, addr, is_own_netns, mac, netns_list, route,
    same_file, unique, veth,
};
pub use node::{CLUSTER_CIDR, Node, PodInfo, PodnetCli, SERVICE_CIDR, ServicePath, ping};
pub use privilege::{REQUIRE_ROOT_ENV, require_root, require_root_for};
pub use probe::{
    HeldConnections, addr_field, churn_tcp, connect_probe, connect_tcp, connect_udp, hold_tcp,
    http_get, local_ip_of, netprobe, netprobe_bin, number_field, peer_ip_of, podnet, podnet_bin,
    serve, serve_http, serve_many, serve_tcp, serve_tcp_echo, serve_udp, stream_tcp,
    syn_retransmits, workspace_root,
};
pub use process::{ChildGuard, DEFAULT_TIMEOUT, describe, run_bounded};
pub use robustness::Scenario;
pub use snapshot::{Snapshot, Watch};
pub use topology::{FABRIC_PREFIX_LEN, NODE_IP, OUTSIDE_IF, OUTSIDE_IP, Topology, UPLINK};

/// Polls `f` every 10 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn unique_names_fit_interface_names() {
        let names: Vec<String> = (0..2000).map(|_| unique("abcd")).collect();
        assert!(names.iter().all(|n| n.len() <= 15), "{names:?}");
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
        assert!(names[0].starts_with("abcd-"));
    }

    #[test]
    fn parses_netprobe_replies() {
        let reply = "peer=198.18.0.10:40000 local=198.18.0.1:7000 bytes=6";
        assert_eq!(peer_ip_of(reply), Some(NODE_IP.into()));
        assert_eq!(local_ip_of(reply), Some(OUTSIDE_IP.into()));
        assert_eq!(
            peer_ip_of("peer=[fd00::1]:5 local=[fd00::2]:6"),
            Some("fd00::1".parse().expect("valid"))
        );
        assert_eq!(peer_ip_of("garbage"), None);
    }

    #[test]
    fn wait_until_returns_once_true() {
        let mut n = 0;
        wait_until(Duration::from_secs(1), "three polls", || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for never")]
    fn wait_until_times_out() {
        wait_until(Duration::from_millis(30), "never", || false);
    }
}
