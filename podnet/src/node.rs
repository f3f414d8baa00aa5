//! A node: its settings (pod and cluster CIDRs, uplink, bridge, per-node directories, the
//! namespace it lives in), `node init` which builds the bridge and loads the datapath, and
//! `node status` / `node reset`.
//!
//! The node's namespace is chosen at `node init --netns NAME|PATH` and recorded in
//! `<state_dir>/node.json`; every later command reads it and enters that namespace first, before
//! any thread starts. Without `--netns`, the node is the namespace podnet runs in.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{
    ABI_VERSION, CtTimeouts, DEFAULT_CT_LIMIT, DEFAULT_ENDPOINTS_MAX, DEFAULT_NODEPORT_MAX,
    DEFAULT_NODEPORT_MIN, DEFAULT_SERVICES_MAX, DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN,
    NodeConfig, config_flag, map_name, program_name,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{self, DatapathError, loader, maps::PinnedMaps, object::EbpfObject},
    link::{self, LinkError, Netlink},
    state::{self, FileLock, StateError},
};

/// Everything that identifies and configures one node. Several nodes may share a machine: each
/// has its own namespace, pin directory, state directory and IPAM directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's pod CIDR (addresses for its pods).
    pub pod_cidr: Ipv4Network,
    /// The cluster CIDR, which every node's pod CIDR is carved from.
    pub cluster_cidr: Ipv4Network,
    /// The uplink interface, in the node's namespace.
    pub uplink: String,
    /// The node's IP; the uplink's first IPv4 address when not given.
    #[serde(default)]
    pub node_ip: Option<Ipv4Addr>,
    /// The bridge that carries the gateway address and the slow path.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// bpffs directory for this node's maps, programs and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Directory for node.json, pod records and locks.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Directory for IPAM records; `<state_dir>/ipam` when not given.
    #[serde(default)]
    pub ipam_dir: Option<PathBuf>,
    /// The node's network namespace; `None` means the namespace podnet runs in.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Where `pod add` creates pod namespaces (like `ip netns add`).
    #[serde(default = "default_netns_dir")]
    pub netns_dir: PathBuf,
    /// MTU for pod interfaces; the uplink's MTU when not given.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Entries in the endpoints map.
    #[serde(default = "default_endpoints_max")]
    pub endpoints_max: u32,
    /// Per-packet debug logging compiled into the programs at load time.
    #[serde(default)]
    pub debug: bool,
    /// Ports SNAT allocates from (also ICMP echo identifiers).
    #[serde(default = "default_snat_ports")]
    pub snat_ports: PortRange,
    /// Ports `nodeport add` accepts.
    #[serde(default = "default_nodeport_range")]
    pub nodeport_range: PortRange,
    /// Conntrack entries admitted (two per flow) before new flows are refused.
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: u32,
    /// Entries in the services map (one per NodePort plus one per backend).
    #[serde(default = "default_services_max")]
    pub services_max: u32,
    /// Conntrack idle timeouts in seconds.
    #[serde(default)]
    pub ct_timeouts: CtTimeouts,
    /// Pods may only send from their own IP and MAC; spoofed packets are dropped and counted.
    #[serde(default = "default_anti_spoof")]
    pub anti_spoof: bool,
    /// How pods reach other nodes' pods: `native` routing over the fabric, or a `vxlan`
    /// overlay for fabrics that know nothing about pod CIDRs.
    #[serde(default)]
    pub mode: RoutingMode,
    /// The overlay's VXLAN device (overlay mode).
    #[serde(default = "default_vxlan_device")]
    pub vxlan_device: String,
    /// A cluster description (every node's name, node IP and pod CIDR) to take the peers from
    /// at `node init`; `node peer add|del` change them afterwards.
    #[serde(default)]
    pub cluster: Option<PathBuf>,
    /// Seconds between conntrack collection passes by the node's collector process; 0 turns
    /// the collector off (then run `podnet conntrack gc` yourself).
    #[serde(default = "default_gc_interval")]
    pub gc_interval: u32,
    /// cgroup (v2) whose sockets reach services (and NodePorts on the node IP) through the
    /// socket programs; the root of the cgroup2 hierarchy when not given.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The service CIDR: pod traffic to an address in it that is no podnet service goes to
    /// the kernel unchanged (never SNATed).
    #[serde(default)]
    pub service_cidr: Option<Ipv4Network>,
    /// Socket-level service balancing for pods' sockets too (on by default); off, pods'
    /// service traffic takes the per-packet path at their veth alone.
    #[serde(default = "default_socket_lb")]
    pub socket_lb: bool,
}

pub fn default_socket_lb() -> bool {
    true
}

/// How pods reach other nodes' pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Straight over the fabric to the node's IP (the fabric delivers node IPs).
    #[default]
    Native,
    /// Encapsulated in VXLAN between node IPs.
    Vxlan,
}

pub fn default_anti_spoof() -> bool {
    true
}

pub fn default_vxlan_device() -> String {
    "podnet-vxlan".to_owned()
}

/// An inclusive range of ports, written `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    pub fn overlaps(&self, other: &Self) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (min, max) = s
            .split_once('-')
            .ok_or_else(|| format!("port range {s:?} is not MIN-MAX"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} in port range {s:?} is not a port (0-65535)"))
        };
        let range = Self {
            min: port(min)?,
            max: port(max)?,
        };
        if range.min == 0 || range.min > range.max {
            return Err(format!(
                "port range {s:?} must be MIN-MAX with 1 <= MIN <= MAX"
            ));
        }
        Ok(range)
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(range: PortRange) -> Self {
        range.to_string()
    }
}

pub fn default_bridge() -> String {
    "podnet0".to_owned()
}
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/podnet")
}
pub fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/podnet")
}
pub fn default_netns_dir() -> PathBuf {
    PathBuf::from("/run/netns")
}
pub fn default_endpoints_max() -> u32 {
    DEFAULT_ENDPOINTS_MAX
}
pub fn default_snat_ports() -> PortRange {
    PortRange {
        min: DEFAULT_SNAT_PORT_MIN,
        max: DEFAULT_SNAT_PORT_MAX,
    }
}
pub fn default_nodeport_range() -> PortRange {
    PortRange {
        min: DEFAULT_NODEPORT_MIN,
        max: DEFAULT_NODEPORT_MAX,
    }
}
pub fn default_conntrack_max() -> u32 {
    DEFAULT_CT_LIMIT
}
pub fn default_services_max() -> u32 {
    DEFAULT_SERVICES_MAX
}

pub fn default_gc_interval() -> u32 {
    10
}

/// Possible CPUs, which size the conntrack map's headroom.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node settings: {0}")]
    Invalid(String),
    #[error("this node is not initialised (no {path}): run `podnet node init` first")]
    NotInitialised { path: PathBuf },
    #[error(
        "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or pass --cgroup"
    )]
    NoCgroup2,
    #[error("uplink {name} does not exist in the node's namespace")]
    NoUplink { name: String },
    #[error("uplink {name} has no IPv4 address; pass --node-ip")]
    NoNodeIp { name: String },
    #[error(
        "the node already runs with pod CIDR {current} and has {pods} pod(s); delete them (or `podnet node reset`) before changing it to {requested}"
    )]
    PodCidrInUse {
        current: Ipv4Network,
        requested: Ipv4Network,
        pods: usize,
    },
    #[error("deleting pod {name}: {source}")]
    PodDelete {
        name: String,
        #[source]
        source: Box<crate::pod::PodError>,
    },
    #[error("finding pods a killed `pod add` left half-made: {0}")]
    HalfMadePods(#[source] Box<crate::pod::PodError>),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error(transparent)]
    Peers(#[from] Box<crate::peers::PeerError>),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl NodeSettings {
    /// The gateway: the first host address of the pod CIDR, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1).unwrap_or(self.pod_cidr.network())
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ipam"))
    }

    /// The node's IPAM over its pod CIDR, excluding the gateway.
    pub fn ipam(&self) -> Result<crate::ipam::Ipam, crate::ipam::IpamError> {
        crate::ipam::Ipam::new(self.ipam_dir(), self.pod_cidr, self.gateway())
    }

    /// The cgroup the connect4 program is attached to.
    pub fn cgroup_dir(&self) -> Result<PathBuf, NodeError> {
        match &self.cgroup {
            Some(dir) => Ok(dir.clone()),
            None => datapath::cgroup::cgroup2_root().ok_or(NodeError::NoCgroup2),
        }
    }

    pub fn node_file(state_dir: &Path) -> PathBuf {
        state_dir.join("node.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    /// Reads the settings `node init` recorded.
    pub fn load(state_dir: &Path) -> Result<Self, NodeError> {
        let path = Self::node_file(state_dir);
        state::read_json(&path)?.ok_or(NodeError::NotInitialised { path })
    }

    /// Checks the settings, without touching the system.
    pub fn validate(&self) -> Result<(), NodeError> {
        let invalid = |msg: String| Err(NodeError::Invalid(msg));
        if self.pod_cidr.prefix() > 30 {
            return invalid(format!(
                "pod CIDR {} is too small: it needs room for a network, gateway, broadcast and at least one pod (/30 or larger)",
                self.pod_cidr
            ));
        }
        if self.pod_cidr.network() != self.pod_cidr.ip() {
            return invalid(format!(
                "pod CIDR {} has host bits set; did you mean {}/{}?",
                self.pod_cidr,
                self.pod_cidr.network(),
                self.pod_cidr.prefix()
            ));
        }
        if self.cluster_cidr.network() != self.cluster_cidr.ip() {
            return invalid(format!(
                "cluster CIDR {} has host bits set",
                self.cluster_cidr
            ));
        }
        if !(self.cluster_cidr.contains(self.pod_cidr.network())
            && self.cluster_cidr.prefix() <= self.pod_cidr.prefix())
        {
            return invalid(format!(
                "pod CIDR {} is not inside cluster CIDR {}",
                self.pod_cidr, self.cluster_cidr
            ));
        }
        if let Some(ip) = self.node_ip
            && self.cluster_cidr.contains(ip)
        {
            return invalid(format!(
                "node IP {ip} lies inside the cluster CIDR {}",
                self.cluster_cidr
            ));
        }
        if let Some(svc) = self.service_cidr {
            let overlaps = svc.contains(self.cluster_cidr.network())
                || self.cluster_cidr.contains(svc.network());
            if svc.network() != svc.ip() || svc.prefix() == 0 || overlaps {
                return invalid(format!(
                    "service CIDR {svc} must be a network address with a prefix of 1 to 32 bits, apart from the cluster CIDR {}",
                    self.cluster_cidr
                ));
            }
        }
        link::validate_ifname(&self.uplink)?;
        link::validate_ifname(&self.bridge)?;
        link::validate_ifname(&self.vxlan_device)?;
        if self.endpoints_max == 0 {
            return invalid("endpoints_max must be at least 1".to_owned());
        }
        if self.conntrack_max < 2 {
            return invalid("conntrack_max must be at least 2 (one flow)".to_owned());
        }
        if self.services_max == 0 {
            return invalid("services_max must be at least 1".to_owned());
        }
        if self.snat_ports.overlaps(&self.nodeport_range) {
            return invalid(format!(
                "SNAT ports {} overlap the NodePort range {}: a translated flow could take a NodePort",
                self.snat_ports, self.nodeport_range
            ));
        }
        let t = self.ct_timeouts;
        if [
            t.tcp_syn,
            t.tcp_established,
            t.tcp_closing,
            t.udp,
            t.udp_stream,
            t.icmp,
        ]
        .contains(&0)
        {
            return invalid("conntrack timeouts must be at least 1 second".to_owned());
        }
        if let Some(mtu) = self.mtu
            && !(576..=65_535).contains(&mtu)
        {
            return invalid(format!("MTU {mtu} is outside 576..=65535"));
        }
        Ok(())
    }
}

/// What `node init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub settings: NodeSettings,
    pub bridge_ifindex: u32,
    pub uplink_ifindex: u32,
    pub load: loader::LoadReport,
}

/// Runs `f` with a netlink handle on a fresh current-thread runtime in the calling thread's
/// namespace (the node's, once the binary has entered it).
pub fn with_netlink<T, F, Fut>(f: F) -> Result<T, NodeError>
where
    F: FnOnce(Netlink) -> Fut,
    Fut: Future<Output = Result<T, NodeError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    rt.block_on(async move {
        let nl = Netlink::new()?;
        f(nl).await
    })
}

/// What `node init` finds out before it changes anything.
struct Preflight {
    uplink: link::LinkInfo,
    node_ip: Ipv4Addr,
    mtu: u32,
    /// The peers of `--cluster`, checked.
    peers: Option<Vec<crate::peers::PeerNode>>,
}

/// Settings that passed [`check`], with what the check found out; [`Checked::init`] builds the
/// node from them without checking again.
pub struct Checked {
    settings: NodeSettings,
    preflight: Preflight,
}

impl Checked {
    /// [`init`] with the embedded eBPF object.
    pub fn init(self) -> Result<InitReport, NodeError> {
        self.init_with(&EbpfObject::embedded())
    }

    /// [`init_with`].
    pub fn init_with(self, object: &EbpfObject) -> Result<InitReport, NodeError> {
        build(self.settings, self.preflight, object)
    }
}

/// Checks everything `node init` could refuse in its input (the settings, the pin directory:
/// bpffs and maps pinned by another podnet version, the uplink and node IP, the cluster file)
/// while changing nothing, so a refused `node init` leaves nothing behind. Runs in the node's
/// namespace.
pub fn check(settings: NodeSettings) -> Result<Checked, NodeError> {
    let preflight = preflight(&settings)?;
    Ok(Checked {
        settings,
        preflight,
    })
}

fn preflight(settings: &NodeSettings) -> Result<Preflight, NodeError> {
    settings.validate()?;
    loader::check_pins(
        &settings.pin_dir,
        podnet_ebpf::abi::ct_map_entries(settings.conntrack_max, possible_cpus()),
    )?;
    let (uplink_name, given_ip) = (settings.uplink.clone(), settings.node_ip);
    let (uplink, node_ip) = with_netlink(|nl| async move {
        let uplink = nl.get(&uplink_name).await?.ok_or(NodeError::NoUplink {
            name: uplink_name.clone(),
        })?;
        let node_ip = match given_ip {
            Some(ip) => ip,
            None => nl
                .addresses(uplink.index)
                .await?
                .first()
                .map(|net| net.ip())
                .ok_or(NodeError::NoNodeIp { name: uplink_name })?,
        };
        Ok((uplink, node_ip))
    })?;
    // In overlay mode pods leave room for the encapsulation, so nothing is fragmented.
    let overhead = match settings.mode {
        RoutingMode::Native => 0,
        RoutingMode::Vxlan => podnet_ebpf::abi::VXLAN_OVERHEAD,
    };
    let mtu = settings
        .mtu
        .unwrap_or_else(|| uplink.mtu.saturating_sub(overhead));
    let mut derived = settings.clone();
    derived.node_ip = Some(node_ip);
    derived.mtu = Some(mtu);
    derived.validate()?;
    let cgroup = settings.cgroup_dir()?;
    if !cgroup.is_dir() {
        return Err(NodeError::Invalid(format!(
            "cgroup {} is not a directory",
            cgroup.display()
        )));
    }
    let peers = match &settings.cluster {
        Some(path) => Some(crate::peers::read_cluster(&derived, path).map_err(Box::new)?),
        None => None,
    };
    Ok(Preflight {
        mtu,
        uplink,
        node_ip,
        peers,
    })
}

/// Builds the node: bridge with the gateway address, forwarding, programs and maps. Safe to
/// re-run: existing maps (and so every pod's endpoint and all flow state) are reused, and the
/// programs attached to pods are swapped atomically for the new ones. Bad input is refused
/// before anything is changed ([`check`]).
pub fn init(settings: NodeSettings) -> Result<InitReport, NodeError> {
    check(settings)?.init()
}

/// [`init`] loading `object` instead of the embedded eBPF object: a rebuilt program version
/// replaces the running one, keeping the maps (endpoints, services, conntrack) as they are.
pub fn init_with(settings: NodeSettings, object: &EbpfObject) -> Result<InitReport, NodeError> {
    check(settings)?.init_with(object)
}

/// What [`init`] does once [`check`] has passed.
fn build(
    mut settings: NodeSettings,
    preflight: Preflight,
    object: &EbpfObject,
) -> Result<InitReport, NodeError> {
    let Preflight {
        uplink,
        node_ip,
        mtu,
        peers,
    } = preflight;
    settings.node_ip = Some(node_ip);
    settings.mtu = Some(mtu);
    state::ensure_private_dir(&settings.state_dir)?;
    let _lock = FileLock::exclusive(&settings.lock_file())?;
    if let Ok(current) = NodeSettings::load(&settings.state_dir)
        && current.pod_cidr != settings.pod_cidr
    {
        let pods = crate::pod::list(&current)?.len();
        if pods > 0 {
            return Err(NodeError::PodCidrInUse {
                current: current.pod_cidr,
                requested: settings.pod_cidr,
                pods,
            });
        }
    }

    let gateway = Ipv4Network::new(settings.gateway(), settings.pod_cidr.prefix())
        .expect("the prefix comes from a valid network");
    let bridge_name = settings.bridge.clone();
    let bridge = with_netlink(|nl| async move {
        let bridge = nl.ensure_bridge(&bridge_name).await?;
        nl.ensure_address(bridge.index, gateway).await?;
        nl.set_up(bridge.index).await?;
        Ok(bridge)
    })?;
    let tunnel = match settings.mode {
        RoutingMode::Native => None,
        RoutingMode::Vxlan => {
            let name = settings.vxlan_device.clone();
            Some(with_netlink(|nl| async move {
                Ok(nl.ensure_vxlan(&name, podnet_ebpf::abi::VXLAN_PORT).await?)
            })?)
        }
    };
    link::enable_ip_forwarding()?;

    let netns_cookie = datapath::cgroup::current_netns_cookie()?;
    let load = loader::load_and_pin(
        &loader::LoadOptions {
            pin_dir: settings.pin_dir.clone(),
            endpoints_max: settings.endpoints_max,
            conntrack_entries: podnet_ebpf::abi::ct_map_entries(
                settings.conntrack_max,
                possible_cpus(),
            ),
            services_max: settings.services_max,
            uplink: settings.uplink.clone(),
            tunnel: tunnel.as_ref().map(|t| t.name.clone()),
            cgroup: settings.cgroup_dir()?,
            debug: settings.debug,
            relink: crate::pod::list(&settings)?
                .into_iter()
                .map(|pod| pod.host_if)
                .collect(),
        },
        object,
    )?;
    let mut maps = PinnedMaps::open(&settings.pin_dir)?;
    maps.set_config(&NodeConfig {
        abi_version: ABI_VERSION,
        flags: config_flag::READY
            | if settings.anti_spoof {
                config_flag::ANTI_SPOOF
            } else {
                0
            }
            | if settings.socket_lb {
                config_flag::SOCKET_LB
            } else {
                0
            },
        node_ip: node_ip.octets(),
        gateway_ip: settings.gateway().octets(),
        pod_cidr: settings.pod_cidr.network().octets(),
        pod_prefix_len: settings.pod_cidr.prefix(),
        cluster_prefix_len: settings.cluster_cidr.prefix(),
        _pad0: [0; 2],
        cluster_cidr: settings.cluster_cidr.network().octets(),
        gateway_mac: bridge.mac,
        _pad1: [0; 2],
        uplink_ifindex: uplink.index,
        bridge_ifindex: bridge.index,
        snat_port_min: settings.snat_ports.min,
        snat_port_max: settings.snat_ports.max,
        ct_limit: settings.conntrack_max,
        ct_timeouts: settings.ct_timeouts,
        tunnel_ifindex: tunnel.as_ref().map_or(0, |t| t.index),
        netns_cookie,
        service_cidr: settings
            .service_cidr
            .map_or([0; 4], |c| c.network().octets()),
        service_prefix_len: settings.service_cidr.map_or(0, Ipv4Network::prefix),
        _pad2: [0; 3],
    })?;
    match peers {
        Some(peers) => crate::peers::replace(&settings, peers).map_err(Box::new)?,
        None => crate::peers::restore(&settings).map_err(Box::new)?,
    }
    state::write_json(&NodeSettings::node_file(&settings.state_dir), &settings)?;
    Ok(InitReport {
        settings,
        bridge_ifindex: bridge.index,
        uplink_ifindex: uplink.index,
        load,
    })
}

/// `node status`: settings, what is pinned and attached, and the counters.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub settings: NodeSettings,
    pub abi_version: u32,
    pub ready: bool,
    pub programs: Vec<String>,
    pub attached: Vec<String>,
    pub endpoints: usize,
    pub pods: usize,
    pub ipam_allocated: usize,
}

pub fn status(settings: &NodeSettings) -> Result<NodeStatus, NodeError> {
    let maps = PinnedMaps::open(&settings.pin_dir)?;
    let config = maps.config()?;
    let programs = podnet_ebpf::abi::program_name::ALL
        .iter()
        .filter(|p| loader::program_pin(&settings.pin_dir, p).exists())
        .map(|p| (*p).to_owned())
        .collect();
    let attached = crate::pod::list(settings)?
        .into_iter()
        .map(|pod| pod.host_if)
        .collect();
    let ipam = settings.ipam()?;
    Ok(NodeStatus {
        settings: settings.clone(),
        abi_version: config.abi_version,
        ready: config.flags & config_flag::READY != 0,
        programs,
        attached,
        endpoints: maps.endpoints()?.len(),
        pods: crate::pod::list(settings)?.len(),
        ipam_allocated: ipam.list()?.len(),
    })
}

/// What `node reset` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResetReport {
    pub pods_deleted: Vec<String>,
    pub pins_removed: usize,
    pub bridge_deleted: bool,
    pub uplink_detached: bool,
    pub cgroup_detached: bool,
    pub collector_stopped: bool,
    /// CNI attachment records removed (their pods went with the node).
    pub cni_records_removed: usize,
}

/// Tears the node down: every pod (half-made ones too), every pin, the bridge and the node's
/// state. Idempotent.
pub fn reset(settings: &NodeSettings) -> Result<ResetReport, NodeError> {
    let mut report = ResetReport::default();
    let lock = FileLock::exclusive(&settings.lock_file())?;
    let half_made =
        crate::pod::leftovers(settings, &lock).map_err(|e| NodeError::HalfMadePods(Box::new(e)))?;
    let pods = crate::pod::list(settings)?.into_iter().map(|pod| pod.name);
    for name in pods.chain(half_made) {
        crate::pod::del_held(settings, &name, &lock).map_err(|e| NodeError::PodDelete {
            name: name.clone(),
            source: Box::new(e),
        })?;
        report.pods_deleted.push(name);
    }
    report.collector_stopped = crate::collector::stop(settings)?;
    report.uplink_detached = datapath::attach::detach_ingress(&settings.uplink)?;
    let cgroup = settings.cgroup_dir()?;
    for name in program_name::SOCK {
        report.cgroup_detached |= datapath::cgroup::detach_sock(
            &cgroup,
            datapath::cgroup::attach_type(name),
            &loader::program_pin(&settings.pin_dir, name),
        )?;
    }
    state::remove_file(&crate::nodeport::NodePorts::file(settings))?;
    report.cni_records_removed = crate::cni::forget_all_attachments(&settings.state_dir)?;
    let mut pins: Vec<PathBuf> = map_name::ALL
        .iter()
        .map(|m| settings.pin_dir.join(m))
        .collect();
    for sub in ["progs"] {
        if let Ok(entries) = std::fs::read_dir(settings.pin_dir.join(sub)) {
            pins.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    for pin in pins {
        if state::remove_file(&pin)? {
            report.pins_removed += 1;
        }
    }
    for dir in [settings.pin_dir.join("progs"), settings.pin_dir.clone()] {
        // Only empty directories go; anything else in them is not ours to remove.
        let _ = std::fs::remove_dir(dir);
    }
    let bridge = settings.bridge.clone();
    report.bridge_deleted = with_netlink(|nl| async move { Ok(nl.delete(&bridge).await?) })?;
    if settings.mode == RoutingMode::Vxlan {
        let vxlan = settings.vxlan_device.clone();
        with_netlink(|nl| async move { Ok(nl.delete(&vxlan).await?) })?;
    }
    let ipam_dir = settings.ipam_dir();
    for path in [
        NodeSettings::node_file(&settings.state_dir),
        settings.state_dir.join("nodeports.lock"),
        settings.state_dir.join("peers.json"),
        settings.state_dir.join("peers.lock"),
        settings.state_dir.join("conntrack-gc.lock"),
        ipam_dir.join("last_reserved_ip"),
        ipam_dir.join("lock"),
    ] {
        state::remove_file(&path)?;
    }
    for dir in [settings.pods_dir(), ipam_dir] {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(report)
}
