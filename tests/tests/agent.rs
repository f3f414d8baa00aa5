//! `podnet agent` against the test Kubernetes API server (`podnet_tests::apiserver`), with three
//! simulated nodes, one agent each, driven only by the API: no cluster file, no `node init`,
//! no `peer add`, no `service apply`. The nodes find each other through their Node objects, a
//! Service and its EndpointSlices reach every node's maps, scaling and deletion follow, a node
//! removed from the API leaves its peers, and an API server outage (with a new resourceVersion
//! history after it) and a kill -9 of an agent leave established connections alone.

use std::time::{Duration, Instant};

use podnet_tests::{
    InNetns, Scenario, addr_field,
    agent_cluster::{AgentCluster, get, metric},
    apiserver::Resource,
    describe, netprobe, peer_ip_of, require_root, serve_tcp, serve_tcp_echo, wait_until,
};
use serde_json::{Value, json};

const VIP: &str = "10.96.0.10";

fn connect(ns: &(impl InNetns + ?Sized), target: &str) -> Result<String, String> {
    let out = netprobe(ns, &["connect", "tcp", target, "--timeout-ms", "1000"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(describe(&out))
    }
}

fn service(port: u16, node_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": VIP, "clusterIPs": [VIP],
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080, "nodePort": node_port}]}
    })
}

fn slice(name: &str, endpoints: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, node)| json!({
            "addresses": [ip], "conditions": {"ready": true}, "nodeName": node
        })).collect::<Vec<_>>()
    })
}

/// Which backends (their `local=` address) answer `n` connections from `ns` to `target`.
fn backends(ns: &(impl InNetns + ?Sized), target: &str, n: usize) -> Vec<String> {
    let mut ips: Vec<String> = (0..n)
        .filter_map(|_| connect(ns, target).ok())
        .filter_map(|r| addr_field(&r, "local").map(|a| a.ip().to_string()))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[test]
fn three_nodes_driven_only_by_the_api_carry_pods_services_and_nodeports() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent: three nodes driven only by the API server (peers, Service, NodePort, scaling, deletion)",
    );
    let started = Instant::now();
    let cluster = AgentCluster::new(3, 160);
    s.number("agents ready ms", started.elapsed().as_millis());
    let pods: Vec<_> = cluster.nodes.iter().map(|n| n.cli.add_pod("web")).collect();
    for (node, pod) in cluster.nodes.iter().zip(&pods) {
        assert!(
            pod.ip.starts_with(node.pod_cidr.trim_end_matches("0/24")),
            "{} got {} from its Node's pod CIDR {}",
            node.name,
            pod.ip,
            node.pod_cidr
        );
    }
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| serve_tcp(&p.ns, "0.0.0.0:8080"))
        .collect();
    // Pod to pod across nodes: the peers came from the Node objects.
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let reply = connect(&pods[a].ns, &format!("{}:8080", pods[b].ip))
            .unwrap_or_else(|e| panic!("pod {a} -> pod {b}: {e}"));
        assert_eq!(
            peer_ip_of(&reply).map(|ip| ip.to_string()),
            Some(pods[a].ip.clone()),
            "{reply}"
        );
    }

    // A Service with one endpoint, on node 0: every node's pods and the outside reach it.
    cluster
        .api
        .create(Resource::Service, service(80, 30080))
        .expect("Service");
    cluster
        .api
        .create(
            Resource::EndpointSlice,
            slice("web-a", &[(&pods[0].ip, "node-0")]),
        )
        .expect("EndpointSlice");
    for (i, pod) in pods.iter().enumerate() {
        wait_until(
            Duration::from_secs(10),
            &format!("ClusterIP from node {i}"),
            || backends(&pod.ns, &format!("{VIP}:80"), 1) == vec![pods[0].ip.clone()],
        );
    }
    for node in &cluster.nodes {
        let reply = connect(&cluster.outside, &format!("{}:30080", node.ip))
            .unwrap_or_else(|e| panic!("NodePort on {}: {e}", node.name));
        assert_eq!(
            addr_field(&reply, "local").map(|a| a.ip().to_string()),
            Some(pods[0].ip.clone()),
            "{reply}"
        );
    }

    // Scaled to two endpoints (a second slice, as the controller would): both serve.
    cluster
        .api
        .create(
            Resource::EndpointSlice,
            slice("web-b", &[(&pods[2].ip, "node-2")]),
        )
        .expect("second EndpointSlice");
    let mut both = vec![pods[0].ip.clone(), pods[2].ip.clone()];
    both.sort();
    wait_until(Duration::from_secs(10), "both endpoints serve", || {
        backends(&pods[1].ns, &format!("{VIP}:80"), 30) == both
    });
    // Scaled down: the first slice's endpoint goes.
    cluster
        .api
        .delete(Resource::EndpointSlice, "default", "web-a")
        .expect("delete slice");
    wait_until(Duration::from_secs(10), "only node 2's endpoint", || {
        backends(&pods[1].ns, &format!("{VIP}:80"), 20) == vec![pods[2].ip.clone()]
    });
    // The Service deleted: refused at once everywhere.
    cluster
        .api
        .delete(Resource::Service, "default", "web")
        .expect("delete Service");
    for pod in &pods {
        wait_until(Duration::from_secs(10), "the ClusterIP is gone", || {
            connect(&pod.ns, &format!("{VIP}:80")).is_err()
        });
    }

    // A node removed from the API leaves its peers' maps and routes.
    let peers = |i: usize| {
        cluster.nodes[i]
            .cli
            .json(&["node", "peer", "list"])
            .to_string()
    };
    assert!(peers(0).contains("node-2"), "{}", peers(0));
    cluster
        .api
        .delete(Resource::Node, "", "node-2")
        .expect("delete Node");
    wait_until(
        Duration::from_secs(10),
        "node-2 leaves node-0's peers",
        || !peers(0).contains("node-2"),
    );
    assert!(
        connect(&pods[0].ns, &format!("{}:8080", pods[2].ip)).is_err()
            || !peers(1).contains("node-2"),
        "node-2's pods are no longer routed as a peer's"
    );
    let programmed = metric(&cluster.nodes[0].ns, "podnet_peers_programmed");
    assert_eq!(programmed, Some(1.0), "node-0 has one peer left");
    let text = get(&cluster.nodes[0].ns, "/metrics").expect("/metrics");
    for series in [
        "podnet_packets_total{reason=",
        "podnet_conntrack_entries ",
        "podnet_snat_port_exhausted_total ",
        "podnet_agent_programming_latency_seconds_bucket",
        "podnet_agent_api_events_total{resource=\"endpointslices\"}",
    ] {
        assert!(text.contains(series), "/metrics has {series}");
    }
    s.number("seconds", started.elapsed().as_secs());
}

#[test]
fn an_api_outage_with_a_new_history_and_a_killed_agent_drop_nothing_established() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent: API server down 30 s then back with a new history, agent kill -9 and restart, under a stream",
    );
    let mut cluster = AgentCluster::new(2, 170);
    let web = cluster.nodes[1].cli.add_pod("web");
    let client = cluster.nodes[0].cli.add_pod("client");
    let _echo = serve_tcp_echo(&web.ns, "0.0.0.0:8080");
    let _one_shot = serve_tcp(&web.ns, "0.0.0.0:8081");
    cluster
        .api
        .create(Resource::Service, service(80, 30080))
        .expect("Service");
    cluster
        .api
        .create(
            Resource::EndpointSlice,
            slice("web-a", &[(&web.ip, "node-1")]),
        )
        .expect("EndpointSlice");
    wait_until(Duration::from_secs(10), "the ClusterIP", || {
        connect(&client.ns, &format!("{}:8080", web.ip)).is_ok()
            && netprobe(
                &client.ns,
                &[
                    "connect",
                    "tcp",
                    &format!("{VIP}:80"),
                    "--timeout-ms",
                    "500",
                ],
            )
            .status
            .success()
    });
    // One connection through the ClusterIP, held for the whole test, every line checked.
    let bin = podnet_tests::netprobe_bin();
    let mut stream = client.ns.spawn(&[
        bin.to_str().expect("utf-8"),
        "stream",
        "tcp",
        &format!("{VIP}:80"),
        "--seconds",
        "45",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    cluster.api.stop();
    s.number("API server down s", 30);
    std::thread::sleep(Duration::from_secs(15));
    // Meanwhile an agent is killed and restarted: it finds the node from its maps and pins,
    // and waits for the API.
    cluster.kill_agent(0);
    cluster.start_agent(0);
    std::thread::sleep(Duration::from_secs(15));
    // The service changes while the server is down (a new port), and the server comes back
    // with a new resourceVersion history: every watch must relist.
    cluster
        .api
        .update(Resource::Service, {
            let mut svc = service(80, 30080);
            svc["spec"]["ports"] = json!([
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080},
                {"name": "one", "protocol": "TCP", "port": 81, "targetPort": 8081}
            ]);
            svc
        })
        .expect("update while down");
    cluster.api.restart(true).expect("restart");
    for i in 0..cluster.nodes.len() {
        cluster.wait_ready(i);
    }
    wait_until(
        Duration::from_secs(20),
        "the change made while down",
        || connect(&client.ns, &format!("{VIP}:81")).is_ok(),
    );
    let status = stream
        .wait_timeout(Duration::from_secs(60))
        .expect("the stream ends");
    let out = stream.stdout();
    assert!(
        status.success(),
        "stream through the ClusterIP: {out} {}",
        stream.stderr()
    );
    let sent = out.split_whitespace().find_map(|f| f.strip_prefix("sent="));
    let echoed = out
        .split_whitespace()
        .find_map(|f| f.strip_prefix("echoed="));
    assert_eq!(sent, echoed, "every line came back: {out}");
    s.number("stream", out.trim()).number(
        "relists on node-1",
        metric(&cluster.nodes[1].ns, "podnet_agent_relists_total").unwrap_or(0.0),
    );
}

#[test]
fn ten_thousand_services_sync_and_one_change_is_programmed_alone() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent: 10,000 Services with 50,000 endpoints: initial sync, memory, one change's programming latency",
    );
    let f = podnet_tests::agent_cluster::sync_figures(10_000, 5, 41, 180);
    assert_eq!(f.services, 10_000.0, "every Service programmed: {f:?}");
    assert!(f.change_p99_ms.is_finite(), "{f:?}");
    s.number("initial sync ms", format!("{:.0}", f.sync_ms))
        .number("agent RSS MiB", format!("{:.1}", f.rss_mib))
        .number("one change p50 ms", format!("{:.2}", f.change_p50_ms))
        .number("one change p99 ms", format!("{:.2}", f.change_p99_ms));
}
