//! Command-line interface. Every command prints a human-readable report, or JSON with `--json`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipnetwork::Ipv4Network;
use podnet::{
    datapath::{loader, maps::PinnedMaps},
    netns::Netns,
    node::{self, NodeSettings},
    pod,
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
    /// Show the datapath's per-reason packet counters.
    Stats,
    /// Follow the datapath's per-packet debug log (needs `node init --debug`).
    Log {
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Run a self-contained demo in network namespaces (a node, an outside host and pods).
    Demo(crate::demo::DemoArgs),
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Create the bridge, enable forwarding, load and pin the datapath. Safe to re-run.
    Init(Box<InitArgs>),
    /// Show the node's settings and what is loaded and attached.
    Status,
    /// Remove every pod, pin, the bridge and the node's state.
    Reset,
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
        Command::Node(NodeCommand::Init(args)) => {
            let settings = init_settings(&state_dir, *args)?;
            enter_node_netns(settings.netns.as_deref())?;
            let report = node::init(settings)?;
            print(json, &report, |r| {
                format!(
                    "node ready: node IP {}, pod CIDR {} (gateway {} on {}), uplink {}\n{}",
                    r.settings
                        .node_ip
                        .map_or_else(String::new, |ip| ip.to_string()),
                    r.settings.pod_cidr,
                    r.settings.gateway(),
                    r.settings.bridge,
                    r.settings.uplink,
                    loader::describe(&r.load)
                )
            });
        }
        Command::Demo(args) => crate::demo::run(&args)?,
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
                    "node reset: {} pod(s) deleted, {} pin(s) removed, bridge deleted: {}",
                    r.pods_deleted.len(),
                    r.pins_removed,
                    r.bridge_deleted
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
            let stats = PinnedMaps::open(&settings.pin_dir)?.stats()?;
            print(json, &stats, |stats| {
                let mut out = format!("{:<26} {:>12} {:>14}", "REASON", "PACKETS", "BYTES");
                for s in stats {
                    out.push_str(&format!(
                        "\n{:<26} {:>12} {:>14}",
                        s.reason, s.packets, s.bytes
                    ));
                }
                out
            });
        }
        Command::Log { seconds } => podnet::datapath::log::follow(
            &settings.pin_dir,
            podnet_ebpf::abi::program_name::FROM_POD,
            seconds.map(std::time::Duration::from_secs),
        )?,
        Command::Node(NodeCommand::Init(_)) | Command::Demo(_) => {
            unreachable!("handled before entering the node")
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
    set("state_dir", Some(s(&state_dir.display())));
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
