//! podnet as a CNI plugin. The `podnet` binary becomes the plugin whenever `CNI_COMMAND` is
//! set, so installing it as `<bin-dir>/podnet` is all a runtime needs (`"type": "podnet"`).
//!
//! - **Chained** (after `bridge` + `host-local`): ADD finds the container interface in
//!   `prevResult`, its host-side veth through the veth peer index, attaches the pinned program,
//!   registers the endpoint and the `portMappings` host ports, and prints `prevResult` unchanged.
//! - **Standalone**: ADD does what `podnet pod add` does (bridge, veth, IPAM, routes), through
//!   the same code, and prints a full result, which it also caches for DEL and GC.
//!
//! Every attachment is recorded in `<stateDir>/cni/`, so DEL removes exactly what ADD made (and
//! succeeds when repeated, without a namespace, or for containers it never saw), CHECK verifies
//! it, and GC frees whatever the runtime no longer lists. ADD and DEL hold the node lock shared
//! from start to end and GC holds it exclusively, so GC never mistakes an ADD in progress for
//! the leftovers of one that was killed; those (a pod without its attachment record, an address
//! without its pod) GC removes, and a repeated ADD replaces. The first ADD on a node whose programs
//! are not loaded yet runs `node init` from the `node` settings in the configuration, under a
//! lock.

pub mod install;
pub mod spec;

use std::{
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::{Endpoint, program_name};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spec::{CniEnv, CniError, Command, Mode, NetConf, code};

use crate::{
    datapath::{attach, maps::PinnedMaps},
    netns::Netns,
    node::{NodeSettings, with_netlink},
    nodeport::{self, HostPort, Proto},
    pod,
    state::{self, FileLock},
};

/// What podnet recorded for one attachment (`containerID` + `ifname`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub chained: bool,
    pub netns: Option<PathBuf>,
    /// Inode of the namespace at ADD: `podnet gc` tells a live container from a dead one whose
    /// `/proc/<pid>/ns/net` path now names another process's namespace.
    #[serde(default)]
    pub netns_ino: Option<u64>,
    pub host_if: String,
    pub ip: Ipv4Addr,
    /// Standalone: the pod podnet made (its records, IPAM owner and veth names derive from it).
    pub pod: Option<String>,
    /// Standalone: the ADD result, for DEL and GC without `prevResult`.
    pub result: Option<Value>,
}

impl Attachment {
    /// `containerID/ifname`: the owner of the attachment's host ports.
    pub fn owner(&self) -> String {
        owner(&self.container_id, &self.ifname)
    }
}

fn owner(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The pod name a standalone attachment gets: container IDs are up to 64+ characters and
/// interface names are free-form, so a hash of both keeps every derived name short and safe.
fn pod_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{CNI_POD_PREFIX}{:016x}",
        fnv64(owner(container_id, ifname).as_bytes())
    )
}

/// The start of every name [`pod_name`] makes.
const CNI_POD_PREFIX: &str = "cni-";

/// Whether `name` has the form of [`pod_name`]'s names (`cni-` and 16 hex digits).
fn is_cni_pod_name(name: &str) -> bool {
    name.strip_prefix(CNI_POD_PREFIX)
        .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cni")
}

/// Removes every attachment record and the first-ADD lock (the node is being reset, and its
/// pods with it); returns how many records went. Whatever else is in the directory stays.
pub fn forget_all_attachments(state_dir: &Path) -> Result<usize, state::StateError> {
    let dir = records_dir(state_dir);
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "json") && state::remove_file(&path)? {
                removed += 1;
            }
        }
    }
    // Only an empty directory goes.
    let _ = std::fs::remove_dir(&dir);
    state::remove_file(&state_dir.join("cni-init.lock"))?;
    Ok(removed)
}

fn record_path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    records_dir(state_dir).join(format!("{}.json", pod_name(container_id, ifname)))
}

fn io_err(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO, e.to_string())
}

fn datapath_err(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::DATAPATH, e.to_string())
}

/// Runs the plugin with the process's environment and stdin, prints the answer, and returns
/// the exit code.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = spec::answer_version(&stdin);
    let outcome = match read {
        Ok(_) => run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
    };
    match outcome {
        Ok(Some(answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            println!("{}", err.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// One invocation: what to print on success (`None`: nothing).
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_lookup(&get)?;
    if env.command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": spec::answer_version(stdin),
            "supportedVersions": spec::SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    // node.json, read once per invocation: the node's namespace and settings.
    let recorded = NodeSettings::load(&conf.state_dir).ok();
    enter_node_netns(&conf, recorded.as_ref())?;
    let node = Node {
        conf: &conf,
        recorded,
    };
    match env.command {
        Command::Add => add(&env, &node).map(Some),
        Command::Del => del(&env, &node).map(|()| None),
        Command::Check => check(&env, &node).map(|()| None),
        Command::Status => status(&node).map(|()| None),
        Command::Gc => gc(&node).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// Enters the node's namespace when the node lives in one (recorded by `node init`, or given as
/// `node.netns`), as every `podnet` command does. Runtimes run plugins in the host namespace,
/// which is the node's unless podnet simulates several nodes on one machine. Called on the
/// main thread before any other thread exists.
fn enter_node_netns(conf: &NetConf, recorded: Option<&NodeSettings>) -> Result<(), CniError> {
    let recorded = recorded.and_then(|s| s.netns.clone());
    let given = conf
        .node
        .as_ref()
        .and_then(|n| n.get("netns"))
        .and_then(Value::as_str)
        .map(PathBuf::from);
    // A namespace the configuration names wrongly is an invalid configuration; one that
    // `node init` recorded and that is gone now is an I/O failure.
    let (path, failure) = match (recorded, given) {
        (Some(path), _) => (path, code::IO),
        (None, Some(path)) => (path, code::INVALID_CONFIG),
        (None, None) => return Ok(()),
    };
    Netns::open(&path).and_then(|ns| ns.enter()).map_err(|e| {
        CniError::new(
            failure,
            format!("entering the node's namespace {}: {e}", path.display()),
        )
    })?;
    Ok(())
}

/// One invocation's configuration and the node's recorded settings, if it is initialised.
struct Node<'a> {
    conf: &'a NetConf,
    recorded: Option<NodeSettings>,
}

/// The node's settings: recorded by an earlier `node init`, or built from the configuration's
/// `node` object and initialised now (once, under a lock, however many ADDs race).
fn node_settings(node: &Node<'_>, init: bool) -> Result<Option<NodeSettings>, CniError> {
    let conf = node.conf;
    if let Some(settings) = &node.recorded {
        return Ok(Some(settings.clone()));
    }
    let Some(given) = &conf.node else {
        return if init {
            Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "the node at {} is not initialised and the configuration has no \"node\" settings",
                    conf.state_dir.display()
                ),
            ))
        } else {
            Ok(None)
        };
    };
    let mut map = given.clone();
    map.insert(
        "state_dir".to_owned(),
        Value::String(conf.state_dir.display().to_string()),
    );
    let settings: NodeSettings = serde_json::from_value(Value::Object(map))
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("invalid node settings: {e}")))?;
    settings
        .validate()
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    if !init {
        return Ok(Some(settings));
    }
    // Whatever `node init` would refuse is refused before the state directory is made; the
    // init below builds on this check rather than repeating it.
    let checked = crate::node::check(settings).map_err(|e| init_err(&e))?;
    state::ensure_private_dir(&conf.state_dir).map_err(io_err)?;
    let _lock = FileLock::exclusive(&conf.state_dir.join("cni-init.lock")).map_err(io_err)?;
    if let Ok(done) = NodeSettings::load(&conf.state_dir) {
        return Ok(Some(done));
    }
    let report = checked.init().map_err(|e| init_err(&e))?;
    if let Ok(exe) = std::env::current_exe() {
        // Collection is an optimisation of the table's use; ADD does not fail without it.
        let _ = crate::collector::start(&report.settings, &exe);
    }
    Ok(Some(report.settings))
}

/// A refused or failed `node init`: what the configuration's `node` settings got wrong is an
/// invalid network configuration (7); the datapath failing (no bpffs, maps pinned by another
/// podnet version, a program that does not load) is podnet's own [`code::DATAPATH`].
fn init_err(e: &crate::node::NodeError) -> CniError {
    use crate::node::NodeError;
    let code = match e {
        NodeError::Invalid(_)
        | NodeError::NoUplink { .. }
        | NodeError::NoNodeIp { .. }
        | NodeError::NoCgroup2
        | NodeError::Peers(_)
        | NodeError::Link(crate::link::LinkError::InvalidName { .. }) => code::INVALID_CONFIG,
        NodeError::State(_) => code::IO,
        _ => code::DATAPATH,
    };
    CniError::new(code, e.to_string())
}

fn proto_of(m: &spec::PortMapping) -> Result<Proto, CniError> {
    m.protocol
        .parse()
        .map_err(|e: String| CniError::new(code::INVALID_CONFIG, e))
}

fn host_ports(conf: &NetConf, ip: Ipv4Addr) -> Result<Vec<HostPort>, CniError> {
    conf.port_mappings
        .iter()
        .map(|m| {
            Ok(HostPort {
                host_port: m.host_port,
                proto: proto_of(m)?,
                ip,
                container_port: m.container_port,
            })
        })
        .collect()
}

fn add(env: &CniEnv, node: &Node<'_>) -> Result<Value, CniError> {
    let conf = node.conf;
    let (container_id, ifname) = env.attachment();
    let netns_path = env.netns.clone().expect("checked by CniEnv for ADD");
    // Check the namespace before touching anything: it must be a network namespace, and not
    // the one the plugin runs in (the node's), where eth0, an address and a default route would
    // land on the node itself.
    let invalid_netns = |what: String| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {}: {what}", netns_path.display()),
        )
    };
    let netns = Netns::open(&netns_path).map_err(|e| invalid_netns(e.to_string()))?;
    if pod::is_node_netns(&netns).map_err(io_err)? {
        return Err(invalid_netns(
            "this is the node's own network namespace (the plugin's), not the container's"
                .to_owned(),
        ));
    }
    let settings = node_settings(node, true)?.expect("init returns settings or an error");
    let lock = FileLock::shared(&settings.lock_file()).map_err(io_err)?;
    let path = record_path(&settings.state_dir, &container_id, &ifname);
    if let Ok(Some(existing)) = state::read_json::<Attachment>(&path) {
        // A repeated ADD: answer as the first time did.
        return Ok(existing
            .result
            .or_else(|| conf.prev_result.clone())
            .unwrap_or(Value::Null));
    }
    state::ensure_private_dir(&records_dir(&settings.state_dir)).map_err(io_err)?;
    let attachment = match conf.mode {
        Mode::Chained => add_chained(conf, &settings, &container_id, &ifname, &netns)?,
        Mode::Standalone => add_standalone(conf, &settings, &container_id, &ifname, &netns, &lock)?,
    };
    let owner = attachment.owner();
    let added = host_ports(conf, attachment.ip).and_then(|mappings| {
        if mappings.is_empty() {
            return Ok(());
        }
        nodeport::add_host_ports(&settings, &owner, &mappings)
            .map(|_| ())
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))
    });
    if let Err(e) = added {
        let _ = undo(&settings, &attachment, &lock);
        return Err(e);
    }
    if let Err(e) = state::write_json(&path, &attachment) {
        let _ = undo(&settings, &attachment, &lock);
        return Err(io_err(e));
    }
    Ok(attachment
        .result
        .or_else(|| conf.prev_result.clone())
        .unwrap_or(Value::Null))
}

/// The container interface and its IPv4 address in a `prevResult`.
fn from_prev_result(prev: &Value, ifname: &str) -> Result<(Ipv4Network, Option<String>), CniError> {
    let bad = |msg: &str| CniError::new(code::INVALID_CONFIG, format!("prevResult: {msg}"));
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let index = interfaces.iter().position(|i| {
        i["name"].as_str() == Some(ifname) && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
    });
    let ips = prev["ips"]
        .as_array()
        .ok_or_else(|| bad("no ips (is podnet chained after bridge + host-local?)"))?;
    let ip = ips
        .iter()
        .filter(|ip| match (index, ip["interface"].as_u64()) {
            (Some(i), Some(j)) => usize::try_from(j).is_ok_and(|j| j == i),
            _ => true,
        })
        .find_map(|ip| ip["address"].as_str()?.parse::<Ipv4Network>().ok())
        .ok_or_else(|| bad(&format!("no IPv4 address for interface {ifname}")))?;
    let mac = index.and_then(|i| interfaces[i]["mac"].as_str().map(str::to_owned));
    Ok((ip, mac))
}

fn add_chained(
    conf: &NetConf,
    settings: &NodeSettings,
    container_id: &str,
    ifname: &str,
    netns: &Netns,
) -> Result<Attachment, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "chained mode needs a prevResult: put podnet after bridge + host-local in the conflist",
        )
    })?;
    let (address, _) = from_prev_result(prev, ifname)?;
    let ip = address.ip();
    if !settings.pod_cidr.contains(ip) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "container address {ip} is outside the node's pod CIDR {}: node.pod_cidr must be host-local's subnet",
                settings.pod_cidr
            ),
        ));
    }
    let name = ifname.to_owned();
    let container_if = netns
        .run_netlink(move |nl| async move { nl.get(&name).await })
        .map_err(io_err)?
        .map_err(io_err)?
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("no interface {ifname} in CNI_NETNS"),
            )
        })?;
    let peer = container_if.peer_index.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{ifname} in CNI_NETNS is not a veth"),
        )
    })?;
    let host = with_netlink(|nl| async move { Ok(nl.get_by_index(peer).await?) })
        .map_err(io_err)?
        .ok_or_else(|| CniError::new(code::IO, format!("the host end of {ifname} is missing")))?;
    attach::attach_ingress(&settings.pin_dir, program_name::FROM_POD, &host.name)
        .map_err(datapath_err)?;
    let mut maps = PinnedMaps::open(&settings.pin_dir).map_err(datapath_err)?;
    maps.upsert_endpoint(
        ip,
        &Endpoint {
            ifindex: host.index,
            flags: 0,
            mac: container_if.mac,
            _pad0: [0; 2],
            netns_ino: netns.inode(),
        },
    )
    .map_err(datapath_err)?;
    crate::datapath::services_map::register_pod_netns(&settings.pin_dir, netns, ip)
        .map_err(datapath_err)?;
    Ok(Attachment {
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        chained: true,
        netns: Some(netns.path().to_path_buf()),
        netns_ino: Some(netns.inode()),
        host_if: host.name,
        ip,
        pod: None,
        result: None,
    })
}

fn add_standalone(
    conf: &NetConf,
    settings: &NodeSettings,
    container_id: &str,
    ifname: &str,
    netns: &Netns,
    lock: &FileLock,
) -> Result<Attachment, CniError> {
    let name = pod_name(container_id, ifname);
    // There is no attachment record (checked by the caller, under the lock), so a pod of this
    // name was left by an ADD killed after making it: start again from nothing. (Anything an
    // ADD killed earlier left, the pod add below replaces.)
    if pod::get(settings, &name).map_err(datapath_err)?.is_some() {
        pod::del_held(settings, &name, lock).map_err(datapath_err)?;
    }
    let record =
        pod::add_held(settings, &name, Some(netns.path()), ifname, lock).map_err(|e| match e {
            pod::PodError::Ipam(e) => CniError::new(code::TRY_AGAIN, e.to_string()),
            e => datapath_err(e),
        })?;
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": record.host_if, "mac": record.host_mac},
            {"name": ifname, "mac": record.mac, "sandbox": netns.path()},
        ],
        "ips": [{
            "address": record.address.to_string(),
            "gateway": record.gateway.to_string(),
            "interface": 1,
        }],
        "routes": [{"dst": "0.0.0.0/0", "gw": record.gateway.to_string()}],
        "dns": {},
    });
    if conf.cni_version.starts_with("0.") {
        result["ips"][0]["version"] = json!("4");
    }
    if let Some(mtu) = settings.mtu {
        result["interfaces"][1]["mtu"] = json!(mtu);
    }
    Ok(Attachment {
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        chained: false,
        netns: Some(netns.path().to_path_buf()),
        netns_ino: Some(netns.inode()),
        host_if: record.host_if,
        ip: record.address.ip(),
        pod: Some(name),
        result: Some(result),
    })
}

/// Removes what an attachment made. Tolerates anything already gone. The caller holds the node
/// lock.
fn undo(settings: &NodeSettings, a: &Attachment, lock: &FileLock) -> Result<(), CniError> {
    nodeport::remove_host_ports(settings, &a.owner()).map_err(datapath_err)?;
    match &a.pod {
        Some(pod) => {
            pod::del_held(settings, pod, lock).map_err(datapath_err)?;
        }
        None => {
            attach::detach_ingress(&a.host_if).map_err(datapath_err)?;
            if let Ok(mut maps) = PinnedMaps::open(&settings.pin_dir) {
                // Only if the endpoint is still this attachment's (the address may be reused).
                let ours = crate::link::ifindex(&a.host_if);
                let current = maps.endpoint(a.ip).map_err(datapath_err)?;
                if current.is_some_and(|ep| ours.is_none_or(|i| i == ep.ifindex)) {
                    maps.remove_endpoint(a.ip).map_err(datapath_err)?;
                    crate::datapath::services_map::forget_pod_netns(&settings.pin_dir, a.ip)
                        .map_err(datapath_err)?;
                }
            }
            crate::conntrack::forget_addr(settings, a.ip).map_err(datapath_err)?;
        }
    }
    Ok(())
}

fn del(env: &CniEnv, node: &Node<'_>) -> Result<(), CniError> {
    let conf = node.conf;
    // A node that was never initialised has nothing of any container.
    let Some(settings) = node.recorded.clone() else {
        return Ok(());
    };
    let (container_id, ifname) = env.attachment();
    let lock = FileLock::shared(&settings.lock_file()).map_err(io_err)?;
    let path = record_path(&settings.state_dir, &container_id, &ifname);
    let record: Option<Attachment> = state::read_json(&path).map_err(io_err)?;
    match record {
        Some(a) => undo(&settings, &a, &lock)?,
        None => {
            // Never seen, or already deleted: host ports are the only thing ADD makes before
            // the record, so clear those in case ADD died half-way.
            nodeport::remove_host_ports(&settings, &owner(&container_id, &ifname))
                .map_err(datapath_err)?;
            if conf.mode == Mode::Standalone {
                pod::del_held(&settings, &pod_name(&container_id, &ifname), &lock)
                    .map_err(datapath_err)?;
            }
        }
    }
    state::remove_file(&path).map_err(io_err)?;
    Ok(())
}

fn check(env: &CniEnv, node: &Node<'_>) -> Result<(), CniError> {
    let conf = node.conf;
    let settings = node
        .recorded
        .clone()
        .ok_or_else(|| CniError::new(code::UNKNOWN_CONTAINER, "the node is not initialised"))?;
    let (container_id, ifname) = env.attachment();
    let a: Attachment = state::read_json(&record_path(&settings.state_dir, &container_id, &ifname))
        .map_err(io_err)?
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("no podnet attachment for container {container_id} interface {ifname}"),
            )
        })?;
    let fail = |what: String| Err(CniError::new(code::DATAPATH, what));
    let host_if = a.host_if.clone();
    let (host, filtered) = with_netlink(|nl| async move {
        let Some(host) = nl.get(&host_if).await? else {
            return Ok((None, false));
        };
        let filtered = nl
            .has_bpf_ingress_filter(host.index, attach::FILTER_PRIORITY)
            .await?;
        Ok((Some(host), filtered))
    })
    .map_err(io_err)?;
    let Some(host) = host else {
        return fail(format!("host veth {} is gone", a.host_if));
    };
    if !filtered {
        return fail(format!("podnet's program is not attached to {}", a.host_if));
    }
    let maps = PinnedMaps::open(&settings.pin_dir).map_err(datapath_err)?;
    match maps.endpoint(a.ip).map_err(datapath_err)? {
        Some(ep) if ep.ifindex == host.index => {}
        _ => return fail(format!("endpoint {} is missing from the map", a.ip)),
    }
    let missing = nodeport::missing_host_ports(&settings, &a.owner()).map_err(datapath_err)?;
    if let Some(np) = missing.first() {
        return fail(format!(
            "host port {}/{} is missing from the map",
            np.port, np.proto
        ));
    }
    let wanted: Vec<(u16, Proto)> = host_ports(conf, a.ip)?
        .iter()
        .map(|m| (m.host_port, m.proto))
        .collect();
    let have: Vec<(u16, Proto)> = nodeport::list(&settings)
        .map_err(datapath_err)?
        .into_iter()
        .filter(|np| np.owner.as_deref() == Some(a.owner().as_str()))
        .map(|np| (np.port, np.proto))
        .collect();
    if let Some((port, proto)) = wanted.iter().find(|w| !have.contains(w)) {
        return fail(format!("port mapping {port}/{proto} is not installed"));
    }
    Ok(())
}

fn status(node: &Node<'_>) -> Result<(), CniError> {
    // Ready: initialised with its maps pinned, or able to initialise at the first ADD.
    let ready = match &node.recorded {
        Some(s) => PinnedMaps::open(&s.pin_dir).is_ok(),
        None => node_settings(node, false)?.is_some(),
    };
    if ready {
        Ok(())
    } else {
        Err(CniError::new(
            code::NOT_AVAILABLE,
            "podnet cannot add pods: the node is not initialised and the configuration has no node settings",
        ))
    }
}

/// What `gc` freed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub attachments: Vec<String>,
    pub host_ports: usize,
    /// Pods torn down: CNI pods without an attachment, and pods half-made by a killed
    /// `pod add` (an address reserved, no record).
    pub pods: Vec<String>,
    pub veths: Vec<String>,
    pub addresses: Vec<Ipv4Addr>,
    /// Endpoints of addresses no pod or attachment holds.
    pub endpoints: Vec<Ipv4Addr>,
    /// Temporary files of killed writes (pod and attachment records, IPAM).
    pub temp_files: usize,
}

impl GcReport {
    /// Whether nothing was freed.
    pub fn is_empty(&self) -> bool {
        let Self {
            attachments,
            host_ports,
            pods,
            veths,
            addresses,
            endpoints,
            temp_files,
        } = self;
        attachments.is_empty()
            && *host_ports == 0
            && pods.is_empty()
            && veths.is_empty()
            && addresses.is_empty()
            && endpoints.is_empty()
            && *temp_files == 0
    }
}

fn gc(node: &Node<'_>) -> Result<(), CniError> {
    let Some(settings) = &node.recorded else {
        return Ok(());
    };
    let valid: Vec<(String, String)> = node
        .conf
        .valid_attachments
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.container_id, v.ifname))
        .collect();
    let lock = FileLock::exclusive(&settings.lock_file()).map_err(io_err)?;
    collect(settings, &valid, &lock).map(|_| ())
}

/// Frees every attachment not in `valid`, host ports of no attachment, pods and addresses that
/// killed operations left half-made, podnet's stale host veths, endpoints of no pod, and
/// temporary files. Shared by CNI GC and `podnet gc`. The caller holds the node lock
/// exclusively, so no ADD, DEL or `pod add|del` is in progress.
pub fn collect(
    settings: &NodeSettings,
    valid: &[(String, String)],
    lock: &FileLock,
) -> Result<GcReport, CniError> {
    let mut report = GcReport::default();
    let mut kept = Vec::new();
    for a in attachments(&settings.state_dir)? {
        if valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
            kept.push(a);
            continue;
        }
        undo(settings, &a, lock)?;
        state::remove_file(&record_path(
            &settings.state_dir,
            &a.container_id,
            &a.ifname,
        ))
        .map_err(io_err)?;
        report.attachments.push(a.owner());
    }
    let owners: Vec<String> = kept.iter().map(Attachment::owner).collect();
    for owner in nodeport::host_port_owners(settings).map_err(datapath_err)? {
        if !owners.contains(&owner) {
            report.host_ports +=
                nodeport::remove_host_ports(settings, &owner).map_err(datapath_err)?;
        }
    }
    // CNI pods no kept attachment names (an ADD killed after making its pod), and pods whose
    // address is reserved without a record (a `pod add` or ADD killed part-way).
    let kept_pods: Vec<&str> = kept.iter().filter_map(|a| a.pod.as_deref()).collect();
    let orphans: Vec<String> = pod::list(settings)
        .map_err(datapath_err)?
        .into_iter()
        .map(|p| p.name)
        .filter(|name| is_cni_pod_name(name) && !kept_pods.contains(&name.as_str()))
        .chain(pod::leftovers(settings, lock).map_err(datapath_err)?)
        .collect();
    for name in orphans {
        let del = pod::del_held(settings, &name, lock).map_err(datapath_err)?;
        report.addresses.extend(del.released);
        report.pods.push(name);
    }
    // Host veths podnet named ("pn" + hash) that belong to no pod and no attachment.
    let pods = pod::list(settings).map_err(datapath_err)?;
    let known: Vec<String> = pods
        .iter()
        .map(|p| p.host_if.clone())
        .chain(kept.iter().map(|a| a.host_if.clone()))
        .collect();
    let stale: Vec<String> = with_netlink(|nl| async move { Ok(nl.list().await?) })
        .map_err(io_err)?
        .into_iter()
        .filter(|l| {
            l.kind.as_deref() == Some("veth")
                && l.name.len() == 10
                && l.name.starts_with("pn")
                && l.name[2..].bytes().all(|b| b.is_ascii_hexdigit())
                && !known.contains(&l.name)
        })
        .map(|l| l.name)
        .collect();
    for name in stale {
        let n = name.clone();
        if with_netlink(|nl| async move { Ok(nl.delete(&n).await?) }).map_err(io_err)? {
            report.veths.push(name);
        }
    }
    // Endpoints of addresses that no pod and no kept attachment holds.
    let live: Vec<Ipv4Addr> = pods
        .iter()
        .map(|p| p.address.ip())
        .chain(kept.iter().map(|a| a.ip))
        .collect();
    if let Ok(mut maps) = PinnedMaps::open(&settings.pin_dir) {
        for ep in maps.endpoints().map_err(datapath_err)? {
            if !live.contains(&ep.ip) && maps.remove_endpoint(ep.ip).map_err(datapath_err)? {
                crate::conntrack::forget_addr(settings, ep.ip).map_err(datapath_err)?;
                report.endpoints.push(ep.ip);
            }
        }
    }
    report.temp_files = pod::remove_temp_files(settings, lock).map_err(datapath_err)?
        + state::remove_temp_files(&records_dir(&settings.state_dir)).map_err(io_err)?
        + settings
            .ipam()
            .and_then(|ipam| ipam.remove_leftovers())
            .map_err(datapath_err)?;
    Ok(report)
}

/// Whether the attachment's container still exists: its namespace path opens and is the same
/// namespace (same inode) as at ADD.
pub fn is_alive(a: &Attachment) -> bool {
    let Some(path) = &a.netns else {
        return false;
    };
    match Netns::open(path) {
        Ok(ns) => a.netns_ino.is_none_or(|ino| ino == ns.inode()),
        Err(_) => false,
    }
}

/// `podnet gc`: for a machine where DEL never came (a runtime crash, a container run detached),
/// frees every attachment whose container namespace is gone, plus `collect`'s other leftovers.
/// `keep` lists `(containerID, ifname)` pairs to keep regardless.
pub fn gc_dead(settings: &NodeSettings, keep: &[(String, String)]) -> Result<GcReport, CniError> {
    let lock = FileLock::exclusive(&settings.lock_file()).map_err(io_err)?;
    let mut valid: Vec<(String, String)> = attachments(&settings.state_dir)?
        .into_iter()
        .filter(is_alive)
        .map(|a| (a.container_id, a.ifname))
        .collect();
    valid.extend(keep.iter().cloned());
    collect(settings, &valid, &lock)
}

/// Every recorded attachment of the node.
pub fn attachments(state_dir: &Path) -> Result<Vec<Attachment>, CniError> {
    let dir = records_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err)?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(a) = state::read_json::<Attachment>(&path).map_err(io_err)?
        {
            out.push(a);
        }
    }
    out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prev_result_of_the_bridge_plugin() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1234", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}]
        });
        let (ip, mac) = from_prev_result(&prev, "eth0").unwrap();
        assert_eq!(ip.to_string(), "10.244.1.5/24");
        assert_eq!(mac.as_deref(), Some("cc:cc:cc:cc:cc:cc"));
        assert!(from_prev_result(&json!({"interfaces": []}), "eth0").is_err());
    }

    #[test]
    fn derived_names_are_short_and_distinct() {
        let a = pod_name(&"a".repeat(64), "eth0");
        let b = pod_name(&"a".repeat(64), "eth1");
        assert_ne!(a, b);
        assert!(a.len() <= pod::MAX_POD_NAME);
        pod::validate_name(&a).unwrap();
        assert!(is_cni_pod_name(&a));
        for other in [
            "web",
            "cni-web",
            "cni-0123456789abcdeg",
            "cni-0123456789abcdef0",
        ] {
            assert!(!is_cni_pod_name(other), "{other}");
        }
    }
}
