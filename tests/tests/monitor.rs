//! `podnet monitor`: the live view of drops. A pod sending as an address that is not its own
//! and a pod connecting to a ClusterIP without backends show up as events with the right
//! reason, addresses, ports and protocol; `--reason` filters; an unknown reason is refused;
//! `--count` ends it; SIGTERM ends it cleanly.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use podnet::datapath::services_map::{Frontend, ServicesMap};
use podnet_ebpf::abi::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    svc_flag,
};
use podnet_tests::{
    ChildGuard, InNetns as _, Node, PodInfo, bpf_stats, describe, netprobe, require_root,
    testrun::service_spec, wait_until,
};
use serde_json::Value;

const SERVICE_CIDR: &str = "10.96.0.0/12";
/// A ClusterIP whose services have no backends.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// The address the spoofing pod takes (not its own).
const STOLEN: &str = "10.244.171.200";
const SPOOF_SPORT: u16 = 41_234;

/// A node (per-packet service path, so the refusal is the datapath's) with pods `a` and `b`
/// and a ClusterIP without backends on TCP 80 and UDP 53.
fn node_with_pods(pod_cidr: &str) -> (Node, PodInfo, PodInfo) {
    let node = Node::with_args(
        pod_cidr,
        &["--service-cidr", SERVICE_CIDR, "--no-socket-lb"],
    );
    let (a, b) = (node.add_pod("a"), node.add_pod("b"));
    let mut maps = ServicesMap::open(&node.pin_dir).expect("service maps");
    for (port, proto) in [(80, IPPROTO_TCP), (53, IPPROTO_UDP)] {
        let frontend = Frontend {
            addr: EMPTY_VIP.into(),
            port,
            proto,
        };
        maps.write(&service_spec(frontend, &[], svc_flag::CLUSTER_IP))
            .expect("write service");
    }
    // a learns its gateway's MAC honestly first (an ARP claiming the stolen address would be
    // dropped, and reported, too).
    assert!(a.ping(&b.ip, 1).status.success());
    (node, a, b)
}

/// Starts `podnet --json monitor ARGS` and waits until it follows the ring.
fn start_monitor(node: &Node, args: &[&str]) -> ChildGuard {
    let mut all = vec!["--json", "monitor"];
    all.extend_from_slice(args);
    let monitor = ChildGuard::spawn(node.command(&all));
    wait_until(Duration::from_secs(10), "podnet monitor ready", || {
        monitor.stderr().contains("following drops")
    });
    monitor
}

/// Pod `a` sends a UDP datagram from `STOLEN:SPOOF_SPORT` to `to:80` (dropped as spoofed).
fn send_spoofed(a: &PodInfo, to: &str) {
    a.ns.ok(&format!("ip addr replace {STOLEN}/32 dev eth0"));
    a.ns.ok(&format!("ip route replace {to}/32 dev eth0 src {STOLEN}"));
    let out = netprobe(
        &a.ns,
        &[
            "connect",
            "udp",
            &format!("{to}:80"),
            "--timeout-ms",
            "300",
            "--source-port",
            &SPOOF_SPORT.to_string(),
        ],
    );
    assert!(
        !out.status.success(),
        "a spoofed datagram got an answer: {}",
        describe(&out)
    );
    a.ns.ok(&format!("ip route del {to}/32"));
}

/// `client` connects to the ClusterIP without backends (refused at once).
fn connect_refused(client: &PodInfo) {
    let out = netprobe(
        &client.ns,
        &[
            "connect",
            "tcp",
            &format!("{EMPTY_VIP}:80"),
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(
        !out.status.success(),
        "connected to a service without backends"
    );
    assert!(
        describe(&out).to_lowercase().contains("refused"),
        "not refused: {}",
        describe(&out)
    );
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find<'a>(events: &'a [Value], reason: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} event in {events:#?}"))
}

#[test]
fn monitor_shows_spoofed_packets_and_refused_connections_until_sigterm() {
    require_root!();
    let (node, a, b) = node_with_pods("10.244.171.0/24");
    let mut monitor = start_monitor(&node, &[]);
    send_spoofed(&a, &b.ip);
    connect_refused(&b);
    wait_until(Duration::from_secs(10), "both events", || {
        let out = monitor.stdout();
        out.contains("drop_spoofed") && out.contains("reject_no_backend")
    });
    let all = events(&monitor.stdout());

    let spoofed = find(&all, "drop_spoofed");
    assert_eq!(spoofed["action"], "dropped", "{spoofed}");
    assert_eq!(spoofed["hook"], "from_pod", "{spoofed}");
    assert_eq!(spoofed["src"], STOLEN, "{spoofed}");
    assert_eq!(spoofed["dst"], b.ip.as_str(), "{spoofed}");
    assert_eq!(spoofed["sport"], SPOOF_SPORT, "{spoofed}");
    assert_eq!(spoofed["dport"], 80, "{spoofed}");
    assert_eq!(spoofed["proto"], "udp", "{spoofed}");
    assert_eq!(spoofed["ifname"], a.host_if.as_str(), "{spoofed}");

    let refused = find(&all, "reject_no_backend");
    assert_eq!(refused["action"], "answered", "{refused}");
    assert_eq!(refused["src"], b.ip.as_str(), "{refused}");
    assert_eq!(refused["dst"], EMPTY_VIP.to_string(), "{refused}");
    // (netprobe picks TCP source ports itself: an ephemeral one.)
    assert!(
        refused["sport"].as_u64().is_some_and(|p| p >= 1024),
        "{refused}"
    );
    assert_eq!(refused["dport"], 80, "{refused}");
    assert_eq!(refused["proto"], "tcp", "{refused}");
    assert_eq!(refused["ifname"], b.host_if.as_str(), "{refused}");

    // SIGTERM ends it cleanly, with its summary.
    let status = Command::new("kill")
        .args(["-TERM", &monitor.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exited = monitor.wait_timeout(Duration::from_secs(3));
    assert!(
        exited.is_some_and(|s| s.success()),
        "monitor after SIGTERM: {exited:?}\n{}",
        monitor.stderr()
    );
    // Its stderr is read by another thread: the last line may land a moment after the exit.
    let summary_shown = || monitor.stderr().contains("event(s) shown");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !summary_shown() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(summary_shown(), "{}", monitor.stderr());
}

#[test]
fn monitor_filters_by_reason_counts_and_refuses_unknown_reasons() {
    require_root!();
    let (node, a, b) = node_with_pods("10.244.172.0/24");

    let bad = node.podnet(&["monitor", "--reason", "drop_bogus", "--count", "1"]);
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unknown drop reason \"drop_bogus\"") && err.contains("drop_spoofed"),
        "{err}"
    );

    let monitor = start_monitor(&node, &["--reason", "reject_no_backend", "--count", "2"]);
    let started = Instant::now();
    send_spoofed(&a, &b.ip);
    connect_refused(&b);
    // A refused UDP datagram: answered with ICMP port unreachable, which quotes it.
    let udp = netprobe(
        &b.ns,
        &[
            "connect",
            "udp",
            &format!("{EMPTY_VIP}:53"),
            "--timeout-ms",
            "500",
        ],
    );
    assert!(!udp.status.success(), "{}", describe(&udp));
    let out = monitor.finish(Duration::from_secs(10));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let all = events(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(all.len(), 2, "--count 2: {all:#?}");
    assert!(
        all.iter().all(|e| e["reason"] == "reject_no_backend"),
        "{all:#?}"
    );
    assert_eq!(all[0]["proto"], "tcp", "{all:#?}");
    assert_eq!(all[1]["proto"], "udp", "{all:#?}");
    assert_eq!(all[1]["src"], b.ip.as_str(), "{all:#?}");
    assert_eq!(all[1]["dst"], EMPTY_VIP.to_string(), "{all:#?}");
    assert_eq!(all[1]["dport"], 53, "{all:#?}");
}

/// What `from_pod` cost per packet (kernel `bpf_stats`) while pod `a` flooded `to` for
/// `FLOOD_SECONDS`, and the flood's rate.
struct FloodCost {
    ns_per_packet: f64,
    packets: u64,
    sender_rate: String,
}

const FLOOD_SECONDS: &str = "3";

/// `run_cnt` and `run_time_ns` of the node's pinned `from_pod`.
fn from_pod_stats(node: &Node) -> (u64, u64) {
    let c = bpf_stats::counters(&node.pin_dir.join("progs/from_pod"));
    (c.run_cnt, c.run_time_ns)
}

fn flood(node: &Node, a: &PodInfo, to: &str) -> FloodCost {
    let (cnt0, ns0) = from_pod_stats(node);
    let out = netprobe(
        &a.ns,
        &[
            "flood",
            "udp",
            &format!("{to}:9"),
            "--seconds",
            FLOOD_SECONDS,
            "--source-port",
            &SPOOF_SPORT.to_string(),
        ],
    );
    assert!(out.status.success(), "flood: {}", describe(&out));
    let (cnt1, ns1) = from_pod_stats(node);
    let packets = cnt1 - cnt0;
    #[expect(clippy::cast_precision_loss, reason = "a ratio to print")]
    let ns_per_packet = (ns1 - ns0) as f64 / packets.max(1) as f64;
    let stdout = String::from_utf8_lossy(&out.stdout);
    FloodCost {
        ns_per_packet,
        packets,
        sender_rate: stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rate="))
            .unwrap_or("?")
            .to_owned(),
    }
}

/// The cost of reporting drops (run by hand, see the README): `from_pod`'s nanoseconds per
/// packet under a flood of spoofed UDP (every packet dropped) and under a flood to another pod
/// (every packet forwarded), with the programs built without reporting
/// (`PODNET_MONITOR_BASELINE_OBJECT`, built with `PODNET_EBPF_NO_MONITOR=1`), with reporting
/// and nobody listening, and with `podnet monitor` listening. Two rounds, each case on a node
/// of its own.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn monitor_cost_under_a_drop_flood() {
    require_root!();
    let baseline = std::env::var("PODNET_MONITOR_BASELINE_OBJECT")
        .expect("PODNET_MONITOR_BASELINE_OBJECT: an object built with PODNET_EBPF_NO_MONITOR=1");
    let _stats = bpf_stats::Enabled::new();
    let cases = [
        "no reporting",
        "reporting, nobody listening",
        "reporting, monitor listening",
    ];
    println!(
        "case | drop flood: ns/pkt, pkts, sender pps | forward flood: ns/pkt, pkts, sender pps | events shown, held back, lost"
    );
    for round in 0..2 {
        for (i, case) in cases.iter().enumerate() {
            let cidr = format!("10.244.{}.0/24", 174 + round * 3 + i);
            let mut args = vec!["--service-cidr", SERVICE_CIDR, "--no-socket-lb"];
            if i == 0 {
                args.extend(["--ebpf-object", baseline.as_str()]);
            }
            let node = Node::with_args(&cidr, &args);
            let (a, b) = (node.add_pod("a"), node.add_pod("b"));
            assert!(a.ping(&b.ip, 1).status.success());
            let monitor = (i == 2).then(|| start_monitor(&node, &[]));
            a.ns.ok(&format!("ip addr replace {STOLEN}/32 dev eth0"));
            a.ns.ok(&format!(
                "ip route replace {}/32 dev eth0 src {STOLEN}",
                b.ip
            ));
            let dropped = flood(&node, &a, &b.ip);
            a.ns.ok(&format!("ip route del {}/32", b.ip));
            let forwarded = flood(&node, &a, &b.ip);
            let shown = monitor.map_or(0, |m| {
                let out = m.finish(Duration::from_secs(1));
                String::from_utf8_lossy(&out.stdout).lines().count()
            });
            let totals = node.podnet(&["monitor", "--seconds", "0"]);
            let totals = String::from_utf8_lossy(&totals.stderr);
            let totals = totals.lines().last().unwrap_or("").to_owned();
            println!(
                "{case} | {:.0}, {}, {} | {:.0}, {}, {} | {shown} shown; {totals}",
                dropped.ns_per_packet,
                dropped.packets,
                dropped.sender_rate,
                forwarded.ns_per_packet,
                forwarded.packets,
                forwarded.sender_rate,
            );
        }
    }
}
