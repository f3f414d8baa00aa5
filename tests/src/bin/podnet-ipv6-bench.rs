//! IPv6 benchmark: the same paths over IPv6 and over IPv4, podnet against the kernel doing the
//! seed documents' rules, measured in one run on one dual-stack node, interleaved round by round
//! (which mode goes first alternates):
//!
//! - **same-node pod-to-pod**: podnet's `bpf_redirect_peer` against the node's Linux bridge
//!   (podnet's programs detached);
//! - **pod to outside (SNAT)**: podnet's masquerade against `MASQUERADE` for the pod CIDR
//!   leaving the cluster CIDR, `iptables` for IPv4 and `ip6tables` for IPv6;
//! - **outside to pod via NodePort**: a NodePort Service per family (`podnet service apply`)
//!   against one `DNAT` rule in `PREROUTING` per family.
//!
//! A path podnet does not carry over a family yet (its counter is not in `podnet stats`, or
//! podnet refuses the NodePort) is left out with a note rather than measured through the
//! kernel under podnet's name. Every podnet run must move the path's counter and every kernel
//! run must leave podnet's counters alone. Client on CPU 0, server on CPU 1. Writes
//! `DIR/ipv6.json` for the report with `--out DIR`.
//!
//! Arguments: `--rounds N` (5), `--seconds S` (2), `--quick` (2 rounds x 1 s), `--out DIR`.

use std::{collections::BTreeMap, path::PathBuf};

use podnet_tests::bench::{
    RoundArgs,
    measure::{Endpoints, Measurement, Workload, measure},
    series::BenchOutput,
};
use podnet_tests::{InNetns, NODE_IP, Node, OUTSIDE_IP, PodInfo, UPLINK, dual_stack, unique};

const POD_CIDR: &str = "10.244.97.0/24";
/// The IPv4 cluster CIDR of every test node ([`Node::init_args`]).
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const POD_CIDR6: &str = "fd00:10:244:97::/64";
const CLUSTER_CIDR6: &str = "fd00:10:244::/48";
const NODE_IP6: &str = "fd00:198:18::10";
const OUTSIDE_IP6: &str = "fd00:198:18::1";
const NODEPORT_RANGE: &str = "30000-32767";
/// SNAT connection-rate runs go to a fresh outside port per run (from this one), so that no
/// run meets the server's TIME_WAIT sockets of an earlier one (see podnet-nat-bench).
const OUTSIDE_CRR_PORT: u16 = 8000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const ALL: [Self; 2] = [Self::V4, Self::V6];

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    /// The ClusterIP of the family's NodePort Service.
    fn cluster_ip(self) -> &'static str {
        match self {
            Self::V4 => "10.96.0.50",
            Self::V6 => "fd00:10:96::50",
        }
    }

    /// `IP:PORT` in this family's notation.
    fn at(self, ip: &str, port: u16) -> String {
        match self {
            Self::V4 => format!("{ip}:{port}"),
            Self::V6 => format!("[{ip}]:{port}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Podnet,
    Kernel,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    SameNode,
    Snat,
    NodePort,
}

impl Scenario {
    const ALL: [Self; 3] = [Self::SameNode, Self::Snat, Self::NodePort];

    fn name(self) -> &'static str {
        match self {
            Self::SameNode => "same-node pod-to-pod",
            Self::Snat => "pod to outside (SNAT)",
            Self::NodePort => "outside to pod via NodePort",
        }
    }

    /// What the kernel path is.
    fn kernel(self, family: Family) -> &'static str {
        match (self, family) {
            (Self::SameNode, _) => "bridge",
            (Self::Snat | Self::NodePort, Family::V4) => "iptables",
            (Self::Snat | Self::NodePort, Family::V6) => "ip6tables",
        }
    }

    /// The podnet counter the client's packets of this path move.
    fn counter(self, family: Family) -> &'static str {
        match (self, family) {
            (Self::SameNode, Family::V4) => "forward_local_peer",
            (Self::SameNode, Family::V6) => "forward_local6",
            (Self::Snat, Family::V4) => "snat",
            (Self::Snat, Family::V6) => "snat6",
            (Self::NodePort, Family::V4) => "dnat",
            (Self::NodePort, Family::V6) => "dnat6",
        }
    }
}

/// The NodePort of workload `w` (to the server pod's port `w.port()`), per family.
fn nodeport_of(w: Workload, family: Family) -> u16 {
    let base = match w {
        Workload::Throughput => 30201,
        Workload::RequestResponse => 30100,
        Workload::ConnectionRate => 30200,
    };
    match family {
        Family::V4 => base,
        Family::V6 => base + 1000,
    }
}

/// A file removed on drop (also on panic).
struct TempFile(PathBuf);

impl TempFile {
    fn new(kind: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.{kind}", unique("v6b")));
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

/// A dual-stack pod: its IPv4 and IPv6 addresses.
struct Pod {
    info: PodInfo,
    ip6: String,
}

impl Pod {
    fn ip(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.info.ip,
            Family::V6 => &self.ip6,
        }
    }
}

/// The dual-stack node, its pods and outside, and the switch between podnet and the kernel.
struct Bench {
    node: Node,
    init: Vec<String>,
    srv: Pod,
    cli: Pod,
    mode: Mode,
    /// The seed documents' rules per family (`iptables-restore` / `ip6tables-restore` input).
    rules: [TempFile; 2],
    /// Which (scenario, family) podnet carries: the others are noted, not measured.
    carried: BTreeMap<(usize, usize), bool>,
    notes: Vec<String>,
    snat_runs: u16,
    /// Runs per (scenario, family, mode, workload).
    runs: BTreeMap<(usize, usize, usize, usize), Vec<Measurement>>,
}

fn add_pod(node: &Node, name: &str) -> Pod {
    let info = node.add_pod(name);
    let ip6 = dual_stack::address6_of(node, name).to_string();
    Pod { info, ip6 }
}

impl Bench {
    fn new() -> Self {
        let extra = [
            "--pod-cidr",
            POD_CIDR6,
            "--cluster-cidr",
            CLUSTER_CIDR6,
            "--node-ip6",
            NODE_IP6,
            "--nodeport-range",
            NODEPORT_RANGE,
            "--service-cidr",
            "10.96.0.0/12",
            "--service-cidr",
            "fd00:10:96::/112",
        ];
        let node = Node::with_args(POD_CIDR, &extra);
        let topo = &node.topo;
        topo.node
            .ok(&format!("ip -6 addr add {NODE_IP6}/64 dev {UPLINK} nodad"));
        topo.outside.ok(&format!(
            "ip -6 addr add {OUTSIDE_IP6}/64 dev {} nodad",
            topo.outside_if
        ));
        // As a router of the fabric would, should podnet not masquerade IPv6.
        topo.outside
            .ok(&format!("ip -6 route add {POD_CIDR6} via {NODE_IP6}"));
        let mut init = node.init_args();
        init.extend(extra.iter().map(|s| (*s).to_owned()));
        let srv = add_pod(&node, "srv");
        let cli = add_pod(&node, "cli");
        let mut notes = Vec::new();
        let mut carried = BTreeMap::new();
        // NodePorts: a NodePort Service per family (`service apply`).
        let services: Vec<serde_json::Value> = Family::ALL
            .iter()
            .map(|family| {
                let ports: Vec<serde_json::Value> = Workload::ALL
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "name": format!("p{}", w.port()), "protocol": "TCP",
                            "port": w.port(), "targetPort": w.port(),
                            "nodePort": nodeport_of(*w, *family),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "metadata": {"name": format!("bench{}", family.name().to_lowercase()), "namespace": "default"},
                    "spec": {"type": "NodePort", "clusterIPs": [family.cluster_ip()], "ports": ports},
                    "endpoints": [{"addresses": [srv.ip(*family)]}],
                })
            })
            .collect();
        let file = TempFile::new(
            "json",
            &serde_json::json!({ "services": services }).to_string(),
        );
        let out = node.podnet(&["service", "apply", "-f", file.path()]);
        if !out.status.success() {
            for f in 0..Family::ALL.len() {
                carried.insert((2, f), false);
            }
            notes.push(format!(
                "podnet refused the NodePort Services: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let rules = [
            TempFile::new("iptables", &rules(Family::V4, &srv)),
            TempFile::new("ip6tables", &rules(Family::V6, &srv)),
        ];
        let mut bench = Self {
            node,
            init,
            srv,
            cli,
            mode: Mode::Podnet,
            rules,
            carried,
            notes,
            snat_runs: 0,
            runs: BTreeMap::new(),
        };
        for (s, scenario) in Scenario::ALL.iter().enumerate() {
            for (f, family) in Family::ALL.iter().enumerate() {
                if bench.carried.get(&(s, f)) == Some(&false) {
                    continue;
                }
                let carried = bench.probe(*scenario, *family);
                if !carried {
                    bench.notes.push(format!(
                        "{} over {}: not measured, podnet does not carry it on this build \
                         (`{}` did not move)",
                        scenario.name(),
                        family.name(),
                        scenario.counter(*family)
                    ));
                }
                bench.carried.insert((s, f), carried);
            }
        }
        bench
    }

    fn set_mode(&mut self, mode: Mode) {
        if mode == self.mode {
            return;
        }
        let ns = &self.node.topo.node;
        match mode {
            Mode::Kernel => {
                for pod in [&self.srv, &self.cli] {
                    ns.ok(&format!("tc filter del dev {} ingress", pod.info.host_if));
                }
                ns.ok(&format!("tc filter del dev {UPLINK} ingress"));
                ns.ok(&format!(
                    "iptables-restore --noflush < {}",
                    self.rules[0].path()
                ));
                ns.ok(&format!(
                    "ip6tables-restore --noflush < {}",
                    self.rules[1].path()
                ));
            }
            Mode::Podnet => {
                ns.ok("iptables -t nat -F && ip6tables -t nat -F");
                let init: Vec<&str> = self.init.iter().map(String::as_str).collect();
                self.node.ok(&init); // re-attaches the programs to the pods and the uplink
            }
        }
        self.mode = mode;
    }

    /// Where `w` goes through `scenario` over `family`; SNAT connection-rate runs to
    /// `snat_port`.
    fn endpoints(
        &self,
        scenario: Scenario,
        family: Family,
        w: Workload,
        snat_port: u16,
    ) -> Endpoints<'_> {
        let outside_ip = match family {
            Family::V4 => OUTSIDE_IP.to_string(),
            Family::V6 => OUTSIDE_IP6.to_owned(),
        };
        let node_ip = match family {
            Family::V4 => NODE_IP.to_string(),
            Family::V6 => NODE_IP6.to_owned(),
        };
        match scenario {
            Scenario::SameNode => {
                Endpoints::direct(&self.cli.info.ns, &self.srv.info.ns, self.srv.ip(family), w)
            }
            Scenario::Snat => {
                let port = if w == Workload::ConnectionRate {
                    snat_port
                } else {
                    w.port()
                };
                let at = family.at(&outside_ip, port);
                Endpoints {
                    client: &self.cli.info.ns,
                    server: &self.node.topo.outside,
                    listen: at.clone(),
                    connect: at,
                }
            }
            Scenario::NodePort => Endpoints {
                client: &self.node.topo.outside,
                server: &self.srv.info.ns,
                listen: family.at(self.srv.ip(family), w.port()),
                connect: family.at(&node_ip, nodeport_of(w, family)),
            },
        }
    }

    /// A fresh outside port for a SNAT connection-rate run.
    fn snat_port(&mut self) -> u16 {
        self.snat_runs = self.snat_runs.wrapping_add(1);
        OUTSIDE_CRR_PORT + self.snat_runs % 20_000
    }

    /// Whether podnet carries `scenario` over `family`: one short request/response run in
    /// podnet mode must move its counter (IPv6 the kernel would route counts nothing).
    fn probe(&mut self, scenario: Scenario, family: Family) -> bool {
        let counter = scenario.counter(family);
        let before = self.node.stats();
        if !before.contains_key(counter) {
            return false;
        }
        let w = Workload::RequestResponse;
        let port = self.snat_port();
        measure(w, &self.endpoints(scenario, family, w, port), 1);
        self.node.stats()[counter] - before[counter] > 100
    }

    /// Every carried path of every workload once in the current mode, checking the path taken.
    fn round(&mut self, seconds: u32) {
        let m = usize::from(self.mode == Mode::Kernel);
        for (s, scenario) in Scenario::ALL.iter().enumerate() {
            for (f, family) in Family::ALL.iter().enumerate() {
                if !self.carried[&(s, f)] {
                    continue;
                }
                let counter = scenario.counter(*family);
                for (wi, w) in Workload::ALL.iter().enumerate() {
                    let before = self.node.stats();
                    let port = self.snat_port();
                    let result =
                        measure(*w, &self.endpoints(*scenario, *family, *w, port), seconds);
                    let after = self.node.stats();
                    let moved = after[counter] - before[counter];
                    match self.mode {
                        Mode::Podnet => assert!(
                            moved > 100,
                            "podnet {} over {}: {counter} moved {moved}",
                            scenario.name(),
                            family.name()
                        ),
                        Mode::Kernel => assert_eq!(
                            moved,
                            0,
                            "kernel {} over {} went through podnet",
                            scenario.name(),
                            family.name()
                        ),
                    }
                    self.runs.entry((s, f, m, wi)).or_default().push(result);
                }
            }
        }
    }

    fn output(&self) -> BenchOutput {
        let mut out = BenchOutput::new(
            "ipv6",
            "IPv6 against IPv4",
            "One dual-stack node (IPv4 and IPv6 pod CIDRs, pods with both addresses, an outside \
             namespace on both families). Each path is measured over both families, through \
             podnet and through the kernel with podnet's programs detached: the node's bridge \
             (same-node), `MASQUERADE` (SNAT) and `DNAT` (NodePort) in `iptables` for IPv4 and \
             `ip6tables` for IPv6, the seed documents' rules. Every podnet run must move the \
             path's counter (`forward_local_peer` / `forward_local6`, `snat`/`snat6`, `dnat`/`dnat6`) and every \
             kernel run must leave it alone. Rows: podnet against the kernel per family, and \
             podnet over IPv6 against podnet over IPv4.",
        );
        out.notes.clone_from(&self.notes);
        let get = |s: usize, f: usize, m: usize, wi: usize| self.runs.get(&(s, f, m, wi));
        for (s, scenario) in Scenario::ALL.iter().enumerate() {
            for (wi, w) in Workload::ALL.iter().enumerate() {
                for (f, family) in Family::ALL.iter().enumerate() {
                    let (Some(podnet), Some(kernel)) = (get(s, f, 0, wi), get(s, f, 1, wi)) else {
                        continue;
                    };
                    let title = format!("{} over {}", scenario.name(), family.name());
                    let base = format!("{} {}", scenario.kernel(*family), family.name());
                    let path = format!("podnet {}", family.name());
                    out.runs(&title, &base, &base, None, *w, kernel);
                    out.runs(&title, &path, &base, None, *w, podnet);
                }
                if let (Some(v4), Some(v6)) = (get(s, 0, 0, wi), get(s, 1, 0, wi)) {
                    let title = format!("{}: podnet over IPv6 against IPv4", scenario.name());
                    out.runs(&title, "podnet IPv4", "podnet IPv4", None, *w, v4);
                    out.runs(&title, "podnet IPv6", "podnet IPv4", None, *w, v6);
                }
            }
        }
        out
    }
}

/// The seed documents' nat rules for `family`: MASQUERADE for the pod CIDR leaving the cluster
/// CIDR, and per measured NodePort one DNAT rule in PREROUTING.
fn rules(family: Family, srv: &Pod) -> String {
    use std::fmt::Write as _;

    let (pod_cidr, cluster_cidr) = match family {
        Family::V4 => (POD_CIDR, CLUSTER_CIDR),
        Family::V6 => (POD_CIDR6, CLUSTER_CIDR6),
    };
    let mut text = String::from("*nat\n");
    for w in Workload::ALL {
        let _ = writeln!(
            text,
            "-A PREROUTING -p tcp --dport {} -j DNAT --to-destination {}",
            nodeport_of(w, family),
            family.at(srv.ip(family), w.port())
        );
    }
    let _ = writeln!(
        text,
        "-A POSTROUTING -s {pod_cidr} ! -d {cluster_cidr} -j MASQUERADE\nCOMMIT"
    );
    text
}

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");
    let mut bench = Bench::new();
    for round in 0..args.rounds {
        eprintln!("ipv6 round {}/{}", round + 1, args.rounds);
        let order = if round % 2 == 0 {
            [Mode::Podnet, Mode::Kernel]
        } else {
            [Mode::Kernel, Mode::Podnet]
        };
        for mode in order {
            bench.set_mode(mode);
            bench.round(args.seconds);
        }
    }
    bench.set_mode(Mode::Podnet);
    let out = bench.output();
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    if let Some(dir) = &args.out {
        out.write(std::path::Path::new(dir));
    }
}
