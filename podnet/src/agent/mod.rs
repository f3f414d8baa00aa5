//! `podnet agent`: Kubernetes as the control plane. One long-running process per node:
//!
//! 1. reads its own Node (pod CIDRs from `spec.podCIDRs`, addresses from its InternalIPs, one
//!    of each family) and runs `node init` from it;
//! 2. watches Nodes (every other node is a peer), Services and EndpointSlices (the service
//!    table), relisting whenever a watch expires (410 Gone) or the server comes back, with
//!    backoff, and leaving the datapath as it is while the API server is away;
//! 3. programs changes incrementally on one programming thread: one Service changing rewrites
//!    that Service only; a relist replaces the whole table, rewriting what differs from the
//!    maps (so a restart after kill -9 converges without touching established flows);
//! 4. runs the conntrack collector, and serves `/metrics`, `/healthz` and `/readyz`;
//! 5. serves the health-check node ports of `externalTrafficPolicy: Local` services, as
//!    kube-proxy does ([`health`]);
//! 6. logs why an object is skipped or what of it is left out (an IPv6 ClusterIP, a Node's
//!    IPv6 half), once per object and change of reason ([`notes`]).
//!
//! A front end like the CLI and the CNI plugin: it maps the API to operations.

pub mod cluster;
pub mod convert;
pub mod health;
pub mod metrics;
pub mod notes;
pub mod programmer;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Node, Service as K8sService},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use metrics::Metrics;
use programmer::Work;

use crate::{config::NodeSettings, model::service::Metadata, ops};

/// How the agent is started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This node's name (its Node object).
    pub node_name: String,
    /// A kubeconfig; without one, the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The node's settings as JSON (uplink, cluster CIDR, directories, ...); the pod CIDR and
    /// node IP come from the Node object.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("node {node}: {what}")]
    Node { node: String, what: String },
    #[error("invalid node settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Ops(#[from] ops::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, AgentError> {
    let err = |e: &dyn std::fmt::Display| AgentError::Client(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::incluster().map_err(|e| err(&e))?,
    };
    Client::try_from(config).map_err(|e| err(&e))
}

/// Reads this node's Node object, retrying with backoff until the API server answers and the
/// node has an IPv4 pod CIDR and InternalIP (a new node gets its pod CIDR a moment after it
/// registers).
async fn own_node(client: &Client, name: &str) -> Result<NodeSettingsSeed, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut delay = Duration::from_millis(100);
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(node)) => match convert::node_addresses(&node) {
                Ok(convert::NodeAddresses {
                    pod_cidr: Some(pod_cidr),
                    node_ip: Some(node_ip),
                    pod_cidr6,
                    node_ip6,
                }) => {
                    return Ok(NodeSettingsSeed {
                        pod_cidr,
                        node_ip,
                        pod_cidr6,
                        node_ip6,
                    });
                }
                Ok(_) => {
                    eprintln!("podnet agent: node {name} has no IPv4 pod CIDR or InternalIP yet");
                }
                Err(why) => eprintln!("podnet agent: node {name}: {why}"),
            },
            Ok(None) => eprintln!("podnet agent: node {name} is not registered yet"),
            Err(e) => eprintln!("podnet agent: reading node {name}: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The pod CIDRs of Node `name`: its IPv4 one (waiting until it has one) and its IPv6 one if
/// it is dual-stack, for `install-cni --node-name`.
pub fn node_pod_cidrs(
    name: &str,
    kubeconfig: Option<&PathBuf>,
) -> Result<(ipnetwork::Ipv4Network, Option<ipnetwork::Ipv6Network>), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = client(kubeconfig).await?;
        let seed = own_node(&client, name).await?;
        Ok((seed.pod_cidr, seed.pod_cidr6))
    })
}

/// What the Node object gives the settings.
struct NodeSettingsSeed {
    pod_cidr: ipnetwork::Ipv4Network,
    node_ip: std::net::Ipv4Addr,
    pod_cidr6: Option<ipnetwork::Ipv6Network>,
    node_ip6: Option<std::net::Ipv6Addr>,
}

/// The node's settings: the Node's pod CIDR and InternalIP of each family, the rest from the
/// options (which may set the IPv6 ones themselves: then they win).
fn settings(opts: &AgentOptions, seed: &NodeSettingsSeed) -> Result<NodeSettings, AgentError> {
    let mut map = opts.settings.clone();
    map.insert("pod_cidr".to_owned(), seed.pod_cidr.to_string().into());
    map.insert("node_ip".to_owned(), seed.node_ip.to_string().into());
    if let Some(cidr6) = seed.pod_cidr6 {
        map.entry("pod_cidr6")
            .or_insert_with(|| cidr6.to_string().into());
    }
    if let Some(ip6) = seed.node_ip6 {
        map.entry("node_ip6")
            .or_insert_with(|| ip6.to_string().into());
    }
    let no_pod_cidr6 = map.get("pod_cidr6").is_none_or(serde_json::Value::is_null);
    if no_pod_cidr6 && map.remove("cluster_cidr6").is_some() {
        // A dual-stack cluster's node that got no IPv6 pod CIDR runs IPv4 only.
        eprintln!(
            "podnet agent: node {}: no IPv6 pod CIDR in spec.podCIDRs: this node's pods get IPv4 only",
            opts.node_name
        );
    }
    let settings: NodeSettings = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| AgentError::Settings(e.to_string()))?;
    settings
        .validate()
        .map_err(|e| AgentError::Settings(e.to_string()))?;
    Ok(settings)
}

/// One watch event of any of the three resources.
enum Change {
    Node(Box<watcher::Event<Node>>),
    Service(Box<watcher::Event<K8sService>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// Runs the agent until the process is stopped. The caller has entered the node's namespace.
pub fn run(opts: &AgentOptions) -> Result<(), AgentError> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = runtime.block_on(client(opts.kubeconfig.as_ref()))?;
    let seed = runtime.block_on(own_node(&client, &opts.node_name))?;
    let settings = settings(opts, &seed)?;
    let metrics = Arc::new(Metrics::default());
    let health =
        health::HealthChecks::new(runtime.handle().clone(), settings.pod_cidr, metrics.clone());
    let programmer = programmer::start(settings.clone(), metrics.clone(), health)?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(opts.metrics_addr))?;
    let scrape_settings = settings.clone();
    let datapath: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(move || programmer::datapath_series(&scrape_settings));
    runtime.spawn(metrics::serve(listener, metrics.clone(), datapath));
    runtime.block_on(watch(
        &client,
        &programmer.settings,
        &opts.node_name,
        &programmer,
        &metrics,
        started,
    ));
    Ok(())
}

/// Follows the three watches and hands the programmer what changed, until the watches end
/// (they retry forever with backoff, so: until the process is stopped).
async fn watch(
    client: &Client,
    settings: &NodeSettings,
    own: &str,
    programmer: &programmer::Handle,
    metrics: &Metrics,
    started: Instant,
) {
    let config = watcher::Config::default();
    let nodes = watcher(Api::<Node>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|e| e.map(|e| Change::Node(Box::new(e))));
    let services = watcher(Api::<K8sService>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|e| e.map(|e| Change::Service(Box::new(e))));
    let slices = watcher(Api::<EndpointSlice>::all(client.clone()), config)
        .default_backoff()
        .map(|e| e.map(|e| Change::Slice(Box::new(e))));
    let mut changes = stream::select_all([nodes.boxed(), services.boxed(), slices.boxed()]);
    let mut state = Follower::new(own, settings.clone());
    while let Some(change) = changes.next().await {
        match change {
            Ok(change) => state.apply(change, programmer, metrics, started),
            // The watcher reconnects by itself (with backoff); the datapath stays as it is.
            Err(e) => eprintln!("podnet agent: watch: {e}"),
        }
    }
}

/// The watches' state: the cluster as known, and the relists in progress.
struct Follower {
    cluster: cluster::Cluster,
    init_nodes: Option<Vec<Node>>,
    init_services: Option<Vec<K8sService>>,
    init_slices: Option<Vec<EndpointSlice>>,
    /// Which resources have completed their first list.
    listed: [bool; 3],
    synced: bool,
    last_peers: Option<Vec<crate::model::peer::PeerNode>>,
    /// This node's settings: peers are checked against them.
    settings: NodeSettings,
    /// What was logged of Nodes and of Services.
    node_notes: notes::Notes,
    service_notes: notes::Notes,
}

impl Follower {
    fn new(own: &str, settings: NodeSettings) -> Self {
        let mut cluster = cluster::Cluster::new(own);
        cluster.ipv6_services = settings.service_cidr6.is_some();
        Self {
            cluster,
            settings,
            node_notes: notes::Notes::default(),
            service_notes: notes::Notes::default(),
            init_nodes: None,
            init_services: None,
            init_slices: None,
            listed: [false; 3],
            synced: false,
            last_peers: None,
        }
    }

    fn apply(
        &mut self,
        change: Change,
        programmer: &programmer::Handle,
        metrics: &Metrics,
        started: Instant,
    ) {
        let now = Instant::now();
        let (touched, relisted) = match change {
            Change::Node(e) => {
                metrics.events_nodes.fetch_add(1, Ordering::Relaxed);
                self.node_event(*e);
                self.send_peers(programmer, metrics);
                (Vec::new(), false)
            }
            Change::Service(e) => {
                metrics.events_services.fetch_add(1, Ordering::Relaxed);
                self.service_event(*e)
            }
            Change::Slice(e) => {
                metrics.events_slices.fetch_add(1, Ordering::Relaxed);
                self.slice_event(*e)
            }
        };
        if !self.listed.iter().all(|l| *l) {
            return;
        }
        if relisted || !self.synced {
            metrics.relists.fetch_add(1, Ordering::Relaxed);
            let cluster::Desired {
                services,
                skipped,
                notes,
            } = self.cluster.all_desired();
            self.service_notes.replace_all(notes);
            metrics
                .skipped
                .fetch_add(skipped.len() as u64, Ordering::Relaxed);
            let first = !self.synced;
            self.synced = true;
            programmer.send(Work::ReplaceAll {
                services,
                since: now,
                first_sync_of: first.then_some(started),
            });
            return;
        }
        for key in touched {
            let name = key.to_string();
            match self.cluster.desired_noted(&key) {
                Ok(Some((svc, notes))) => {
                    let note = (!notes.is_empty())
                        .then(|| format!("service {name}: {}", notes.join("; ")));
                    self.service_notes.set(name, note);
                    programmer.send(Work::Upsert(svc, now));
                }
                Ok(None) => {
                    self.service_notes.set(name, None);
                    programmer.send(Work::Remove(key, now));
                }
                Err(e) => {
                    self.service_notes
                        .set(name, e.worth_logging().then(|| e.to_string()));
                    metrics.skipped.fetch_add(1, Ordering::Relaxed);
                    programmer.send(Work::Remove(key, now));
                }
            }
        }
    }

    fn node_event(&mut self, e: watcher::Event<Node>) {
        match e {
            watcher::Event::Init => self.init_nodes = Some(Vec::new()),
            watcher::Event::InitApply(n) => self.init_nodes.get_or_insert_default().push(n),
            watcher::Event::InitDone => {
                self.cluster
                    .replace_nodes(self.init_nodes.take().unwrap_or_default());
                self.listed[0] = true;
            }
            watcher::Event::Apply(n) => {
                self.cluster
                    .node(n.metadata.name.clone().unwrap_or_default(), Some(n));
            }
            watcher::Event::Delete(n) => {
                self.cluster
                    .node(n.metadata.name.clone().unwrap_or_default(), None);
            }
        }
    }

    /// The services a Service event touched, and whether it completed a list.
    fn service_event(&mut self, e: watcher::Event<K8sService>) -> (Vec<Metadata>, bool) {
        match e {
            watcher::Event::Init => self.init_services = Some(Vec::new()),
            watcher::Event::InitApply(s) => self.init_services.get_or_insert_default().push(s),
            watcher::Event::InitDone => {
                self.cluster
                    .replace_services(self.init_services.take().unwrap_or_default());
                self.listed[1] = true;
                return (Vec::new(), true);
            }
            watcher::Event::Apply(s) => return (vec![self.cluster.service(s)], false),
            watcher::Event::Delete(s) => return (vec![self.cluster.service_deleted(&s)], false),
        }
        (Vec::new(), false)
    }

    /// The services an EndpointSlice event touched, and whether it completed a list.
    fn slice_event(&mut self, e: watcher::Event<EndpointSlice>) -> (Vec<Metadata>, bool) {
        match e {
            watcher::Event::Init => self.init_slices = Some(Vec::new()),
            watcher::Event::InitApply(s) => self.init_slices.get_or_insert_default().push(s),
            watcher::Event::InitDone => {
                self.cluster
                    .replace_slices(self.init_slices.take().unwrap_or_default());
                self.listed[2] = true;
                return (Vec::new(), true);
            }
            watcher::Event::Apply(s) => return (self.cluster.slice(s), false),
            watcher::Event::Delete(s) => return (self.cluster.slice_deleted(&s), false),
        }
        (Vec::new(), false)
    }

    fn send_peers(&mut self, programmer: &programmer::Handle, metrics: &Metrics) {
        if !self.listed[0] {
            return;
        }
        let cluster::Peers {
            peers,
            skipped,
            notes,
        } = self.cluster.peers(
            &self.settings,
            self.last_peers.as_deref().unwrap_or_default(),
        );
        self.node_notes.replace_all(notes);
        metrics
            .skipped
            .fetch_add(skipped.len() as u64, Ordering::Relaxed);
        if self.last_peers.as_ref() != Some(&peers) {
            self.last_peers = Some(peers.clone());
            programmer.send(Work::Peers(peers));
        }
    }
}
