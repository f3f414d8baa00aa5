//! The node as a whole: `node init` (checked first, changing nothing when refused; then the
//! bridge, forwarding, the programs and maps, the peers), `node status`, and `node reset`, which
//! asks every owner of the node's state to clear what it holds.
//!
//! The node's namespace is chosen at `node init --netns NAME|PATH` and recorded with the
//! settings; every later command enters it first, before any thread starts.

use std::{net::Ipv4Addr, path::PathBuf};

use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{ABI_VERSION, NodeConfig, addr6_from_bytes, config_flag, program_name};
use serde::Serialize;

use super::{
    Ctx, attachment, dual_stack, endpoint,
    error::{Error, Result},
    peer, pod,
};
use crate::{
    config::{NodeSettings, RoutingMode},
    datapath::{self, loader, object::EbpfObject, pins},
    model::peer::PeerNode,
    store::{self, file::FileLock},
    sys::link::{self, LinkInfo},
};

/// The cgroup the socket programs are attached to.
pub fn cgroup_dir(settings: &NodeSettings) -> Result<PathBuf> {
    match &settings.cgroup {
        Some(dir) => Ok(dir.clone()),
        None => datapath::cgroup::cgroup2_root().ok_or(Error::NoCgroup2),
    }
}

/// The recorded settings of the node at `state_dir`.
pub fn load(state_dir: &std::path::Path) -> Result<NodeSettings> {
    store::node::load(state_dir)?.ok_or_else(|| Error::NotInitialised {
        path: store::node::settings_file(state_dir),
    })
}

/// What `node init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub settings: NodeSettings,
    pub bridge_ifindex: u32,
    pub uplink_ifindex: u32,
    pub load: loader::LoadReport,
}

/// What `node init` finds out before it changes anything.
struct Preflight {
    uplink: LinkInfo,
    node_ip: Ipv4Addr,
    /// The node's IPv6 address (dual-stack nodes), if it has one.
    node_ip6: Option<std::net::Ipv6Addr>,
    mtu: u32,
    /// The peers of `--cluster`, checked.
    peers: Option<Vec<PeerNode>>,
}

/// Settings that passed [`check`], with what the check found out; [`Checked::init`] builds the
/// node from them without checking again.
pub struct Checked {
    ctx: Ctx,
    preflight: Preflight,
}

impl Checked {
    /// The settings that were checked.
    pub fn settings(&self) -> &NodeSettings {
        &self.ctx.settings
    }

    /// [`Checked::init_with`] with the embedded eBPF object.
    pub fn init(self) -> Result<InitReport> {
        self.init_with(&EbpfObject::embedded())
    }

    /// Builds the node, loading `object`: a rebuilt program version replaces the running one,
    /// keeping the maps (endpoints, services, conntrack) as they are.
    pub fn init_with(self, object: &EbpfObject) -> Result<InitReport> {
        build(self.ctx, self.preflight, object)
    }
}

/// Checks everything `node init` could refuse in its input (the settings, the pin directory:
/// bpffs and maps pinned by another podnet version, the uplink and node IP, the cluster file)
/// while changing nothing, so a refused `node init` leaves nothing behind. Runs in the node's
/// namespace.
pub fn check(settings: NodeSettings) -> Result<Checked> {
    let ctx = Ctx::new(settings);
    let preflight = preflight(&ctx)?;
    Ok(Checked { ctx, preflight })
}

fn preflight(ctx: &Ctx) -> Result<Preflight> {
    let settings = &ctx.settings;
    settings.validate()?;
    loader::check_pins(
        &settings.pin_dir,
        loader::conntrack_entries(settings.conntrack_max),
    )?;
    let (uplink_name, given_ip) = (settings.uplink.clone(), settings.node_ip);
    let (uplink, node_ip) = ctx.netlink(|nl| async move {
        let uplink = nl.get(&uplink_name).await?.ok_or(Error::NoUplink {
            name: uplink_name.clone(),
        })?;
        let node_ip = match given_ip {
            Some(ip) => ip,
            None => nl
                .addresses(uplink.index)
                .await?
                .first()
                .map(|net| net.ip())
                .ok_or(Error::NoNodeIp { name: uplink_name })?,
        };
        Ok((uplink, node_ip))
    })?;
    // In overlay mode pods leave room for the encapsulation, so nothing is fragmented.
    let overhead = match settings.mode {
        RoutingMode::Native => 0,
        RoutingMode::Vxlan if settings.ipv6_underlay => podnet_ebpf::abi::VXLAN6_OVERHEAD,
        RoutingMode::Vxlan => podnet_ebpf::abi::VXLAN_OVERHEAD,
    };
    let mtu = settings
        .mtu
        .unwrap_or_else(|| uplink.mtu.saturating_sub(overhead));
    let node_ip6 = dual_stack::node_ip6(ctx, uplink.index)?;
    let mut derived = settings.clone();
    derived.node_ip = Some(node_ip);
    derived.node_ip6 = node_ip6;
    derived.mtu = Some(mtu);
    derived.validate()?;
    let cgroup = cgroup_dir(settings)?;
    if !cgroup.is_dir() {
        return Err(Error::NotACgroup { path: cgroup });
    }
    let peers = match &settings.cluster {
        Some(path) => Some(peer::read_cluster(&derived, path)?),
        None => None,
    };
    Ok(Preflight {
        uplink,
        node_ip,
        node_ip6,
        mtu,
        peers,
    })
}

/// Builds the node: bridge with the gateway address, forwarding, programs and maps. Safe to
/// re-run: existing maps (and so every pod's endpoint and all flow state) are reused, and the
/// programs attached to pods are swapped atomically for the new ones. Bad input is refused
/// before anything is changed ([`check`]).
pub fn init(settings: NodeSettings) -> Result<InitReport> {
    check(settings)?.init()
}

/// What [`init`] does once [`check`] has passed.
fn build(mut ctx: Ctx, preflight: Preflight, object: &EbpfObject) -> Result<InitReport> {
    let Preflight {
        uplink,
        node_ip,
        node_ip6,
        mtu,
        peers,
    } = preflight;
    ctx.settings.node_ip = Some(node_ip);
    ctx.settings.node_ip6 = node_ip6;
    ctx.settings.mtu = Some(mtu);
    let _lock = store::node::lock_exclusive(&ctx.settings.state_dir)?;
    refuse_pod_cidr_change(&ctx.settings)?;
    dual_stack::refuse_pod_cidr6_change(&ctx.settings)?;
    let (bridge, tunnel) = plumb(&ctx)?;
    link::enable_ip_forwarding()?;
    dual_stack::plumb(&ctx, bridge.index)?;
    let settings = &ctx.settings;
    let load = loader::load_and_pin(
        &loader::LoadOptions {
            pin_dir: settings.pin_dir.clone(),
            endpoints_max: settings.endpoints_max,
            conntrack_entries: loader::conntrack_entries(settings.conntrack_max),
            services_max: settings.services_max,
            uplink: settings.uplink.clone(),
            tunnel: tunnel.as_ref().map(|t| t.name.clone()),
            cgroup: cgroup_dir(settings)?,
            debug: settings.debug,
            relink: pod::list(&ctx)?
                .into_iter()
                .map(|pod| pod.host_if)
                .collect(),
        },
        object,
    )?;
    // The exclusions first: from the moment the configuration is ready, traffic to them keeps
    // the pod's address.
    datapath::maps::non_masquerade::replace(&settings.pin_dir, &settings.non_masquerade_cidrs)?;
    datapath::maps::non_masquerade::replace6(&settings.pin_dir, &settings.non_masquerade_cidrs6)?;
    // Pods kept from before the IPv6 endpoints existed get theirs before the configuration
    // (anti-spoofing) is in force.
    let pairs: Vec<_> = pod::list(&ctx)?
        .iter()
        .filter_map(|p| Some((p.address.ip(), p.address6?.ip())))
        .chain(
            attachment::list(&ctx)?
                .iter()
                .filter_map(|a| Some((a.ip, a.ip6?))),
        )
        .collect();
    endpoint::backfill6(&ctx, &pairs)?;
    let config = node_config(settings, node_ip, &uplink, &bridge, tunnel.as_ref())?;
    ctx.maps()?.set_config(&config)?;
    match peers {
        Some(peers) => peer::replace(&ctx, peers)?,
        None => peer::restore(&ctx)?,
    }
    store::node::save(&ctx.settings)?;
    Ok(InitReport {
        settings: ctx.settings,
        bridge_ifindex: bridge.index,
        uplink_ifindex: uplink.index,
        load,
    })
}

/// A node with pods keeps its pod CIDR: their addresses come from it.
fn refuse_pod_cidr_change(settings: &NodeSettings) -> Result<()> {
    if let Some(current) = store::node::load(&settings.state_dir)?
        && current.pod_cidr != settings.pod_cidr
    {
        let pods = store::pods::list(&current.state_dir)?.len();
        if pods > 0 {
            return Err(Error::PodCidrInUse {
                current: current.pod_cidr,
                requested: settings.pod_cidr,
                pods,
            });
        }
    }
    Ok(())
}

/// The bridge with the gateway address, up; and the VXLAN device in overlay mode.
fn plumb(ctx: &Ctx) -> Result<(LinkInfo, Option<LinkInfo>)> {
    let settings = &ctx.settings;
    let gateway = Ipv4Network::new(settings.gateway(), settings.pod_cidr.prefix())
        .expect("the prefix comes from a valid network");
    let bridge_name = settings.bridge.clone();
    let vxlan = (settings.mode == RoutingMode::Vxlan).then(|| settings.vxlan_device.clone());
    ctx.netlink(|nl| async move {
        let bridge = nl.ensure_bridge(&bridge_name).await?;
        nl.ensure_address(bridge.index, gateway).await?;
        nl.set_up(bridge.index).await?;
        let tunnel = match vxlan {
            Some(name) => Some(nl.ensure_vxlan(&name, podnet_ebpf::abi::VXLAN_PORT).await?),
            None => None,
        };
        Ok((bridge, tunnel))
    })
}

/// The `CONFIG` entry the programs read.
fn node_config(
    settings: &NodeSettings,
    node_ip: Ipv4Addr,
    uplink: &LinkInfo,
    bridge: &LinkInfo,
    tunnel: Option<&LinkInfo>,
) -> Result<NodeConfig> {
    Ok(NodeConfig {
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
        tunnel_ifindex: tunnel.map_or(0, |t| t.index),
        _pad3: 0,
        netns_cookie: datapath::cgroup::current_netns_cookie()?,
        service_cidr: settings.service_cidr.network().octets(),
        service_prefix_len: settings.service_cidr.prefix(),
        _pad2: [0; 3],
        node_ip6: settings
            .node_ip6
            .map_or([0; 4], |ip| addr6_from_bytes(ip.octets())),
        pod_cidr6: settings
            .pod_cidr6
            .map_or([0; 4], |c| addr6_from_bytes(c.network().octets())),
        cluster_cidr6: settings
            .effective_cluster_cidr6()
            .map_or([0; 4], |c| addr6_from_bytes(c.network().octets())),
        pod_prefix_len6: settings.pod_cidr6.map_or(0, |c| c.prefix()),
        cluster_prefix_len6: settings.effective_cluster_cidr6().map_or(0, |c| c.prefix()),
        _pad4: [0; 2],
        ct6_limit: podnet_ebpf::abi::DEFAULT_CT6_LIMIT,
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
    /// IPv6 addresses allocated (dual-stack nodes).
    pub ipam_allocated6: usize,
}

pub fn status(ctx: &Ctx) -> Result<NodeStatus> {
    let settings = &ctx.settings;
    let (config, endpoints) = {
        let maps = ctx.maps()?;
        (maps.config()?, maps.endpoints()?.len())
    };
    let programs = program_name::ALL
        .iter()
        .filter(|p| pins::program_pin(&settings.pin_dir, p).exists())
        .map(|p| (*p).to_owned())
        .collect();
    let pods = pod::list(ctx)?;
    Ok(NodeStatus {
        settings: settings.clone(),
        abi_version: config.abi_version,
        ready: config.flags & config_flag::READY != 0,
        programs,
        attached: pods.iter().map(|pod| pod.host_if.clone()).collect(),
        endpoints,
        pods: pods.len(),
        ipam_allocated: pod::ipam(settings)?.list()?.len(),
        ipam_allocated6: dual_stack::allocated(settings)?,
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
    /// Chained attachments whose program was detached from the runtime's veth.
    pub chained_detached: usize,
    /// Routes to other nodes' pod CIDRs removed.
    pub peer_routes_removed: usize,
}

/// Tears the node down, asking each owner to clear what it holds: every pod (half-made ones
/// too) and CNI attachment (chained ones lose their program), the peers and their routes, the
/// collector, the NodePorts, the programs and pins, the bridge, IPAM and the node's record.
/// Idempotent.
pub fn reset(ctx: &Ctx) -> Result<ResetReport> {
    let mut report = ResetReport::default();
    let settings = &ctx.settings;
    let lock = store::node::lock_exclusive(&settings.state_dir)?;
    let forgotten = super::attachment::forget_all(ctx, &lock)?;
    report.chained_detached = forgotten.chained;
    report.cni_records_removed = store::attachments::clear(&settings.state_dir)?;
    report.pods_deleted = forgotten.pods;
    report.pods_deleted.extend(pod::delete_all(ctx, &lock)?);
    report.collector_stopped = super::collector::stop(settings)?;
    report.peer_routes_removed = peer::clear(ctx)?;
    super::nodeport::clear(settings)?;
    super::service::clear(settings)?;
    super::conntrack::clear(settings)?;
    report.uplink_detached = datapath::attach::detach_ingress(&settings.uplink)?;
    let cgroup = cgroup_dir(settings)?;
    for name in program_name::SOCK {
        report.cgroup_detached |= datapath::cgroup::detach_sock(
            &cgroup,
            datapath::cgroup::attach_type(name),
            &pins::program_pin(&settings.pin_dir, name),
        )?;
    }
    report.pins_removed = remove_pins(settings)?;
    report.bridge_deleted = remove_devices(ctx)?;
    store::ipam::clear(&settings.ipam_dir())?;
    store::pods::clear(&settings.state_dir);
    store::node::clear(&settings.state_dir)?;
    drop(lock);
    Ok(report)
}

/// Removes every pin of the node and its pin directories (if empty).
fn remove_pins(settings: &NodeSettings) -> Result<usize> {
    let mut pins_to_remove = pins::map_pins(&settings.pin_dir);
    if let Ok(entries) = std::fs::read_dir(pins::programs_dir(&settings.pin_dir)) {
        pins_to_remove.extend(entries.filter_map(Result::ok).map(|e| e.path()));
    }
    let mut removed = 0;
    for pin in pins_to_remove {
        if store::file::remove_file(&pin)? {
            removed += 1;
        }
    }
    for dir in [
        pins::programs_dir(&settings.pin_dir),
        settings.pin_dir.clone(),
    ] {
        // Only empty directories go; anything else in them is not ours to remove.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(removed)
}

/// Deletes the bridge and, in overlay mode, the VXLAN device; whether the bridge existed.
fn remove_devices(ctx: &Ctx) -> Result<bool> {
    let bridge = ctx.settings.bridge.clone();
    let vxlan =
        (ctx.settings.mode == RoutingMode::Vxlan).then(|| ctx.settings.vxlan_device.clone());
    ctx.netlink(|nl| async move {
        let deleted = nl.delete(&bridge).await?;
        if let Some(vxlan) = vxlan {
            nl.delete(&vxlan).await?;
        }
        Ok(deleted)
    })
}

/// The node lock's exclusive holder, for callers that hold it across several operations.
pub fn lock_exclusive(ctx: &Ctx) -> Result<FileLock> {
    Ok(store::node::lock_exclusive(&ctx.settings.state_dir)?)
}
