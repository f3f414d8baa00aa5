//! Service benchmark: pod -> ClusterIP through kube-proxy's own rule layouts and through podnet,
//! for 1, 1,000, 5,000, 10,000 and 30,000 services, measured in one run, interleaved round by
//! round (the order of the datapaths rotates every round):
//!
//! - `kube-proxy iptables`: what kube-proxy's iptables mode writes for the service table
//!   ([`podnet_tests::bench::kubeproxy::iptables_restore`]), loaded with `iptables-restore`
//!   into a node with no podnet ([`KernelNode`]: Linux bridge, veth pods);
//! - `kube-proxy nftables`: what its nftables mode writes (`nft -f`), on another such node;
//! - `podnet`: a node set up with `podnet node init`, its pods made by `podnet pod add`, the
//!   same table loaded with `podnet service apply -f FILE`. If that command fails (it is not
//!   there yet), the podnet series is skipped with the reason in the report.
//!
//! One node per datapath and size, each loaded once; the load time is recorded (the time
//! kube-proxy's full sync spends in `iptables-restore` / `nft -f`, a known pain point at scale).
//! Every node has a client pod and three backend pods; the measured service (TCP 80 -> 8080
//! and UDP 53 -> 5353 to the three backends) sits in the middle of the table, where a linear
//! `KUBE-SERVICES` chain costs what it costs on average (kube-proxy writes services in Go map
//! order); every other service has one TCP port and two endpoints. Workloads, client on CPU 0,
//! servers on CPU 1:
//!
//! - TCP connection rate to the ClusterIP (netprobe `crr`: connect, request, reply, close, one
//!   at a time) with the connect latency (SYN to established) p50 and p99: every connection
//!   is a new flow, so every SYN walks the rules;
//! - DNS-like UDP request/response rate (netprobe `urr`: a new unconnected socket per request,
//!   `sendto` the ClusterIP, `recvfrom` the reply, which must come from the ClusterIP).
//!
//! kube-proxy runs check that the node's conntrack translated flows to the ClusterIP. Writes
//! `DIR/services.json` for the report with `--out DIR`. Arguments: `--rounds N` (5),
//! `--seconds S` (2), `--quick` (2 rounds x 1 s, and no 30,000-service point), `--out DIR`,
//! `--sizes N,N,...`.

use std::{net::Ipv4Addr, path::Path, time::Instant};

use podnet_tests::{
    ChildGuard, InNetns, Node, PodInfo,
    bench::{
        RoundArgs,
        kernel_node::{KernelNode, KernelPod, Layout},
        kubeproxy::Config,
        median,
        series::BenchOutput,
        service_run::{
            Run, TCP_PORT, TCP_TARGET, UDP_PORT, UDP_TARGET, UDP_TIMEOUT_MS, measure, serve_backend,
        },
    },
    service_table::{Protocol, ServiceTable, cluster_ip_service, port},
    unique,
};

const SIZES: [usize; 5] = [1, 1_000, 5_000, 10_000, 30_000];
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The first ClusterIP; service `i` gets this plus `i`.
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKENDS: usize = 3;
/// Service ports per `iptables-restore` transaction. kube-proxy writes a full sync as one
/// transaction, but here one transaction costs superlinear time in its size (1,000 services
/// load in about a second, 5,000 in about 10 s, 30,000 in over 10 minutes, mostly kernel time
/// resolving the references within the transaction), so the large tables are loaded in parts;
/// the rules end up the same, in the same order.
const IPTABLES_TRANSACTION_PORTS: usize = 1_000;
/// `numgen` balancing rules per `nft -f` transaction after the first (which has the rest of the
/// table, see [`podnet_tests::bench::kubeproxy::nft_transactions`]): in one transaction, 10,000
/// services took 76 s here, 5,000 about 9 s, nearly all kernel time on the rules' anonymous
/// verdict maps (each is looked up by walking the transaction, and each new one is named by
/// scanning every set of the table, which no split avoids); without those rules 10,000
/// services load in about 3 s. Every `nft -f` first reads the whole table, so the parts are
/// not smaller than they need to be.
const NFT_TRANSACTION_PORTS: usize = 5_000;
/// `--quick` leaves out the largest table, whose nftables layout alone takes minutes to load.
const QUICK_SIZES: [usize; 4] = [1, 1_000, 5_000, 10_000];

const PATHS: [&str; 3] = ["kube-proxy iptables", "kube-proxy nftables", "podnet"];
const BASELINE: &str = "kube-proxy iptables";
const SCENARIO: &str = "pod to ClusterIP";

/// The service table with `n` services: the measured one (TCP and UDP, to every backend) at
/// index `n / 2`, the others with one TCP port and two of the backends each. Returns the table
/// and the measured service's ClusterIP.
fn table(n: usize, backends: &[Ipv4Addr]) -> (ServiceTable, Ipv4Addr) {
    let measured = n / 2;
    let first = u32::from(FIRST_CLUSTER_IP);
    let mut vip = FIRST_CLUSTER_IP;
    let services = (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(first + u32::try_from(i).expect("fewer than 2^32 services"));
            if i == measured {
                vip = ip;
                cluster_ip_service(
                    "measured",
                    ip,
                    vec![
                        port("http", Protocol::Tcp, TCP_PORT, TCP_TARGET),
                        port("dns", Protocol::Udp, UDP_PORT, UDP_TARGET),
                    ],
                    backends,
                )
            } else {
                let two = [backends[i % BACKENDS], backends[(i + 1) % BACKENDS]];
                cluster_ip_service(
                    &format!("svc-{i}"),
                    ip,
                    vec![port("http", Protocol::Tcp, TCP_PORT, TCP_TARGET)],
                    &two,
                )
            }
        })
        .collect();
    (
        ServiceTable {
            service_cidrs: vec![SERVICE_CIDR.to_owned()],
            services,
        },
        vip,
    )
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A kube-proxy node: the layout loaded, its pods and servers.
/// (Fields drop in order: the servers first, then the pods and the node.)
struct KubeNode {
    _servers: Vec<ChildGuard>,
    node: KernelNode,
    client: KernelPod,
    _backends: Vec<KernelPod>,
    vip: Ipv4Addr,
    load_secs: f64,
    rules_bytes: usize,
}

impl KubeNode {
    fn new(layout: Layout, n: usize, subnet: [u8; 3]) -> Self {
        let mut node = KernelNode::new(subnet);
        let client = node.add_pod();
        let backends: Vec<KernelPod> = (0..BACKENDS).map(|_| node.add_pod()).collect();
        let servers = backends
            .iter()
            .flat_map(|b| serve_backend(&b.ns, b.ip))
            .collect();
        let ips: Vec<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
        let (table, vip) = table(n, &ips);
        let cfg = Config {
            cluster_cidr: CLUSTER_CIDR.to_owned(),
        };
        let per = match layout {
            Layout::Iptables => IPTABLES_TRANSACTION_PORTS,
            Layout::Nftables => NFT_TRANSACTION_PORTS,
        };
        let (script, took) = node.load(layout, &table, &cfg, per);
        Self {
            node,
            client,
            _backends: backends,
            _servers: servers,
            vip,
            load_secs: took.as_secs_f64(),
            rules_bytes: script.len(),
        }
    }
}

/// A podnet node with the table applied.
/// (Fields drop in order: the servers first, then the pods and the node, which `node reset`s.)
struct PodnetNode {
    _servers: Vec<ChildGuard>,
    client: PodInfo,
    _backends: Vec<PodInfo>,
    _node: Node,
    vip: Ipv4Addr,
    load_secs: f64,
}

impl PodnetNode {
    /// `Err` with podnet's own words if `service apply` fails.
    fn new(n: usize, pod_cidr: &str) -> Result<Self, String> {
        let node = Node::new(pod_cidr);
        let client = node.add_pod("cli");
        let backends: Vec<PodInfo> = (0..BACKENDS)
            .map(|i| node.add_pod(&format!("b{i}")))
            .collect();
        let ips: Vec<Ipv4Addr> = backends
            .iter()
            .map(|b| b.ip.parse().expect("pod IPv4"))
            .collect();
        let servers = backends
            .iter()
            .zip(&ips)
            .flat_map(|(b, ip)| serve_backend(&b.ns, *ip))
            .collect();
        let (table, vip) = table(n, &ips);
        let file = TempFile(std::env::temp_dir().join(format!("{}.json", unique("svc"))));
        std::fs::write(
            &file.0,
            serde_json::to_string(&table).expect("the table serialises"),
        )
        .expect("write the service table");
        let start = Instant::now();
        let out = node.podnet(&[
            "service",
            "apply",
            "-f",
            file.0.to_str().expect("utf-8 path"),
        ]);
        let load_secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            // podnet's first line says why; the rest (usage) would not fit a table cell.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no message");
            return Err(format!(
                "`podnet service apply -f FILE` failed ({}): {why}",
                out.status
            ));
        }
        Ok(Self {
            _node: node,
            client,
            _backends: backends,
            _servers: servers,
            vip,
            load_secs,
        })
    }
}

/// Every datapath's node at one size.
struct Size {
    services: usize,
    iptables: KubeNode,
    nftables: KubeNode,
    podnet: Option<PodnetNode>,
    /// `[path]` runs.
    runs: [Vec<Run>; 3],
}

impl Size {
    fn run(&mut self, path: usize, seconds: u32) {
        let n = self.services;
        let run = match path {
            0 | 1 => {
                let kube = if path == 0 {
                    &self.iptables
                } else {
                    &self.nftables
                };
                let run = measure(&kube.client.ns, kube.vip, seconds);
                assert!(
                    kube.node.conntrack_entries_to(kube.vip) > 0,
                    "{} with {n} services: the node's conntrack saw no flow to {}",
                    PATHS[path],
                    kube.vip
                );
                run
            }
            _ => {
                let Some(p) = &self.podnet else { return };
                measure(&p.client.ns, p.vip, seconds)
            }
        };
        let mut note = String::new();
        if run.tcp_failed > 0.0 || run.udp_failed > 0.0 {
            note = format!(" ({} TCP, {} UDP failed)", run.tcp_failed, run.udp_failed);
        }
        eprintln!(
            "  {n:>6} services {:<20} TCP {:>7.0} conn/s connect p50 {:>5.0} us p99 {:>6.0} us, \
             UDP {:>7.0} req/s{note}",
            PATHS[path], run.tcp_rate, run.connect_p50, run.connect_p99, run.udp_rate
        );
        self.runs[path].push(run);
    }
}

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if quick {
            QUICK_SIZES.to_vec()
        } else {
            SIZES.to_vec()
        }
    });
    let mut podnet_skipped: Option<String> = None;
    let mut all: Vec<Size> = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let octet = u8::try_from(100 + i).expect("a handful of sizes");
        eprintln!("{n} services: loading kube-proxy's iptables layout");
        let iptables = KubeNode::new(Layout::Iptables, n, [10, 244, octet]);
        eprintln!(
            "  iptables-restore took {:.2} s ({} bytes)",
            iptables.load_secs, iptables.rules_bytes
        );
        eprintln!("{n} services: loading kube-proxy's nftables layout");
        let nftables = KubeNode::new(Layout::Nftables, n, [10, 244, octet]);
        eprintln!(
            "  nft -f took {:.2} s ({} bytes)",
            nftables.load_secs, nftables.rules_bytes
        );
        let podnet = if podnet_skipped.is_some() {
            None
        } else {
            eprintln!("{n} services: podnet node init + service apply");
            match PodnetNode::new(n, &format!("10.244.{octet}.0/24")) {
                Ok(p) => {
                    eprintln!("  podnet service apply took {:.2} s", p.load_secs);
                    Some(p)
                }
                Err(e) => {
                    eprintln!("skipping the podnet series: {e}");
                    podnet_skipped = Some(e);
                    None
                }
            }
        };
        all.push(Size {
            services: n,
            iptables,
            nftables,
            podnet,
            runs: Default::default(),
        });
    }
    for round in 0..args.rounds {
        eprintln!("service round {}/{}", round + 1, args.rounds);
        for size in &mut all {
            for k in 0..PATHS.len() {
                size.run((round + k) % PATHS.len(), args.seconds);
            }
        }
    }

    let iptables_version = all[0]
        .iptables
        .node
        .ns
        .ok("iptables --version")
        .trim()
        .to_owned();
    let nft_version = all[0]
        .nftables
        .node
        .ns
        .ok("nft --version")
        .trim()
        .to_owned();
    let method = format!(
        "Pod -> ClusterIP on one node per datapath and size, the same service table for each \
         (the measured service in the middle of it; the others one TCP port and two endpoints \
         each). `kube-proxy iptables` and `kube-proxy nftables`: the rules kube-proxy's \
         iptables and nftables modes write for that table (one full sync, generated by our \
         own reproduction of pkg/proxy/iptables and pkg/proxy/nftables: KUBE-SERVICES -> \
         KUBE-SVC-* with `-m statistic --mode random` -> KUBE-SEP-* DNAT, KUBE-MARK-MASQ, \
         KUBE-POSTROUTING, KUBE-NODEPORTS last, filter KUBE-FORWARD; table ip kube-proxy with \
         the service-ips verdict map, per-service chains with `numgen random mod n vmap`, \
         per-endpoint dnat chains, masquerading and the filter checks), loaded with \
         `iptables-restore --noflush --counters` ({iptables_version}) or `nft -f` \
         ({nft_version}) into a node with no podnet (Linux bridge, veth pods, \
         bridge-nf-call-iptables on). kube-proxy loads a full sync as one transaction; here \
         one transaction takes superlinear time (iptables-restore of 30,000 services did not \
         finish in 10 minutes), so the tables are loaded in parts: \
         {IPTABLES_TRANSACTION_PORTS} service ports per iptables-restore, and for nft all but \
         the balancing rules, then {NFT_TRANSACTION_PORTS} balancing rules at a time. The \
         rules end up the same; the load times are that best case, not kube-proxy's first \
         sync. `podnet`: `podnet node init`, pods from `podnet pod add`, \
         the table loaded with `podnet service apply -f FILE`. TCP: netprobe `crr` to \
         ClusterIP:80 (each connection a new flow; connect latency = SYN to established). \
         UDP: netprobe `urr` to ClusterIP:53, a new unconnected socket per request \
         (sendto/recvfrom, the reply must come from the ClusterIP; {UDP_TIMEOUT_MS} ms \
         timeout). Where kube-proxy's layouts differ from kube-proxy itself: IPv4 only, \
         Cluster traffic policies, no session affinity, no LoadBalancer source ranges, no \
         mangle canary chain, nfacct counters or kubelet KUBE-FIREWALL, and numeric nft \
         priorities (this nft refuses `dstnat - 10` on the filter hooks)."
    );
    let largest = sizes.iter().max().copied().unwrap_or_default();
    let mut out = BenchOutput::new(
        "services",
        &format!(
            "Services: pod to ClusterIP with up to {largest} services, podnet vs kube-proxy's \
             layouts"
        ),
        &method,
    );
    if let Some(reason) = &podnet_skipped {
        out.notes.push(format!("podnet series skipped: {reason}"));
    }
    for size in &all {
        #[expect(clippy::cast_precision_loss, reason = "service counts are small")]
        let x = Some(size.services as f64);
        for (path, runs) in PATHS.iter().zip(&size.runs) {
            if runs.is_empty() {
                continue;
            }
            let pick = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<_>>();
            for (metric, unit, higher, samples) in [
                ("TCP connection rate", "conn/s", true, pick(|r| r.tcp_rate)),
                (
                    "TCP connect latency p50",
                    "us",
                    false,
                    pick(|r| r.connect_p50),
                ),
                (
                    "TCP connect latency p99",
                    "us",
                    false,
                    pick(|r| r.connect_p99),
                ),
                (
                    "UDP request/response rate",
                    "req/s",
                    true,
                    pick(|r| r.udp_rate),
                ),
                ("UDP request latency p99", "us", false, pick(|r| r.udp_p99)),
            ] {
                out.values(SCENARIO, metric, unit, higher, path, BASELINE, x, samples);
            }
        }
        let loads = [
            Some(size.iptables.load_secs),
            Some(size.nftables.load_secs),
            size.podnet.as_ref().map(|p| p.load_secs),
        ];
        for (path, load) in PATHS.iter().zip(loads) {
            if let Some(secs) = load {
                out.values(
                    SCENARIO,
                    "service table load time",
                    "s",
                    false,
                    path,
                    BASELINE,
                    x,
                    vec![secs],
                );
            }
        }
        let failed: f64 = size
            .runs
            .iter()
            .flatten()
            .map(|r| r.tcp_failed + r.udp_failed)
            .sum();
        out.notes.push(format!(
            "{} services: iptables-restore input {} KiB, loaded in {:.2} s; nft -f input {} KiB, \
             loaded in {:.2} s{}; median TCP connection rate {}; {failed} failed connections \
             or lost UDP requests over all runs.",
            size.services,
            size.iptables.rules_bytes / 1024,
            size.iptables.load_secs,
            size.nftables.rules_bytes / 1024,
            size.nftables.load_secs,
            size.podnet.as_ref().map_or_else(String::new, |p| format!(
                "; podnet service apply in {:.2} s",
                p.load_secs
            )),
            PATHS
                .iter()
                .zip(&size.runs)
                .filter(|(_, r)| !r.is_empty())
                .map(|(p, r)| format!(
                    "{p} {:.0}",
                    median(&r.iter().map(|x| x.tcp_rate).collect::<Vec<_>>())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(dir) = &args.out {
        out.write(Path::new(dir));
    }
}
