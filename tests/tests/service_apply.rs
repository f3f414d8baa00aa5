//! `podnet service apply|list|show|del` end to end, in namespaces: a table written in
//! Kubernetes' field names becomes ClusterIP, NodePort and externalIP frontends that pods and
//! the outside reach; applying the same table again writes nothing; a bad table changes
//! nothing; traffic policies and endpoint conditions choose the backends (KEP-1669:
//! terminating endpoints only when no endpoint is ready; Local: this node's endpoints only,
//! refused when there are none); deleting a service refuses its new connections.

use std::path::PathBuf;

use podnet_tests::{
    InNetns, NODE_IP, Node, OUTSIDE_IP, Scenario, addr_field, describe, netprobe, peer_ip_of,
    require_root, serve_tcp,
};
use serde_json::{Value, json};

const SERVICE_CIDR: &str = "10.96.0.0/12";
const VIP: &str = "10.96.0.10";
const EXTERNAL_IP: &str = "198.51.100.11";

/// `netprobe connect tcp ADDR --show-peer` from `ns` (1 s timeout): the reply, or why not.
fn connect(ns: &(impl InNetns + ?Sized), addr: &str) -> Result<String, String> {
    let out = netprobe(
        ns,
        &[
            "connect",
            "tcp",
            addr,
            "--timeout-ms",
            "1000",
            "--show-peer",
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(describe(&out))
    }
}

/// Writes `table` into the node's state directory (removed with the node); its path.
fn table_file(node: &Node, name: &str, table: &Value) -> PathBuf {
    let path = node.state_dir.join(format!("{name}.json"));
    std::fs::write(&path, table.to_string()).expect("write table");
    path
}

fn web_service(endpoints: &Value, spec_extra: &Value) -> Value {
    let mut spec = json!({
        "type": "NodePort",
        "clusterIPs": [VIP],
        "externalIPs": [EXTERNAL_IP],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}]
    });
    for (k, v) in spec_extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec, "endpoints": endpoints})
}

/// The outside reaches an externalIP through the node: a route to it via the node IP.
fn route_external_ip_via_node(node: &Node) {
    node.topo
        .outside
        .ok(&format!("ip route replace {EXTERNAL_IP}/32 via {NODE_IP}"));
}

#[test]
fn service_apply_programs_every_frontend_and_a_repeat_writes_nothing() {
    require_root!();
    let mut s = Scenario::new("service apply: ClusterIP, NodePort, externalIP; repeat, show, del");
    let node = Node::with_args("10.244.150.0/24", &["--service-cidr", SERVICE_CIDR]);
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    let _server = serve_tcp(&web.ns, "0.0.0.0:8080");
    route_external_ip_via_node(&node);
    let table = json!({"services": [web_service(
        &json!([{"addresses": [web.ip], "conditions": {"ready": true}, "nodeName": "n1"}]),
        &json!({})
    )]});
    let file = table_file(&node, "web", &table);
    let file = file.to_str().expect("utf-8");
    let applied = node.json(&["service", "apply", "-f", file]);
    assert_eq!(applied["added"], 1, "{applied}");
    assert_eq!(applied["frontends"], 3, "{applied}");

    let reply = connect(&client.ns, &format!("{VIP}:80")).expect("pod -> ClusterIP");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(client.ip.clone()),
        "{reply}"
    );
    for (what, addr) in [
        ("NodePort", format!("{NODE_IP}:30080")),
        ("externalIP", format!("{EXTERNAL_IP}:80")),
    ] {
        let reply = connect(&node.topo.outside, &addr).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            peer_ip_of(&reply),
            Some(OUTSIDE_IP.into()),
            "{what}: the local backend sees the client: {reply}"
        );
    }

    let again = node.json(&["service", "apply", "-f", file]);
    assert_eq!(again["unchanged"], 1, "{again}");
    assert_eq!(
        again["frontends_written"], 0,
        "a repeat writes nothing: {again}"
    );
    let list = node.json(&["service", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let shown = node.json(&["service", "show", "shop/web"]);
    assert_eq!(
        shown["frontends"].as_array().map(Vec::len),
        Some(3),
        "{shown}"
    );

    let deleted = node.json(&["service", "del", "shop/web"]);
    assert_eq!(deleted["name"], "web", "{deleted}");
    let refused = connect(&client.ns, &format!("{VIP}:80"));
    assert!(
        refused.is_err(),
        "a deleted service answers nothing: {refused:?}"
    );
    assert_eq!(node.json(&["service", "list"]), json!([]));
    s.number("frontends", 3)
        .number("repeat: frontends written", 0);
}

#[test]
fn a_bad_service_table_changes_nothing() {
    require_root!();
    let mut s =
        Scenario::new("service apply: bad tables refused with a clear error, nothing changed");
    let node = Node::with_args("10.244.151.0/24", &["--service-cidr", SERVICE_CIDR]);
    let web = node.add_pod("web");
    let good = json!({"services": [web_service(&json!([{"addresses": [web.ip]}]), &json!({}))]});
    let file = table_file(&node, "good", &good);
    node.ok(&["service", "apply", "-f", file.to_str().expect("utf-8")]);
    let before = (
        node.json(&["service", "list"]),
        std::fs::read(node.state_dir.join("services.json")).expect("services.json"),
    );
    let spec = |extra: Value| json!({"services": [web_service(&json!([{"addresses": [web.ip]}]), &extra)]});
    let bad: Vec<(&str, Value, &str)> = vec![
        (
            "VIP outside the service CIDR",
            spec(json!({"clusterIPs": ["10.0.0.10"]})),
            "outside the service CIDR",
        ),
        (
            "a port twice",
            spec(
                json!({"ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}, {"port": 80, "nodePort": 30081}]}),
            ),
            "listed twice",
        ),
        (
            "an unknown protocol",
            spec(json!({"ports": [{"port": 80, "protocol": "SCTP"}]})),
            "is not TCP or UDP",
        ),
        (
            "a NodePort out of range",
            spec(json!({"ports": [{"port": 80, "nodePort": 80}]})),
            "outside the NodePort range",
        ),
        (
            "an unknown policy name",
            spec(json!({"externalTrafficPolicy": "Nearest"})),
            "unknown variant",
        ),
        (
            "an unknown backend selection",
            spec(json!({"loadBalancing": "roundrobin"})),
            "unknown variant",
        ),
        (
            "an affinity timeout of 0",
            spec(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
            ),
            "timeoutSeconds 0",
        ),
        (
            "an affinity timeout above a day",
            spec(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
            ),
            "timeoutSeconds 86401",
        ),
        (
            "a duplicate endpoint",
            json!({"services": [web_service(&json!([{"addresses": [web.ip]}, {"addresses": [web.ip]}]), &json!({}))]}),
            "listed twice",
        ),
        ("not JSON", json!("services"), "expected {\"services\""),
        (
            "another cluster's service CIDR",
            json!({"serviceCIDRs": ["10.100.0.0/16"], "services": []}),
            "is not the node's 10.96.0.0/12",
        ),
    ];
    for (what, table, message) in &bad {
        let file = table_file(&node, "bad", table);
        let out = node.podnet(&["service", "apply", "-f", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{what}: {stderr}");
        let after = (
            node.json(&["service", "list"]),
            std::fs::read(node.state_dir.join("services.json")).expect("services.json"),
        );
        assert!(after == before, "{what} changed the table");
    }
    s.number("bad tables", bad.len());
}

#[test]
fn endpoint_conditions_and_traffic_policies_choose_the_backends() {
    require_root!();
    let mut s = Scenario::new(
        "service apply: terminating fallback (KEP-1669), externalTrafficPolicy Local with and without local endpoints",
    );
    let node = Node::with_args("10.244.152.0/24", &["--service-cidr", SERVICE_CIDR]);
    let (old, new) = (node.add_pod("old"), node.add_pod("new"));
    let client = node.add_pod("client");
    let _a = serve_tcp(&old.ns, "0.0.0.0:8080");
    let _b = serve_tcp(&new.ns, "0.0.0.0:8080");
    let apply = |table: &Value| {
        let file = table_file(&node, "t", table);
        node.ok(&["service", "apply", "-f", file.to_str().expect("utf-8")]);
    };
    // Which backends answer `n` new connections from the client (their `local=` address), and
    // that every one saw the client's own address.
    let backends = |n: usize| -> Vec<String> {
        let mut ips: Vec<String> = (0..n)
            .map(|_| {
                let reply = connect(&client.ns, &format!("{VIP}:80")).expect("connect");
                assert_eq!(
                    peer_ip_of(&reply).map(|ip| ip.to_string()),
                    Some(client.ip.clone()),
                    "{reply}"
                );
                addr_field(&reply, "local")
                    .expect("local=")
                    .ip()
                    .to_string()
            })
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    // `old` terminating (not ready, still serving), `new` ready: new connections go to `new`.
    let both = json!([
        {"addresses": [old.ip], "conditions": {"ready": false, "serving": true, "terminating": true}},
        {"addresses": [new.ip], "conditions": {"ready": true}}
    ]);
    apply(&json!({"services": [web_service(&both, &json!({}))]}));
    let shown = node.json(&["service", "show", "shop/web"])["backends"].to_string();
    assert!(shown.contains("terminating"), "{shown}");
    assert_eq!(
        backends(20),
        vec![new.ip.clone()],
        "only the ready endpoint"
    );
    // Both ready: both serve.
    let ready = json!([{"addresses": [old.ip, new.ip], "conditions": {"ready": true}}]);
    apply(&json!({"services": [web_service(&ready, &json!({}))]}));
    let mut both_ips = vec![old.ip.clone(), new.ip.clone()];
    both_ips.sort();
    assert_eq!(backends(40), both_ips, "both ready endpoints serve");

    // Only terminating endpoints: they serve (the fallback), rather than refusing.
    let terminating = json!([
        {"addresses": [old.ip], "conditions": {"ready": false, "serving": true, "terminating": true}}
    ]);
    apply(&json!({"services": [web_service(&terminating, &json!({}))]}));
    assert_eq!(
        backends(5),
        vec![old.ip.clone()],
        "served by the terminating endpoint"
    );

    // externalTrafficPolicy Local with only a remote endpoint: the NodePort refuses at once.
    let remote = json!([{"addresses": ["10.244.153.7"], "conditions": {"ready": true}}]);
    apply(&json!({"services": [web_service(&remote, &json!({"externalTrafficPolicy": "Local"}))]}));
    let refused = connect(&node.topo.outside, &format!("{NODE_IP}:30080"));
    assert!(refused.is_err(), "no local endpoint: refused: {refused:?}");
    // With a local endpoint the client's address is kept.
    let local = json!([{"addresses": [new.ip, "10.244.153.7"], "conditions": {"ready": true}}]);
    apply(&json!({"services": [web_service(&local, &json!({"externalTrafficPolicy": "Local"}))]}));
    for _ in 0..10 {
        let reply = connect(&node.topo.outside, &format!("{NODE_IP}:30080")).expect("Local");
        assert_eq!(peer_ip_of(&reply), Some(OUTSIDE_IP.into()), "{reply}");
    }
    s.number("connections checked", 75);
}
