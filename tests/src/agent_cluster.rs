//! A cluster driven by `podnet agent`: a fabric, an outside host running the test API server
//! ([`crate::apiserver`]), and simulated nodes (namespaces) each with its agent process, for
//! the agent's tests and benchmark.

use std::{net::Ipv4Addr, path::PathBuf, process::Command, time::Duration};

use serde_json::{Value, json};

use crate::{
    CLUSTER_CIDR, ChildGuard, FABRIC_GATEWAY, InNetns as _, Netns, PodnetCli,
    apiserver::{ApiServer, Options, Resource},
    describe, netprobe, podnet_bin, unique, wait_until,
};

/// Where each agent serves `/metrics`, `/healthz` and `/readyz`, inside its node's namespace.
pub const METRICS: &str = "127.0.0.1:9965";

/// One simulated node: its namespace, its CLI, and its agent process.
pub struct AgentNode {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub cli: PodnetCli,
    pub pin_dir: PathBuf,
    pub agent: Option<ChildGuard>,
}

/// A fabric, an outside host running the API server, and `n` nodes with agents.
pub struct AgentCluster {
    pub nodes: Vec<AgentNode>,
    pub outside: Netns,
    pub fabric: Netns,
    pub api: ApiServer,
    pub kubeconfig: PathBuf,
    /// Flags every agent gets besides the common ones (e.g. an IPv6 `--cluster-cidr`).
    pub agent_args: Vec<String>,
}

pub fn node_object(name: &str, ip: Ipv4Addr, pod_cidr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()},
                                 {"type": "Hostname", "address": name}]}
    })
}

impl AgentCluster {
    /// `n` nodes (node `i`: IP 198.18.0.(11+i), pod CIDR 10.244.(first_octet+i).0/24), each
    /// with a Node object and a running agent, all ready.
    pub fn new(n: u8, first_octet: u16) -> Self {
        Self::with(n, first_octet, |_| {})
    }

    /// [`AgentCluster::new`], calling `before_agents` with the API server before any agent
    /// starts (to fill it, for an initial sync).
    pub fn with(n: u8, first_octet: u16, before_agents: impl FnOnce(&ApiServer)) -> Self {
        Self::with_agent_args(n, first_octet, &[], |cluster| before_agents(&cluster.api))
    }

    /// [`AgentCluster::new`] with `agent_args` added to every agent's flags, calling
    /// `before_agents` with the cluster (API server, nodes' namespaces) before any agent starts.
    pub fn with_agent_args(
        n: u8,
        first_octet: u16,
        agent_args: &[&str],
        before_agents: impl FnOnce(&Self),
    ) -> Self {
        let (fabric, outside) = crate::cluster::fabric();
        let api = ApiServer::start(Options {
            listen: (FABRIC_GATEWAY, 0).into(),
            netns: Some(outside.path().to_path_buf()),
            ..Options::default()
        })
        .expect("API server");
        let id = unique("ag");
        let kubeconfig = std::env::temp_dir().join(format!("podnet-test-{id}.kubeconfig"));
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let mut nodes = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(198, 18, 0, 11 + i);
            let ns = crate::cluster::fabric_node(&fabric, i, ip);
            let name = format!("node-{i}");
            let pod_cidr = format!("10.244.{}.0/24", first_octet + u16::from(i));
            api.create(Resource::Node, node_object(&name, ip, &pod_cidr))
                .expect("create Node");
            nodes.push(AgentNode {
                name,
                ns,
                ip,
                pod_cidr,
                cli: PodnetCli {
                    state_dir: std::env::temp_dir().join(format!("podnet-test-{id}-{i}")),
                },
                pin_dir: PathBuf::from(format!("/sys/fs/bpf/podnet-test-{id}-{i}")),
                agent: None,
            });
        }
        let mut cluster = Self {
            nodes,
            outside,
            fabric,
            api,
            kubeconfig,
            agent_args: agent_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        before_agents(&cluster);
        for i in 0..cluster.nodes.len() {
            cluster.start_agent(i);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i);
        }
        cluster
    }

    pub fn start_agent(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut cmd = Command::new(podnet_bin());
        cmd.arg("--state-dir")
            .arg(&node.cli.state_dir)
            .args(["agent", "--node-name", &node.name, "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(["--uplink", "uplink0", "--cluster-cidr", CLUSTER_CIDR])
            .arg("--netns")
            .arg(node.ns.path())
            .arg("--pin-dir")
            .arg(&node.pin_dir)
            .args(["--metrics-addr", METRICS, "--gc-interval", "1"])
            .args(&self.agent_args);
        self.nodes[i].agent = Some(ChildGuard::spawn(cmd));
    }

    /// Waits until node `i`'s agent answers `/readyz` with 200.
    pub fn wait_ready(&self, i: usize) {
        let node = &self.nodes[i];
        wait_until(
            Duration::from_secs(30),
            &format!("{} ready", node.name),
            || get(&node.ns, "/readyz").is_ok_and(|body| body.contains("ok")),
        );
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
        }
    }
}

impl Drop for AgentCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_agent(i);
        }
        for node in &self.nodes {
            let _ = node.cli.podnet(&["node", "reset"]);
            let _ = std::fs::remove_dir_all(&node.cli.state_dir);
            let _ = std::fs::remove_dir_all(&node.pin_dir);
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// `GET PATH` from the agent's metrics endpoint in `ns`.
pub fn get(ns: &Netns, path: &str) -> Result<String, String> {
    let out = netprobe(
        ns,
        &["http-get", METRICS, "--path", path, "--timeout-ms", "1000"],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(describe(&out))
    }
}

/// The value of metric `name` (a line `NAME VALUE`) in the agent's `/metrics`.
pub fn metric(ns: &Netns, name: &str) -> Option<f64> {
    let text = get(ns, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// A ClusterIP Service `svc-K` (10.96.x.y:80 -> 8080) in namespace `scale`.
pub fn scale_service(k: usize) -> Value {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + u32::try_from(k).unwrap_or(0));
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{k}"), "namespace": "scale"},
        "spec": {"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    })
}

/// The EndpointSlice of `svc-K` with `per` endpoints (addresses in 172.16.0.0/12, no pod
/// behind them: the maps are what is measured), the first `skip` of its range left out.
pub fn scale_slice(k: usize, per: usize, skip: usize) -> Value {
    let base = u32::from(Ipv4Addr::new(172, 16, 0, 0));
    let endpoints: Vec<Value> = (skip..skip + per)
        .map(|j| {
            let ip = Ipv4Addr::from(base + u32::try_from(k * (per + 1) + j).unwrap_or(0));
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": "elsewhere"})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{k}-a"), "namespace": "scale",
                     "labels": {"kubernetes.io/service-name": format!("svc-{k}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// What one agent's initial sync and later changes cost at a given table size.
#[derive(Debug, Clone, Copy)]
pub struct SyncFigures {
    /// From the agent's start to the first full sync programmed (its own measure).
    pub sync_ms: f64,
    /// The agent's resident memory after the sync.
    pub rss_mib: f64,
    /// From a change's watch event to its map write: p50 and p99 over the changes.
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
    /// Services in the datapath after the sync.
    pub services: f64,
}

/// One node and its agent against an API server that already holds `n` Services with `per`
/// endpoints each; then `changes` changes to one Service's endpoints, one at a time.
pub fn sync_figures(n: usize, per: usize, changes: usize, first_octet: u16) -> SyncFigures {
    let cluster = AgentCluster::with(1, first_octet, |api| {
        for k in 0..n {
            api.create(Resource::Service, scale_service(k))
                .expect("Service");
            api.create(Resource::EndpointSlice, scale_slice(k, per, 0))
                .expect("EndpointSlice");
        }
    });
    let ns = &cluster.nodes[0].ns;
    // A scrape can time out on a busy machine: read until one answers.
    let scrape = |name: &str| {
        let mut value = None;
        wait_until(Duration::from_secs(10), name, || {
            value = metric(ns, name);
            value.is_some()
        });
        value.unwrap_or(f64::NAN)
    };
    let sync_ms = scrape("podnet_agent_initial_sync_milliseconds");
    let services = scrape("podnet_services_programmed");
    let pid = cluster.nodes[0].agent.as_ref().map_or(0, ChildGuard::pid);
    let rss_kib: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(f64::NAN);
    let count = || scrape("podnet_agent_programming_latency_seconds_count");
    let mut latencies = Vec::with_capacity(changes);
    for c in 0..changes {
        let before = count();
        let k = n / 2;
        cluster
            .api
            .update(Resource::EndpointSlice, scale_slice(k, per, (c + 1) % 2))
            .expect("update EndpointSlice");
        wait_until(Duration::from_secs(10), "the change is programmed", || {
            count() > before
        });
        latencies.push(scrape("podnet_agent_programming_latency_seconds_sum"));
    }
    // Per-change latencies from the running sum (the sync's own observation comes first).
    let mut per_change: Vec<f64> = latencies
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0)
        .collect();
    per_change.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if per_change.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * per_change.len() as f64).ceil() as usize).clamp(1, per_change.len());
        per_change[rank - 1]
    };
    SyncFigures {
        sync_ms,
        rss_mib: rss_kib / 1024.0,
        change_p50_ms: pick(0.5),
        change_p99_ms: pick(0.99),
        services,
    }
}
