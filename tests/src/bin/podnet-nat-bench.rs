//! NAT benchmark: podnet's eBPF NAT against the seed documents' iptables rules, measured in one
//! run, interleaved round by round (which mode goes first alternates):
//!
//! - `podnet`: NodePorts (`podnet nodeport apply`) and automatic SNAT in the TC programs;
//! - `iptables`: the same node with podnet's TC programs detached (pods and uplink) and the
//!   seed documents' rules in the node's namespace: `MASQUERADE` for the pod CIDR leaving the
//!   cluster CIDR, and per NodePort one `DNAT` rule in `PREROUTING` and one in `OUTPUT`.
//!
//! Two parts, each on its own identical nodes (node namespace, outside namespace, pods `srv`
//! and `cli`):
//!
//! - **NAT paths**: TCP throughput, request/response and connection rate, with CPU cost,
//!   through a NodePort (outside -> node IP -> pod) and through SNAT (pod -> outside), on a
//!   node with just the three measured NodePorts;
//! - **service scaling**: NodePort connection rate and connection latency on nodes with 1,
//!   100, 1,000, 5,000 and 10,000 NodePorts installed (the measured one last, the worst case
//!   for iptables' linear chain).
//!
//! Every run checks that its traffic took the intended path: podnet's `dnat`/`snat` counters
//! move in podnet mode and stay still in iptables mode, where the iptables rules count the
//! packets instead. Client on CPU 0, server on CPU 1. Writes `DIR/nat.json` and
//! `DIR/scaling.json` for the report with `--out DIR`.
//!
//! Arguments: `--rounds N` (5), `--seconds S` (2), `--quick` (2 rounds x 1 s), `--out DIR`,
//! `--perf FILE` (profile NodePort throughput in both modes with perf, as Markdown).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use podnet_tests::bench::{
    RoundArgs,
    measure::{Endpoints, Measurement, Workload, measure},
    median, profile,
    series::{BenchOutput, PathRuns},
};
use podnet_tests::{
    InNetns, NODE_IP, Node, OUTSIDE_IP, PodInfo, UPLINK,
    bpf_stats::{self, Costs},
    unique,
};

/// NodePorts must hold 10,000 ports.
const NODEPORT_RANGE: &str = "30000-40999";
const NODEPORT_FIRST: u16 = 30000;
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The services installed on the scaling nodes.
const SCALES: [usize; 5] = [1, 100, 1_000, 5_000, 10_000];
/// The NodePort for workload `w` (-> backend port `w.port()`).
fn nodeport_of(w: Workload) -> u16 {
    match w {
        Workload::Throughput => 40201,
        Workload::RequestResponse => 40100,
        Workload::ConnectionRate => 40200,
    }
}
/// SNAT connection-rate runs go to an outside server on this port plus the run's number: a
/// fresh port per run, so TIME_WAIT sockets an earlier run (of either mode) left on the server
/// never meet this run's translated tuples. (This kernel gives every connection its own TCP
/// timestamp offset, so the server's PAWS check refuses a SYN that a NAT maps onto a tuple in
/// TIME_WAIT from a different client port; each refusal costs the client a SYN retransmission.)
const OUTSIDE_CRR_PORT: u16 = 8000;
/// The churn-to-one-destination runs (SYN retransmits with the server's TIME_WAIT): one
/// server port per mode, so neither meets the other's TIME_WAIT.
const OUTSIDE_CHURN_PORT: [u16; 2] = [7800, 7801];
/// Length of each churn-to-one-destination run: long enough for the pod's ephemeral ports
/// (28,232) to come round at ~3,000 connections per second, well inside the server's 60 s
/// TIME_WAIT.
const CHURN_SECONDS: u32 = 30;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Podnet,
    Iptables,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Podnet => "podnet",
            Self::Iptables => "iptables",
        }
    }

    /// Index in the paths of a result table: iptables is the baseline.
    fn index(self) -> usize {
        match self {
            Self::Iptables => 0,
            Self::Podnet => 1,
        }
    }
}

const PATHS: [&str; 2] = ["iptables", "podnet"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    NodePort,
    Snat,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::NodePort => "outside to pod via NodePort",
            Self::Snat => "pod to outside (SNAT)",
        }
    }

    /// The podnet counter this scenario's client-to-server packets are counted under.
    fn counter(self) -> &'static str {
        match self {
            Self::NodePort => "dnat",
            Self::Snat => "snat",
        }
    }
}

/// Counters podnet's programs bump for translated packets: none may move in iptables mode.
const NAT_COUNTERS: [&str; 4] = ["dnat", "dnat_reply", "snat", "snat_reply"];

/// A temporary file (iptables-restore input, a NodePort file), removed on drop (also on panic).
struct TempFile(PathBuf);

impl TempFile {
    fn new(kind: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.{kind}", unique("nat")));
        std::fs::write(&path, text).expect("write a temporary file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
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
    use std::fmt::Write as _;

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

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// One node of the benchmark: its pods, its NodePorts (the same in both modes), its iptables
/// rules and its switching between the two modes.
struct Bench {
    nodeports: usize,
    srv: PodInfo,
    cli: PodInfo,
    node: Node,
    init: Vec<String>,
    mode: Mode,
    rules: TempFile,
    /// SNAT connection-rate runs so far (each gets its own server port).
    snat_runs: u16,
    /// Seconds each iptables-restore took.
    restore_secs: Vec<f64>,
    /// Seconds `podnet nodeport apply` took for all the NodePorts.
    apply_secs: f64,
    /// podnet's drop counters over this node's podnet runs.
    drops: BTreeMap<String, u64>,
    /// What podnet's programs cost per packet over this node's podnet runs.
    costs: Costs,
}

impl Bench {
    /// A node with pods `srv` and `cli` and `total` NodePorts to `srv`: fillers first, then the
    /// `measured` workloads' NodePorts; in podnet mode.
    fn new(pod_cidr: &str, total: usize, measured: &[Workload]) -> Self {
        let extra = ["--nodeport-range", NODEPORT_RANGE];
        let node = Node::with_args(pod_cidr, &extra);
        let srv = node.add_pod("srv");
        let cli = node.add_pod("cli");
        let mut init = node.init_args();
        init.extend(extra.iter().map(|s| (*s).to_owned()));
        let measured: Vec<(u16, String)> = measured
            .iter()
            .map(|w| (nodeport_of(*w), format!("{}:{}", srv.ip, w.port())))
            .collect();
        assert!(total >= measured.len(), "room for the measured NodePorts");
        let filler = format!("{}:{}", srv.ip, Workload::ConnectionRate.port());
        let all: Vec<(u16, String)> = (NODEPORT_FIRST..)
            .filter(|p| measured.iter().all(|(m, _)| m != p))
            .take(total - measured.len())
            .map(|p| (p, filler.clone()))
            .chain(measured.iter().cloned())
            .collect();
        let specs: Vec<serde_json::Value> = all
            .iter()
            .map(|(port, backend)| serde_json::json!({"port": port, "backends": [backend]}))
            .collect();
        let file = TempFile::new("json", &serde_json::Value::from(specs).to_string());
        let start = Instant::now();
        node.ok(&["nodeport", "apply", "-f", file.path()]);
        let apply_secs = start.elapsed().as_secs_f64();
        let listed = node.json(&["nodeport", "list"]);
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(total),
            "nodeport list has every NodePort"
        );
        let rules = rules_file(pod_cidr, &all);
        Self {
            nodeports: total,
            srv,
            cli,
            node,
            init,
            mode: Mode::Podnet,
            rules,
            snat_runs: 0,
            restore_secs: Vec::new(),
            apply_secs,
            drops: BTreeMap::new(),
            costs: Costs::new(),
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
                    self.rules.path()
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

    /// Outside -> NodePort -> `srv` for `w`.
    fn nodeport_endpoints(&self, w: Workload) -> Endpoints<'_> {
        Endpoints {
            client: &self.node.topo.outside,
            server: &self.srv.ns,
            listen: format!("{}:{}", self.srv.ip, w.port()),
            connect: format!("{NODE_IP}:{}", nodeport_of(w)),
        }
    }

    /// Runs `w` through `scenario` once in the current mode, checking the path it took.
    fn run(&mut self, scenario: Scenario, w: Workload, seconds: u32) -> Measurement {
        let outside = &self.node.topo.outside;
        let ep = match scenario {
            Scenario::NodePort => self.nodeport_endpoints(w),
            Scenario::Snat => {
                let port = if w == Workload::ConnectionRate {
                    self.snat_runs = self.snat_runs.wrapping_add(1);
                    OUTSIDE_CRR_PORT + self.snat_runs % 20_000
                } else {
                    w.port()
                };
                let at = format!("{OUTSIDE_IP}:{port}");
                Endpoints {
                    client: &self.cli.ns,
                    server: outside,
                    listen: at.clone(),
                    connect: at,
                }
            }
        };
        let before = self.node.stats();
        let podnet = self.mode == Mode::Podnet;
        // `bpf_stats` on during podnet's runs only.
        let progs_before = podnet.then(|| bpf_stats::snapshot(&self.node.pin_dir));
        let m = {
            let _stats = podnet.then(bpf_stats::Enabled::new);
            measure(w, &ep, seconds)
        };
        if let Some(progs_before) = progs_before {
            let label = format!("{} {}", scenario.name(), w.metric());
            let progs_after = bpf_stats::snapshot(&self.node.pin_dir);
            self.costs.add(&label, &progs_before, &progs_after);
        }
        let after = self.node.stats();
        match self.mode {
            Mode::Podnet => {
                assert!(
                    delta(&after, &before, scenario.counter()) > 100,
                    "podnet run of {} {} was not translated by podnet ({} did not move)",
                    scenario.name(),
                    w.metric(),
                    scenario.counter()
                );
                for k in after.keys().filter(|k| k.starts_with("drop_")) {
                    *self.drops.entry(k.clone()).or_default() += delta(&after, &before, k);
                }
                if w == Workload::ConnectionRate {
                    // Collect the closed flows now rather than whenever the node's collector
                    // next runs, so every run starts from the same table.
                    self.node.ok(&["conntrack", "gc"]);
                }
            }
            Mode::Iptables => {
                for c in NAT_COUNTERS {
                    assert_eq!(
                        delta(&after, &before, c),
                        0,
                        "iptables run of {} {} went through podnet ({c} moved)",
                        scenario.name(),
                        w.metric()
                    );
                }
            }
        }
        let mut note = String::new();
        if m.failed > 0 {
            note = format!(" ({} failed)", m.failed);
        }
        eprintln!(
            "  {:>5} NodePorts {:<8} {:<28} {:<22} {:.2}{note}",
            self.nodeports,
            self.mode.name(),
            scenario.name(),
            w.metric(),
            m.value
        );
        m
    }

    /// One pod connecting to one outside server as fast as it can for `seconds` (the server
    /// closes first and keeps every tuple in TIME_WAIT): the connection rate and the SYNs the
    /// pod had to retransmit, i.e. SYNs the server dropped (PAWS) because the NAT mapped a new
    /// connection onto a tuple it still held.
    fn churn_one_destination(&mut self, seconds: u32) -> (Measurement, u64) {
        let at = format!("{OUTSIDE_IP}:{}", OUTSIDE_CHURN_PORT[self.mode.index()]);
        let ep = Endpoints {
            client: &self.cli.ns,
            server: &self.node.topo.outside,
            listen: at.clone(),
            connect: at,
        };
        let before = podnet_tests::syn_retransmits(&self.cli.ns);
        let m = measure(Workload::ConnectionRate, &ep, seconds);
        let retransmits = podnet_tests::syn_retransmits(&self.cli.ns) - before;
        eprintln!(
            "  {:<8} churn to one destination: {:.0} conn/s, {retransmits} SYN retransmits",
            self.mode.name(),
            m.value
        );
        (m, retransmits)
    }

    /// Checks that the iptables rules this node's runs relied on counted packets.
    fn check_iptables_counted(&self, tokens: &[(&str, String)]) {
        for (chain, token) in tokens {
            let n = iptables_packets(&self.node, chain, token);
            assert!(
                n > 0,
                "iptables mode: the {chain} rule with {token} counted no packets"
            );
        }
    }

    fn drop_note(&self) -> String {
        let nonzero: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "podnet drop counters during podnet runs ({} NodePorts): {}.",
            self.nodeports,
            if nonzero.is_empty() {
                "none".to_owned()
            } else {
                nonzero.join(", ")
            }
        )
    }
}

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");

    let mut paths = Bench::new("10.244.97.0/24", 3, &Workload::ALL);
    let mut scaling: Vec<Bench> = SCALES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            eprintln!("scaling node {}: {n} NodePorts", i + 1);
            Bench::new(
                &format!("10.244.{}.0/24", 90 + i),
                *n,
                &[Workload::ConnectionRate],
            )
        })
        .collect();
    let iptables_version = paths
        .node
        .topo
        .node
        .ok("iptables --version")
        .trim()
        .to_owned();

    let mut nodeport = PathRuns::new(&PATHS);
    let mut snat = PathRuns::new(&PATHS);
    // `[scale][mode]`.
    let mut scaled: Vec<[Vec<Measurement>; 2]> =
        SCALES.iter().map(|_| Default::default()).collect();
    for round in 0..args.rounds {
        eprintln!("NAT round {}/{}", round + 1, args.rounds);
        let modes = if round % 2 == 0 {
            [Mode::Podnet, Mode::Iptables]
        } else {
            [Mode::Iptables, Mode::Podnet]
        };
        for mode in modes {
            paths.set_mode(mode);
            for w in Workload::ALL {
                let m = paths.run(Scenario::NodePort, w, args.seconds);
                nodeport.push(mode.index(), w, m);
                let m = paths.run(Scenario::Snat, w, args.seconds);
                snat.push(mode.index(), w, m);
            }
            if mode == Mode::Iptables {
                paths.check_iptables_counted(&[
                    (
                        "PREROUTING",
                        format!("dpt:{}", nodeport_of(Workload::Throughput)),
                    ),
                    (
                        "PREROUTING",
                        format!("dpt:{}", nodeport_of(Workload::ConnectionRate)),
                    ),
                    ("POSTROUTING", "MASQUERADE".to_owned()),
                ]);
            }
            for (i, bench) in scaling.iter_mut().enumerate() {
                bench.set_mode(mode);
                let m = bench.run(Scenario::NodePort, Workload::ConnectionRate, args.seconds);
                scaled[i][mode.index()].push(m);
                if mode == Mode::Iptables {
                    bench.check_iptables_counted(&[(
                        "PREROUTING",
                        format!("dpt:{}", nodeport_of(Workload::ConnectionRate)),
                    )]);
                }
            }
        }
    }
    if let Some(file) = &args.perf {
        let w = Workload::Throughput;
        let mut take = |mode: Mode| {
            paths.set_mode(mode);
            profile::profile(mode.name(), w, &paths.nodeport_endpoints(w), args.seconds)
        };
        let profiles = if profile::available() {
            take(Mode::Iptables).zip(take(Mode::Podnet))
        } else {
            None
        };
        let md = profiles.map_or_else(
            || {
                "## Where the time goes: NodePort\n\n`perf record` is not available here.\n"
                    .to_owned()
            },
            |(iptables, podnet)| {
                profile::markdown(
                    "Where the time goes: NodePort TCP throughput under perf",
                    profile::INTRO,
                    &iptables,
                    &podnet,
                )
            },
        );
        std::fs::write(file, md).expect("write the perf profile");
    }
    let churn = [Mode::Iptables, Mode::Podnet].map(|mode| {
        paths.set_mode(mode);
        paths.churn_one_destination(CHURN_SECONDS)
    });
    for bench in std::iter::once(&mut paths).chain(scaling.iter_mut()) {
        bench.set_mode(Mode::Podnet);
    }

    let method = format!(
        "`podnet`: NodePorts installed with one `podnet nodeport apply`, SNAT by the TC \
         programs (`node init --nodeport-range {NODEPORT_RANGE}`, SNAT ports 1024-29999). \
         `iptables`: the same node with podnet's TC programs detached from the pods and \
         {UPLINK}, and the seed documents' rules loaded with iptables-restore \
         ({iptables_version}): MASQUERADE for the pod CIDR leaving {CLUSTER_CIDR}, one DNAT rule \
         per NodePort in PREROUTING and in OUTPUT. Each node has an outside namespace and pods \
         `srv` (backend) and `cli` (SNAT client). `podnet conntrack gc` runs after each podnet \
         connection-rate run (outside the measurement), and each SNAT connection-rate run uses \
         a fresh server port (see PAWS in the source). The reference CNI chain's `portmap` \
         plugin programs the same kind of iptables DNAT rules (one chain per container), so \
         `iptables` stands for it on the data path."
    );
    let mut out = BenchOutput::new("nat", "NAT: NodePort and SNAT, podnet vs iptables", &method);
    nodeport.into_output(&mut out, Scenario::NodePort.name());
    snat.into_output(&mut out, Scenario::Snat.name());
    out.notes.push(paths.drop_note());
    let [(ipt, ipt_retransmits), (pn, pn_retransmits)] = &churn;
    out.notes.push(format!(
        "Reused tuples and the server's TIME_WAIT: one pod connecting to one outside server \
         port for {CHURN_SECONDS} s (the server closes first): iptables {:.0} conn/s with \
         {ipt_retransmits} SYN retransmits, podnet {:.0} conn/s ({:.3}x) with {pn_retransmits} \
         SYN retransmits.",
        ipt.value,
        pn.value,
        pn.value / ipt.value
    ));
    out.blocks.push(format!(
        "### What podnet's programs cost per packet\n\n`kernel.bpf_stats_enabled` on during \
         the podnet runs only: `run_time_ns / run_cnt` of each of the node's programs over all \
         rounds of a scenario and workload (NodePort: `from_uplink` on the client's packets, \
         `from_pod` on the backend's replies; SNAT: `from_pod` on the client's packets, \
         `from_uplink` on the replies).\n\n{}",
        paths.costs.markdown()
    ));
    if let Some(dir) = &args.out {
        out.write(Path::new(dir));
    }

    let mut out = BenchOutput::new(
        "scaling",
        "Service scaling: NodePort connection rate with 1 to 10,000 services",
        &format!(
            "One node per size, each with that many NodePorts installed (the measured one \
             last: the worst case for iptables' linear PREROUTING chain, which holds one DNAT \
             rule per NodePort). Outside -> node IP -> pod, one connection at a time \
             (connect, request, reply, close). {method}"
        ),
    );
    for (i, bench) in scaling.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "service counts are small")]
        let x = Some(SCALES[i] as f64);
        for mode in [Mode::Iptables, Mode::Podnet] {
            out.runs(
                "NodePort service scaling",
                mode.name(),
                "iptables",
                x,
                Workload::ConnectionRate,
                &scaled[i][mode.index()],
            );
        }
        out.notes.push(format!(
            "{} NodePorts: `podnet nodeport apply` took {:.2} s; iptables-restore of {} rules \
             took {:.2} s (median). {}",
            bench.nodeports,
            bench.apply_secs,
            2 * bench.nodeports + 1,
            median(&bench.restore_secs),
            bench.drop_note()
        ));
    }
    if let Some(dir) = &args.out {
        out.write(Path::new(dir));
    }
}
