//! `podnet agent` on a dual-stack cluster (issue 19 item 4), against the test API server with
//! the real object JSON: two simulated nodes whose Node objects carry an IPv4 and an IPv6 pod
//! CIDR and an InternalIP of each family. Each agent takes both pod CIDRs for its own node and
//! makes the other node a peer over both families (the IPv6 pod CIDR routed by the kernel via
//! the peer's IPv6 address, native routing), so pods reach each other over IPv6. A
//! `PreferDualStack` Service with an IPv4 and an IPv6 ClusterIP is served on its IPv4 one (a pod
//! reaches the backend) and its IPv6 one is reported as left out; an IPv6-only Service, a
//! `RequireDualStack` one and an IPv6 EndpointSlice are reported or ignored and change nothing
//! in the maps or routes; so do a Node that takes another's pod CIDR and a Node with a garbled
//! IPv6 pod CIDR (each skipped with its reason logged).
//!
//! With an IPv6 service CIDR (`--service-cidr` of each family) the agents serve IPv6 too: an
//! IPv6-only Service and both halves of a dual-stack one, each ClusterIP with the endpoints of
//! its family's EndpointSlice, reachable from a pod on the other node (balanced at the socket).
//!
//! Addresses: the fabric's IPv6 from fd00:198:18::/64, pods' from fd00:10:244::/48, the IPv6
//! ClusterIPs from fd00:96::/112 (unique-local: nothing here is a real network).

use std::{path::Path, process::Command, time::Duration};

use podnet_tests::{
    CLUSTER_CIDR, InNetns, Scenario, addr_field,
    agent_cluster::{AgentCluster, AgentNode, metric, node_object},
    apiserver::Resource,
    describe, netprobe, require_root, run_bounded, serve_tcp, wait_until,
};
use serde_json::{Value, json};

const CLUSTER_CIDR6: &str = "fd00:10:244::/48";
const VIP: &str = "10.96.0.20";
const VIP6: &str = "fd00:96::20";
/// How long the agents may take to follow a change.
const CHANGE_WITHIN: Duration = Duration::from_secs(10);

fn pod_cidr6(i: usize) -> String {
    format!("fd00:10:244:{}::/64", 200 + i)
}

fn node_ip6(i: usize) -> String {
    format!("fd00:198:18::{}", 11 + i)
}

/// Two nodes with dual-stack Node objects and IPv6 on the fabric, agents given the IPv6
/// cluster CIDR (and `extra`).
fn dual_stack_cluster(first_octet: u16, extra: &[&str]) -> AgentCluster {
    let mut args = vec!["--cluster-cidr", CLUSTER_CIDR6];
    args.extend_from_slice(extra);
    AgentCluster::with_agent_args(2, first_octet, &args, |c| {
        for (i, node) in c.nodes.iter().enumerate() {
            node.ns.ok(&format!(
                "ip -6 addr add {}/64 dev uplink0 nodad",
                node_ip6(i)
            ));
            let mut object = node_object(&node.name, node.ip, &node.pod_cidr);
            object["spec"]["podCIDRs"] = json!([node.pod_cidr, pod_cidr6(i)]);
            object["status"]["addresses"]
                .as_array_mut()
                .expect("addresses")
                .push(json!({"type": "InternalIP", "address": node_ip6(i)}));
            c.api
                .update(Resource::Node, object)
                .expect("dual-stack Node");
        }
    })
}

fn connect(ns: &(impl InNetns + ?Sized), target: &str) -> Result<String, String> {
    let out = netprobe(ns, &["connect", "tcp", target, "--timeout-ms", "1000"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(describe(&out))
    }
}

/// A Service `name` with the given address fields, port 80 -> 8080.
fn service(name: &str, fields: &Value) -> Value {
    let mut spec = json!({"type": "ClusterIP",
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]});
    for (k, v) in fields.as_object().expect("fields") {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// An EndpointSlice `name` of Service `owner` with one ready endpoint `ip` on `node`.
fn slice(name: &str, owner: &str, family: &str, ip: &str, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": owner}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}]
    })
}

/// The pod's IPv6 address (without prefix), from `pod list`.
fn address6(node: &AgentNode, pod: &str) -> String {
    let pods = node.cli.json(&["pod", "list"]);
    pods.as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pod))
        .and_then(|p| p["address6"].as_str())
        .and_then(|c| c.split('/').next())
        .unwrap_or_else(|| panic!("no IPv6 address for {pod}: {pods}"))
        .to_owned()
}

/// The service and peer maps' entries and the node's routes of both families (but link-local):
/// what a left-out object must not change.
fn programmed_state(node: &AgentNode) -> String {
    let mut out = String::new();
    for map in ["SERVICES", "BACKENDS", "REV_NAT", "MAGLEV", "PEERS"] {
        let path = node.pin_dir.join(map);
        out.push_str(&format!("{map}: {}\n", dump(&path)));
    }
    // Link-local routes come and go with the kernel's address autoconfiguration of new veths.
    let routes = node
        .ns
        .ok("ip route show table all; ip -6 route show table all");
    for line in routes.lines().filter(|l| !l.contains("fe80:")) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn dump(path: &Path) -> String {
    if !path.exists() {
        return "absent".to_owned();
    }
    let mut cmd = Command::new("bpftool");
    cmd.args(["map", "dump", "pinned"]).arg(path);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything node `i`'s agent has logged.
fn agent_log(cluster: &AgentCluster, i: usize) -> String {
    cluster.nodes[i]
        .agent
        .as_ref()
        .map(podnet_tests::ChildGuard::stderr)
        .unwrap_or_default()
}

#[test]
fn dual_stack_nodes_peer_over_both_families_and_a_dual_stack_service_serves_its_ipv4_clusterip() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent, dual stack: Nodes with two pod CIDRs peer over both families; a PreferDualStack Service serves its IPv4 ClusterIP; IPv6-only objects change nothing",
    );
    let cluster = dual_stack_cluster(200, &[]);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let other = 1 - i;
        // Its own Node gave the node both pod CIDRs.
        let status = node.cli.json(&["node", "status"]);
        assert_eq!(status["settings"]["pod_cidr6"], pod_cidr6(i), "{status}");
        assert_eq!(status["settings"]["node_ip6"], node_ip6(i), "{status}");
        // The other Node is a peer with both CIDRs, its IPv6 pod CIDR routed natively.
        let peers = node.cli.json(&["node", "peer", "list"]);
        let peer = &peers[0];
        assert_eq!(peer["name"], format!("node-{other}"), "{peers}");
        assert_eq!(peer["pod_cidr"], cluster.nodes[other].pod_cidr, "{peers}");
        assert_eq!(peer["pod_cidr6"], pod_cidr6(other), "{peers}");
        assert_eq!(peer["node_ip6"], node_ip6(other), "{peers}");
        let route = node
            .ns
            .ok(&format!("ip -6 route show {}", pod_cidr6(other)));
        assert!(
            route.contains(&format!("via {}", node_ip6(other))),
            "{}'s IPv6 route to node-{other}'s pods: {route}",
            node.name
        );
    }
    // install-cni --node-name reads both pod CIDRs from the Node, as the DaemonSet's init
    // container does: the network it writes has the IPv6 range too.
    let dir = std::env::temp_dir().join(podnet_tests::unique("pn-install6"));
    let written = cluster.nodes[1].ns.sh(&format!(
        "{} --state-dir {state} install-cni --bin-dir {dir}/bin --conf-dir {dir}/net.d --mode chained --node-name node-1 --kubeconfig {kc} --cluster-cidr {CLUSTER_CIDR} --cluster-cidr {CLUSTER_CIDR6} --uplink uplink0 && cat {dir}/net.d/10-podnet.conflist",
        podnet_tests::podnet_bin().display(),
        state = cluster.nodes[1].cli.state_dir.display(),
        dir = dir.display(),
        kc = cluster.kubeconfig.display(),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        written.status.success(),
        "install-cni: {}",
        describe(&written)
    );
    let network = String::from_utf8_lossy(&written.stdout);
    assert!(
        network.contains(&pod_cidr6(1)) && network.contains(&cluster.nodes[1].pod_cidr),
        "both of node-1's pod CIDRs in {network}"
    );

    let a = cluster.nodes[0].cli.add_pod("a");
    let b = cluster.nodes[1].cli.add_pod("b");
    let (a6, b6) = (
        address6(&cluster.nodes[0], "a"),
        address6(&cluster.nodes[1], "b"),
    );
    assert!(a6.starts_with("fd00:10:244:200::"), "{a6}");
    assert!(b6.starts_with("fd00:10:244:201::"), "{b6}");
    let out = a.ns.sh(&format!("ping -6 -c 3 -i 0.05 -W 1 {b6}"));
    assert!(
        out.status.success(),
        "pod a -> pod b over IPv6 across the agents' nodes: {}",
        describe(&out)
    );

    // A PreferDualStack Service (the API server gave it one ClusterIP per family), its backend
    // pod b on node-1, with the IPv4 and the IPv6 slice the endpoint controller would write.
    let _server = serve_tcp(&b.ns, "0.0.0.0:8080");
    cluster
        .api
        .create(
            Resource::Service,
            service(
                "web",
                &json!({"clusterIP": VIP, "clusterIPs": [VIP, VIP6],
                        "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}),
            ),
        )
        .expect("Service");
    for (name, family, ip) in [("web-v4", "IPv4", &b.ip), ("web-v6", "IPv6", &b6)] {
        cluster
            .api
            .create(
                Resource::EndpointSlice,
                slice(name, "web", family, ip, "node-1"),
            )
            .expect("EndpointSlice");
    }
    wait_until(CHANGE_WITHIN, "the IPv4 ClusterIP reaches pod b", || {
        connect(&a.ns, &format!("{VIP}:80"))
            .ok()
            .and_then(|r| addr_field(&r, "local"))
            .is_some_and(|local| local.ip().to_string() == b.ip)
    });
    for i in 0..cluster.nodes.len() {
        wait_until(CHANGE_WITHIN, "the IPv6 ClusterIP reported", || {
            agent_log(&cluster, i).contains(&format!(
                "service default/web: IPv6 ClusterIP {VIP6} not programmed"
            ))
        });
        assert_eq!(
            metric(&cluster.nodes[i].ns, "podnet_services_programmed"),
            Some(1.0)
        );
        assert_eq!(
            metric(&cluster.nodes[i].ns, "podnet_backends_programmed"),
            Some(1.0),
            "the IPv6 slice's endpoint is no backend"
        );
    }

    // An IPv6-only Service, a RequireDualStack one and another IPv6 slice of web: reported or
    // ignored, and nothing programmed changes.
    let before: Vec<String> = cluster.nodes.iter().map(programmed_state).collect();
    let slices_seen = metric(
        &cluster.nodes[0].ns,
        "podnet_agent_api_events_total{resource=\"endpointslices\"}",
    );
    cluster
        .api
        .create(
            Resource::Service,
            service(
                "web6",
                &json!({"clusterIP": "fd00:96::30", "clusterIPs": ["fd00:96::30"],
                        "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}),
            ),
        )
        .expect("IPv6-only Service");
    cluster
        .api
        .create(
            Resource::Service,
            service(
                "both",
                &json!({"clusterIP": "10.96.0.40", "clusterIPs": ["10.96.0.40", "fd00:96::40"],
                        "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
            ),
        )
        .expect("RequireDualStack Service");
    cluster
        .api
        .create(
            Resource::EndpointSlice,
            slice("web-v6b", "web", "IPv6", &a6, "node-0"),
        )
        .expect("IPv6 EndpointSlice");
    for i in 0..cluster.nodes.len() {
        wait_until(CHANGE_WITHIN, "the IPv6-only Service reported", || {
            let log = agent_log(&cluster, i);
            log.contains("service default/web6: IPv6-only (clusterIPs fd00:96::30)")
                && log.contains("service default/both: ipFamilyPolicy RequireDualStack")
        });
    }
    wait_until(CHANGE_WITHIN, "the IPv6 slice's event", || {
        metric(
            &cluster.nodes[0].ns,
            "podnet_agent_api_events_total{resource=\"endpointslices\"}",
        ) > slices_seen
    });
    // A Node taking node-1's pod CIDRs, and one whose IPv6 pod CIDR is not a CIDR: skipped,
    // saying why; the peers stay as they are.
    let mut taker = node_object(
        "node-x",
        "198.18.0.99".parse().expect("IP"),
        &cluster.nodes[1].pod_cidr,
    );
    taker["spec"]["podCIDRs"] = json!([cluster.nodes[1].pod_cidr, pod_cidr6(1)]);
    let mut garbled = node_object(
        "node-y",
        "198.18.0.98".parse().expect("IP"),
        "10.244.250.0/24",
    );
    garbled["spec"]["podCIDRs"] = json!(["10.244.250.0/24", "fd00:10:244:zz::/64"]);
    for node in [taker, garbled] {
        cluster.api.create(Resource::Node, node).expect("Node");
    }
    for i in 0..cluster.nodes.len() {
        wait_until(CHANGE_WITHIN, "the bad Nodes reported", || {
            let log = agent_log(&cluster, i);
            log.contains(&format!(
                "node node-x: pod CIDR {} overlaps node-1's",
                cluster.nodes[1].pod_cidr
            )) || (i == 1 && log.contains("node node-x: pod CIDR"))
        });
        wait_until(CHANGE_WITHIN, "the garbled Node reported", || {
            agent_log(&cluster, i)
                .contains("node node-y: pod CIDR \"fd00:10:244:zz::/64\" is not a CIDR")
        });
    }
    // The programming thread has the removals of the skipped Services (of nothing) queued
    // right after the log lines: let it take them.
    std::thread::sleep(Duration::from_secs(1));
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(
            programmed_state(node),
            before[i],
            "{}: the left-out objects changed the maps or routes",
            node.name
        );
        assert_eq!(metric(&node.ns, "podnet_services_programmed"), Some(1.0));
        assert_eq!(metric(&node.ns, "podnet_peers_programmed"), Some(1.0));
    }
    let reply = connect(&a.ns, &format!("{VIP}:80")).expect("the IPv4 ClusterIP still works");
    assert_eq!(
        addr_field(&reply, "local").map(|l| l.ip().to_string()),
        Some(b.ip.clone()),
        "{reply}"
    );
    let left_out: Vec<String> = agent_log(&cluster, 0)
        .lines()
        .filter(|l| l.contains("left out:"))
        .map(str::to_owned)
        .collect();
    s.number("node-0 logged", left_out.join(" | "));
    s.number(
        "skipped objects on node-0",
        metric(&cluster.nodes[0].ns, "podnet_agent_skipped_objects_total").unwrap_or(0.0),
    );
}

/// `netprobe connect PROTO TARGET --show-peer` from `ns`.
fn connect_showing_peer(
    ns: &(impl InNetns + ?Sized),
    proto: &str,
    target: &str,
) -> Result<String, String> {
    let out = netprobe(
        ns,
        &[
            "connect",
            proto,
            target,
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

#[test]
fn with_an_ipv6_service_cidr_the_agents_serve_ipv6_clusterips_from_ipv6_endpointslices() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent, dual stack with an IPv6 service CIDR: IPv6-only and dual-stack Services reachable over IPv6 through their IPv6 EndpointSlices",
    );
    let cluster = dual_stack_cluster(
        210,
        &[
            "--service-cidr",
            "10.96.0.0/12",
            "--service-cidr",
            "fd00:96::/112",
        ],
    );
    let a = cluster.nodes[0].cli.add_pod("a");
    let b = cluster.nodes[1].cli.add_pod("b");
    let (a6, b6) = (
        address6(&cluster.nodes[0], "a"),
        address6(&cluster.nodes[1], "b"),
    );
    let _server4 = serve_tcp(&b.ns, &format!("{}:8080", b.ip));
    let _server6 = serve_tcp(&b.ns, &format!("[{b6}]:8080"));
    // An IPv6-only Service, and a dual-stack one with the IPv6 family first; their backend is
    // pod b on node-1, in the slices the endpoint controller would write.
    cluster
        .api
        .create(
            Resource::Service,
            service(
                "web6",
                &json!({"clusterIP": "fd00:96::30", "clusterIPs": ["fd00:96::30"],
                        "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}),
            ),
        )
        .expect("IPv6-only Service");
    cluster
        .api
        .create(
            Resource::Service,
            service(
                "web",
                &json!({"clusterIP": VIP6, "clusterIPs": [VIP6, VIP],
                        "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack"}),
            ),
        )
        .expect("dual-stack Service");
    for (name, owner, family, ip) in [
        ("web6-v6", "web6", "IPv6", &b6),
        ("web-v6", "web", "IPv6", &b6),
        ("web-v4", "web", "IPv4", &b.ip),
    ] {
        cluster
            .api
            .create(
                Resource::EndpointSlice,
                slice(name, owner, family, ip, "node-1"),
            )
            .expect("EndpointSlice");
    }
    for (vip, backend, client) in [
        ("[fd00:96::30]:80".to_owned(), b6.clone(), a6.clone()),
        (format!("[{VIP6}]:80"), b6.clone(), a6.clone()),
        (format!("{VIP}:80"), b.ip.clone(), a.ip.clone()),
    ] {
        let mut last = String::new();
        wait_until(CHANGE_WITHIN, "the ClusterIP reaches pod b", || {
            last = connect_showing_peer(&a.ns, "tcp", &vip).unwrap_or_else(|e| e);
            addr_field(&last, "local").is_some_and(|l| l.ip().to_string() == backend)
        });
        assert_eq!(
            addr_field(&last, "peer").map(|p| p.ip().to_string()),
            Some(client),
            "{vip}: the backend sees pod a's own address: {last}"
        );
        assert_eq!(
            addr_field(&last, "sockpeer").map(|p| p.to_string()),
            Some(vip.clone()),
            "{vip}: pod a's socket shows the ClusterIP: {last}"
        );
    }
    for node in &cluster.nodes {
        assert_eq!(metric(&node.ns, "podnet_services_programmed"), Some(2.0));
        assert_eq!(
            metric(&node.ns, "podnet_backends_programmed"),
            Some(3.0),
            "one backend per family and Service"
        );
        // The agent saves its table at most once a second.
        wait_until(
            CHANGE_WITHIN,
            "service list shows the IPv6 ClusterIPs",
            || {
                let list = node.cli.json(&["service", "list"]).to_string();
                list.contains("fd00:96::30") && list.contains(VIP6)
            },
        );
    }
    // The IPv6 slice goes: the IPv6 ClusterIP refuses at once, the IPv4 one still works.
    cluster
        .api
        .delete(Resource::EndpointSlice, "default", "web-v6")
        .expect("delete the IPv6 slice");
    wait_until(CHANGE_WITHIN, "the IPv6 ClusterIP refuses", || {
        connect_showing_peer(&a.ns, "tcp", &format!("[{VIP6}]:80"))
            .is_err_and(|e| e.contains("refused"))
    });
    connect_showing_peer(&a.ns, "tcp", &format!("{VIP}:80")).expect("IPv4 half still served");
    let left_out: Vec<String> = agent_log(&cluster, 0)
        .lines()
        .filter(|l| l.contains("left out:"))
        .map(str::to_owned)
        .collect();
    assert!(left_out.is_empty(), "nothing left out: {left_out:?}");
    s.number("services programmed per node", 2);
}
