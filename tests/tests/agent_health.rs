//! `podnet agent` serves the health-check node ports of `externalTrafficPolicy: Local` services
//! as kube-proxy does (issue 15 item 4): two simulated nodes with agents, a LoadBalancer Service
//! with `healthCheckNodePort`, and an "outside" host (where a cloud load balancer's prober
//! would be) asking each node over HTTP. The node with local ready endpoints answers 200 with
//! their count, the other 503 with 0; marking endpoints not ready or removing them turns the
//! answer to 503 within a bounded wait; a second service asking for a port already held is
//! counted, not fatal; deleting the Service closes the port.

use std::time::{Duration, Instant};

use podnet_tests::{
    InNetns, Scenario,
    agent_cluster::{AgentCluster, AgentNode, metric},
    apiserver::Resource,
    describe, netprobe, require_root, wait_until,
};
use serde_json::{Value, json};

const HC_PORT: u16 = 32_100;
/// How long a change may take to show in the health check.
const CHANGE_WITHIN: Duration = Duration::from_secs(10);

/// One health-check answer: its status, headers (lower-cased names) and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

/// `GET /healthz` (any path will do) from `ns` to `addr`.
fn health_check(ns: &(impl InNetns + ?Sized), addr: &str) -> Result<Answer, String> {
    let out = netprobe(
        ns,
        &[
            "http-get",
            addr,
            "--path",
            "/healthz",
            "--timeout-ms",
            "1000",
            "--whole",
        ],
    );
    if !out.status.success() {
        return Err(describe(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {text:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn service(name: &str, cluster_ip: &str, node_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": node_port}],
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": HC_PORT}
    })
}

/// The EndpointSlice of Service `lb`: `(address, node, ready)`.
fn slice(endpoints: &[(&str, &str, bool)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "lb-a", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "lb"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, node, ready)| json!({
            "addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": !ready},
            "nodeName": node
        })).collect::<Vec<_>>()
    })
}

/// Waits until node `addr` answers `status` with `local` local endpoints; the time it took.
fn wait_for(
    ns: &(impl InNetns + ?Sized),
    addr: &str,
    status: u16,
    local: u64,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let mut last = None;
    wait_until(CHANGE_WITHIN, what, || {
        let answer = health_check(ns, addr);
        let hit = answer
            .as_ref()
            .is_ok_and(|a| a.status == status && a.body["localEndpoints"].as_u64() == Some(local));
        last = Some(answer);
        if !hit {
            std::thread::sleep(Duration::from_millis(50));
        }
        hit
    });
    let answer = last.and_then(Result::ok).expect("an answer");
    assert_eq!(
        answer.body,
        json!({"service": {"namespace": "default", "name": "lb"},
               "localEndpoints": local, "serviceProxyHealthy": true}),
        "{what}: {answer:?}"
    );
    for (name, value) in [
        ("content-type", "application/json"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert!(
            answer.headers.iter().any(|(k, v)| k == name && v == value),
            "{what}: {name}: {value} in {answer:?}"
        );
    }
    started.elapsed()
}

/// Waits until `node`'s metric `name` reads `value` (a scrape may time out on a busy machine).
fn wait_metric(node: &AgentNode, name: &str, value: f64) {
    wait_until(
        CHANGE_WITHIN,
        &format!("{} {name} {value}", node.name),
        || metric(&node.ns, name) == Some(value),
    );
}

#[test]
fn health_check_node_ports_follow_local_endpoints_and_close_with_the_service() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent: healthCheckNodePort of an eTP Local LoadBalancer Service answered like kube-proxy's as endpoints come and go",
    );
    let cluster = AgentCluster::new(2, 190);
    let pods = [
        cluster.nodes[0].cli.add_pod("lb-0"),
        cluster.nodes[0].cli.add_pod("lb-1"),
    ];
    let (node0, node1) = (&cluster.nodes[0], &cluster.nodes[1]);
    let hc0 = format!("{}:{HC_PORT}", node0.ip);
    let hc1 = format!("{}:{HC_PORT}", node1.ip);
    // Nothing listens before the Service exists.
    for hc in [&hc0, &hc1] {
        let refused = health_check(&cluster.outside, hc).expect_err("no health check yet");
        assert!(refused.contains("refused"), "{refused}");
    }

    cluster
        .api
        .create(Resource::Service, service("lb", "10.96.0.20", 30_090))
        .expect("Service");
    cluster
        .api
        .create(
            Resource::EndpointSlice,
            slice(&[(&pods[0].ip, "node-0", true), (&pods[1].ip, "node-0", true)]),
        )
        .expect("EndpointSlice");
    // Node 0 has both endpoints; node 1 none of its own (node 0's are not local to it).
    let took = wait_for(
        &cluster.outside,
        &hc0,
        200,
        2,
        "node-0: 200 with two local endpoints",
    );
    s.number("service created -> 200 ms", took.as_millis());
    wait_for(&cluster.outside, &hc1, 503, 0, "node-1: 503 with none");

    // A second Service asking for the same port: counted and logged, the agent carries on.
    cluster
        .api
        .create(Resource::Service, service("other", "10.96.0.21", 30_091))
        .expect("second Service");
    for node in [node0, node1] {
        wait_until(CHANGE_WITHIN, "the bind failure is counted", || {
            metric(&node.ns, "podnet_agent_health_check_bind_failures_total")
                .is_some_and(|v| v >= 1.0)
        });
    }
    wait_for(
        &cluster.outside,
        &hc0,
        200,
        2,
        "node-0 still answers for lb",
    );
    wait_metric(node0, "podnet_agent_health_check_ports", 1.0);
    cluster
        .api
        .delete(Resource::Service, "default", "other")
        .expect("delete second Service");

    // One endpoint marked not ready: one left.
    cluster
        .api
        .update(
            Resource::EndpointSlice,
            slice(&[
                (&pods[0].ip, "node-0", false),
                (&pods[1].ip, "node-0", true),
            ]),
        )
        .expect("update EndpointSlice");
    let took = wait_for(&cluster.outside, &hc0, 200, 1, "node-0: one ready left");
    s.number("one endpoint not ready -> count 1 ms", took.as_millis());
    // The other removed: none left, 503.
    cluster
        .api
        .update(
            Resource::EndpointSlice,
            slice(&[(&pods[0].ip, "node-0", false)]),
        )
        .expect("update EndpointSlice");
    let took = wait_for(&cluster.outside, &hc0, 503, 0, "node-0: none ready, 503");
    s.number("last endpoint gone -> 503 ms", took.as_millis());
    // Ready again: back to 200.
    cluster
        .api
        .update(
            Resource::EndpointSlice,
            slice(&[(&pods[0].ip, "node-0", true)]),
        )
        .expect("update EndpointSlice");
    wait_for(&cluster.outside, &hc0, 200, 1, "node-0: ready again");

    // The Service deleted: the port closes on every node.
    cluster
        .api
        .delete(Resource::Service, "default", "lb")
        .expect("delete Service");
    let started = Instant::now();
    for hc in [&hc0, &hc1] {
        wait_until(CHANGE_WITHIN, "the health-check port closes", || {
            health_check(&cluster.outside, hc).is_err_and(|e| e.contains("refused"))
        });
    }
    s.number(
        "service deleted -> refused ms",
        started.elapsed().as_millis(),
    );
    for node in [node0, node1] {
        wait_metric(node, "podnet_agent_health_check_ports", 0.0);
    }
}
