//! The command line: every command and argument (clap), and the node settings `node init`
//! builds from a config file and flags.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use podnet::{
    config::{NodeSettings, PortRange},
    model::nodeport::{BackendSpec, Policy, Proto},
};

#[derive(Parser)]
#[command(name = "podnet", version, about = "eBPF pod networking for a node")]
pub struct Cli {
    /// The node's state directory (node.json, pod records, locks).
    #[arg(
        long,
        global = true,
        env = "PODNET_STATE_DIR",
        default_value = "/var/lib/podnet"
    )]
    pub state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Set up and inspect the node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Add, delete and list pods.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Show the node's maps: configuration and endpoints.
    Maps,
    /// Show the datapath's per-reason packet counters and conntrack occupancy.
    Stats,
    /// Expose pods on the node IP: NodePorts.
    #[command(subcommand)]
    Nodeport(NodePortCommand),
    /// Kubernetes Services: ClusterIPs, NodePorts, LoadBalancer IPs and externalIPs.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Inspect and collect the connection-tracking (NAT) table.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Follow the datapath's per-packet debug log (needs `node init --debug`).
    Log {
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Follow dropped and refused packets live, one line each (like `cilium monitor --type
    /// drop`); with --json one JSON object per line. Stops on Ctrl-C/SIGTERM.
    Monitor {
        /// Only this reason (e.g. drop_spoofed, reject_no_backend). Repeat for more.
        #[arg(long = "reason", value_name = "R")]
        reasons: Vec<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Run a self-contained demo in network namespaces (a node, an outside host and pods).
    Demo(crate::demo::DemoArgs),
    /// Free what is left behind: CNI attachments whose container namespace is gone (DEL never
    /// came), with their addresses, endpoints, host ports and host veths; and whatever a killed
    /// `pod add|del` or CNI ADD left half-made (address, namespace, veth, endpoint, temp files).
    Gc {
        /// CONTAINERID/IFNAME to keep even if its namespace looks gone. Repeat for more.
        #[arg(long)]
        keep: Vec<String>,
    },
    /// Run the node agent: Kubernetes (Nodes, Services, EndpointSlices) as the control plane.
    Agent(Box<AgentArgs>),
    /// Install podnet as a CNI plugin: the binary and a network configuration per mode.
    InstallCni(InstallCniArgs),
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Create the bridge, enable forwarding, load and pin the datapath. Safe to re-run.
    Init(Box<InitArgs>),
    /// Show the node's settings and what is loaded and attached.
    Status,
    /// Remove every pod, pin, the bridge and the node's state.
    Reset,
    /// The other nodes of the cluster (native routing to their pod CIDRs).
    #[command(subcommand)]
    Peer(PeerCommand),
}

#[derive(Subcommand)]
pub enum PeerCommand {
    /// Add a node: its pod CIDR becomes reachable through its node IP.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        node_ip: Ipv4Addr,
        #[arg(long)]
        pod_cidr: Ipv4Network,
        /// The node's IPv6 pod CIDR (dual-stack clusters; needs --node-ip6): routed through the
        /// kernel to --node-ip6.
        #[arg(long, requires = "node_ip6")]
        pod_cidr6: Option<Ipv6Network>,
        /// The node's IPv6 address.
        #[arg(long)]
        node_ip6: Option<Ipv6Addr>,
    },
    /// Remove a node.
    Del {
        #[arg(long)]
        name: String,
    },
    /// List the nodes.
    List,
}

#[derive(Args)]
pub struct InitArgs {
    /// Read settings from a JSON file (fields as in node.json); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's pod CIDR, e.g. 10.244.0.0/24. Repeat with an IPv6 CIDR for a dual-stack
    /// node (e.g. --pod-cidr 10.244.1.0/24 --pod-cidr fd00:10:244:1::/64): at most one per
    /// family.
    #[arg(long, value_parser = parse_cidr)]
    pub pod_cidr: Vec<IpNetwork>,
    /// The cluster CIDR, e.g. 10.244.0.0/16; repeat with the IPv6 one (default: the IPv6 pod
    /// CIDR).
    #[arg(long, value_parser = parse_cidr)]
    pub cluster_cidr: Vec<IpNetwork>,
    /// The uplink interface.
    #[arg(long)]
    pub uplink: Option<String>,
    /// The node's IP (default: the uplink's first IPv4 address).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// The node's IPv6 address, which peers route IPv6 pod CIDRs to (default: the uplink's first
    /// global IPv6 address on a dual-stack node).
    #[arg(long)]
    pub node_ip6: Option<Ipv6Addr>,
    /// Bridge name.
    #[arg(long)]
    pub bridge: Option<String>,
    /// bpffs directory for this node's pins.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// IPAM directory (default: <state-dir>/ipam).
    #[arg(long)]
    pub ipam_dir: Option<PathBuf>,
    /// The node's network namespace: a name under /run/netns or a path. Recorded; later
    /// commands enter it by themselves.
    #[arg(long)]
    pub netns: Option<String>,
    /// Where `pod add` creates pod namespaces.
    #[arg(long)]
    pub netns_dir: Option<PathBuf>,
    /// Pod interface MTU (default: the uplink's).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Size of the endpoints map.
    #[arg(long)]
    pub endpoints_max: Option<u32>,
    /// Compile per-packet debug logging into the programs.
    #[arg(long)]
    pub debug: bool,
    /// Ports SNAT allocates from, MIN-MAX (default 1024-29999).
    #[arg(long)]
    pub snat_ports: Option<PortRange>,
    /// Ports NodePorts may use, MIN-MAX (default 30000-32767).
    #[arg(long)]
    pub nodeport_range: Option<PortRange>,
    /// Conntrack entries admitted before new flows are refused (two per flow; default 262144).
    #[arg(long)]
    pub conntrack_max: Option<u32>,
    /// Entries in the services map: one per frontend, per backend slot and per ClusterIP
    /// address (default 524288: 30,000 services with 300,000 backends).
    #[arg(long)]
    pub services_max: Option<u32>,
    /// A conntrack timeout, NAME=SECONDS; NAME is tcp_syn, tcp_established, tcp_closing (after
    /// an RST), tcp_time_wait (after a FIN), udp, udp_stream or icmp. Repeat for more.
    #[arg(long = "ct-timeout", value_parser = parse_timeout)]
    pub ct_timeouts: Vec<(String, u32)>,
    /// Let pods send from addresses other than their own (anti-spoofing is on by default).
    #[arg(long)]
    pub no_anti_spoof: bool,
    /// native (default): other nodes' pods over the fabric by node IP; vxlan: an overlay.
    #[arg(long)]
    pub mode: Option<String>,
    /// A cluster file, {"nodes": [{"name", "node_ip", "pod_cidr"}, ...]}: every other node
    /// becomes a peer.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Seconds between conntrack collection passes (default 10; 0: no collector process).
    #[arg(long)]
    pub gc_interval: Option<u32>,
    /// cgroup v2 directory whose sockets reach NodePorts on the node IP (default: the root of
    /// the cgroup2 hierarchy).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// The service CIDR ClusterIPs come from (default 10.96.0.0/12). Repeat with an IPv6 CIDR
    /// (e.g. fd00:10:96::/112) for IPv6 ClusterIPs: one per family.
    #[arg(long = "service-cidr")]
    pub service_cidr: Vec<IpNetwork>,
    /// Do not balance services at the socket: pods' service traffic takes the TC path alone.
    #[arg(long)]
    pub no_socket_lb: bool,
    /// How new connections to a service pick a backend when the service does not say:
    /// `random` (default) or `maglev` (the same choice for a flow on every node).
    #[arg(long, value_parser = ["random", "maglev"])]
    pub load_balancing: Option<String>,
    /// A destination outside the cluster that pods reach with their own address, not SNATed
    /// to the node IP (ip-masq-agent's nonMasqueradeCIDRs), e.g. 192.168.0.0/16, or an IPv6
    /// one (e.g. fd00:99::/48) that pods' IPv6 reaches without being masqueraded to the node's
    /// IPv6 address. Repeat for more (at most 256 per family); given, they replace the config
    /// file's lists.
    #[arg(long = "non-masquerade-cidr")]
    pub non_masquerade_cidrs: Vec<IpNetwork>,
    /// Load the eBPF programs from this object file instead of the one built into podnet (a
    /// rebuilt program version; the node's maps and flows are kept). Not recorded: a later
    /// `node init` without it loads the built-in programs again.
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
}

fn parse_timeout(s: &str) -> Result<(String, u32), String> {
    let (name, secs) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=SECONDS"))?;
    let secs = secs
        .parse::<u32>()
        .map_err(|_| format!("{secs:?} in {s:?} is not a number of seconds"))?;
    Ok((name.to_owned(), secs))
}

#[derive(Args)]
pub struct InstallCniArgs {
    /// Where the runtime looks for plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where the runtime reads network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The mode written as 10-podnet.conflist (the other one as an .example).
    #[arg(long, default_value = "standalone")]
    pub mode: String,
    /// The node's pod CIDR, e.g. 10.244.1.0/24 (or --node-name: read from the Node); repeat
    /// with an IPv6 CIDR for a dual-stack node.
    #[arg(long, required_unless_present = "node_name", value_parser = parse_cidr)]
    pub pod_cidr: Vec<IpNetwork>,
    /// Read the pod CIDR from this Node object (`spec.podCIDRs`) in the API server: the
    /// in-cluster service account, or --kubeconfig.
    #[arg(long, env = "NODE_NAME", conflicts_with = "pod_cidr")]
    pub node_name: Option<String>,
    /// A kubeconfig for --node-name (default: the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster CIDR, e.g. 10.244.0.0/16; repeat with the IPv6 one on a dual-stack node.
    #[arg(long, required = true, value_parser = parse_cidr)]
    pub cluster_cidr: Vec<IpNetwork>,
    /// The uplink interface.
    #[arg(long)]
    pub uplink: String,
    /// bpffs directory for this node's pins.
    #[arg(long, default_value = "/sys/fs/bpf/podnet")]
    pub pin_dir: PathBuf,
}

/// `podnet agent`: the node's settings besides what its Node object gives (pod CIDR, node IP).
#[derive(Args)]
pub struct AgentArgs {
    /// This node's name (its Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// A kubeconfig (default: the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9965")]
    pub metrics_addr: std::net::SocketAddr,
    /// Node settings as JSON (fields as in node.json, without pod_cidr and node_ip); the flags
    /// below override them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The cluster CIDR, e.g. 10.244.0.0/16; repeat with the IPv6 one on a dual-stack
    /// cluster (the Nodes' IPv6 pod CIDRs are checked against it).
    #[arg(long, value_parser = parse_cidr)]
    pub cluster_cidr: Vec<IpNetwork>,
    /// The uplink interface.
    #[arg(long)]
    pub uplink: Option<String>,
    /// The node's network namespace (a name under /run/netns or a path).
    #[arg(long)]
    pub netns: Option<String>,
    /// bpffs directory for this node's pins.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// native (default) or vxlan.
    #[arg(long)]
    pub mode: Option<String>,
    /// The service CIDR (default 10.96.0.0/12); repeat with an IPv6 CIDR for IPv6 ClusterIPs.
    #[arg(long = "service-cidr")]
    pub service_cidr: Vec<IpNetwork>,
    /// Bridge name.
    #[arg(long)]
    pub bridge: Option<String>,
    /// Seconds between conntrack collection passes (default 10; 0: none).
    #[arg(long)]
    pub gc_interval: Option<u32>,
}

impl AgentArgs {
    /// The node settings the flags and --config give (everything but pod CIDR and node IP).
    pub fn settings(&self, state_dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut map: serde_json::Map<String, serde_json::Value> = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => serde_json::Map::new(),
        };
        let s = |v: &dyn ToString| serde_json::Value::String(v.to_string());
        let mut set = |key: &str, value: Option<serde_json::Value>| {
            if let Some(v) = value {
                map.insert(key.to_owned(), v);
            }
        };
        let cluster_cidr = podnet::config::split_by_family("--cluster-cidr", &self.cluster_cidr)?;
        set("cluster_cidr", cluster_cidr.v4.map(|v| s(&v)));
        set("cluster_cidr6", cluster_cidr.v6.map(|v| s(&v)));
        set("uplink", self.uplink.as_ref().map(|v| s(v)));
        set(
            "netns",
            self.netns.as_ref().map(|v| s(&netns_path(v).display())),
        );
        set("pin_dir", self.pin_dir.as_ref().map(|v| s(&v.display())));
        set("mode", self.mode.as_ref().map(|v| s(v)));
        let service_cidr = podnet::config::split_by_family("--service-cidr", &self.service_cidr)?;
        set("service_cidr", service_cidr.v4.map(|v| s(&v)));
        set("service_cidr6", service_cidr.v6.map(|v| s(&v)));
        set("bridge", self.bridge.as_ref().map(|v| s(v)));
        set("gc_interval", self.gc_interval.map(serde_json::Value::from));
        set("state_dir", Some(s(&state_dir.display())));
        for required in ["cluster_cidr", "uplink"] {
            if !map.contains_key(required) {
                bail!(
                    "podnet agent needs --{} (or it in --config)",
                    required.replace('_', "-")
                );
            }
        }
        Ok(map)
    }

    /// The node's namespace, if the agent runs for a node in one.
    pub fn netns(&self) -> Option<PathBuf> {
        self.netns.as_deref().map(netns_path)
    }
}

#[derive(Subcommand)]
pub enum NodePortCommand {
    /// Expose backends on nodeIP:PORT.
    Add(NodePortArgs),
    /// Replace the backends of an existing NodePort (new connections only).
    Set(NodePortArgs),
    /// Remove a NodePort (established connections finish on their backends).
    Del {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tcp")]
        proto: Proto,
    },
    /// List the NodePorts and their backends.
    List,
    /// Make the NodePorts exactly those in FILE (a JSON array of {"port", "proto", "backends",
    /// "policy"}; `-` reads standard input), all checked before any change. CNI host ports are
    /// left alone.
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct NodePortArgs {
    /// The port on the node IP (within the node's NodePort range, default 30000-32767).
    #[arg(long)]
    pub port: u16,
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    pub proto: Proto,
    /// A backend: POD:PORT (a local pod) or IP:PORT (a local pod, or with policy cluster a pod
    /// on a peer node). Repeat for more.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<BackendSpec>,
    /// cluster: backends on any node (remote ones see this node's IP as the client);
    /// local: only this node's pods, the client's address always preserved. `set` keeps the
    /// NodePort's policy.
    #[arg(long, default_value = "cluster")]
    pub policy: Policy,
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Make the node's service table exactly FILE's (`-`: standard input), all checked before
    /// any change: {"services": [{"metadata": {...}, "spec": {...}, "status": {...},
    /// "endpoints": [...]}]}, in Kubernetes' field names (see the README).
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// List the services with their frontends and endpoints.
    List,
    /// Show one service, NAMESPACE/NAME (or NAME in `default`).
    Show { name: String },
    /// Remove one service (established connections finish on their backends).
    Del { name: String },
}

#[derive(Subcommand)]
pub enum ConntrackCommand {
    /// List every entry: two per flow, the original direction and the reply.
    List,
    /// Remove dead flows (both entries expired). With --every, keep doing so.
    Gc {
        /// Repeat every this many seconds until interrupted.
        #[arg(long)]
        every: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum PodCommand {
    /// Give a pod its network (creates its namespace unless --netns is given).
    Add {
        name: String,
        /// Use this existing network namespace (a path, e.g. /run/netns/x or /proc/PID/ns/net).
        #[arg(long)]
        netns: Option<PathBuf>,
    },
    /// Remove everything `pod add` made. Succeeds if the pod is already gone.
    Del { name: String },
    /// List the node's pods.
    List,
}

fn netns_path(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    }
}

/// Puts `--ct-timeout` values over the config file's `ct_timeouts` (each field on its own).
fn merge_timeouts(
    settings: &mut serde_json::Map<String, serde_json::Value>,
    ct_timeouts: Vec<(String, u32)>,
) {
    if ct_timeouts.is_empty() {
        return;
    }
    let mut timeouts = match settings.remove("ct_timeouts") {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    for (name, secs) in ct_timeouts {
        timeouts.insert(name, serde_json::Value::from(secs));
    }
    settings.insert(
        "ct_timeouts".to_owned(),
        serde_json::Value::Object(timeouts),
    );
}

/// A CIDR of either family, parsed as the family its text is (a ':' makes it IPv6), so the
/// error names what is wrong with it (`invalid prefix`) rather than that it is neither family.
pub fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    if text.contains(':') {
        text.parse::<Ipv6Network>()
            .map(IpNetwork::V6)
            .map_err(|e| e.to_string())
    } else {
        text.parse::<Ipv4Network>()
            .map(IpNetwork::V4)
            .map_err(|e| e.to_string())
    }
}

/// `--pod-cidr` and `--cluster-cidr` (each repeatable, at most one CIDR per family) as the
/// settings' per-family fields.
fn cidrs_by_family(
    pod_cidr: &[IpNetwork],
    cluster_cidr: &[IpNetwork],
) -> Result<[(&'static str, Option<IpNetwork>); 4]> {
    let pod = podnet::config::split_by_family("--pod-cidr", pod_cidr)?;
    let cluster = podnet::config::split_by_family("--cluster-cidr", cluster_cidr)?;
    Ok([
        ("pod_cidr", pod.v4.map(IpNetwork::V4)),
        ("pod_cidr6", pod.v6.map(IpNetwork::V6)),
        ("cluster_cidr", cluster.v4.map(IpNetwork::V4)),
        ("cluster_cidr6", cluster.v6.map(IpNetwork::V6)),
    ])
}

/// An IPv6 pod CIDR alone is an IPv6-only node, which the datapath cannot run yet (its
/// configuration, SNAT and services are IPv4).
fn refuse_ipv6_only(settings: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    if !settings.contains_key("pod_cidr") && settings.contains_key("pod_cidr6") {
        bail!(
            "node init needs an IPv4 --pod-cidr too: IPv6-only nodes are not supported yet (a dual-stack node takes --pod-cidr twice, once per family)"
        );
    }
    Ok(())
}

/// Settings for `node init`: the config file (if any), then flags on top, then defaults.
/// `--non-masquerade-cidr` values as the settings' two lists (IPv4, IPv6), in JSON.
fn exclusions_by_family(cidrs: &[IpNetwork]) -> [serde_json::Value; 2] {
    let list = |v6: bool| {
        serde_json::Value::Array(
            cidrs
                .iter()
                .filter(|c| matches!(c, IpNetwork::V6(_)) == v6)
                .map(|c| serde_json::Value::String(c.to_string()))
                .collect(),
        )
    };
    [list(false), list(true)]
}

pub fn init_settings(state_dir: &Path, args: InitArgs) -> Result<NodeSettings> {
    let InitArgs {
        config,
        pod_cidr,
        cluster_cidr,
        uplink,
        node_ip,
        node_ip6,
        bridge,
        pin_dir,
        ipam_dir,
        netns,
        netns_dir,
        mtu,
        endpoints_max,
        debug,
        snat_ports,
        nodeport_range,
        conntrack_max,
        services_max,
        ct_timeouts,
        no_anti_spoof,
        mode,
        cluster,
        gc_interval,
        cgroup,
        service_cidr,
        no_socket_lb,
        load_balancing,
        non_masquerade_cidrs,
        ebpf_object: _,
    } = args;
    let mut settings: serde_json::Map<String, serde_json::Value> = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => serde_json::Map::new(),
    };
    let mut set = |key: &str, value: Option<serde_json::Value>| {
        if let Some(v) = value {
            settings.insert(key.to_owned(), v);
        }
    };
    let s = |v: &dyn ToString| serde_json::Value::String(v.to_string());
    for (key, cidr) in cidrs_by_family(&pod_cidr, &cluster_cidr)? {
        set(key, cidr.map(|v| s(&v)));
    }
    set("uplink", uplink.map(|v| s(&v)));
    set("node_ip", node_ip.map(|v| s(&v)));
    set("node_ip6", node_ip6.map(|v| s(&v)));
    set("bridge", bridge.map(|v| s(&v)));
    set("pin_dir", pin_dir.map(|v| s(&v.display())));
    set("ipam_dir", ipam_dir.map(|v| s(&v.display())));
    set("netns", netns.map(|v| s(&netns_path(&v).display())));
    set("netns_dir", netns_dir.map(|v| s(&v.display())));
    set("mtu", mtu.map(serde_json::Value::from));
    set("endpoints_max", endpoints_max.map(serde_json::Value::from));
    if debug {
        set("debug", Some(serde_json::Value::Bool(true)));
    }
    set("snat_ports", snat_ports.map(|v| s(&v)));
    set("nodeport_range", nodeport_range.map(|v| s(&v)));
    set("conntrack_max", conntrack_max.map(serde_json::Value::from));
    set("services_max", services_max.map(serde_json::Value::from));
    set("cgroup", cgroup.map(|v| s(&v.display())));
    set("gc_interval", gc_interval.map(serde_json::Value::from));
    set("cluster", cluster.map(|v| s(&v.display())));
    set("mode", mode.map(|v| s(&v)));
    let service_cidr = podnet::config::split_by_family("--service-cidr", &service_cidr)?;
    set("service_cidr", service_cidr.v4.map(|v| s(&v)));
    set("service_cidr6", service_cidr.v6.map(|v| s(&v)));
    set("load_balancing", load_balancing.map(|v| s(&v)));
    if no_socket_lb {
        set("socket_lb", Some(serde_json::Value::Bool(false)));
    }
    if !non_masquerade_cidrs.is_empty() {
        let [v4, v6] = exclusions_by_family(&non_masquerade_cidrs);
        set("non_masquerade_cidrs", Some(v4));
        set("non_masquerade_cidrs6", Some(v6));
    }
    if no_anti_spoof {
        set("anti_spoof", Some(serde_json::Value::Bool(false)));
    }

    set("state_dir", Some(s(&state_dir.display())));
    merge_timeouts(&mut settings, ct_timeouts);
    refuse_ipv6_only(&settings)?;
    for required in ["pod_cidr", "cluster_cidr", "uplink"] {
        if !settings.contains_key(required) {
            bail!(
                "node init needs --{} (or it in --config)",
                required.replace('_', "-")
            );
        }
    }
    serde_json::from_value(serde_json::Value::Object(settings)).context("invalid node settings")
}
