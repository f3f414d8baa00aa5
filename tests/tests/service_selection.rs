//! How a Service's new connections pick a backend, end to end in namespaces, through
//! `podnet service apply`: `sessionAffinity: ClientIP` keeps a client on one backend for 200
//! connections and lets go once the timeout passes without a new connection (on the per-packet
//! path and at the socket), and Maglev gives a flow from outside the same backend whichever
//! node it arrives at. The per-packet details (expiry, backends coming and going, how many
//! flows Maglev moves) are in `services_unit`.

use std::{collections::BTreeMap, path::PathBuf, thread::sleep, time::Duration};

use podnet_tests::{
    Cluster, InNetns, Node, SERVICE_CIDR, ServicePath, describe, netprobe, require_root, serve_tcp,
    serve_udp,
};
use serde_json::{Value, json};

const VIP: &str = "10.96.0.20";
const LB_IP: &str = "198.51.100.20";

/// Writes `table` into the node's state directory (removed with the node) and applies it.
fn apply(cli: &podnet_tests::PodnetCli, table: &Value) -> Value {
    let path: PathBuf = cli.state_dir.join("selection.json");
    std::fs::write(&path, table.to_string()).expect("write table");
    cli.json(&["service", "apply", "-f", path.to_str().expect("utf-8")])
}

/// `netprobe churn`: `count` connections one after another; how many each server answered.
fn churn(ns: &(impl InNetns + ?Sized), addr: &str, count: u32) -> BTreeMap<String, u64> {
    let count = count.to_string();
    let out = netprobe(ns, &["churn", "tcp", addr, "--count", &count]);
    assert!(out.status.success(), "churn: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let servers = text
        .split_whitespace()
        .find_map(|f| f.strip_prefix("servers="))
        .unwrap_or_else(|| panic!("no servers= in {text}"));
    servers
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (server, n) = s.rsplit_once('*').expect("server*count");
            (server.to_owned(), n.parse().expect("count"))
        })
        .collect()
}

fn affinity_service(backends: &[String], affinity: bool) -> Value {
    let mut spec = json!({
        "clusterIPs": [VIP],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    });
    if affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 1}});
    }
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"services": [{
        "metadata": {"name": "sticky", "namespace": "default"},
        "spec": spec,
        "endpoints": endpoints
    }]})
}

fn client_ip_affinity(socket_lb: bool, pod_cidr: &str) {
    let path = if socket_lb {
        ServicePath::Socket
    } else {
        ServicePath::Tc
    };
    let node = Node::with_args(pod_cidr, &path.init_args());
    let pods: Vec<_> = (0..4).map(|i| node.add_pod(&format!("web{i}"))).collect();
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| serve_tcp(&p.ns, "0.0.0.0:8080"))
        .collect();
    let client = node.add_pod("client");
    let ips: Vec<String> = pods.iter().map(|p| p.ip.clone()).collect();
    let front = format!("{VIP}:80");

    // Without affinity, 200 connections spread over the backends.
    apply(&node.cli, &affinity_service(&ips, false));
    let spread = churn(&client.ns, &front, 200);
    assert!(spread.len() > 1, "random choice spreads: {spread:?}");

    // With it, all 200 go to one.
    apply(&node.cli, &affinity_service(&ips, true));
    let sticky = churn(&client.ns, &front, 200);
    assert_eq!(sticky.len(), 1, "one backend for one client: {sticky:?}");
    assert_eq!(sticky.values().sum::<u64>(), 200);
    let first = sticky.keys().next().expect("a server").clone();

    // Once a second passes without a new connection, the next one is placed afresh: within a
    // few rounds it lands elsewhere (all 12 on the same backend: 1 in 16 million by chance).
    let mut rounds = 0;
    let moved = loop {
        rounds += 1;
        sleep(Duration::from_millis(1_200));
        let next = churn(&client.ns, &front, 1);
        let server = next.keys().next().expect("a server").clone();
        if server != first || rounds == 12 {
            break server != first;
        }
    };
    assert!(
        moved,
        "affinity expires after its timeout ({rounds} rounds)"
    );
}

#[test]
fn client_ip_affinity_holds_for_200_connections_and_expires_tc_path() {
    require_root!();
    client_ip_affinity(false, "10.244.160.0/24");
}

#[test]
fn client_ip_affinity_holds_for_200_connections_and_expires_socket_path() {
    require_root!();
    client_ip_affinity(true, "10.244.161.0/24");
}

/// The backend (its `local=` address) that answers a UDP datagram from the outside host's
/// source port `port` to the LoadBalancer IP.
fn udp_backend(cluster: &Cluster, port: u16) -> String {
    let port = port.to_string();
    let out = netprobe(
        &cluster.outside,
        &[
            "connect",
            "udp",
            &format!("{LB_IP}:53"),
            "--source-port",
            &port,
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(out.status.success(), "udp via LB: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("local="))
        .unwrap_or_else(|| panic!("no local= in {text}"))
        .to_owned()
}

#[test]
fn maglev_sends_a_flow_to_the_same_backend_whichever_node_it_arrives_at() {
    require_root!();
    let cluster = Cluster::new(2, &["--service-cidr", SERVICE_CIDR]);
    // Two backends on each node.
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        for i in 0..2 {
            let pod = node.add_pod(&format!("dns{n}{i}"));
            servers.push(serve_udp(&pod.ns, &format!("{}:5353", pod.ip)));
            backends.push(pod.ip);
        }
    }
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    let table = json!({"services": [{
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIPs": ["10.96.0.53"],
            "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053}],
            "loadBalancing": "maglev"
        },
        "status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}},
        "endpoints": endpoints
    }]});
    for node in &cluster.nodes {
        apply(&node.cli, &table);
    }
    let ports: Vec<u16> = (0..24).map(|i| 41_000 + i).collect();
    let mut seen = Vec::new();
    for node in &cluster.nodes {
        cluster
            .outside
            .ok(&format!("ip route replace {LB_IP}/32 via {}", node.ip));
        seen.push(
            ports
                .iter()
                .map(|&p| udp_backend(&cluster, p))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        seen[0], seen[1],
        "each flow reaches the same backend through either node"
    );
    let distinct: std::collections::BTreeSet<_> = seen[0].iter().collect();
    assert!(distinct.len() > 1, "the flows spread: {distinct:?}");
}
