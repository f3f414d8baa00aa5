//! Pods on a node: `pod add` gives a namespace its network (veth pair with `eth0` inside, an
//! address from IPAM, default route, the pinned program attached to the host side, an endpoint
//! in the map); `pod del` removes exactly that, and is idempotent; `pod list` reads the records.
//!
//! Crash safety (a `pod add` or `pod del` killed at any point): the pod's address is reserved
//! in IPAM first on add and released last on delete, and its record
//! (`<state_dir>/pods/<name>.json`) is written last on add and removed just before the address
//! is released. So a pod with a record is complete, and whatever a killed operation left
//! behind (namespace, veth, filter, endpoint) belongs to an IPAM reservation `pod:NAME` without a
//! record: `pod del NAME` removes it, a repeated `pod add NAME` replaces it, and `podnet gc`
//! finds and removes it (see [`leftovers`]).
//!
//! Every add and delete holds the node lock shared (so they run in parallel with each other);
//! `node init` and `podnet gc` hold it exclusively, so they never see an operation half-done.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{Endpoint, program_name};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{attach, maps::PinnedMaps, maps::format_mac},
    netns::Netns,
    node::{NodeError, NodeSettings, with_netlink},
    state::{self, FileLock},
};

/// Name of the pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";
/// Longest pod name: it becomes a file name and part of a namespace name.
pub const MAX_POD_NAME: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(
        "invalid pod name {name:?}: use 1-{MAX_POD_NAME} characters from [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    InvalidName { name: String },
    #[error("pod {name} already exists (delete it first)")]
    Exists { name: String },
    #[error("no pod named {name}")]
    NotFound { name: String },
    #[error(
        "{} is the node's own network namespace: a pod needs a namespace of its own",
        .path.display()
    )]
    NodeNetns { path: PathBuf },
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    NodePort(#[from] Box<crate::nodeport::NodePortError>),
    #[error(transparent)]
    Conntrack(#[from] crate::conntrack::ConntrackError),
}

impl From<crate::nodeport::NodePortError> for PodError {
    fn from(e: crate::nodeport::NodePortError) -> Self {
        Self::NodePort(Box::new(e))
    }
}

/// Everything podnet made for one pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    pub name: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// Whether podnet created the namespace (and so deletes it).
    pub owns_netns: bool,
    pub netns_ino: u64,
    /// The host-side veth, in the node's namespace.
    pub host_if: String,
    pub host_ifindex: u32,
    /// MAC of the host-side veth.
    #[serde(default)]
    pub host_mac: String,
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// The pod's interface inside its namespace.
    #[serde(default = "default_ifname")]
    pub ifname: String,
}

fn default_ifname() -> String {
    POD_IFNAME.to_owned()
}

pub fn validate_name(name: &str) -> Result<(), PodError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POD_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PodError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// The host-side veth's name: `pn` and a hash of the pod name (always within IFNAMSIZ).
pub fn host_ifname(pod: &str) -> String {
    format!("pn{:08x}", fnv1a(pod.as_bytes()))
}

/// A temporary name for the pod end while it is created (renamed to `eth0` inside the pod).
fn peer_tmp_ifname(pod: &str) -> String {
    format!("pp{:08x}", fnv1a(pod.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Prefix of the IPAM owner of a pod's address (`pod:NAME`).
const OWNER_PREFIX: &str = "pod:";

fn owner(pod: &str) -> String {
    format!("{OWNER_PREFIX}{pod}")
}

fn record_path(settings: &NodeSettings, name: &str) -> PathBuf {
    settings.pods_dir().join(format!("{name}.json"))
}

/// The namespace name `pod add` creates when none is given: unique per node.
pub fn default_netns_name(settings: &NodeSettings, pod: &str) -> String {
    let node = settings
        .state_dir
        .file_name()
        .map_or_else(|| "node".into(), |n| n.to_string_lossy().into_owned());
    format!("podnet-{node}-{pod}")
}

/// Adds a pod. With `netns`, the pod joins that existing namespace; without, podnet creates one
/// under the node's `netns_dir`. On failure everything made so far is removed again.
pub fn add(
    settings: &NodeSettings,
    name: &str,
    netns: Option<&Path>,
) -> Result<PodRecord, PodError> {
    add_with(settings, name, netns, POD_IFNAME)
}

/// [`add`], naming the pod's interface `ifname` (a CNI runtime chooses it).
pub fn add_with(
    settings: &NodeSettings,
    name: &str,
    netns: Option<&Path>,
    ifname: &str,
) -> Result<PodRecord, PodError> {
    let lock = FileLock::shared(&settings.lock_file())?;
    add_held(settings, name, netns, ifname, &lock)
}

/// [`add_with`] for a caller that already holds the node lock (shared or exclusive).
pub fn add_held(
    settings: &NodeSettings,
    name: &str,
    netns: Option<&Path>,
    ifname: &str,
    _node_lock: &FileLock,
) -> Result<PodRecord, PodError> {
    validate_name(name)?;
    crate::link::validate_ifname(ifname)?;
    if record_path(settings, name).exists() {
        return Err(PodError::Exists {
            name: name.to_owned(),
        });
    }
    // Open a given namespace before allocating anything, so a bad path changes nothing.
    let given = netns.map(Netns::open).transpose()?;
    if let Some(ns) = &given
        && is_node_netns(ns)?
    {
        return Err(PodError::NodeNetns {
            path: ns.path().to_path_buf(),
        });
    }
    let result = build(settings, name, given, ifname);
    if result.is_err() {
        // Best effort: the error being returned matters more than a cleanup failure.
        let _ = teardown(settings, name, None);
    }
    result
}

/// Whether `ns` is the namespace this thread runs in: the node's (every command enters it
/// first). A pod there would put its address and default route on the node itself.
pub fn is_node_netns(ns: &Netns) -> Result<bool, PodError> {
    Ok(Netns::current()?.inode() == ns.inode())
}

fn build(
    settings: &NodeSettings,
    name: &str,
    given: Option<Netns>,
    ifname: &str,
) -> Result<PodRecord, PodError> {
    let ip = settings.ipam()?.allocate(&owner(name))?;
    let owns_netns = given.is_none();
    let ns = match given {
        Some(ns) => ns,
        None => Netns::create_named(&settings.netns_dir, &default_netns_name(settings, name))?,
    };
    let host_if = host_ifname(name);
    let tmp_if = peer_tmp_ifname(name);
    let address = Ipv4Network::new(ip, settings.pod_cidr.prefix()).expect("prefix is valid");
    let gateway = settings.gateway();
    let mtu = settings.mtu;

    let host = {
        let (host_if, tmp_if, bridge) = (host_if.clone(), tmp_if.clone(), settings.bridge.clone());
        let ns = Netns::open(ns.path())?;
        with_netlink(|nl| async move {
            // A leftover from a crashed add would make the create fail; it is ours to replace.
            nl.delete(&host_if).await?;
            let host = nl.create_veth(&host_if, &tmp_if, &ns, mtu).await?;
            let bridge = nl.get(&bridge).await?.ok_or_else(|| {
                NodeError::Invalid(format!(
                    "bridge {bridge} is missing: re-run `podnet node init`"
                ))
            })?;
            nl.set_controller(host.index, bridge.index).await?;
            nl.set_up(host.index).await?;
            Ok(host)
        })?
    };

    let pod_ifname = ifname.to_owned();
    let mac = ns.run_netlink(move |nl| async move {
        let pod_if = nl
            .get(&tmp_if)
            .await?
            .ok_or_else(|| crate::link::LinkError::NotFound {
                link: tmp_if.clone(),
            })?;
        nl.rename(pod_if.index, &pod_ifname).await?;
        nl.ensure_address(pod_if.index, address).await?;
        nl.set_up(pod_if.index).await?;
        if let Some(lo) = nl.get("lo").await? {
            nl.set_up(lo.index).await?;
        }
        nl.ensure_default_route(gateway).await?;
        Ok::<_, crate::link::LinkError>(pod_if.mac)
    })??;

    attach::attach_ingress(&settings.pin_dir, program_name::FROM_POD, &host_if)?;
    let mut maps = PinnedMaps::open(&settings.pin_dir)?;
    maps.upsert_endpoint(
        ip,
        &Endpoint {
            ifindex: host.index,
            flags: 0,
            mac,
            _pad0: [0; 2],
            netns_ino: ns.inode(),
        },
    )?;
    crate::datapath::services_map::register_pod_netns(&settings.pin_dir, &ns, ip)?;
    let record = PodRecord {
        name: name.to_owned(),
        netns: ns.path().to_path_buf(),
        owns_netns,
        netns_ino: ns.inode(),
        host_if,
        host_ifindex: host.index,
        host_mac: format_mac(&host.mac),
        address,
        gateway,
        mac: format_mac(&mac),
        ifname: ifname.to_owned(),
    };
    state::write_json(&record_path(settings, name), &record)?;
    Ok(record)
}

/// What `pod del` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DelReport {
    pub name: String,
    pub existed: bool,
    pub released: Vec<Ipv4Addr>,
    pub endpoint_removed: bool,
    /// Backends of NodePorts that were this pod.
    pub nodeport_backends_removed: usize,
    /// Conntrack entries of the pod's flows.
    pub conntrack_entries_removed: u64,
    pub link_removed: bool,
    pub veth_removed: bool,
    pub netns_removed: bool,
}

/// Deletes a pod. Idempotent: deleting a pod that is (partly) gone succeeds.
pub fn del(settings: &NodeSettings, name: &str) -> Result<DelReport, PodError> {
    let lock = FileLock::shared(&settings.lock_file())?;
    del_held(settings, name, &lock)
}

/// [`del`] for a caller that already holds the node lock (shared or exclusive).
pub fn del_held(
    settings: &NodeSettings,
    name: &str,
    _node_lock: &FileLock,
) -> Result<DelReport, PodError> {
    validate_name(name)?;
    let record: Option<PodRecord> = state::read_json(&record_path(settings, name))?;
    teardown(settings, name, record.as_ref())
}

fn teardown(
    settings: &NodeSettings,
    name: &str,
    record: Option<&PodRecord>,
) -> Result<DelReport, PodError> {
    let mut report = DelReport {
        name: name.to_owned(),
        existed: record.is_some(),
        ..DelReport::default()
    };
    let host_if = host_ifname(name);
    // The record goes first: a pod del killed at any later point leaves an address reserved
    // for a pod without a record, which a repeated del or `podnet gc` finishes, never a
    // record whose endpoint, filter or veth is already gone (which gc would take for a live
    // pod). And it goes before the address, so a record always has its address reserved.
    state::remove_file(&record_path(settings, name))?;
    report.nodeport_backends_removed = crate::nodeport::forget_pod(settings, name)?;
    report.link_removed = attach::detach_ingress(&host_if)?;
    let ipam = settings.ipam()?;
    let held: Vec<Ipv4Addr> = ipam
        .list()?
        .into_iter()
        .filter(|a| a.owner == owner(name))
        .map(|a| a.ip)
        .chain(record.map(|r| r.address.ip()))
        .collect();
    if let Ok(mut maps) = PinnedMaps::open(&settings.pin_dir) {
        for ip in &held {
            report.endpoint_removed |= maps.remove_endpoint(*ip)?;
            crate::datapath::services_map::forget_pod_netns(&settings.pin_dir, *ip)?;
        }
        for ip in &held {
            report.conntrack_entries_removed += crate::conntrack::forget_addr(settings, *ip)?;
        }
    }
    report.veth_removed = with_netlink(|nl| async move { Ok(nl.delete(&host_if).await?) })?;
    let owns = record.is_none_or(|r| r.owns_netns);
    if owns {
        report.netns_removed =
            Netns::delete_named(&settings.netns_dir, &default_netns_name(settings, name))?;
    }
    report.released = ipam.release_owner(&owner(name))?;
    Ok(report)
}

/// Pods that a killed `pod add` (or `pod del`) left half-made: an address reserved for
/// `pod:NAME` with no record of NAME. Only meaningful under the node lock held exclusively
/// (otherwise an add in progress looks the same).
pub fn leftovers(settings: &NodeSettings, _node_lock: &FileLock) -> Result<Vec<String>, PodError> {
    let recorded: Vec<String> = list(settings)?.into_iter().map(|p| p.name).collect();
    let mut names: Vec<String> = settings
        .ipam()?
        .list()?
        .into_iter()
        .filter_map(|a| a.owner.strip_prefix(OWNER_PREFIX).map(str::to_owned))
        .filter(|name| validate_name(name).is_ok() && !recorded.contains(name))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Removes temporary files a killed write left in the pod records directory (`.tmp.*`); only
/// under the node lock held exclusively, when no write is in progress. Returns how many.
pub fn remove_temp_files(
    settings: &NodeSettings,
    _node_lock: &FileLock,
) -> Result<usize, PodError> {
    Ok(state::remove_temp_files(&settings.pods_dir())?)
}

/// The record of pod `name`, if it exists.
pub fn get(settings: &NodeSettings, name: &str) -> Result<Option<PodRecord>, PodError> {
    validate_name(name)?;
    Ok(state::read_json(&record_path(settings, name))?)
}

/// Every pod on the node, by name.
pub fn list(settings: &NodeSettings) -> Result<Vec<PodRecord>, NodeError> {
    let dir = settings.pods_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(state::StateError::Io {
                op: "listing",
                path: dir,
                source,
            }
            .into());
        }
    };
    let mut pods = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(record) = state::read_json::<PodRecord>(&path)?
        {
            pods.push(record);
        }
    }
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        for good in ["web", "a", "web-1.x_y", &"a".repeat(MAX_POD_NAME)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-web",
            ".x",
            "a/b",
            "a b",
            &"a".repeat(MAX_POD_NAME + 1),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ifnames_fit_and_differ() {
        let a = host_ifname("web");
        let b = host_ifname("db");
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_ne!(a, b);
        assert_eq!(a, host_ifname("web"), "stable across runs");
    }
}
