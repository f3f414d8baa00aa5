//! Load: 10,000 concurrent TCP connections from a pod to the outside (SNAT) and 10,000 from the
//! outside to a NodePort backed by a pod (DNAT), all established and held open at the same time,
//! then every one of them carries a line each way.
//!
//! What a user depends on: at this scale nothing is dropped (every connection connects and
//! echoes, and no drop counter of the datapath moves), conntrack holds exactly two entries per
//! flow, and the memory the maps take is known: the test reports the kernel's memory for each
//! map against its size, and what a connection costs.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use podnet_tests::{
    HeldConnections, InNetns, NODE_IP, Node, OUTSIDE_IP, Scenario, hold_tcp, number_field,
    require_root, run_bounded, serve_many,
};
use serde_json::Value;

/// Connections through each path.
const CONNECTIONS: u32 = 10_000;
/// Bound on each connection attempt and each echo: room for SYN retransmissions on a busy
/// machine, never needed on a quiet one.
const PER_CONNECTION: Duration = Duration::from_secs(5);

/// Makes sure `ns` has at least `CONNECTIONS` ephemeral ports for one destination, widening
/// its `ip_local_port_range` (in that namespace only) if not; returns the range in use.
fn ensure_ephemeral_ports(ns: &(impl InNetns + ?Sized)) -> String {
    let read = || {
        let text = ns.ok("cat /proc/sys/net/ipv4/ip_local_port_range");
        let ports: Vec<u32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(ports.len(), 2, "ip_local_port_range: {text:?}");
        (ports[0], ports[1])
    };
    let (low, high) = read();
    if high - low + 1 < CONNECTIONS + 1_000 {
        ns.ok("sysctl -qw net.ipv4.ip_local_port_range='16384 60999'");
    }
    let (low, high) = read();
    assert!(high - low + 1 >= CONNECTIONS, "{low}-{high}");
    format!("{low}-{high}")
}

/// TCP segments retransmitted in `ns` so far (`/proc/net/snmp`, Tcp RetransSegs).
fn tcp_retransmits(ns: &(impl InNetns + ?Sized)) -> u64 {
    let snmp = ns.ok("cat /proc/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        panic!("no Tcp lines in /proc/net/snmp: {snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .expect("RetransSegs")
}

/// One pinned map as the kernel reports it (`bpftool map show pinned`).
struct MapMemory {
    max_entries: u64,
    bytes_memlock: u64,
}

/// Every map pinned under the node's pin directory, by name.
fn map_memory(pin_dir: &Path) -> BTreeMap<String, MapMemory> {
    let mut maps = BTreeMap::new();
    for entry in std::fs::read_dir(pin_dir).expect("pin dir") {
        let path = entry.expect("pin dir entry").path();
        let mut cmd = Command::new("bpftool");
        cmd.args(["-j", "map", "show", "pinned"]).arg(&path);
        let out = run_bounded(cmd, Duration::from_secs(20));
        if !out.status.success() {
            continue; // a pinned program or link, not a map
        }
        let info: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        let field = |k: &str| {
            info[k]
                .as_u64()
                .unwrap_or_else(|| panic!("no {k} in {info}"))
        };
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        maps.insert(
            name,
            MapMemory {
                max_entries: field("max_entries"),
                bytes_memlock: field("bytes_memlock"),
            },
        );
    }
    maps
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Opens `CONNECTIONS` connections from `ns` to `target` and waits until all attempts ended.
fn hold(ns: &(impl InNetns + ?Sized), target: &str, release: &Path) -> HeldConnections {
    let held = hold_tcp(ns, target, CONNECTIONS, release, PER_CONNECTION);
    assert!(
        held.connected_line
            .starts_with(&format!("connected={CONNECTIONS} failed=0")),
        "{target}: {}",
        held.connected_line
    );
    held
}

#[test]
fn ten_thousand_concurrent_connections_through_snat_and_a_nodeport_all_carry_data() {
    require_root!();
    let mut s = Scenario::new(
        "10,000 concurrent TCP connections through SNAT plus 10,000 through a NodePort, held at once",
    );
    let node = Node::new("10.244.152.0/24");
    let client = node.add_pod("client");
    let web = node.add_pod("web");
    let outside = &node.topo.outside;
    s.number("pod_ephemeral_ports", ensure_ephemeral_ports(&client.ns))
        .number("outside_ephemeral_ports", ensure_ephemeral_ports(outside));
    let _outside_server = serve_many(outside, &format!("{OUTSIDE_IP}:7100"));
    let _web_server = serve_many(&web.ns, "0.0.0.0:7100");
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30710",
        "--backend",
        "web:7100",
    ]);
    let idle = map_memory(&node.pin_dir);
    let before = node.stats();
    let retrans_before = (tcp_retransmits(&client.ns), tcp_retransmits(outside));

    // Both paths at once: 20,000 connections open together.
    let start = Instant::now();
    let (via_snat, via_nodeport) = std::thread::scope(|scope| {
        let snat = scope.spawn(|| {
            hold(
                &client.ns,
                &format!("{OUTSIDE_IP}:7100"),
                &node.state_dir.join("release-snat"),
            )
        });
        let nodeport = scope.spawn(|| {
            hold(
                outside,
                &format!("{NODE_IP}:30710"),
                &node.state_dir.join("release-nodeport"),
            )
        });
        (
            snat.join().expect("SNAT holder"),
            nodeport.join().expect("NodePort holder"),
        )
    });
    s.number("connect_all_ms", start.elapsed().as_millis());
    for (what, held) in [("snat", &via_snat), ("nodeport", &via_nodeport)] {
        s.number(&format!("{what}_connected"), held.connected());
    }

    // Two entries per flow, counted and actually in the map.
    let flows = u64::from(CONNECTIONS) * 2;
    let usage = node.json(&["stats"])["conntrack"].clone();
    let live = usage["live"].as_u64().expect("live");
    let limit = usage["limit"].as_u64().expect("limit");
    assert_eq!(live, 2 * flows, "entries counted live: {usage}");
    let gc = node.json(&["conntrack", "gc"]);
    assert_eq!(
        gc["scanned"].as_u64(),
        Some(2 * flows),
        "entries in the map: {gc}"
    );
    assert_eq!(
        gc["removed"].as_u64(),
        Some(0),
        "nothing held is dead: {gc}"
    );
    s.number("conntrack_entries_in_use", live)
        .number("conntrack_limit", limit);

    // Memory: what the kernel charges for each map, against its size.
    let maps = map_memory(&node.pin_dir);
    let ct = maps.get("CONNTRACK").expect("a pinned CONNTRACK map");
    let per_entry = ct.bytes_memlock / ct.max_entries;
    let total: u64 = maps.values().map(|m| m.bytes_memlock).sum();
    let total_idle: u64 = idle.values().map(|m| m.bytes_memlock).sum();
    println!("map memory with {live} conntrack entries in use (of {limit} admitted):");
    for (name, m) in &maps {
        println!(
            "  {name:<12} max_entries {:>8}  bytes_memlock {:>10} ({} MiB)",
            m.max_entries,
            m.bytes_memlock,
            mib(m.bytes_memlock)
        );
    }
    println!(
        "  total {} MiB ({} MiB before the connections); CONNTRACK {per_entry} bytes per entry, {} bytes per connection (2 entries)",
        mib(total),
        mib(total_idle),
        2 * per_entry
    );
    s.number("conntrack_max_entries", ct.max_entries)
        .number("conntrack_mib", mib(ct.bytes_memlock))
        .number("conntrack_bytes_per_connection", 2 * per_entry)
        .number("conntrack_fill_percent", live * 100 / ct.max_entries)
        .number("all_maps_mib", mib(total))
        .number("all_maps_mib_before_connections", mib(total_idle));
    for (name, m) in &maps {
        s.number(
            &format!("map_{}", name.to_lowercase()),
            format!("{} entries / {} MiB", m.max_entries, mib(m.bytes_memlock)),
        );
    }

    // Every connection, still open, carries a line each way.
    let start = Instant::now();
    for (what, held) in [("snat", via_snat), ("nodeport", via_nodeport)] {
        let echoed = held
            .release(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{what} connections: {e}"));
        let n = number_field(&echoed, "echoed").expect("echoed");
        assert_eq!(n, u64::from(CONNECTIONS), "{what}: {echoed}");
        s.number(&format!("{what}_echoed"), n);
    }
    s.number("echo_all_ms", start.elapsed().as_millis());

    // No drops: no drop counter moved.
    let after = node.stats();
    let drops: Vec<String> = after
        .iter()
        .filter(|(reason, n)| reason.starts_with("drop_") && before.get(*reason) != Some(n))
        .map(|(reason, n)| format!("{reason}+{}", n - before.get(reason).copied().unwrap_or(0)))
        .collect();
    assert!(drops.is_empty(), "drop counters moved: {drops:?}");
    s.number("datapath_drops", 0);
    s.number(
        "tcp_retransmits_pod",
        tcp_retransmits(&client.ns) - retrans_before.0,
    )
    .number(
        "tcp_retransmits_outside",
        tcp_retransmits(outside) - retrans_before.1,
    );
}
