//! Cross-node pod-to-pod benchmark: TCP throughput, request/response and connection rate, with
//! their CPU cost, between two nodes of a [`Cluster`] (two node namespaces on a shared fabric
//! bridge), for three paths measured in one run, interleaved round by round:
//!
//! - `node-to-node`: between the two node namespaces themselves, node IP to node IP over the
//!   fabric (the limit);
//! - `podnet native`: a pod on node 0 to a pod on node 1 with podnet's native routing (out of
//!   the sender's uplink by FIB lookup + redirect, straight into the pod on the receiver);
//! - `kernel routes + bridge`: the same two pods with podnet's programs detached from the pod
//!   veths and the uplinks, so traffic takes the bridge and the kernel routes
//!   `podCIDR via nodeIP` that podnet keeps in each node for its peers (the seed documents'
//!   way). `node init` re-attaches the programs after each such run.
//!
//! The nodes are dual-stack, and the first three paths are measured over IPv6 too (node
//! address to node address, pod to pod with podnet, pod to pod through the kernel), reported
//! beside podnet's IPv4 run of the same round.
//!
//! Client and server are pinned to different CPUs (iperf3 -A, taskset) for repeatability.
//! Every podnet run must grow `forward_remote_node` (node 0) and `forward_uplink_to_pod`
//! (node 1); every kernel run must leave them alone. Writes `DIR/cross-node.json` for the
//! report with `--out DIR`.

use podnet_tests::bench::{
    RoundArgs,
    measure::{Endpoints, Workload, measure},
    series::{BenchOutput, PathRuns},
};
use podnet_tests::{
    CLUSTER_CIDR, CLUSTER_CIDR6, Cluster, ClusterNode, InNetns, PodInfo, dual_stack,
};

/// The `node init` arguments [`Cluster::new`] ran for `node` (no extra flags), with the
/// cluster file taken from the settings `node init` recorded in `<state_dir>/node.json`.
fn init_args(node: &ClusterNode) -> Vec<String> {
    let path = node.state_dir.join("node.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let settings: serde_json::Value = serde_json::from_str(&text).expect("node.json");
    let cluster = settings["cluster"]
        .as_str()
        .unwrap_or_else(|| panic!("no cluster file in {}: {settings}", path.display()));
    [
        "node",
        "init",
        "--netns",
        node.ns.name(),
        "--uplink",
        "uplink0",
        "--pod-cidr",
        &node.pod_cidr,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--pin-dir",
        node.pin_dir.to_str().expect("UTF-8 path"),
        "--cluster",
        cluster,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(node.pod_cidr6.iter().flat_map(|cidr6| {
        let ip6 = node
            .ip6
            .expect("a dual-stack node has an IPv6 address")
            .to_string();
        [
            "--pod-cidr".to_owned(),
            cidr6.clone(),
            "--cluster-cidr".to_owned(),
            CLUSTER_CIDR6.to_owned(),
            "--node-ip6".to_owned(),
            ip6,
        ]
    }))
    .collect()
}

/// The counters that show a pod-to-pod packet from node 0 to node 1 took podnet's path: sent
/// by node 0 out of its uplink, delivered by node 1 from its uplink into the pod.
const SENT: &str = "forward_remote_node";
const DELIVERED: &str = "forward_uplink_to_pod";

/// Their IPv6 twins.
const SENT6: &str = "forward_remote_node6";
const DELIVERED6: &str = "forward_uplink_to_pod6";

/// `(node 0's SENT, node 1's DELIVERED)`.
fn counters(n0: &ClusterNode, n1: &ClusterNode) -> (u64, u64) {
    counters_of(n0, n1, SENT, DELIVERED)
}

/// `(node 0's sent, node 1's delivered)`.
fn counters_of(n0: &ClusterNode, n1: &ClusterNode, sent: &str, delivered: &str) -> (u64, u64) {
    let get = |node: &ClusterNode, reason: &str| {
        node.stats()
            .get(reason)
            .copied()
            .unwrap_or_else(|| panic!("{}: no {reason} counter", node.name))
    };
    (get(n0, sent), get(n1, delivered))
}

/// Detaches podnet's programs from `pod`'s veth and from the uplink of `node` (`pod`'s node).
fn detach(node: &ClusterNode, pod: &PodInfo) {
    node.ns
        .ok(&format!("tc filter del dev {} ingress", pod.host_if));
    node.ns.ok("tc filter del dev uplink0 ingress");
    let left = node.ns.ok(&format!(
        "tc filter show dev {} ingress; tc filter show dev uplink0 ingress",
        pod.host_if
    ));
    assert!(
        left.trim().is_empty(),
        "{}: still attached: {left}",
        node.name
    );
}

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");

    // Dual-stack nodes: the IPv6 paths are measured beside the IPv4 ones.
    let cluster = Cluster::dual_stack(2, &[]);
    let (n0, n1) = (&cluster.nodes[0], &cluster.nodes[1]);
    let a = n0.add_pod("mnbench-a");
    let b = n1.add_pod("mnbench-b");
    let b6 = dual_stack::address6_of(n1, "mnbench-b").to_string();
    let (ip0, ip1) = (n0.ip.to_string(), n1.ip.to_string());
    let node1_ip6 = n1.ip6.expect("dual-stack").to_string();

    // The kernel path relies on the routes podnet keeps for its peers in each node.
    for (node, peer) in [(n0, n1), (n1, n0)] {
        let routes = node.ns.ok("ip route show");
        let want = format!("{} via {}", peer.pod_cidr, peer.ip);
        assert!(
            routes.lines().any(|l| l.starts_with(&want)),
            "{}: no kernel route `{want}`:\n{routes}",
            node.name
        );
    }
    let inits: Vec<Vec<String>> = cluster.nodes.iter().map(init_args).collect();
    // A second, identical pair of nodes in overlay (VXLAN) mode.
    let overlay = Cluster::new(2, &["--mode", "vxlan"]);
    let c = overlay.nodes[0].add_pod("mnbench-c");
    let d = overlay.nodes[1].add_pod("mnbench-d");

    let mut runs = PathRuns::new(&[
        "node-to-node",
        "podnet native",
        "kernel routes + bridge",
        "podnet overlay (vxlan)",
    ]);
    // IPv6: node to node, podnet, the kernel; and podnet's IPv4 again as the family baseline.
    let mut runs6 = PathRuns::new(&[
        "node-to-node IPv6",
        "podnet native IPv6",
        "kernel routes + bridge IPv6",
        "podnet native IPv4",
    ]);
    let (o0, o1) = (&overlay.nodes[0], &overlay.nodes[1]);
    for round in 0..args.rounds {
        eprintln!("cross-node round {}/{}", round + 1, args.rounds);
        for w in Workload::ALL {
            runs.push(
                0,
                w,
                measure(w, &Endpoints::direct(&n0.ns, &n1.ns, &ip1, w), args.seconds),
            );

            let before = counters(n0, n1);
            let podnet4 = measure(w, &Endpoints::direct(&a.ns, &b.ns, &b.ip, w), args.seconds);
            runs.push(1, w, podnet4);
            runs6.push(3, w, podnet4);
            let after = counters(n0, n1);
            assert!(
                after.0 > before.0 + 100 && after.1 > before.1 + 100,
                "podnet run took podnet's path: node-0 {SENT} {} -> {}, node-1 {DELIVERED} {} -> {}",
                before.0,
                after.0,
                before.1,
                after.1
            );

            runs6.push(
                0,
                w,
                measure(
                    w,
                    &Endpoints::direct(&n0.ns, &n1.ns, &node1_ip6, w),
                    args.seconds,
                ),
            );
            let before = counters_of(n0, n1, SENT6, DELIVERED6);
            runs6.push(
                1,
                w,
                measure(w, &Endpoints::direct(&a.ns, &b.ns, &b6, w), args.seconds),
            );
            let after = counters_of(n0, n1, SENT6, DELIVERED6);
            assert!(
                after.0 > before.0 + 100 && after.1 > before.1 + 100,
                "podnet IPv6 run took podnet's path: {before:?} -> {after:?}"
            );

            detach(n0, &a);
            detach(n1, &b);
            let before = (counters(n0, n1), counters_of(n0, n1, SENT6, DELIVERED6));
            runs.push(
                2,
                w,
                measure(w, &Endpoints::direct(&a.ns, &b.ns, &b.ip, w), args.seconds),
            );
            runs6.push(
                2,
                w,
                measure(w, &Endpoints::direct(&a.ns, &b.ns, &b6, w), args.seconds),
            );
            assert_eq!(
                (counters(n0, n1), counters_of(n0, n1, SENT6, DELIVERED6)),
                before,
                "kernel run bypassed podnet (node-0 {SENT}/{SENT6}, node-1 {DELIVERED}/{DELIVERED6})"
            );
            for (node, init) in cluster.nodes.iter().zip(&inits) {
                let refs: Vec<&str> = init.iter().map(String::as_str).collect();
                node.ok(&refs); // re-attaches the uplink's and the pod's programs
            }

            let before = counters(o0, o1);
            runs.push(
                3,
                w,
                measure(w, &Endpoints::direct(&c.ns, &d.ns, &d.ip, w), args.seconds),
            );
            let after = counters(o0, o1);
            assert!(
                after.0 > before.0 + 100 && after.1 > before.1 + 100,
                "overlay run took podnet's path"
            );
        }
    }
    drop(cluster); // resets both nodes before the report
    drop(overlay);

    let mut out = BenchOutput::new(
        "cross-node",
        "Cross-node pod-to-pod",
        &format!(
            "Two node namespaces on a shared fabric bridge ({ip0}, {ip1}). `node-to-node`: node \
             IP to node IP (the limit). `podnet native`: a pod on each node, podnet's native \
             routing (FIB lookup + redirect out of the uplink, `redirect_peer` into the pod). \
             `kernel routes + bridge`: the same pods with podnet's programs detached, over the \
             bridge and the kernel routes `podCIDR via nodeIP` (the seed documents' static \
             routes). `podnet overlay (vxlan)`: a second, identical pair of nodes in \
             `--mode vxlan` (pods at MTU 1450). Every podnet run must move \
             `{SENT}` on the sender and `{DELIVERED}` on the receiver; every kernel run must not."
        ),
    );
    runs.into_output(&mut out, "cross-node pod-to-pod");
    runs6.into_output(&mut out, "cross-node pod-to-pod over IPv6");
    out.notes.push(format!(
        "IPv6 rows: the same dual-stack nodes (fd00:198:18::11 and ::12), pods' IPv6 addresses; \
         podnet runs must move `{SENT6}` and `{DELIVERED6}`; `podnet native IPv4` is the IPv4 \
         podnet run of the same round, for IPv6 against IPv4."
    ));
    if let Some(dir) = &args.out {
        out.write(std::path::Path::new(dir));
    }
}
