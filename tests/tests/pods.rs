//! Pods on one node: the seed documents' basic requirements, the eBPF fast path between pods,
//! source IPs, idempotent teardown at scale, and concurrent adds.

use std::{collections::BTreeSet, process::Command, thread, time::Duration};

use podnet_tests::{
    InNetns as _, Node, Scenario, connect_tcp, describe, peer_ip_of, podnet_bin, require_root,
    serve_tcp, wait_until,
};

#[test]
fn containers_in_a_pod_share_localhost() {
    require_root!();
    let node = Node::new("10.244.21.0/24");
    let pod = node.add_pod("web");
    // Two processes in the same pod namespace: a server and a client on 127.0.0.1.
    let _server = serve_tcp(&pod.ns, "127.0.0.1:7001");
    let reply = connect_tcp(&pod.ns, "127.0.0.1:7001").expect("loopback connect");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()).as_deref(),
        Some("127.0.0.1")
    );
}

#[test]
fn pods_get_their_own_addresses_and_reach_each_other_over_the_fast_path() {
    require_root!();
    let node = Node::new("10.244.22.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    assert_ne!(a.ip, b.ip);
    for pod in [&a, &b] {
        let addrs = pod.ns.ok("ip -4 -o addr show dev eth0");
        assert!(
            addrs.contains(&pod.ip),
            "{} has {}: {addrs}",
            pod.name,
            pod.ip
        );
        let routes = pod.ns.ok("ip route show default");
        assert!(
            routes.contains("via 10.244.22.1"),
            "default route: {routes}"
        );
    }
    let _server = serve_tcp(&b.ns, &format!("{}:8080", b.ip));
    let before = node.stats();
    let ping = a.ping(&b.ip, 3);
    assert!(ping.status.success(), "ICMP a -> b: {}", describe(&ping));
    let reply = connect_tcp(&a.ns, &format!("{}:8080", b.ip)).expect("TCP a -> b");
    assert_eq!(
        peer_ip_of(&reply).map(|ip| ip.to_string()),
        Some(a.ip.clone()),
        "b must see a's pod IP as the source"
    );
    let after = node.stats();
    let fast = after["forward_local_peer"] - before["forward_local_peer"];
    // 3 ICMP requests + 3 replies + a TCP exchange (>= 6 segments) all bypass the bridge.
    assert!(fast >= 12, "fast path carried {fast} packets: {after:?}");
    // The bridge saw none of the IPv4 pod-to-pod traffic: its forwarding database may learn
    // from ARP, but the IPv4 packets themselves never passed through it.
    assert_eq!(after["pass_not_local"] - before["pass_not_local"], 0);
}

#[test]
fn arp_and_ipv6_are_left_to_the_kernel() {
    require_root!();
    let node = Node::new("10.244.23.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let before = node.stats();
    // IPv6 link-local between the pods goes through the bridge, untouched by the program
    // (once duplicate address detection has finished on both ends).
    for pod in [&a, &b] {
        wait_until(Duration::from_secs(5), "IPv6 DAD", || {
            pod.ns
                .ok("ip -6 addr show dev eth0 tentative")
                .trim()
                .is_empty()
        });
    }
    let b_ll =
        b.ns.ok("ip -6 -o addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1");
    let b_ll = b_ll.trim();
    if !b_ll.is_empty() {
        let ping6 = a.ns.sh(&format!("ping -6 -c 2 -i 0.1 -W 2 {b_ll}%eth0"));
        assert!(
            ping6.status.success(),
            "IPv6 between pods: {}",
            describe(&ping6)
        );
    }
    a.ns.ok("ip neigh flush dev eth0");
    let ping = a.ping(&b.ip, 1);
    assert!(ping.status.success());
    let after = node.stats();
    assert!(
        after["pass_not_ipv4"] > before["pass_not_ipv4"],
        "ARP/IPv6 counted as passed: {after:?}"
    );
}

#[test]
fn fifty_pods_added_and_deleted_leave_nothing_behind() {
    require_root!();
    let node = Node::new("10.244.24.0/24");
    let links_before = node.links().len();
    let names: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let mut ips = BTreeSet::new();
    let mut netns = Vec::new();
    for name in &names {
        let pod = node.add_pod(name);
        assert!(ips.insert(pod.ip.clone()), "duplicate IP {}", pod.ip);
        netns.push(pod.ns.path());
    }
    let maps = node.json(&["maps"]);
    assert_eq!(maps["endpoints"].as_array().map(Vec::len), Some(50));
    for name in &names {
        node.ok(&["pod", "del", name]);
        // Idempotent: a second delete succeeds.
        node.ok(&["pod", "del", name]);
    }
    assert_eq!(node.links().len(), links_before, "no veth left");
    let maps = node.json(&["maps"]);
    assert_eq!(
        maps["endpoints"].as_array().map(Vec::len),
        Some(0),
        "no endpoint left"
    );
    assert_eq!(
        node.json(&["pod", "list"]).as_array().map(Vec::len),
        Some(0)
    );
    let ipam_dir = node.state_dir.join("ipam");
    let records: Vec<_> = std::fs::read_dir(&ipam_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(records.is_empty(), "IPAM records left: {}", records.len());
    for path in netns {
        assert!(!path.exists(), "{} left", path.display());
    }
}

#[test]
fn eight_concurrent_pod_adds_get_unique_addresses() {
    require_root!();
    let node = Node::new("10.244.25.0/24");
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut cmd: Command = node.command(&["--json", "pod", "add", &format!("c{i}")]);
            thread::spawn(move || cmd.output().expect("podnet runs"))
        })
        .collect();
    let mut ips = BTreeSet::new();
    for child in children {
        let out = child.join().expect("thread");
        assert!(out.status.success(), "{}", describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert!(ips.insert(v["address"].as_str().expect("address").to_owned()));
    }
    assert_eq!(ips.len(), 8);
    assert_eq!(
        node.json(&["maps"])["endpoints"].as_array().map(Vec::len),
        Some(8)
    );
}

#[test]
fn reinit_keeps_pods_and_their_fast_path() {
    require_root!();
    let node = Node::new("10.244.26.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let args = node.init_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = node.json(&refs);
    assert_eq!(
        report["load"]["maps_reused"].as_array().map(Vec::len),
        Some(podnet_ebpf::abi::map_name::ALL.len()),
        "{report}"
    );
    assert_eq!(report["load"]["links_updated"], 2, "{report}");
    assert_eq!(
        node.json(&["maps"])["endpoints"].as_array().map(Vec::len),
        Some(2)
    );
    let before = node.stats();
    let ping = a.ping(&b.ip, 2);
    assert!(ping.status.success());
    assert!(node.stats()["forward_local_peer"] >= before["forward_local_peer"] + 4);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    require_root!();
    let node = Node::new("10.244.27.0/24");
    let _a = node.add_pod("a");
    let state_before = node.json(&["node", "status"]);
    for (args, needle) in [
        (vec!["pod", "add", "bad/name"], "invalid pod name"),
        (vec!["pod", "add", "a"], "already exists"),
        (
            vec!["pod", "add", "x", "--netns", "/nonexistent/ns"],
            "/nonexistent/ns",
        ),
        (
            vec!["pod", "add", "y", "--netns", "/etc/hostname"],
            "/etc/hostname",
        ),
    ] {
        let out = node.podnet(&args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: error {err:?} should mention {needle:?}"
        );
    }
    let mut init = node.init_args();
    let cidr = init.iter().position(|a| a == "--pod-cidr").expect("flag") + 1;
    for (bad, needle) in [
        ("10.244.27.0/33", "invalid"),
        ("10.245.0.0/24", "not inside cluster CIDR"),
    ] {
        init[cidr] = bad.to_owned();
        let refs: Vec<&str> = init.iter().map(String::as_str).collect();
        let out = node.podnet(&refs);
        assert!(!out.status.success(), "pod CIDR {bad} must be refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{}",
            describe(&out)
        );
    }
    assert_eq!(
        node.json(&["node", "status"]),
        state_before,
        "nothing changed"
    );
    let out = Command::new(podnet_bin())
        .args(["--state-dir", "/nonexistent/podnet", "pod", "list"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not initialised"));
}

#[test]
fn a_pod_can_join_an_existing_namespace_which_survives_its_delete() {
    require_root!();
    let node = Node::new("10.244.28.0/24");
    let existing = podnet_tests::Netns::new("ext");
    let path = existing.path();
    let out = node.json(&["pod", "add", "ext", "--netns", path.to_str().expect("utf8")]);
    assert_eq!(out["owns_netns"], false);
    let addrs = existing.ok("ip -4 -o addr show dev eth0");
    assert!(addrs.contains("10.244.28."), "{addrs}");
    let peer = node.add_pod("peer");
    let ping = podnet_tests::ping(&existing, &peer.ip, 2);
    assert!(ping.status.success(), "{}", describe(&ping));
    node.ok(&["pod", "del", "ext"]);
    assert!(
        path.exists(),
        "a namespace podnet did not create is not deleted"
    );
    let links = existing.ok("ip -o link show");
    assert!(
        !links.contains("eth0"),
        "eth0 removed with its veth: {links}"
    );
}

#[test]
fn a_pod_cannot_send_as_another_pod_or_as_the_node() {
    require_root!();
    let mut scenario = Scenario::new("anti-spoofing: a pod sends as another pod and as the node");
    let node = Node::new("10.244.27.0/24");
    let (a, b, c) = (node.add_pod("a"), node.add_pod("b"), node.add_pod("c"));
    // As itself first, so a knows its gateway's MAC (the node ignores ARP that claims one of
    // its own addresses, which would otherwise stop the spoofed ping before it is sent).
    assert!(a.ping("198.18.0.1", 1).status.success());
    // Pod a takes b's address and the node's next to its own, and sends from each.
    for (stolen, target) in [
        (b.ip.as_str(), c.ip.as_str()),
        ("198.18.0.10", "198.18.0.1"),
    ] {
        a.ns.ok(&format!("ip addr add {stolen}/32 dev eth0"));
        let before = node.stats()["drop_spoofed"];
        let ping =
            a.ns.sh(&format!("ping -c 2 -i 0.1 -W 1 -I {stolen} {target}"));
        assert!(
            !ping.status.success(),
            "a spoofed {stolen}: {}",
            describe(&ping)
        );
        let after = node.stats()["drop_spoofed"];
        assert!(
            after >= before + 2,
            "spoofed packets counted: {before} -> {after}"
        );
        scenario.number(&format!("dropped as {stolen}"), after - before);
    }
    // Once a gives the stolen addresses back, it gets through as itself. (While it holds them
    // its kernel may pick one as the sender of an ARP request, and that ARP is dropped too.)
    a.ns.ok(&format!(
        "ip addr del {}/32 dev eth0; ip addr del 198.18.0.10/32 dev eth0; ip neigh flush dev eth0",
        b.ip
    ));
    assert!(a.ping(&c.ip, 1).status.success());
}

/// The MAC the node's neighbour table holds for `ip`, if any.
fn neighbour_mac(node: &Node, ip: &str) -> Option<String> {
    let out = node.topo.node.ok(&format!("ip -j neigh show {ip}"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j neigh");
    v.as_array()?
        .iter()
        .find_map(|n| n["lladdr"].as_str().map(str::to_owned))
}

/// A gratuitous ARP from pod a claiming `ip` (which a must hold), twice.
fn announce(a: &podnet_tests::PodInfo, ip: &str) {
    let out =
        a.ns.sh(&format!("arping -q -U -c 2 -w 2 -I eth0 -s {ip} {ip}"));
    // arping exits 1 when no reply came, which an unsolicited announcement never gets.
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "arping: {}",
        describe(&out)
    );
}

#[test]
fn a_pod_cannot_take_another_pods_address_in_the_nodes_neighbour_table() {
    require_root!();
    let mut scenario = Scenario::new("anti-spoofing: a pod announces another pod's address by ARP");
    for (cidr, anti_spoof) in [("10.244.29.0/24", true), ("10.244.30.0/24", false)] {
        let extra: &[&str] = if anti_spoof {
            &[]
        } else {
            &["--no-anti-spoof"]
        };
        let node = Node::with_args(cidr, extra);
        let (a, b) = (node.add_pod("a"), node.add_pod("b"));
        // The node learns b's MAC the honest way.
        assert!(
            node.topo
                .node
                .sh(&format!("ping -c 1 -W 1 {}", b.ip))
                .status
                .success()
        );
        let b_mac = neighbour_mac(&node, &b.ip).expect("the node knows b's MAC");
        // (`ip`, not /sys: sysfs read through nsenter shows the root namespace.)
        let link: serde_json::Value =
            serde_json::from_str(&a.ns.ok("ip -j link show eth0")).expect("ip -j link");
        let a_mac = link[0]["address"].as_str().expect("a's MAC").to_owned();
        a.ns.ok(&format!("ip addr add {}/32 dev eth0", b.ip));
        let before = node.stats()["drop_spoofed"];
        announce(&a, &b.ip);
        let after = node.stats()["drop_spoofed"];
        let learned = neighbour_mac(&node, &b.ip);
        if anti_spoof {
            assert_eq!(learned.as_deref(), Some(b_mac.as_str()), "b's entry kept");
            assert!(
                after >= before + 2,
                "spoofed ARP counted: {before} -> {after}"
            );
            scenario.number("spoofed ARP dropped", after - before);
            // a may still announce itself.
            announce(&a, &a.ip);
            assert_eq!(node.stats()["drop_spoofed"], after);
        } else {
            // Without the check the announcement takes b's address: what the check prevents.
            assert_eq!(
                learned,
                Some(a_mac.clone()),
                "poisoned without anti-spoofing"
            );
            scenario.number(
                "without anti-spoofing, the node's entry for b became",
                "a's MAC",
            );
        }
    }
}

#[test]
fn anti_spoofing_can_be_switched_off() {
    require_root!();
    let node = Node::with_args("10.244.28.0/24", &["--no-anti-spoof"]);
    let (a, b, c) = (node.add_pod("a"), node.add_pod("b"), node.add_pod("c"));
    a.ns.ok(&format!("ip addr add {}/32 dev eth0", b.ip));
    let _ =
        a.ns.sh(&format!("ping -c 2 -i 0.1 -W 1 -I {} {}", b.ip, c.ip));
    assert_eq!(node.stats()["drop_spoofed"], 0);
    assert_eq!(node.json(&["maps"])["config"]["anti_spoof"], false);
}
