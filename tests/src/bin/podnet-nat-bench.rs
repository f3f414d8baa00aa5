//! NAT benchmark: podnet's eBPF NAT against the seed documents' iptables rules on the same
//! node, measured in one run, interleaved round by round (which goes first alternates):
//!
//! - `podnet`: NodePorts (`podnet nodeport add`) and automatic SNAT in the TC programs;
//! - `iptables`: the same node with podnet's TC programs detached (pods and uplink) and the
//!   seed documents' rules in the node's namespace: `MASQUERADE` for the pod CIDR leaving the
//!   cluster CIDR, and per NodePort one `DNAT` rule in `PREROUTING` and one in `OUTPUT`.
//!
//! Workloads: TCP connection rate (netprobe crr) and TCP throughput (iperf3) through a
//! NodePort (outside -> node IP -> pod) and through SNAT (pod -> outside). There are two
//! identical nodes: one with only the two measured NodePorts, one with 5,000 NodePorts (the
//! measured ones added last, the worst case for iptables' linear chain), so that every round
//! measures both configurations in both modes. Client and server are pinned to different CPUs
//! (iperf3 -A, taskset). Every run checks that its traffic took the intended path: podnet's
//! `dnat`/`snat` counters move in podnet mode and stay still in iptables mode, where the
//! iptables rules count the packets instead.
//!
//! Prints a Markdown table of medians (with min-max), podnet/iptables ratios and the
//! 2 -> 5,000 NodePort change, and writes it to `DIR/<date>-nat.md` with `--out DIR`.
//!
//! Arguments: `--rounds N` (5), `--seconds S` (3), `--quick` (3 rounds x 2 s), `--nodeports N`
//! (5,000), `--out DIR`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use podnet_tests::bench::{cmd_line, iperf3_gbps, median, spread};
use podnet_tests::{
    ChildGuard, InNetns, NODE_IP, Node, OUTSIDE_IP, PodInfo, UPLINK, describe, netprobe_bin,
    podnet_bin, run_bounded, unique,
};

/// NodePorts must hold 5,000+ ports.
const NODEPORT_RANGE: &str = "30000-39999";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The NodePort measured for connection rate (-> backend :80, `netprobe serve tcp`).
const CRR_NODEPORT: u16 = 30080;
/// The NodePort measured for throughput (-> backend :5201, iperf3).
const IPERF_NODEPORT: u16 = 30201;
/// NodePorts in the large configuration (`--nodeports N` changes it).
const MANY: usize = 5000;
/// SNAT connection-rate runs go to an outside server on this port plus the run's number: a
/// fresh port per run, so TIME_WAIT sockets an earlier run (of either mode) left on the server
/// never meet this run's translated tuples. (This kernel gives every connection its own TCP
/// timestamp offset, so the server's PAWS check refuses a SYN that a NAT maps onto a tuple in
/// TIME_WAIT from a different client port; each refusal costs the client a SYN retransmission.)
const OUTSIDE_CRR_PORT: u16 = 8000;
const IPERF_PORT: u16 = 5201;

struct Args {
    rounds: usize,
    seconds: u32,
    nodeports: usize,
    out: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 5,
        seconds: 3,
        nodeports: MANY,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                args.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N");
            }
            "--seconds" => {
                args.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S");
            }
            "--nodeports" => {
                args.nodeports = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (3..=9998).contains(n))
                    .expect("--nodeports N (3-9998)");
            }
            "--quick" => {
                args.rounds = 3;
                args.seconds = 2;
            }
            "--out" => args.out = it.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        args.rounds > 0 && args.seconds > 0,
        "--rounds and --seconds must be positive"
    );
    args
}

/// `netprobe serve tcp --listen LISTEN` in `ns`, pinned to CPU 1.
fn crr_server(ns: &dyn InNetns, listen: &str) -> ChildGuard {
    let bin = netprobe_bin();
    let mut srv = ns.spawn(&[
        "taskset",
        "-c",
        "1",
        bin.to_str().expect("utf8"),
        "serve",
        "tcp",
        "--listen",
        listen,
    ]);
    srv.wait_for_stdout("listening", Duration::from_secs(10));
    srv
}

/// The SYN retransmissions `ns`'s TCP has made (`TcpExt: TCPSynRetrans` in /proc/net/netstat).
fn syn_retransmits(ns: &dyn InNetns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/netstat"]);
    assert!(
        out.status.success(),
        "/proc/net/netstat: {}",
        describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        panic!("no TcpExt in /proc/net/netstat:\n{text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TCPSynRetrans in /proc/net/netstat")
}

/// A result: the measured value, failed connections and the client's SYN retransmissions.
struct Outcome {
    value: f64,
    failed: u64,
    syn_retransmits: u64,
}

impl Outcome {
    fn value(value: f64) -> Self {
        Self {
            value,
            failed: 0,
            syn_retransmits: 0,
        }
    }
}

/// Connections per second (netprobe crr, pinned to CPU 0) from `client` to `target` while
/// `server` runs `netprobe serve tcp --listen LISTEN`.
fn crr(
    client: &dyn InNetns,
    server: &dyn InNetns,
    listen: &str,
    target: &str,
    seconds: u32,
) -> Outcome {
    let _srv = crr_server(server, listen);
    let bin = netprobe_bin();
    let secs = seconds.to_string();
    let syn_before = syn_retransmits(client);
    let out = client.exec_timeout(
        &[
            "taskset",
            "-c",
            "0",
            bin.to_str().expect("utf8"),
            "crr",
            "tcp",
            target,
            "--seconds",
            &secs,
        ],
        Duration::from_secs(u64::from(seconds) + 20),
    );
    let syn = syn_retransmits(client) - syn_before;
    // A run with failed connections exits non-zero but still reports; count them instead.
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> &str {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in crr output: {}", describe(&out)))
    };
    let number = |key: &str| -> u64 {
        field(key)
            .parse()
            .unwrap_or_else(|_| panic!("bad {key} in crr output: {}", describe(&out)))
    };
    let (ok, failed) = (number("ok="), number("failed="));
    let rate: f64 = field("rate=").parse().expect("rate= is a number");
    assert!(
        ok > 0,
        "crr to {target}: no connection worked: {}",
        describe(&out)
    );
    if failed > 0 {
        eprintln!(
            "  crr to {target}: {failed} failed connection(s): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Outcome {
        value: rate,
        failed,
        syn_retransmits: syn,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Podnet,
    Iptables,
}

impl Mode {
    fn index(self) -> usize {
        match self {
            Self::Podnet => 0,
            Self::Iptables => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Podnet => "podnet",
            Self::Iptables => "iptables",
        }
    }
}

#[derive(Clone, Copy)]
enum Workload {
    NodePortCrr,
    NodePortTput,
    SnatCrr,
    SnatTput,
}

const WORKLOADS: [Workload; 4] = [
    Workload::NodePortCrr,
    Workload::NodePortTput,
    Workload::SnatCrr,
    Workload::SnatTput,
];

impl Workload {
    fn label(self) -> String {
        match self {
            Self::NodePortCrr => format!(
                "NodePort TCP connections/s (outside -> {NODE_IP}:{CRR_NODEPORT} -> pod:80)"
            ),
            Self::NodePortTput => format!(
                "NodePort TCP throughput Gbit/s (outside -> {NODE_IP}:{IPERF_NODEPORT} -> pod:{IPERF_PORT})"
            ),
            Self::SnatCrr => {
                format!("SNAT TCP connections/s (pod -> {OUTSIDE_IP}:{OUTSIDE_CRR_PORT}+run)")
            }
            Self::SnatTput => {
                format!("SNAT TCP throughput Gbit/s (pod -> {OUTSIDE_IP}:{IPERF_PORT})")
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::NodePortCrr => "NodePort connections/s",
            Self::NodePortTput => "NodePort throughput",
            Self::SnatCrr => "SNAT connections/s",
            Self::SnatTput => "SNAT throughput",
        }
    }

    fn is_rate(self) -> bool {
        matches!(self, Self::NodePortCrr | Self::SnatCrr)
    }

    /// The podnet counter this workload's client-to-server packets are counted under.
    fn counter(self) -> &'static str {
        match self {
            Self::NodePortCrr | Self::NodePortTput => "dnat",
            Self::SnatCrr | Self::SnatTput => "snat",
        }
    }
}

/// Counters podnet's programs bump for translated packets: none may move in iptables mode.
const NAT_COUNTERS: [&str; 4] = ["dnat", "dnat_reply", "snat", "snat_reply"];

/// A temporary file (iptables-restore input, a shell script), removed on drop (also on panic).
struct TempFile(PathBuf);

impl TempFile {
    fn new(kind: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.{kind}", unique("nat")));
        std::fs::write(&path, text).expect("write a temporary file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The seed documents' nat rules: MASQUERADE for the pod CIDR, and per NodePort (in order,
/// so the last one is the last rule of its chain) DNAT in PREROUTING and in OUTPUT.
fn rules_file(pod_cidr: &str, nodeports: &[(u16, String)]) -> TempFile {
    let mut text = String::from("*nat\n");
    for (port, backend) in nodeports {
        let _ = writeln!(
            text,
            "-A PREROUTING -p tcp --dport {port} -j DNAT --to-destination {backend}"
        );
    }
    for (port, backend) in nodeports {
        let _ = writeln!(
            text,
            "-A OUTPUT -d {NODE_IP} -p tcp --dport {port} -j DNAT --to-destination {backend}"
        );
    }
    let _ = writeln!(
        text,
        "-A POSTROUTING -s {pod_cidr} ! -d {CLUSTER_CIDR} -j MASQUERADE\nCOMMIT"
    );
    TempFile::new("iptables", &text)
}

/// Adds `nodeports` in order with one `podnet nodeport add` each, from a shell loop (so the
/// time is podnet's, not this harness's); returns the seconds it took.
fn add_nodeports(node: &Node, nodeports: &[(u16, String)]) -> f64 {
    let mut script = String::from("set -e\n");
    for (port, backend) in nodeports {
        let _ = writeln!(
            script,
            "\"$PODNET\" --state-dir \"$STATE\" nodeport add --port {port} --proto tcp --backend {backend} >/dev/null"
        );
    }
    let script = TempFile::new("sh", &script);
    let mut cmd = Command::new("sh");
    cmd.arg(&script.0)
        .env("PODNET", podnet_bin())
        .env("STATE", &node.state_dir);
    let start = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(1800));
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "nodeport add loop: {}",
        describe(&out)
    );
    secs
}

/// Packets counted by the nat rules of `chain` that have `token` in their listing.
fn iptables_packets(node: &Node, chain: &str, token: &str) -> u64 {
    node.topo
        .node
        .ok(&format!("iptables -t nat -L {chain} -v -n -x"))
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == token))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One node of the benchmark (one NodePort configuration): its pods, its iptables rules and
/// its switching between the two modes.
struct Bench {
    /// How many NodePorts this node has.
    nodeports: usize,
    srv: PodInfo,
    cli: PodInfo,
    node: Node,
    init: Vec<String>,
    mode: Mode,
    /// The iptables mode's rules (the same NodePorts as podnet's, in the same order).
    rules: TempFile,
    /// SNAT connection-rate runs so far (each gets its own server port).
    snat_runs: u16,
    /// Seconds each iptables-restore took.
    restore_secs: Vec<f64>,
    /// Seconds the `podnet nodeport add` loop took.
    add_secs: f64,
}

impl Bench {
    /// A node with pods `srv` and `cli` and `nodeports` NodePorts to `srv` (the measured ones
    /// last), in podnet mode.
    fn new(pod_cidr: &str, nodeports: usize) -> Self {
        let extra = ["--nodeport-range", NODEPORT_RANGE];
        let node = Node::with_args(pod_cidr, &extra);
        let srv = node.add_pod("srv");
        let cli = node.add_pod("cli");
        let mut init = node.init_args();
        init.extend(extra.iter().map(|s| (*s).to_owned()));
        let filler_backend = format!("{}:80", srv.ip);
        let measured = [
            (IPERF_NODEPORT, format!("{}:{IPERF_PORT}", srv.ip)),
            (CRR_NODEPORT, filler_backend.clone()),
        ];
        let all: Vec<(u16, String)> = (30000u16..=39999)
            .filter(|p| measured.iter().all(|(m, _)| m != p))
            .take(nodeports - measured.len())
            .map(|p| (p, filler_backend.clone()))
            .chain(measured.iter().cloned())
            .collect();
        eprintln!(
            "node {}: adding {} NodePorts with `podnet nodeport add`",
            node.topo.node.name(),
            all.len()
        );
        let add_secs = add_nodeports(&node, &all);
        let listed = node.json(&["nodeport", "list"]);
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(nodeports),
            "nodeport list has every NodePort"
        );
        let rules = rules_file(pod_cidr, &all);
        Self {
            nodeports,
            srv,
            cli,
            node,
            init,
            mode: Mode::Podnet,
            rules,
            snat_runs: 0,
            restore_secs: Vec::new(),
            add_secs,
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        if mode == self.mode {
            return;
        }
        let ns = &self.node.topo.node;
        match mode {
            Mode::Iptables => {
                for pod in [&self.srv, &self.cli] {
                    ns.ok(&format!("tc filter del dev {} ingress", pod.host_if));
                }
                ns.ok(&format!("tc filter del dev {UPLINK} ingress"));
                let start = Instant::now();
                ns.ok(&format!(
                    "iptables-restore --noflush < {}",
                    self.rules.0.display()
                ));
                self.restore_secs.push(start.elapsed().as_secs_f64());
            }
            Mode::Podnet => {
                ns.ok("iptables -t nat -F");
                let init: Vec<&str> = self.init.iter().map(String::as_str).collect();
                self.node.ok(&init); // re-attaches the programs to the pods and the uplink
            }
        }
        self.mode = mode;
    }

    /// Runs `w` once in the current mode.
    fn run(&mut self, w: Workload, seconds: u32) -> Outcome {
        let outside = &self.node.topo.outside;
        let node_ip = NODE_IP.to_string();
        let outside_ip = OUTSIDE_IP.to_string();
        match w {
            Workload::NodePortCrr => crr(
                outside,
                &self.srv.ns,
                "0.0.0.0:80",
                &format!("{NODE_IP}:{CRR_NODEPORT}"),
                seconds,
            ),
            Workload::NodePortTput => Outcome::value(iperf3_gbps(
                outside,
                &self.srv.ns,
                &self.srv.ip,
                &node_ip,
                IPERF_NODEPORT,
                seconds,
            )),
            Workload::SnatCrr => {
                let port = OUTSIDE_CRR_PORT + self.snat_runs % 20_000;
                self.snat_runs = self.snat_runs.wrapping_add(1);
                let listen = format!("{OUTSIDE_IP}:{port}");
                crr(&self.cli.ns, outside, &listen, &listen, seconds)
            }
            Workload::SnatTput => Outcome::value(iperf3_gbps(
                &self.cli.ns,
                outside,
                &outside_ip,
                &outside_ip,
                IPERF_PORT,
                seconds,
            )),
        }
    }

    /// Runs every workload once in `mode`, checking the path each run took, into `res`.
    fn round(&mut self, mode: Mode, seconds: u32, res: &mut Results) {
        self.set_mode(mode);
        for (wi, w) in WORKLOADS.into_iter().enumerate() {
            let before = self.node.stats();
            let outcome = self.run(w, seconds);
            let after = self.node.stats();
            match mode {
                Mode::Podnet => {
                    assert!(
                        delta(&after, &before, w.counter()) > 1000,
                        "podnet run of {} was not translated by podnet ({} did not move)",
                        w.short(),
                        w.counter()
                    );
                    for k in after.keys().filter(|k| k.starts_with("drop_")) {
                        *res.drops.entry(k.clone()).or_default() += delta(&after, &before, k);
                    }
                    if w.is_rate() {
                        // Collect the closed flows now rather than whenever the node's
                        // collector next runs, so every run starts from the same table.
                        self.node.ok(&["conntrack", "gc"]);
                    }
                }
                Mode::Iptables => {
                    for c in NAT_COUNTERS {
                        assert_eq!(
                            delta(&after, &before, c),
                            0,
                            "iptables run of {} went through podnet ({c} moved)",
                            w.short()
                        );
                    }
                }
            }
            let mut note = String::new();
            if outcome.failed > 0 {
                let _ = write!(note, " ({} failed)", outcome.failed);
            }
            if outcome.syn_retransmits > 0 {
                let _ = write!(note, " ({} SYN retransmits)", outcome.syn_retransmits);
            }
            eprintln!(
                "  {:>5} NodePorts {:<8} {:<24} {:.2}{note}",
                self.nodeports,
                mode.name(),
                w.short(),
                outcome.value
            );
            let mi = mode.index();
            res.samples[wi][mi].push(outcome.value);
            res.failed[wi][mi] += outcome.failed;
            res.syn_retransmits[wi][mi] += outcome.syn_retransmits;
        }
        if mode == Mode::Iptables {
            for (chain, token) in [
                ("PREROUTING", format!("dpt:{CRR_NODEPORT}")),
                ("PREROUTING", format!("dpt:{IPERF_NODEPORT}")),
                ("POSTROUTING", "MASQUERADE".to_owned()),
            ] {
                let n = iptables_packets(&self.node, chain, &token);
                assert!(
                    n > 0,
                    "iptables mode: the {chain} rule with {token} counted no packets"
                );
            }
        }
    }
}

/// One node's results: `[workload][mode]`, and podnet's drop counters over its podnet runs.
#[derive(Default)]
struct Results {
    samples: [[Vec<f64>; 2]; 4],
    failed: [[u64; 2]; 4],
    syn_retransmits: [[u64; 2]; 4],
    drops: BTreeMap<String, u64>,
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

fn fmt_value(w: Workload, v: f64) -> String {
    if w.is_rate() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn main() {
    let args = parse_args();
    assert!(podnet_tests::require_root(), "the benchmark needs root");

    // Two identical nodes, one per NodePort configuration, so that both configurations (and
    // both modes of each) are measured in every round.
    let mut benches = [
        Bench::new("10.244.97.0/24", 2),
        Bench::new("10.244.98.0/24", args.nodeports),
    ];
    let iptables_version = benches[0]
        .node
        .topo
        .node
        .ok("iptables --version")
        .trim()
        .to_owned();
    let mut results: [Results; 2] = Default::default();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        // Alternate which node and which mode go first.
        let (nodes, modes) = if round % 2 == 0 {
            ([0, 1], [Mode::Podnet, Mode::Iptables])
        } else {
            ([1, 0], [Mode::Iptables, Mode::Podnet])
        };
        for b in nodes {
            for mode in modes {
                benches[b].round(mode, args.seconds, &mut results[b]);
            }
        }
    }
    for bench in &mut benches {
        bench.set_mode(Mode::Podnet);
    }

    // Report.
    let (few, many) = (&results[0], &results[1]);
    let (few_n, many_n) = (benches[0].nodeports, benches[1].nodeports);
    let kernel = cmd_line("uname", &["-r"]);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## NAT: podnet vs iptables (kernel {kernel}, {cpus} CPUs, {} rounds x {} s, client on CPU 0, server on CPU 1)\n",
        args.rounds, args.seconds
    );
    let _ = writeln!(
        md,
        "Two identical podnet nodes (`node init --nodeport-range {NODEPORT_RANGE}`, other \
         settings default, so SNAT ports 1024-29999), one with the {few_n} measured NodePorts and one \
         with {many_n} (the measured ones added last), each with an outside namespace and pods \
         `srv` (backend) and `cli` (SNAT client); every round measures both nodes in both modes. \
         `iptables`: the same node with podnet's TC programs detached from the pods and \
         {UPLINK}, and the seed documents' rules loaded with iptables-restore \
         ({iptables_version}): MASQUERADE for the pod CIDR leaving {CLUSTER_CIDR}, one DNAT rule \
         per NodePort in PREROUTING and in OUTPUT, the measured NodePorts last (MASQUERADE keeps \
         the client's source port when free; podnet maps it into its SNAT range). `podnet conntrack gc` runs after each podnet connection-rate \
         run (outside the measurement; the collector `node init` starts runs too), and each SNAT \
         connection-rate run uses a fresh server port.\n"
    );
    let _ = writeln!(
        md,
        "| workload | NodePorts | podnet median (min-max) | iptables median (min-max) | podnet/iptables |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (wi, w) in WORKLOADS.into_iter().enumerate() {
        for (count, res) in [(few_n, few), (many_n, many)] {
            let cell = |mi: usize| {
                let s = &res.samples[wi][mi];
                let (lo, hi) = spread(s);
                let mut cell = format!(
                    "{} ({}-{})",
                    fmt_value(w, median(s)),
                    fmt_value(w, lo),
                    fmt_value(w, hi)
                );
                if res.failed[wi][mi] > 0 {
                    let _ = write!(cell, ", {} failed", res.failed[wi][mi]);
                }
                if res.syn_retransmits[wi][mi] > 0 {
                    let _ = write!(cell, ", {} SYN retransmits", res.syn_retransmits[wi][mi]);
                }
                cell
            };
            let _ = writeln!(
                md,
                "| {} | {count} | {} | {} | {:.3} |",
                w.label(),
                cell(0),
                cell(1),
                median(&res.samples[wi][0]) / median(&res.samples[wi][1])
            );
        }
    }
    let _ = writeln!(
        md,
        "\nChange from {few_n} to {many_n} NodePorts (median at {many_n} / median at {few_n}; \
         1.000 = flat):\n"
    );
    let _ = writeln!(md, "| workload | podnet | iptables |");
    let _ = writeln!(md, "|---|---|---|");
    for (wi, w) in WORKLOADS.into_iter().enumerate() {
        let ratio = |mi: usize| median(&many.samples[wi][mi]) / median(&few.samples[wi][mi]);
        let _ = writeln!(md, "| {} | {:.3} | {:.3} |", w.short(), ratio(0), ratio(1));
    }
    let add_secs = benches[1].add_secs;
    let _ = writeln!(
        md,
        "\nSetup: {many_n} `podnet nodeport add` calls in a shell loop took {add_secs:.1} s \
         ({:.1} ms each); iptables-restore took {:.2} s for {} rules and {:.2} s for {} rules \
         (median).",
        add_secs * 1000.0 / many_n as f64,
        median(&benches[0].restore_secs),
        2 * few_n + 1,
        median(&benches[1].restore_secs),
        2 * many_n + 1,
    );
    for (count, res) in [(few_n, few), (many_n, many)] {
        let nonzero: Vec<String> = res
            .drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            md,
            "podnet drop counters during podnet runs ({count} NodePorts): {}.",
            if nonzero.is_empty() {
                "none".to_owned()
            } else {
                nonzero.join(", ")
            }
        );
    }
    print!("{md}");
    if let Some(dir) = args.out {
        std::fs::create_dir_all(&dir).expect("results dir");
        let date = cmd_line("date", &["+%F"]);
        let date = if date.is_empty() || date == "?" {
            "undated".to_owned()
        } else {
            date
        };
        let path = format!("{dir}/{date}-nat.md");
        std::fs::write(&path, &md).expect("write results");
        eprintln!("wrote {path}");
    }
}
