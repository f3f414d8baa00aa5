//! Command-line interface. Every command prints a human-readable report, or JSON with `--json`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipnetwork::Ipv4Network;
use podnet::{
    conntrack,
    datapath::{loader, maps::PinnedMaps, object::EbpfObject},
    netns::Netns,
    node::{self, NodeSettings},
    nodeport, pod,
};
use serde::Serialize;

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
    /// Inspect and collect the connection-tracking (NAT) table.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Follow the datapath's per-packet debug log (needs `node init --debug`).
    Log {
        /// Stop after this many seconds (default: until interrupted).
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
    config: Option<PathBuf>,
    /// This node's pod CIDR, e.g. 10.244.0.0/24.
    #[arg(long)]
    pod_cidr: Option<Ipv4Network>,
    /// The cluster CIDR, e.g. 10.244.0.0/16.
    #[arg(long)]
    cluster_cidr: Option<Ipv4Network>,
    /// The uplink interface.
    #[arg(long)]
    uplink: Option<String>,
    /// The node's IP (default: the uplink's first IPv4 address).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// Bridge name.
    #[arg(long)]
    bridge: Option<String>,
    /// bpffs directory for this node's pins.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// IPAM directory (default: <state-dir>/ipam).
    #[arg(long)]
    ipam_dir: Option<PathBuf>,
    /// The node's network namespace: a name under /run/netns or a path. Recorded; later
    /// commands enter it by themselves.
    #[arg(long)]
    netns: Option<String>,
    /// Where `pod add` creates pod namespaces.
    #[arg(long)]
    netns_dir: Option<PathBuf>,
    /// Pod interface MTU (default: the uplink's).
    #[arg(long)]
    mtu: Option<u32>,
    /// Size of the endpoints map.
    #[arg(long)]
    endpoints_max: Option<u32>,
    /// Compile per-packet debug logging into the programs.
    #[arg(long)]
    debug: bool,
    /// Ports SNAT allocates from, MIN-MAX (default 1024-29999).
    #[arg(long)]
    snat_ports: Option<node::PortRange>,
    /// Ports NodePorts may use, MIN-MAX (default 30000-32767).
    #[arg(long)]
    nodeport_range: Option<node::PortRange>,
    /// Conntrack entries admitted before new flows are refused (two per flow; default 262144).
    #[arg(long)]
    conntrack_max: Option<u32>,
    /// Entries in the services map: one per frontend, per backend slot and per ClusterIP
    /// address (default 524288: 30,000 services with 300,000 backends).
    #[arg(long)]
    services_max: Option<u32>,
    /// A conntrack timeout, NAME=SECONDS; NAME is tcp_syn, tcp_established, tcp_closing, udp,
    /// udp_stream or icmp. Repeat for more.
    #[arg(long = "ct-timeout", value_parser = parse_timeout)]
    ct_timeouts: Vec<(String, u32)>,
    /// Let pods send from addresses other than their own (anti-spoofing is on by default).
    #[arg(long)]
    no_anti_spoof: bool,
    /// The service CIDR (e.g. 10.96.0.0/12): pod traffic to an address in it that is no
    /// podnet service goes to the kernel unchanged.
    #[arg(long)]
    service_cidr: Option<Ipv4Network>,
    /// Balance pods' service traffic per packet at their veth only, not at their sockets.
    #[arg(long)]
    no_socket_lb: bool,
    /// native (default): other nodes' pods over the fabric by node IP; vxlan: an overlay.
    #[arg(long)]
    mode: Option<String>,
    /// A cluster file, {"nodes": [{"name", "node_ip", "pod_cidr"}, ...]}: every other node
    /// becomes a peer.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Seconds between conntrack collection passes (default 10; 0: no collector process).
    #[arg(long)]
    gc_interval: Option<u32>,
    /// cgroup v2 directory whose sockets reach NodePorts on the node IP (default: the root of
    /// the cgroup2 hierarchy).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Load the eBPF programs from this object file instead of the one built into podnet (a
    /// rebuilt program version; the node's maps and flows are kept). Not recorded: a later
    /// `node init` without it loads the built-in programs again.
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
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
    bin_dir: PathBuf,
    /// Where the runtime reads network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The mode written as 10-podnet.conflist (the other one as an .example).
    #[arg(long, default_value = "standalone")]
    mode: String,
    /// The node's pod CIDR, e.g. 10.244.1.0/24.
    #[arg(long)]
    pod_cidr: Ipv4Network,
    /// The cluster CIDR, e.g. 10.244.0.0/16.
    #[arg(long)]
    cluster_cidr: Ipv4Network,
    /// The uplink interface.
    #[arg(long)]
    uplink: String,
    /// bpffs directory for this node's pins.
    #[arg(long, default_value = "/sys/fs/bpf/podnet")]
    pin_dir: PathBuf,
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
        proto: nodeport::Proto,
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
    port: u16,
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    proto: nodeport::Proto,
    /// A backend: POD:PORT (a local pod) or IP:PORT (a local pod, or with policy cluster a pod
    /// on a peer node). Repeat for more.
    #[arg(long = "backend", required = true)]
    backends: Vec<nodeport::BackendSpec>,
    /// cluster: backends on any node (remote ones see this node's IP as the client);
    /// local: only this node's pods, the client's address always preserved. `set` keeps the
    /// NodePort's policy.
    #[arg(long, default_value = "cluster")]
    policy: nodeport::Policy,
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

/// Enters the node's namespace for the whole process. Called before any other thread exists.
fn enter_node_netns(path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        Netns::open(path)
            .and_then(|ns| ns.enter())
            .with_context(|| format!("entering the node's namespace {}", path.display()))?;
    }
    Ok(())
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("reports always serialize")
        );
    } else {
        println!("{}", text(value));
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let Cli {
        state_dir,
        json,
        command,
    } = cli;
    match command {
        Command::Node(NodeCommand::Init(mut args)) => {
            // Read and check a given object first, so a bad one changes nothing.
            let object = match args.ebpf_object.take() {
                Some(path) => EbpfObject::from_file(&path)?,
                None => EbpfObject::embedded(),
            };
            let settings = init_settings(&state_dir, *args)?;
            enter_node_netns(settings.netns.as_deref())?;
            let report = node::init_with(settings, &object)?;
            let exe = std::env::current_exe().context("locating the podnet binary")?;
            let collector = podnet::collector::start(&report.settings, &exe)?;
            #[derive(Serialize)]
            struct InitView {
                #[serde(flatten)]
                report: node::InitReport,
                collector: podnet::collector::Collector,
            }
            let view = InitView { report, collector };
            print(
                json,
                &view,
                |InitView {
                     report: r,
                     collector,
                 }| {
                    format!(
                        "node ready: node IP {}, pod CIDR {} (gateway {} on {}), uplink {}\n{}\n{collector}",
                        r.settings
                            .node_ip
                            .map_or_else(String::new, |ip| ip.to_string()),
                        r.settings.pod_cidr,
                        r.settings.gateway(),
                        r.settings.bridge,
                        r.settings.uplink,
                        loader::describe(&r.load)
                    )
                },
            );
        }
        Command::Demo(args) => crate::demo::run(&args)?,
        Command::InstallCni(args) => install_cni(&state_dir, json, args)?,
        command => {
            let settings = NodeSettings::load(&state_dir)?;
            enter_node_netns(settings.netns.as_deref())?;
            run_on_node(&settings, json, command)?;
        }
    }
    Ok(())
}

fn run_on_node(settings: &NodeSettings, json: bool, command: Command) -> Result<()> {
    match command {
        Command::Node(NodeCommand::Status) => {
            let status = node::status(settings)?;
            print(json, &status, |s| {
                format!(
                    "node: {} pod CIDR {} cluster CIDR {} uplink {} bridge {}\npins: {}\nprograms: {}\nattached to: {}\npods: {}  endpoints: {}  IPs allocated: {}  ready: {}",
                    s.settings
                        .node_ip
                        .map_or_else(String::new, |ip| ip.to_string()),
                    s.settings.pod_cidr,
                    s.settings.cluster_cidr,
                    s.settings.uplink,
                    s.settings.bridge,
                    s.settings.pin_dir.display(),
                    s.programs.join(", "),
                    s.attached.join(", "),
                    s.pods,
                    s.endpoints,
                    s.ipam_allocated,
                    s.ready,
                )
            });
        }
        Command::Node(NodeCommand::Reset) => {
            let report = node::reset(settings)?;
            print(json, &report, |r| {
                format!(
                    "node reset: {} pod(s) deleted, {} pin(s) removed, {} CNI attachment record(s) removed, bridge deleted: {}, conntrack collector stopped: {}",
                    r.pods_deleted.len(),
                    r.pins_removed,
                    r.cni_records_removed,
                    r.bridge_deleted,
                    r.collector_stopped
                )
            });
        }
        Command::Pod(PodCommand::Add { name, netns }) => {
            let record = pod::add(settings, &name, netns.as_deref())?;
            print(json, &record, |r| {
                format!(
                    "pod {} added: {} on eth0 (mac {}), gateway {}, netns {}, host veth {}",
                    r.name,
                    r.address,
                    r.mac,
                    r.gateway,
                    r.netns.display(),
                    r.host_if
                )
            });
        }
        Command::Pod(PodCommand::Del { name }) => {
            let report = pod::del(settings, &name)?;
            print(json, &report, |r| {
                if r.existed || r.veth_removed || !r.released.is_empty() {
                    format!("pod {} deleted", r.name)
                } else {
                    format!("pod {} was already gone", r.name)
                }
            });
        }
        Command::Pod(PodCommand::List) => {
            let pods = pod::list(settings)?;
            print(json, &pods, |pods| {
                let mut out = format!(
                    "{:<20} {:<18} {:<18} {:<12} NETNS",
                    "NAME", "IP", "MAC", "HOST-VETH"
                );
                for p in pods {
                    out.push_str(&format!(
                        "\n{:<20} {:<18} {:<18} {:<12} {}",
                        p.name,
                        p.address,
                        p.mac,
                        p.host_if,
                        p.netns.display()
                    ));
                }
                out
            });
        }
        Command::Maps => {
            let maps = PinnedMaps::open(&settings.pin_dir)?;
            #[derive(Serialize)]
            struct MapsView {
                config: podnet::datapath::maps::ConfigView,
                endpoints: Vec<podnet::datapath::maps::EndpointEntry>,
            }
            let view = MapsView {
                config: maps.config()?.into(),
                endpoints: maps.endpoints()?,
            };
            print(json, &view, |v| {
                let mut out = format!("CONFIG: {}\nENDPOINTS ({}):", v.config, v.endpoints.len());
                for e in &v.endpoints {
                    out.push_str(&format!(
                        "\n  {:<15} -> ifindex {:<5} mac {} netns {}",
                        e.ip, e.ifindex, e.mac, e.netns_ino
                    ));
                }
                out
            });
        }
        Command::Stats => {
            let maps = PinnedMaps::open(&settings.pin_dir)?;
            #[derive(Serialize)]
            struct StatsView {
                reasons: Vec<podnet::datapath::maps::ReasonCount>,
                conntrack: conntrack::Usage,
                /// New flows being refused, one line per cause (empty when none are).
                warnings: Vec<String>,
            }
            let reasons = maps.stats()?;
            let config = maps.config()?;
            let view = StatsView {
                warnings: stats_warnings(&reasons, &config),
                reasons,
                conntrack: conntrack::usage(&maps)?,
            };
            print(json, &view, |v| {
                let mut out = format!("{:<26} {:>12} {:>14}", "REASON", "PACKETS", "BYTES");
                for s in &v.reasons {
                    out.push_str(&format!(
                        "\n{:<26} {:>12} {:>14}",
                        s.reason, s.packets, s.bytes
                    ));
                }
                out.push_str(&format!(
                    "\nconntrack: {} of {} entries in use ({} flows)",
                    v.conntrack.live,
                    v.conntrack.limit,
                    v.conntrack.live / 2
                ));
                for w in &v.warnings {
                    out.push_str(&format!("\nWARNING: {w}"));
                }
                out
            });
        }
        Command::Nodeport(cmd) => run_nodeport(settings, json, cmd)?,
        Command::Node(NodeCommand::Peer(cmd)) => run_peer(settings, json, cmd)?,
        Command::Conntrack(ConntrackCommand::List) => {
            let flows = conntrack::list(settings)?;
            print(json, &flows, |flows| {
                let mut out = conntrack::header();
                for f in flows {
                    out.push_str(&format!("\n{f}"));
                }
                out.push_str(&format!("\n{} entries", flows.len()));
                out
            });
        }
        Command::Conntrack(ConntrackCommand::Gc { every }) => loop {
            if every.is_some() && !NodeSettings::node_file(&settings.state_dir).exists() {
                // The node was reset: a periodic collector ends with it.
                break;
            }
            let report = conntrack::gc(settings)?;
            print(json, &report, |r| {
                format!(
                    "conntrack gc: scanned {} entries, removed {} dead; {} of {} in use",
                    r.scanned, r.removed, r.usage.live, r.usage.limit
                )
            });
            match every {
                Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs.max(1))),
                None => break,
            }
        },
        Command::Log { seconds } => podnet::datapath::log::follow(
            &settings.pin_dir,
            podnet_ebpf::abi::program_name::FROM_POD,
            seconds.map(std::time::Duration::from_secs),
        )?,
        Command::Gc { keep } => {
            let keep = keep
                .iter()
                .map(|k| {
                    k.split_once('/')
                        .map(|(id, ifname)| (id.to_owned(), ifname.to_owned()))
                        .with_context(|| format!("--keep {k:?} is not CONTAINERID/IFNAME"))
                })
                .collect::<Result<Vec<_>>>()?;
            let report = podnet::cni::gc_dead(settings, &keep)?;
            print(json, &report, |r| {
                format!(
                    "gc: {} attachment(s), {} host port(s), {} half-made pod(s), {} veth(s), {} address(es), {} endpoint(s) and {} temporary file(s) freed",
                    r.attachments.len(),
                    r.host_ports,
                    r.pods.len(),
                    r.veths.len(),
                    r.addresses.len(),
                    r.endpoints.len(),
                    r.temp_files
                )
            });
        }
        Command::Node(NodeCommand::Init(_)) | Command::Demo(_) | Command::InstallCni(_) => {
            unreachable!("handled before entering the node")
        }
    }
    Ok(())
}

fn install_cni(state_dir: &Path, json: bool, args: InstallCniArgs) -> Result<()> {
    let InstallCniArgs {
        bin_dir,
        conf_dir,
        mode,
        pod_cidr,
        cluster_cidr,
        uplink,
        pin_dir,
    } = args;
    let mode: podnet::cni::spec::Mode =
        serde_json::from_value(serde_json::Value::String(mode.clone()))
            .map_err(|_| anyhow::anyhow!("--mode {mode:?} is not chained or standalone"))?;
    let settings: NodeSettings = serde_json::from_value(serde_json::json!({
        "pod_cidr": pod_cidr.to_string(),
        "cluster_cidr": cluster_cidr.to_string(),
        "uplink": uplink,
        "pin_dir": pin_dir,
        "state_dir": state_dir,
    }))
    .context("invalid node settings")?;
    settings.validate()?;
    let exe = std::env::current_exe().context("locating the podnet binary")?;
    let report = podnet::cni::install::install(&exe, &bin_dir, &conf_dir, &settings, mode)?;
    print(json, &report, |r| {
        format!(
            "installed {} and {} (example of the other mode: {})",
            r.binary.display(),
            r.network.display(),
            r.example.display()
        )
    });
    Ok(())
}

/// The lines under `podnet stats` that cannot be missed: one per cause of refused new flows
/// (the counters are cumulative since the maps were created).
fn stats_warnings(
    reasons: &[podnet::datapath::maps::ReasonCount],
    config: &podnet_ebpf::abi::NodeConfig,
) -> Vec<String> {
    let packets = |reason: &str| {
        reasons
            .iter()
            .find(|r| r.reason == reason)
            .map_or(0, |r| r.packets)
    };
    let mut warnings = Vec::new();
    let ct_full = packets("drop_ct_full");
    if ct_full > 0 {
        warnings.push(format!(
            "conntrack table full: {ct_full} packet(s) of new flows refused; raise --conntrack-max or run `podnet conntrack gc`"
        ));
    }
    let no_port = packets("drop_nat_no_port");
    if no_port > 0 {
        warnings.push(format!(
            "SNAT ports exhausted: {no_port} packet(s) of new flows refused, no free port in {}-{} toward their destination; widen --snat-ports or run `podnet conntrack gc`",
            config.snat_port_min, config.snat_port_max
        ));
    }
    warnings
}

fn run_peer(settings: &NodeSettings, json: bool, cmd: PeerCommand) -> Result<()> {
    let line = |p: &podnet::peers::PeerNode| format!("{} {} via {}", p.name, p.pod_cidr, p.node_ip);
    match cmd {
        PeerCommand::Add {
            name,
            node_ip,
            pod_cidr,
        } => {
            let peer = podnet::peers::add(
                settings,
                podnet::peers::PeerNode {
                    name,
                    node_ip,
                    pod_cidr,
                },
            )?;
            print(json, &peer, |p| format!("peer added: {}", line(p)));
        }
        PeerCommand::Del { name } => {
            let peer = podnet::peers::del(settings, &name)?;
            print(json, &peer, |p| format!("peer deleted: {}", line(p)));
        }
        PeerCommand::List => {
            let peers = podnet::peers::list(settings)?;
            print(json, &peers, |peers| {
                let mut out = format!("{:<20} {:<18} NODE-IP", "NAME", "POD-CIDR");
                for p in peers {
                    out.push_str(&format!(
                        "\n{:<20} {:<18} {}",
                        p.name,
                        p.pod_cidr.to_string(),
                        p.node_ip
                    ));
                }
                out
            });
        }
    }
    Ok(())
}

fn run_nodeport(settings: &NodeSettings, json: bool, cmd: NodePortCommand) -> Result<()> {
    let describe = |np: &nodeport::NodePort| {
        format!(
            "{}/{} -> {}",
            np.port,
            np.proto,
            np.backends
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let node_ip = settings
        .node_ip
        .map_or_else(|| "nodeIP".to_owned(), |ip| ip.to_string());
    match cmd {
        NodePortCommand::Add(NodePortArgs {
            port,
            proto,
            backends,
            policy,
        }) => {
            let np = nodeport::add(settings, port, proto, &backends, policy)?;
            print(json, &np, |np| {
                format!("nodeport added: {node_ip}:{}", describe(np))
            });
        }
        NodePortCommand::Set(NodePortArgs {
            port,
            proto,
            backends,
            policy: _,
        }) => {
            let np = nodeport::set(settings, port, proto, &backends)?;
            print(json, &np, |np| {
                format!("nodeport updated: {node_ip}:{}", describe(np))
            });
        }
        NodePortCommand::Del { port, proto } => {
            let np = nodeport::del(settings, port, proto)?;
            print(json, &np, |np| {
                format!("nodeport deleted: {node_ip}:{}", describe(np))
            });
        }
        NodePortCommand::Apply { file } => {
            let specs = nodeport::read_specs(&file)?;
            let summary = nodeport::apply(settings, &specs)?;
            print(json, &summary, |s| {
                format!(
                    "nodeports applied: {} added, {} updated, {} removed, {} unchanged",
                    s.added, s.updated, s.removed, s.unchanged
                )
            });
        }
        NodePortCommand::List => {
            let ports = nodeport::list(settings)?;
            print(json, &ports, |ports| {
                let mut out = format!("{:<7} {:<5} BACKENDS", "PORT", "PROTO");
                for np in ports {
                    out.push_str(&format!(
                        "\n{:<7} {:<5} {}",
                        np.port,
                        np.proto,
                        np.backends
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                out
            });
        }
    }
    Ok(())
}

/// Settings for `node init`: the config file (if any), then flags on top, then defaults.
fn init_settings(state_dir: &Path, args: InitArgs) -> Result<NodeSettings> {
    let InitArgs {
        config,
        pod_cidr,
        cluster_cidr,
        uplink,
        node_ip,
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
        service_cidr,
        no_socket_lb,
        mode,
        cluster,
        gc_interval,
        cgroup,
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
    set("pod_cidr", pod_cidr.map(|v| s(&v)));
    set("cluster_cidr", cluster_cidr.map(|v| s(&v)));
    set("uplink", uplink.map(|v| s(&v)));
    set("node_ip", node_ip.map(|v| s(&v)));
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
    if no_anti_spoof {
        set("anti_spoof", Some(serde_json::Value::Bool(false)));
    }
    set("service_cidr", service_cidr.map(|v| s(&v)));
    if no_socket_lb {
        set("socket_lb", Some(serde_json::Value::Bool(false)));
    }

    set("state_dir", Some(s(&state_dir.display())));
    if !ct_timeouts.is_empty() {
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
