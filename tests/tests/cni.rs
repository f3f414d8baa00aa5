//! podnet as a CNI plugin, driven the way a runtime drives it (libcni semantics, see
//! `podnet_tests::cni`): chained after the reference `bridge` + `host-local` plugins (with port
//! mappings), standalone, the 1.1.0 operations (STATUS, GC), 50 parallel ADDs and DELs,
//! best-effort DEL, the spec's error codes, and mutated inputs that must never make it panic.
//!
//! Every plugin runs inside a test node namespace (`CniNode`), with its own state, pin and IPAM
//! directories, all removed on drop.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    net::{IpAddr, Ipv4Addr},
    os::unix::ffi::OsStringExt as _,
    thread,
    time::Duration,
};

use podnet_tests::{
    AddResult, Cni, CniNode, CniOutput, InNetns as _, Invocation, NODE_IP, Netns, OUTSIDE_IP,
    PODNET_CNI_VERSIONS, RuntimeConf, SpecError, connect_tcp, container_address, describe,
    gateway_of, host_peer, in_cidr, local_ip_of, peer_ip_of, ping, require_root, serve_tcp, unique,
};
use serde_json::{Map, Value, json};

fn add_ok(node: &CniNode, conf: &Value, rt: &RuntimeConf) -> AddResult {
    node.cni.add(conf, rt).unwrap_or_else(|e| panic!("{e}"))
}

fn check_ok(node: &CniNode, conf: &Value, rt: &RuntimeConf, result: &Value) {
    node.cni
        .check(conf, rt, result)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn del_ok(node: &CniNode, conf: &Value, rt: &RuntimeConf, result: Option<&Value>) {
    node.cni
        .del(conf, rt, result)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The container's address on eth0 according to `result`.
fn ip_of(result: &Value) -> Ipv4Addr {
    container_address(result, "eth0")
        .unwrap_or_else(|| panic!("no address for eth0 in {result}"))
        .0
}

/// A fresh container ID (matches the spec's pattern).
fn container_id() -> String {
    unique("ctr")
}

/// Packets podnet's fast path redirected straight between two local pods.
fn fast_path(node: &CniNode) -> u64 {
    node.stats().get("forward_local_peer").copied().unwrap_or(0)
}

/// TCP from pod `from` (address `from_ip`) to a server in pod `to` on `to_ip:port`: the server
/// must see `from_ip`. Returns the packets podnet's fast path carried meanwhile.
fn pod_to_pod(
    node: &CniNode,
    (from, from_ip): (&Netns, Ipv4Addr),
    (to, to_ip): (&Netns, Ipv4Addr),
    port: u16,
) -> u64 {
    let _server = serve_tcp(to, &format!("{to_ip}:{port}"));
    let before = fast_path(node);
    let reply = connect_tcp(from, &format!("{to_ip}:{port}"))
        .unwrap_or_else(|e| panic!("TCP {from_ip} -> {to_ip}:{port}: {e}"));
    assert_eq!(
        peer_ip_of(&reply),
        Some(IpAddr::V4(from_ip)),
        "the server must see the client's pod IP: {reply}"
    );
    fast_path(node) - before
}

/// TCP from pod `from` to the outside namespace on `port`: it arrives from the node IP.
fn pod_to_outside(node: &CniNode, from: &Netns, port: u16) {
    let _server = serve_tcp(&node.topo.outside, &format!("{OUTSIDE_IP}:{port}"));
    let reply = connect_tcp(from, &format!("{OUTSIDE_IP}:{port}"))
        .unwrap_or_else(|e| panic!("TCP {} -> outside:{port}: {e}", from.name()));
    assert_eq!(
        peer_ip_of(&reply),
        Some(IpAddr::V4(NODE_IP)),
        "outside must see the node IP as the source: {reply}"
    );
}

/// Asserts `out` is a failure reported the spec's way: non-zero exit, no panic, and a JSON
/// error (`cniVersion`, integer `code`, non-empty `msg`) on stdout whose code is one of `codes`
/// (any code when `codes` is empty).
fn assert_spec_error(what: &str, out: &CniOutput, codes: &[u64]) -> SpecError {
    assert!(
        !out.success(),
        "{what}: expected a failure: {}",
        out.describe()
    );
    assert!(!out.panicked(), "{what}: panicked: {}", out.describe());
    let err = out
        .error()
        .unwrap_or_else(|| panic!("{what}: no spec error JSON on stdout: {}", out.describe()));
    assert!(
        !err.msg.trim().is_empty(),
        "{what}: empty msg: {}",
        out.describe()
    );
    assert!(
        err.cni_version.is_some(),
        "{what}: error without cniVersion: {}",
        out.describe()
    );
    assert!(
        codes.is_empty() || codes.contains(&err.code),
        "{what}: code {} is not one of {codes:?}: {}",
        err.code,
        out.describe()
    );
    err
}

/// Asserts the container interface `eth0` of `pod` is gone.
fn assert_no_eth0(pod: &Netns) {
    let out = pod.exec(&["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(
        !out.status.success(),
        "eth0 left in {}: {}",
        pod.name(),
        describe(&out)
    );
}

#[test]
fn chained_add_check_del_with_bridge_and_host_local() {
    require_root!();
    let node = CniNode::new("10.244.60.0/24");
    let conf = node.chained_conflist();
    let (a, b) = (Netns::new("ca"), Netns::new("cb"));
    let (rt_a, rt_b) = (
        RuntimeConf::new(&container_id(), a.path()),
        RuntimeConf::new(&container_id(), b.path()),
    );

    let added_a = add_ok(&node, &conf, &rt_a);
    let added_b = add_ok(&node, &conf, &rt_b);
    for added in [&added_a, &added_b] {
        assert_eq!(added.per_plugin.len(), 2);
        assert_eq!(
            added.per_plugin[1], added.per_plugin[0],
            "podnet must print bridge's result unchanged"
        );
    }
    let (result_a, result_b) = (added_a.result(), added_b.result());
    let (ip_a, ip_b) = (ip_of(result_a), ip_of(result_b));
    assert_ne!(ip_a, ip_b);
    for ip in [ip_a, ip_b] {
        assert!(in_cidr(ip, &node.pod_cidr), "{ip} not in {}", node.pod_cidr);
    }
    check_ok(&node, &conf, &rt_a, result_a);
    check_ok(&node, &conf, &rt_b, result_b);

    let veth_a = host_peer(&node.topo.node, &a, "eth0").expect("a's host veth");
    let veth_b = host_peer(&node.topo.node, &b, "eth0").expect("b's host veth");
    for veth in [&veth_a, &veth_b] {
        assert!(
            !node.ingress_filters(veth).is_empty(),
            "podnet's program is attached to {veth}"
        );
    }
    let endpoints = node.endpoints();
    assert!(
        endpoints.contains(&ip_a) && endpoints.contains(&ip_b),
        "endpoints {endpoints:?} must hold {ip_a} and {ip_b}"
    );

    let fast = pod_to_pod(&node, (&a, ip_a), (&b, ip_b), 8080);
    assert!(fast >= 4, "the fast path carried {fast} packets a <-> b");
    pod_to_outside(&node, &a, 7000);
    pod_to_outside(&node, &b, 7001);

    // podnet's DEL alone (as the chain runs it first) removes exactly its own part: the filter
    // and the endpoint, leaving bridge's veth in place.
    let del = node
        .cni
        .invoke_plugin("DEL", &conf, 1, Some(&rt_a), Some(result_a));
    assert!(del.success(), "podnet DEL: {}", del.describe());
    assert!(
        host_peer(&node.topo.node, &a, "eth0").as_deref() == Some(veth_a.as_str()),
        "podnet's DEL must leave bridge's veth {veth_a}"
    );
    let filters = node.ingress_filters(&veth_a);
    assert!(filters.is_empty(), "filters left on {veth_a}: {filters}");
    assert!(!node.endpoints().contains(&ip_a), "a's endpoint left");
    // ... and CHECK now reports what is missing.
    let check = node
        .cni
        .invoke_plugin("CHECK", &conf, 1, Some(&rt_a), Some(result_a));
    assert_spec_error("CHECK after podnet's DEL", &check, &[]);

    // The whole chain's DEL (podnet's part a second time), for both.
    del_ok(&node, &conf, &rt_a, Some(result_a));
    del_ok(&node, &conf, &rt_b, Some(result_b));
    assert_eq!(node.endpoints(), Vec::<Ipv4Addr>::new(), "no endpoint left");
    assert_eq!(node.pod_links(), Vec::<String>::new(), "no veth left");
    assert_eq!(node.host_local_ip_records(), Vec::<Ipv4Addr>::new());
    assert_no_eth0(&a);
    assert_no_eth0(&b);
}

#[test]
fn chained_port_mappings_reach_the_container_from_outside() {
    require_root!();
    let node = CniNode::new("10.244.61.0/24");
    let conf = node.chained_conflist();
    let pod = Netns::new("cp");
    let rt = RuntimeConf::new(&container_id(), pod.path()).with_capability(
        "portMappings",
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let added = add_ok(&node, &conf, &rt);
    assert_eq!(added.per_plugin[1], added.per_plugin[0]);
    let result = added.result();
    let ip = ip_of(result);
    check_ok(&node, &conf, &rt, result);

    let _server = serve_tcp(&pod, "0.0.0.0:80");
    let reply = connect_tcp(&node.topo.outside, &format!("{NODE_IP}:8080"))
        .unwrap_or_else(|e| panic!("outside -> {NODE_IP}:8080: {e}"));
    assert_eq!(
        local_ip_of(&reply),
        Some(IpAddr::V4(ip)),
        "the connection must arrive at the container: {reply}"
    );
    assert!(reply.contains(&format!("local={ip}:80")), "{reply}");
    // The container can still reach out while it is mapped.
    pod_to_outside(&node, &pod, 7002);

    del_ok(&node, &conf, &rt, Some(result));
    assert!(
        connect_tcp(&node.topo.outside, &format!("{NODE_IP}:8080")).is_err(),
        "hostPort 8080 must be gone after DEL"
    );
    assert_eq!(node.endpoints(), Vec::<Ipv4Addr>::new());
    assert_eq!(node.pod_links(), Vec::<String>::new());
}

#[test]
fn standalone_add_check_del() {
    require_root!();
    let node = CniNode::new("10.244.62.0/24");
    let conf = node.standalone_conflist();
    let gateway = gateway_of(&node.pod_cidr);
    let (a, b) = (Netns::new("sa"), Netns::new("sb"));
    let (rt_a, rt_b) = (
        RuntimeConf::new(&container_id(), a.path()),
        RuntimeConf::new(&container_id(), b.path()),
    );
    let result_a = add_ok(&node, &conf, &rt_a).result().clone();
    let result_b = add_ok(&node, &conf, &rt_b).result().clone();

    for (pod, result) in [(&a, &result_a), (&b, &result_b)] {
        assert_eq!(result["cniVersion"], conf["cniVersion"], "{result}");
        let sandbox = pod.path().to_string_lossy().into_owned();
        let interfaces = result["interfaces"].as_array().expect("interfaces");
        assert!(
            interfaces
                .iter()
                .any(|i| i["name"] == "eth0" && i["sandbox"].as_str() == Some(sandbox.as_str())),
            "eth0 in {sandbox}: {result}"
        );
        let (ip, prefix) = container_address(result, "eth0").expect("eth0's address");
        assert!(in_cidr(ip, &node.pod_cidr), "{ip}");
        assert_eq!(prefix, 24, "{result}");
        let ips = result["ips"].as_array().expect("ips");
        assert!(
            ips.iter()
                .any(|i| i["gateway"].as_str() == Some(&gateway.to_string())),
            "gateway {gateway}: {result}"
        );
        let routes = result["routes"].as_array().expect("routes");
        assert!(
            routes.iter().any(|r| r["dst"] == "0.0.0.0/0"),
            "default route: {result}"
        );
        let addrs = pod.ok("ip -4 -o addr show dev eth0");
        assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
        let default = pod.ok("ip route show default");
        assert!(default.contains(&format!("via {gateway}")), "{default}");
    }
    let (ip_a, ip_b) = (ip_of(&result_a), ip_of(&result_b));
    assert_ne!(ip_a, ip_b);
    check_ok(&node, &conf, &rt_a, &result_a);
    check_ok(&node, &conf, &rt_b, &result_b);
    assert_eq!(node.endpoints(), {
        let mut ips = vec![ip_a, ip_b];
        ips.sort();
        ips
    });
    assert_eq!(node.podnet_ip_records().len(), 2);

    let out = ping(&a, &ip_b.to_string(), 3);
    assert!(out.status.success(), "ping a -> b: {}", describe(&out));
    let fast = pod_to_pod(&node, (&a, ip_a), (&b, ip_b), 8080);
    assert!(fast >= 4, "the fast path carried {fast} packets a <-> b");
    pod_to_outside(&node, &b, 7003);

    let veth_a = host_peer(&node.topo.node, &a, "eth0").expect("a's host veth");
    // DEL with the cached result for a, without any for b (podnet's own cache must do).
    del_ok(&node, &conf, &rt_a, Some(&result_a));
    del_ok(&node, &conf, &rt_b, None);
    assert!(!node.links().contains(&veth_a), "{veth_a} left");
    assert_eq!(node.pod_links(), Vec::<String>::new(), "no veth left");
    assert_eq!(node.endpoints(), Vec::<Ipv4Addr>::new(), "no endpoint left");
    assert_eq!(
        node.podnet_ip_records(),
        Vec::<Ipv4Addr>::new(),
        "no IPAM record left"
    );
    assert_no_eth0(&a);
    assert_no_eth0(&b);
}

#[test]
fn node_reset_after_cni_adds_leaves_nothing_behind() {
    require_root!();
    let node = CniNode::new("10.244.64.0/24");
    let conf = node.standalone_conflist();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("sr")).collect();
    for pod in &pods {
        add_ok(&node, &conf, &RuntimeConf::new(&container_id(), pod.path()));
    }
    let records = node.state_dir.join("cni");
    let count = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, Iterator::count);
    assert_eq!(count(&records), 2, "one attachment record per container");
    let report = node.podnet_json(&["node", "reset"]);
    assert_eq!(report["cni_records_removed"], 2, "{report}");
    assert_eq!(
        report["pods_deleted"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    for pod in &pods {
        assert_no_eth0(pod);
    }
    let left: Vec<_> = std::fs::read_dir(&node.state_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n == "lock"),
        "state left after reset: {left:?}"
    );
}

#[test]
fn standalone_results_follow_the_requested_version() {
    require_root!();
    let node = CniNode::new("10.244.63.0/24");
    for version in PODNET_CNI_VERSIONS {
        let conf = node.standalone_conflist_v(version);
        let pod = Netns::new("sv");
        let rt = RuntimeConf::new(&container_id(), pod.path());
        let result = add_ok(&node, &conf, &rt).result().clone();
        assert_eq!(result["cniVersion"], version, "{result}");
        let ip = &result["ips"][0];
        if version == "0.4.0" {
            assert_eq!(
                ip["version"], "4",
                "0.4.0 results carry ips[].version: {result}"
            );
        } else {
            assert!(ip.get("version").is_none(), "{version}: {result}");
        }
        check_ok(&node, &conf, &rt, &result);
        pod_to_outside(&node, &pod, 7004);
        del_ok(&node, &conf, &rt, Some(&result));
    }
    assert_eq!(node.pod_links(), Vec::<String>::new());
    assert_eq!(node.podnet_ip_records(), Vec::<Ipv4Addr>::new());
}

#[test]
fn version_lists_supported_versions() {
    require_root!();
    let node = CniNode::new("10.244.64.0/24");
    for asked in PODNET_CNI_VERSIONS {
        let answer = node
            .cni
            .version("podnet", asked)
            .unwrap_or_else(|e| panic!("{e}"));
        let supported: Vec<&str> = answer["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("no supportedVersions: {answer}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for version in PODNET_CNI_VERSIONS {
            assert!(supported.contains(&version), "{version} in {answer}");
        }
        let answered = answer["cniVersion"].as_str().expect("cniVersion");
        assert!(supported.contains(&answered), "{answer}");
    }
    // VERSION needs no configuration at all.
    let bare = node.cni.invoke("podnet", &Invocation::new("VERSION"));
    assert!(bare.success(), "{}", bare.describe());
    assert!(
        bare.json()
            .is_some_and(|v| v["supportedVersions"].is_array())
    );
    assert!(
        !node.state_dir.exists(),
        "VERSION must not initialise the node"
    );
}

#[test]
fn status_reports_ready() {
    require_root!();
    let node = CniNode::new("10.244.65.0/24");
    let conf = node.standalone_conflist();
    // Before the first ADD the node is not initialised yet; the configuration lets the next
    // ADD do it, so STATUS may already say ready. It must at least answer the spec's way.
    let before = node.cni.invoke_plugin("STATUS", &conf, 0, None, None);
    assert!(!before.panicked(), "{}", before.describe());
    if !before.success() {
        assert_spec_error("STATUS before the first ADD", &before, &[]);
    }
    let pod = Netns::new("st");
    let rt = RuntimeConf::new(&container_id(), pod.path());
    let result = add_ok(&node, &conf, &rt).result().clone();
    node.cni.status(&conf).unwrap_or_else(|e| panic!("{e}"));
    del_ok(&node, &conf, &rt, Some(&result));
    node.cni.status(&conf).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn gc_reclaims_attachments_not_listed() {
    require_root!();
    let node = CniNode::new("10.244.66.0/24");
    let conf = node.standalone_conflist();
    let (keep, stale) = (Netns::new("gk"), Netns::new("gs"));
    let (rt_keep, rt_stale) = (
        RuntimeConf::new(&container_id(), keep.path()),
        RuntimeConf::new(&container_id(), stale.path()),
    );
    let result_keep = add_ok(&node, &conf, &rt_keep).result().clone();
    let result_stale = add_ok(&node, &conf, &rt_stale).result().clone();
    let (ip_keep, ip_stale) = (ip_of(&result_keep), ip_of(&result_stale));
    let veth_keep = host_peer(&node.topo.node, &keep, "eth0").expect("host veth");
    let veth_stale = host_peer(&node.topo.node, &stale, "eth0").expect("host veth");

    node.cni
        .gc(&conf, &[(rt_keep.container_id.as_str(), "eth0")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        node.endpoints(),
        vec![ip_keep],
        "only the listed endpoint stays"
    );
    assert_eq!(
        node.podnet_ip_records(),
        vec![ip_keep],
        "only the listed IP stays"
    );
    let links = node.links();
    assert!(
        !links.contains(&veth_stale),
        "{veth_stale} reclaimed: {links:?}"
    );
    assert!(links.contains(&veth_keep), "{veth_keep} kept: {links:?}");
    assert_no_eth0(&stale);
    check_ok(&node, &conf, &rt_keep, &result_keep);
    pod_to_outside(&node, &keep, 7005);
    // DEL of the reclaimed attachment still succeeds.
    del_ok(&node, &conf, &rt_stale, Some(&result_stale));

    // The older key works too, and keeps what it lists.
    node.cni
        .gc_with_key(
            &conf,
            "cni.dev/attachments",
            &[(rt_keep.container_id.as_str(), "eth0")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.endpoints(), vec![ip_keep]);
    assert!(
        ip_stale != ip_keep && !node.podnet_ip_records().contains(&ip_stale),
        "{ip_stale} stays free"
    );
    // An empty list reclaims everything.
    node.cni.gc(&conf, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.endpoints(), Vec::<Ipv4Addr>::new());
    assert_eq!(node.podnet_ip_records(), Vec::<Ipv4Addr>::new());
    assert_eq!(node.pod_links(), Vec::<String>::new());
    del_ok(&node, &conf, &rt_keep, Some(&result_keep));
}

#[test]
fn fifty_parallel_standalone_adds_and_dels() {
    require_root!();
    const PODS: usize = 50;
    let node = CniNode::new("10.244.67.0/24");
    let conf = node.standalone_conflist();
    let pods: Vec<(Netns, RuntimeConf, Value)> = thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|_| {
                s.spawn(|| {
                    let pod = Netns::new("pp");
                    let rt = RuntimeConf::new(&container_id(), pod.path());
                    let result = add_ok(&node, &conf, &rt).result().clone();
                    (pod, rt, result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let ips: Vec<Ipv4Addr> = pods.iter().map(|(_, _, r)| ip_of(r)).collect();
    let unique_ips: BTreeSet<_> = ips.iter().copied().collect();
    assert_eq!(unique_ips.len(), PODS, "duplicate addresses: {ips:?}");
    assert!(ips.iter().all(|ip| in_cidr(*ip, &node.pod_cidr)), "{ips:?}");
    assert_eq!(node.endpoints().len(), PODS);
    assert_eq!(node.podnet_ip_records().len(), PODS);
    assert_eq!(node.pod_links().len(), PODS, "one host veth per pod");

    // Spot checks: first <-> last, a middle pair, and the outside.
    let pod = |i: usize| (&pods[i].0, ips[i]);
    let out = ping(pod(0).0, &ips[PODS - 1].to_string(), 2);
    assert!(out.status.success(), "ping 0 -> 49: {}", describe(&out));
    assert!(pod_to_pod(&node, pod(10), pod(11), 8080) > 0);
    assert!(pod_to_pod(&node, pod(PODS - 1), pod(0), 8081) > 0);
    pod_to_outside(&node, pod(25).0, 7006);

    thread::scope(|s| {
        for (i, (_, rt, result)) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            // Half with the cached result, half without.
            s.spawn(move || del_ok(node, conf, rt, (i % 2 == 0).then_some(result)));
        }
    });
    assert_eq!(node.endpoints(), Vec::<Ipv4Addr>::new(), "no endpoint left");
    assert_eq!(node.podnet_ip_records(), Vec::<Ipv4Addr>::new());
    assert_eq!(node.pod_links(), Vec::<String>::new(), "no veth left");
    for (pod, _, _) in &pods {
        assert_no_eth0(pod);
    }
}

#[test]
fn del_succeeds_repeated_without_netns_and_for_unknown_containers() {
    require_root!();
    let node = CniNode::new("10.244.68.0/24");
    let conf = node.standalone_conflist();
    let (a, b) = (Netns::new("da"), Netns::new("db"));

    // Twice, and once more without the cached result.
    let rt_a = RuntimeConf::new(&container_id(), a.path());
    let result_a = add_ok(&node, &conf, &rt_a).result().clone();
    del_ok(&node, &conf, &rt_a, Some(&result_a));
    del_ok(&node, &conf, &rt_a, Some(&result_a));
    del_ok(&node, &conf, &rt_a, None);

    // Without CNI_NETNS (containerd after the sandbox is gone): still frees everything.
    let rt_b = RuntimeConf::new(&container_id(), b.path());
    let result_b = add_ok(&node, &conf, &rt_b).result().clone();
    let ip_b = ip_of(&result_b);
    let veth_b = host_peer(&node.topo.node, &b, "eth0").expect("host veth");
    del_ok(&node, &conf, &rt_b.clone().with_netns(""), None);
    assert!(!node.endpoints().contains(&ip_b), "b's endpoint left");
    assert!(!node.podnet_ip_records().contains(&ip_b), "b's IP left");
    assert!(!node.links().contains(&veth_b), "{veth_b} left");
    del_ok(&node, &conf, &rt_b, Some(&result_b));

    // Containers never added, with a namespace, without one, with one that does not exist.
    let missing = format!("/run/netns/{}", unique("gone"));
    for netns in [
        a.path().to_string_lossy().into_owned(),
        String::new(),
        missing,
    ] {
        let rt = RuntimeConf::new(&container_id(), &netns);
        del_ok(&node, &conf, &rt, None);
    }
    assert_eq!(node.pod_links(), Vec::<String>::new());
    assert_eq!(node.podnet_ip_records(), Vec::<Ipv4Addr>::new());

    // Chained, on a node no ADD ever initialised: podnet's DEL and the whole chain's.
    let chained = CniNode::new("10.244.69.0/24");
    let chain = chained.chained_conflist();
    for netns in [b.path().to_string_lossy().into_owned(), String::new()] {
        let rt = RuntimeConf::new(&container_id(), &netns);
        let out = chained.cni.invoke_plugin("DEL", &chain, 1, Some(&rt), None);
        assert!(
            out.success(),
            "podnet DEL of an unknown container: {}",
            out.describe()
        );
        chained
            .cni
            .del(&chain, &rt, None)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn errors_are_spec_json_with_codes() {
    require_root!();
    let node = CniNode::new("10.244.70.0/24");
    let conf = node.standalone_conflist();
    let stdin = Cni::plugin_conf(&conf, 0, None, None);
    let pod = Netns::new("er");
    let rt = RuntimeConf::new(&container_id(), pod.path());
    let add = || rt.invocation("ADD", node.cni.bin_dir()).stdin_json(&stdin);
    let with = |key: &str, value: Value| {
        let mut conf = stdin.clone();
        conf[key] = value;
        conf
    };
    let missing_netns = format!("/run/netns/{}", unique("gone"));
    let cases: Vec<(&str, Invocation, &[u64])> = vec![
        (
            "stdin is not JSON",
            add().stdin(b"{\"cniVersion\": \"1.1.0\", not json".to_vec()),
            &[6],
        ),
        (
            "cniVersion 9.9.9",
            add().stdin_json(&with("cniVersion", json!("9.9.9"))),
            &[1],
        ),
        ("no CNI_CONTAINERID", add().without("CNI_CONTAINERID"), &[4]),
        (
            "container ID -bad",
            add().env("CNI_CONTAINERID", "-bad"),
            &[4],
        ),
        (
            "CNI_IFNAME with a space",
            add().env("CNI_IFNAME", "has space"),
            &[4],
        ),
        (
            "CNI_IFNAME of 16 characters",
            add().env("CNI_IFNAME", "abcdefghijklmnop"),
            &[4],
        ),
        (
            "CNI_IFNAME with a slash",
            add().env("CNI_IFNAME", "a/b"),
            &[4],
        ),
        ("no CNI_IFNAME", add().without("CNI_IFNAME"), &[4]),
        ("no CNI_NETNS on ADD", add().without("CNI_NETNS"), &[4]),
        (
            "unknown CNI_COMMAND",
            add().env("CNI_COMMAND", "FROB"),
            &[4],
        ),
        (
            "mode bogus",
            add().stdin_json(&with("mode", json!("bogus"))),
            &[2, 7],
        ),
        (
            "CNI_NETNS does not exist (ADD)",
            add().env("CNI_NETNS", &missing_netns),
            &[],
        ),
        (
            "CHECK of a container never added",
            rt.invocation("CHECK", node.cni.bin_dir())
                .stdin_json(&stdin),
            &[],
        ),
    ];
    for (what, inv, codes) in &cases {
        let out = node.cni.invoke("podnet", inv);
        assert_spec_error(what, &out, codes);
    }
    // Failed ADDs leak nothing.
    assert_eq!(node.podnet_ip_records(), Vec::<Ipv4Addr>::new());
    assert_eq!(node.pod_links(), Vec::<String>::new());
    assert_no_eth0(&pod);
}

/// A tiny deterministic generator (splitmix64): reproducible runs without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n.max(1)).expect("usize fits u64");
        usize::try_from(self.next() % n).expect("below n")
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A random JSON value, nested up to `depth` levels.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kind = rng.below(if depth == 0 { 4 } else { 6 });
    match kind {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => rng
            .pick(&[
                json!(0),
                json!(-1),
                json!(80),
                json!(65535),
                json!(65536),
                json!(4_294_967_296_u64),
                json!(u64::MAX),
                json!(1.5),
                json!(-1e308),
            ])
            .clone(),
        3 => {
            let strings = [
                String::new(),
                "eth0".to_owned(),
                "tcp".to_owned(),
                "sctp".to_owned(),
                "10.244.0.0/16".to_owned(),
                "10.244.60.300/24".to_owned(),
                "0.0.0.0/0".to_owned(),
                "::1/128".to_owned(),
                "1.0.0".to_owned(),
                "standalone".to_owned(),
                "chained".to_owned(),
                "\u{1F4A5}\u{0}\u{202e}".to_owned(),
                "x".repeat(rng.below(600)),
            ];
            json!(rng.pick(&strings))
        }
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "name",
                "address",
                "interface",
                "hostPort",
                "containerPort",
                "protocol",
                "containerID",
                "ifname",
                "sandbox",
                "mac",
                "gateway",
                "dst",
                "junk",
            ];
            Value::Object(
                (0..rng.below(4))
                    .map(|_| ((*rng.pick(&keys)).to_owned(), random_value(rng, depth - 1)))
                    .collect(),
            )
        }
    }
}

/// Every JSON pointer in `v` (the root is "").
fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_owned());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(child, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// One structural mutation somewhere in `v`: remove, replace, add a key or an element.
fn mutate_json(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    pointers(v, "", &mut all);
    let at = rng.pick(&all).clone();
    let (parent, last) = at.rsplit_once('/').unwrap_or(("", ""));
    let keys = [
        "cniVersion",
        "name",
        "type",
        "mode",
        "prevResult",
        "runtimeConfig",
        "portMappings",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
        "capabilities",
        "interfaces",
        "ips",
        "routes",
        "dns",
        "junk",
    ];
    match rng.below(5) {
        0 if !at.is_empty() => {
            let last = last.replace("~1", "/").replace("~0", "~");
            match v.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
        1 => {
            if let Some(target) = v.pointer_mut(&at) {
                *target = random_value(rng, 3);
            }
        }
        2 => match v.pointer_mut(&at) {
            Some(Value::Object(map)) => {
                let key = (*rng.pick(&keys)).to_owned();
                let value = random_value(rng, 3);
                map.insert(key, value);
            }
            Some(Value::Array(items)) => {
                let value = match items.first() {
                    Some(first) if rng.chance(50) => first.clone(),
                    _ => random_value(rng, 2),
                };
                items.push(value);
            }
            _ => {}
        },
        3 => {
            if let Some(Value::Object(map)) = v.pointer_mut("") {
                let version = rng
                    .pick(&[
                        json!("0.4.0"),
                        json!("1.0.0"),
                        json!("1.1.0"),
                        json!("0.3.1"),
                        json!("2.0.0"),
                        json!(""),
                        json!(1),
                        Value::Null,
                    ])
                    .clone();
                map.insert("cniVersion".to_owned(), version);
            }
        }
        _ => {
            if let Some(Value::Object(map)) = v.pointer_mut("") {
                let ports = json!([{
                    "hostPort": random_value(rng, 0),
                    "containerPort": random_value(rng, 0),
                    "protocol": random_value(rng, 0),
                }]);
                map.insert("runtimeConfig".to_owned(), json!({"portMappings": ports}));
            }
        }
    }
}

/// One byte-level mutation of serialized input.
fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const ALPHABET: &[u8] = b"{}[]\":,0123456789.-eE/\\ \n\tabcxyz\x00\xff\xc3";
    match rng.below(6) {
        0 => bytes.truncate(rng.below(bytes.len() + 1)),
        1 => {
            let at = rng.below(bytes.len() + 1);
            bytes.insert(at, *rng.pick(ALPHABET));
        }
        2 if !bytes.is_empty() => {
            let at = rng.below(bytes.len());
            bytes[at] = *rng.pick(ALPHABET);
        }
        3 if !bytes.is_empty() => {
            bytes.remove(rng.below(bytes.len()));
        }
        4 => {
            let depth = rng.pick(&[2_usize, 200, 20_000]);
            *bytes = [b"[".repeat(*depth), b"]".repeat(*depth)].concat();
        }
        _ => {
            *bytes = rng
                .pick(&[
                    b"".to_vec(),
                    b"null".to_vec(),
                    b"[]".to_vec(),
                    b"\"str\"".to_vec(),
                    b"{".to_vec(),
                    b"{\"cniVersion\":\"1.1.0\"}".to_vec(),
                    vec![b' '; 1 << 20],
                    vec![0xff, 0xfe, 0x00],
                ])
                .clone();
        }
    }
}

/// Whether podnet may be given `stdin` without touching anything outside the test's own
/// directories: its state and pin directories must stay ours. (Absent or null they would
/// default to the host's /var/lib/podnet and /sys/fs/bpf/podnet; another string could be any
/// path.) Input that does not decode is harmless: the plugin can only fail.
fn stays_in_test_dirs(stdin: &[u8], node: &CniNode) -> bool {
    let Ok(Value::Object(conf)) = serde_json::from_slice::<Value>(stdin) else {
        return true;
    };
    let ours = |v: Option<&Value>, path: &std::path::Path, optional: bool| match v {
        None => optional,
        Some(Value::String(s)) => std::path::Path::new(s) == path,
        Some(Value::Null) => false,
        Some(_) => true, // the wrong type: a config error
    };
    if !ours(conf.get("stateDir"), &node.state_dir, false) {
        return false;
    }
    match conf.get("node") {
        Some(Value::Object(settings)) => {
            let allowed = [
                "pod_cidr",
                "cluster_cidr",
                "uplink",
                "bridge",
                "pin_dir",
                "netns",
            ];
            settings.keys().all(|k| allowed.contains(&k.as_str()))
                && ours(settings.get("pin_dir"), &node.pin_dir, false)
                && ours(settings.get("netns"), &node.topo.node.path(), true)
        }
        _ => true,
    }
}

/// A set `CNI_*` variable's value.
fn some(s: &str) -> Option<OsString> {
    Some(OsString::from(s))
}

/// A value for a `CNI_*` variable: `None` leaves it unset.
fn env_value(rng: &mut Rng, options: &[Option<OsString>]) -> Option<OsString> {
    rng.pick(options).clone()
}

#[test]
fn mutated_inputs_never_panic() {
    require_root!();
    const RUNS: usize = 200;
    const SEED: u64 = 0x5eed_c0de_2024_0001;
    let node = CniNode::new("10.244.71.0/24");
    let pod = Netns::new("fz");
    let pod_path = pod.path().to_string_lossy().into_owned();
    let standalone = Cni::plugin_conf(&node.standalone_conflist(), 0, None, None);
    let chained_list = node.chained_conflist();
    let prev_result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "02:00:00:00:00:01"},
            {"name": "vethfuzz0", "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": pod_path},
        ],
        "ips": [{"address": "10.244.71.77/24", "gateway": "10.244.71.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    });
    let chained = Cni::plugin_conf(&chained_list, 1, None, Some(&prev_result));
    let mut gc = standalone.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "fz-fixed", "ifname": "eth0"}]);
    let bases = [
        standalone,
        chained,
        gc,
        json!({"cniVersion": "1.1.0"}),
        json!({}),
    ];

    let invalid_utf8 = Some(OsString::from_vec(vec![b'a', 0xff, 0xfe, b'b']));
    let commands = [
        some("ADD"),
        some("ADD"),
        some("ADD"),
        some("DEL"),
        some("DEL"),
        some("CHECK"),
        some("VERSION"),
        some("STATUS"),
        some("GC"),
        some(""),
        some("add"),
        some("BOGUS"),
    ];
    let container_ids = [
        some("fz-fixed"),
        some("fz-fixed"),
        None, // replaced by a fresh ID below
        some(""),
        some("-bad"),
        some(&"c".repeat(300)),
        some("a/../b"),
        invalid_utf8.clone(),
        None,
    ];
    let missing = format!("/run/netns/{}", unique("gone"));
    let netns = [
        some(&pod_path),
        some(&pod_path),
        some(""),
        some(&missing),
        some("/dev/null"),
        some("relative/ns"),
        invalid_utf8.clone(),
        None,
    ];
    let ifnames = [
        some("eth0"),
        some("eth0"),
        some("net1"),
        some(""),
        some("has space"),
        some("abcdefghijklmnop"),
        some("a/b"),
        some("eth:0"),
        some("."),
        None,
    ];
    let cni_args = [
        some(""),
        some("IgnoreUnknown=1;K8S_POD_NAME=web"),
        some("garbage"),
        some("=;=;;"),
        invalid_utf8,
        None,
    ];
    let bin_dir = node.cni.bin_dir().to_string_lossy().into_owned();
    let cni_paths = [
        some(&bin_dir),
        some(&bin_dir),
        some(""),
        some("/nonexistent"),
        None,
    ];

    let mut rng = Rng(SEED);
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for run in 0..RUNS {
        // Half the runs get a well-formed environment and mostly intact configurations, so
        // they reach past validation into the datapath work; the rest are anything goes.
        let well_formed = rng.chance(50);
        // Mutate until the input is safe for the host (almost always at once).
        let mut stdin = Vec::new();
        for _attempt in 0..50 {
            let mut conf = rng.pick(&bases).clone();
            let mutations = if well_formed && rng.chance(50) {
                0
            } else {
                1 + rng.below(3)
            };
            for _ in 0..mutations {
                mutate_json(&mut rng, &mut conf);
            }
            stdin = serde_json::to_vec(&conf).expect("serializes");
            if rng.chance(if well_formed { 10 } else { 40 }) {
                mutate_bytes(&mut rng, &mut stdin);
            }
            if stays_in_test_dirs(&stdin, &node) {
                break;
            }
            stdin = b"{}".to_vec();
        }
        assert!(stays_in_test_dirs(&stdin, &node));
        let mut inv = Invocation::default().stdin(stdin);
        let env: [(&str, Option<OsString>); 6] = if well_formed {
            let id = if rng.chance(50) {
                "fz-fixed".to_owned()
            } else {
                unique("fz")
            };
            [
                (
                    "CNI_COMMAND",
                    some(rng.pick::<&str>(&["ADD", "ADD", "ADD", "DEL", "CHECK", "GC", "STATUS"])),
                ),
                ("CNI_CONTAINERID", some(&id)),
                ("CNI_NETNS", some(&pod_path)),
                ("CNI_IFNAME", some(rng.pick::<&str>(&["eth0", "net1"]))),
                ("CNI_ARGS", some("IgnoreUnknown=1")),
                ("CNI_PATH", some(&bin_dir)),
            ]
        } else {
            let container_id = match rng.below(container_ids.len()) {
                2 => Some(OsString::from(unique("fz"))),
                i => container_ids[i].clone(),
            };
            [
                ("CNI_COMMAND", env_value(&mut rng, &commands)),
                ("CNI_CONTAINERID", container_id),
                ("CNI_NETNS", env_value(&mut rng, &netns)),
                ("CNI_IFNAME", env_value(&mut rng, &ifnames)),
                ("CNI_ARGS", env_value(&mut rng, &cni_args)),
                ("CNI_PATH", env_value(&mut rng, &cni_paths)),
            ]
        };
        for (var, value) in env {
            if let Some(value) = value {
                inv = inv.env(var, value);
            }
        }
        let command = inv
            .env
            .get("CNI_COMMAND")
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = node.cni.invoke("podnet", &inv);
        let ctx = || format!("run {run} of seed {SEED:#x}: {}", out.describe());
        assert!(!out.timed_out(), "hung: {}", ctx());
        assert!(out.status.code().is_some(), "killed by a signal: {}", ctx());
        assert!(!out.panicked(), "panicked: {}", ctx());
        if out.success() {
            let quiet = out.stdout.iter().all(u8::is_ascii_whitespace);
            if matches!(command.as_str(), "ADD" | "VERSION") {
                assert!(
                    out.json().is_some(),
                    "{command} without a JSON result: {}",
                    ctx()
                );
            } else {
                assert!(quiet || out.json().is_some(), "non-JSON stdout: {}", ctx());
            }
            *outcomes.entry(format!("{command} ok")).or_default() += 1;
        } else {
            let err = out
                .error()
                .unwrap_or_else(|| panic!("failed without a spec error on stdout: {}", ctx()));
            *outcomes
                .entry(format!("{command} code {}", err.code))
                .or_default() += 1;
        }
    }
    eprintln!("outcomes over {RUNS} runs: {outcomes:?}");
}

/// The generator and the mutators themselves (no root needed): deterministic, and they never
/// panic on their own output.
#[test]
fn random_inputs_are_deterministic() {
    let draw = |seed| {
        let mut rng = Rng(seed);
        (0..50)
            .map(|_| random_value(&mut rng, 3))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let mut v = Value::Object(Map::new());
    let mut rng = Rng(1);
    for _ in 0..200 {
        mutate_json(&mut rng, &mut v);
    }
    let mut bytes = serde_json::to_vec(&v).expect("serializes");
    for _ in 0..200 {
        mutate_bytes(&mut rng, &mut bytes);
    }
}

#[test]
fn podnet_gc_frees_containers_whose_namespace_is_gone() {
    require_root!();
    let node = CniNode::new("10.244.68.0/24");
    let conf = node.standalone_conflist();
    let alive = Netns::new("ga");
    let rt_alive = RuntimeConf::new(&container_id(), alive.path());
    let result_alive = add_ok(&node, &conf, &rt_alive).result().clone();
    let dead_ip = {
        // A container that died without a DEL (a runtime crash, `ctr run -d`).
        let dead = Netns::new("gd");
        let rt_dead = RuntimeConf::new(&container_id(), dead.path());
        ip_of(add_ok(&node, &conf, &rt_dead).result())
    };
    assert!(node.podnet_ip_records().contains(&dead_ip));
    let report = node.podnet_json(&["gc"]);
    assert_eq!(
        report["attachments"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(node.endpoints(), vec![ip_of(&result_alive)]);
    assert_eq!(node.podnet_ip_records(), vec![ip_of(&result_alive)]);
    check_ok(&node, &conf, &rt_alive, &result_alive);
    // Nothing more to free the second time.
    let again = node.podnet_json(&["gc"]);
    assert_eq!(again["attachments"], json!([]), "{again}");
    del_ok(&node, &conf, &rt_alive, Some(&result_alive));
}

#[test]
fn install_cni_writes_the_plugin_and_a_network_per_mode() {
    require_root!();
    let dir = std::env::temp_dir().join(unique("pn-install"));
    let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
    let out = std::process::Command::new(podnet_tests::podnet_bin())
        .args([
            "--state-dir",
            "/var/lib/podnet-example",
            "--json",
            "install-cni",
        ])
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .args([
            "--mode",
            "chained",
            "--pod-cidr",
            "10.244.1.0/24",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--uplink",
            "eth0",
        ])
        .output()
        .expect("podnet runs");
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&dir);
    };
    if !out.status.success() {
        cleanup();
        panic!("install-cni: {}", describe(&out));
    }
    let network: Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-podnet.conflist")).expect("network"))
            .expect("JSON");
    let example: Value = serde_json::from_slice(
        &std::fs::read(conf.join("podnet-standalone.conflist.example")).expect("example"),
    )
    .expect("JSON");
    let version = std::process::Command::new(bin.join("podnet"))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("installed plugin runs");
    cleanup();
    let types: Vec<&str> = network["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["bridge", "podnet"]);
    assert_eq!(network["plugins"][1]["mode"], "chained");
    assert_eq!(network["plugins"][1]["node"]["bridge"], "cni0");
    assert_eq!(example["plugins"][0]["mode"], "standalone");
    assert!(version.status.success(), "{}", describe(&version));
    let answer: Value = serde_json::from_slice(&version.stdout).expect("VERSION answer");
    assert!(
        answer["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.1.0"))),
        "{answer}"
    );
}

/// `node reset` on a node with chained attachments and a peer leaves nothing behind: no filter
/// on the runtime's veths (they outlive the node), no route to the peer's pod CIDR, no pin, no
/// state file, no collector process. (Before the operations layer, reset deleted its own files
/// by name and left both the chained filters and the peer routes.)
#[test]
fn node_reset_after_chained_adds_and_peers_leaves_nothing_behind() {
    require_root!();
    let node = CniNode::new("10.244.65.0/24");
    let conf = node.chained_conflist();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("rc")).collect();
    for pod in &pods {
        add_ok(&node, &conf, &RuntimeConf::new(&container_id(), pod.path()));
    }
    let veths: Vec<String> = pods
        .iter()
        .map(|p| host_peer(&node.topo.node, p, "eth0").expect("the runtime's host veth"))
        .collect();
    for veth in &veths {
        assert!(
            !node.ingress_filters(veth).is_empty(),
            "{veth} has podnet's program"
        );
    }
    let out = node.podnet(&[
        "node",
        "peer",
        "add",
        "--name",
        "n2",
        "--node-ip",
        "198.18.0.20",
        "--pod-cidr",
        "10.244.66.0/24",
    ]);
    assert!(out.status.success(), "peer add: {}", describe(&out));
    let peer_route = || node.topo.node.ok("ip -o route show 10.244.66.0/24");
    assert!(!peer_route().trim().is_empty(), "the peer's route is there");
    let pid_file = node.state_dir.join("conntrack-gc.pid");
    let read_pid =
        || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    podnet_tests::wait_until(Duration::from_secs(5), "the collector runs", || {
        read_pid().is_some()
    });
    let pid = read_pid().expect("the collector's pid");

    let report = node.podnet_json(&["node", "reset"]);
    assert_eq!(report["chained_detached"], 2, "{report}");
    assert_eq!(report["peer_routes_removed"], 1, "{report}");
    for veth in &veths {
        assert!(node.links().contains(veth), "the runtime's {veth} stays");
        assert_eq!(node.ingress_filters(veth), "", "filter left on {veth}");
    }
    assert_eq!(peer_route().trim(), "", "route to the peer's pods left");
    let pins = std::fs::read_dir(&node.pin_dir).map_or(0, Iterator::count);
    assert_eq!(pins, 0, "pins left under {}", node.pin_dir.display());
    let left: Vec<_> = std::fs::read_dir(&node.state_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n == "lock"),
        "state left after reset: {left:?}"
    );
    podnet_tests::wait_until(Duration::from_secs(5), "the collector exits", || {
        std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty())
    });
}
