//! Backend selection benchmark: what session affinity and Maglev cost a new connection, against
//! the plain random choice, in one run. Two podnet nodes, each with a client pod and three
//! backend pods, and three ClusterIP services over the same three backends (TCP 80 -> 8080, UDP
//! 53 -> 5353): `random` (the default), `affinity` (`sessionAffinity: ClientIP`) and `maglev`
//! (`loadBalancing: maglev`), each to its own backend ports (see [`targets`]). One node balances pods' traffic per packet at their veth
//! (`--no-socket-lb`), where both features act; the other at the socket, where affinity acts and
//! Maglev falls back to random (a socket has no flow yet when it connects), so only random and
//! affinity are measured there. Rounds interleave the services, rotating their order. Workloads
//! as in the service benchmark (netprobe `crr` and `urr`; client on CPU 0, servers on CPU 1).
//! Arguments: `--rounds N` (5), `--seconds S` (2), `--quick`, `--out DIR` (writes
//! `DIR/selection.json`).

use std::{net::Ipv4Addr, path::Path};

use podnet_tests::{
    ChildGuard, Node, PodInfo,
    bench::{
        RoundArgs,
        series::BenchOutput,
        service_run::{Run, TCP_PORT, TCP_TARGET, UDP_PORT, UDP_TARGET, measure, serve_backend_on},
    },
    unique,
};
use serde_json::{Value, json};

const SERVICE_CIDR: &str = "10.96.0.0/12";
const SCENARIO: &str = "new connections to a ClusterIP by backend selection";
/// The services, each on its own ClusterIP.
const CHOICES: [(&str, Ipv4Addr); 3] = [
    ("random", Ipv4Addr::new(10, 96, 0, 10)),
    ("affinity", Ipv4Addr::new(10, 96, 0, 11)),
    ("maglev", Ipv4Addr::new(10, 96, 0, 12)),
];

/// Service `i`'s backend ports: its own, so no two services' connections share a server-side
/// tuple (a client port reused towards another ClusterIP with the same backend would meet the
/// server's TIME_WAIT of the first connection, with the client's TCP timestamps of another
/// destination, and be refused by PAWS: a cost of the workload, not of the selection).
fn targets(i: usize) -> (u16, u16) {
    let i = u16::try_from(i).expect("three services");
    (TCP_TARGET + i, UDP_TARGET + i)
}

fn service(i: usize, name: &str, vip: Ipv4Addr, backends: &[String]) -> Value {
    let (tcp, udp) = targets(i);
    let mut spec = json!({
        "clusterIPs": [vip.to_string()],
        "ports": [
            {"name": "http", "protocol": "TCP", "port": TCP_PORT, "targetPort": tcp},
            {"name": "dns", "protocol": "UDP", "port": UDP_PORT, "targetPort": udp}
        ]
    });
    match name {
        "affinity" => spec["sessionAffinity"] = json!("ClientIP"),
        "maglev" => spec["loadBalancing"] = json!("maglev"),
        _ => {}
    }
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"name": name, "namespace": "bench"}, "spec": spec, "endpoints": endpoints})
}

/// A node with the three services. (Fields drop in order: servers, pods, then the node.)
struct SelectionNode {
    _servers: Vec<ChildGuard>,
    client: PodInfo,
    _backends: Vec<PodInfo>,
    _node: Node,
    /// Which services are measured here.
    choices: Vec<(&'static str, Ipv4Addr)>,
    path: &'static str,
}

impl SelectionNode {
    fn new(pod_cidr: &str, socket_lb: bool) -> Self {
        let mut args = vec!["--service-cidr", SERVICE_CIDR];
        if !socket_lb {
            args.push("--no-socket-lb");
        }
        let node = Node::with_args(pod_cidr, &args);
        let client = node.add_pod("cli");
        let backends: Vec<PodInfo> = (0..3).map(|i| node.add_pod(&format!("b{i}"))).collect();
        let servers = backends
            .iter()
            .flat_map(|b| {
                (0..CHOICES.len()).flat_map(|i| {
                    let (tcp, udp) = targets(i);
                    serve_backend_on(&b.ns, b.ip.parse().expect("pod IPv4"), tcp, udp)
                })
            })
            .collect();
        let ips: Vec<String> = backends.iter().map(|b| b.ip.clone()).collect();
        let table = json!({"services": CHOICES
            .iter()
            .enumerate()
            .map(|(i, (name, vip))| service(i, name, *vip, &ips))
            .collect::<Vec<_>>()});
        let file = std::env::temp_dir().join(format!("{}.json", unique("sel")));
        std::fs::write(&file, table.to_string()).expect("write the table");
        node.ok(&["service", "apply", "-f", file.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&file);
        let choices = if socket_lb {
            CHOICES[..2].to_vec()
        } else {
            CHOICES.to_vec()
        };
        Self {
            _servers: servers,
            client,
            _backends: backends,
            _node: node,
            choices,
            path: if socket_lb { "socket" } else { "per packet" },
        }
    }
}

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");
    let nodes = [
        SelectionNode::new("10.244.170.0/24", false),
        SelectionNode::new("10.244.171.0/24", true),
    ];
    // runs[node][choice]
    let mut runs: Vec<Vec<Vec<Run>>> = nodes
        .iter()
        .map(|n| vec![Vec::new(); n.choices.len()])
        .collect();
    for round in 0..args.rounds {
        eprintln!("selection round {}/{}", round + 1, args.rounds);
        for (n, node) in nodes.iter().enumerate() {
            let k = node.choices.len();
            for i in 0..k {
                let c = (round + i) % k;
                let (name, vip) = node.choices[c];
                let run = measure(&node.client.ns, vip, args.seconds);
                eprintln!(
                    "  {:<10} {name:<8} TCP {:>7.0} conn/s connect p50 {:>4.0} us, UDP {:>7.0} req/s",
                    node.path, run.tcp_rate, run.connect_p50, run.udp_rate
                );
                runs[n][c].push(run);
            }
        }
    }
    let method = "One podnet node per balancing path (pods' traffic per packet at their veth, \
                  `--no-socket-lb`; or at the socket), a client pod and three backend pods, \
                  three ClusterIP services over the same backends (each service on its own \
                  backend ports): random (default), \
                  sessionAffinity ClientIP (10,800 s), and loadBalancing maglev (per packet \
                  only: at the socket Maglev falls back to random), applied with `podnet \
                  service apply`. TCP: netprobe `crr` (each connection a new flow, so each \
                  one chooses a backend); UDP: netprobe `urr` (a new socket, so a new flow, \
                  per request). Rounds interleave the services in rotating order; the \
                  baseline of each path is its random service.";
    let mut out = BenchOutput::new(
        "selection",
        "Backend selection: session affinity and Maglev against random",
        method,
    );
    for (node, node_runs) in nodes.iter().zip(&runs) {
        let baseline = format!("random ({})", node.path);
        for ((name, _), choice_runs) in node.choices.iter().zip(node_runs) {
            let series = format!("{name} ({})", node.path);
            let pick = |f: fn(&Run) -> f64| choice_runs.iter().map(f).collect::<Vec<_>>();
            for (metric, unit, higher, samples) in [
                ("TCP connection rate", "conn/s", true, pick(|r| r.tcp_rate)),
                (
                    "TCP connect latency p50",
                    "us",
                    false,
                    pick(|r| r.connect_p50),
                ),
                (
                    "UDP request/response rate",
                    "req/s",
                    true,
                    pick(|r| r.udp_rate),
                ),
            ] {
                out.values(
                    SCENARIO, metric, unit, higher, &series, &baseline, None, samples,
                );
            }
        }
    }
    if let Some(dir) = &args.out {
        out.write(Path::new(dir));
    }
}
