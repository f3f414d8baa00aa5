//! The first datapath piece end to end: `podnet node init` loads and pins the programs and
//! maps, the pod program attached to a veth moves the per-CPU counters, bpftool prints the
//! pinned maps with field names, and reset leaves nothing behind.

use std::{path::Path, process::Command};

use podnet_tests::{InNetns as _, Node, require_root};

fn bpftool_dump(path: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn packets_through_the_pod_veth_move_the_counters() {
    require_root!();
    let node = Node::new("10.244.11.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let before = node.stats();
    let out = a.ping(&b.ip, 5);
    assert!(out.status.success(), "ping failed: {out:?}");
    let after = node.stats();
    let forwarded = after["forward_local_peer"] - before["forward_local_peer"];
    // 5 requests from a (on a's veth) and 5 replies from b (on b's veth), plus any ARP-free
    // follow-ups: at least 10 redirected packets.
    assert!(
        forwarded >= 10,
        "expected >= 10 fast-path packets, got {forwarded}: {after:?}"
    );
    assert_eq!(after["drop_redirect_failed"], 0);
}

#[test]
fn bpftool_prints_field_names_of_every_pinned_map() {
    require_root!();
    let node = Node::new("10.244.12.0/24");
    let _a = node.add_pod("a");
    let stats = bpftool_dump(&node.pin_dir.join("STATS"));
    assert!(
        stats.contains("\"packets\"") && stats.contains("\"bytes\""),
        "{stats}"
    );
    let endpoints = bpftool_dump(&node.pin_dir.join("ENDPOINTS"));
    for field in ["\"addr\"", "\"ifindex\"", "\"mac\"", "\"netns_ino\""] {
        assert!(endpoints.contains(field), "no {field} in {endpoints}");
    }
    let config = bpftool_dump(&node.pin_dir.join("CONFIG"));
    for field in [
        "\"node_ip\"",
        "\"pod_cidr\"",
        "\"gateway_mac\"",
        "\"ct_timeouts\"",
    ] {
        assert!(config.contains(field), "no {field} in {config}");
    }
    // A NodePort and a SNATed ping put entries in the NAT maps.
    node.ok(&["nodeport", "add", "--port", "30080", "--backend", "a:80"]);
    let ping = _a.ping(&podnet_tests::OUTSIDE_IP.to_string(), 1);
    assert!(ping.status.success(), "{}", podnet_tests::describe(&ping));
    let expected: [(&str, &[&str]); 3] = [
        (
            "CONNTRACK",
            &[
                "\"saddr\"",
                "\"sport\"",
                "\"nat\"",
                "\"expires_ns\"",
                "\"state\"",
            ],
        ),
        ("CT_USAGE", &["\"inserted\"", "\"removed\""]),
        (
            "SERVICES",
            &["\"port\"", "\"slot\"", "\"proto\"", "\"count\""],
        ),
    ];
    for (map, fields) in expected {
        let dump = bpftool_dump(&node.pin_dir.join(map));
        for field in fields {
            assert!(dump.contains(field), "no {field} in {map}: {dump}");
        }
    }
}

#[test]
fn reset_leaves_nothing_behind() {
    require_root!();
    let node = Node::new("10.244.13.0/24");
    let links_before = node.links();
    let pods: Vec<_> = ["a", "b"].iter().map(|n| node.add_pod(n)).collect();
    let netns: Vec<_> = pods.iter().map(|p| p.ns.path()).collect();
    node.ok(&["node", "reset"]);
    assert!(
        !node.pin_dir.exists(),
        "pin dir {} remains",
        node.pin_dir.display()
    );
    for path in &netns {
        assert!(!path.exists(), "pod namespace {} remains", path.display());
    }
    let mut links_after = node.links();
    links_after.sort();
    let mut expected: Vec<String> = links_before
        .into_iter()
        .filter(|l| l != "podnet0")
        .collect();
    expected.sort();
    assert_eq!(links_after, expected, "only the fixture's own links remain");
    let tc = node
        .topo
        .node
        .ok("tc filter show dev uplink0 ingress 2>/dev/null; true");
    assert!(tc.trim().is_empty(), "no filters: {tc}");
    let state: Vec<_> = std::fs::read_dir(&node.state_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let leftovers: Vec<_> = state.iter().filter(|n| *n != "lock").collect();
    assert!(leftovers.is_empty(), "state left: {leftovers:?}");
}

/// Runs `podnet log` for a moment while pod `a` pings pod `b`; returns what it printed.
fn log_during_ping(node: &Node) -> String {
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let mut cmd = node.command(&["log", "--seconds", "2"]);
    cmd.stdout(std::process::Stdio::piped());
    let log = cmd.spawn().expect("podnet log starts");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = a.ping(&b.ip, 3);
    assert!(out.status.success());
    let out = log.wait_with_output().expect("podnet log ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debug_log_is_switched_on_at_load_time() {
    require_root!();
    let node = Node::with_args("10.244.14.0/24", &["--debug"]);
    let log = log_during_ping(&node);
    assert!(
        log.contains("from_pod: 10.244.14.3 -> local ifindex"),
        "debug log:\n{log}"
    );
}

#[test]
fn without_debug_nothing_is_logged() {
    require_root!();
    let node = Node::new("10.244.15.0/24");
    let log = log_during_ping(&node);
    assert!(
        log.trim().is_empty(),
        "no per-packet logging when off:\n{log}"
    );
}
