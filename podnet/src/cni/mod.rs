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

use std::{io::Read as _, net::Ipv4Addr, path::PathBuf, process::ExitCode};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::{Value, json};
use spec::{CniEnv, CniError, Command, Mode, NetConf, code};

use crate::{
    config::NodeSettings,
    model::{
        nodeport::{HostPort, Proto},
        pod::PodRecord,
    },
    ops::{self, Ctx, ErrorKind, attachment, gc, pod},
    store,
    sys::netns::Netns,
};

/// The spec's error for an operation's error: its kind decides the code, here and nowhere else.
fn err(e: &ops::Error) -> CniError {
    let code = match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Conflict => code::INVALID_CONFIG,
        ErrorKind::NotFound => code::UNKNOWN_CONTAINER,
        ErrorKind::Exhausted => code::TRY_AGAIN,
        ErrorKind::Io => code::IO,
        ErrorKind::NotInitialised | ErrorKind::Datapath => code::DATAPATH,
    };
    CniError::new(code, e.to_string())
}

impl From<ops::Error> for CniError {
    fn from(e: ops::Error) -> Self {
        err(&e)
    }
}

/// Runs the plugin with the process's environment and stdin, prints the answer, and returns
/// the exit code.
#[expect(
    clippy::print_stdout,
    reason = "the CNI protocol answers on standard output, results and errors alike"
)]
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
    let recorded = store::node::load(&conf.state_dir).ok().flatten();
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
        Command::Gc => collect(&node).map(|()| None),
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

/// The node's settings from the configuration's `node` object (with the list's state
/// directory), checked; `None` if there is none.
fn configured_settings(conf: &NetConf) -> Result<Option<NodeSettings>, CniError> {
    let Some(given) = &conf.node else {
        return Ok(None);
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
    Ok(Some(settings))
}

/// The node's settings: recorded by an earlier `node init`, or built from the configuration's
/// `node` object and initialised now (once, under a lock, however many ADDs race).
fn init_node(node: &Node<'_>) -> Result<NodeSettings, CniError> {
    let conf = node.conf;
    if let Some(settings) = &node.recorded {
        return Ok(settings.clone());
    }
    let settings = configured_settings(conf)?.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "the node at {} is not initialised and the configuration has no \"node\" settings",
                conf.state_dir.display()
            ),
        )
    })?;
    // Whatever `node init` would refuse is refused before the state directory is made; the
    // init below builds on this check rather than repeating it.
    let checked = ops::node::check(settings)?;
    let _lock = store::attachments::init_lock(&conf.state_dir).map_err(|e| io_err(&e))?;
    if let Ok(Some(done)) = store::node::load(&conf.state_dir) {
        return Ok(done);
    }
    let report = checked.init()?;
    if let Ok(exe) = std::env::current_exe() {
        // Collection is an optimisation of the table's use; ADD does not fail without it.
        let _ = ops::collector::start(&report.settings, &exe);
    }
    Ok(report.settings)
}

fn io_err(e: &dyn std::fmt::Display) -> CniError {
    CniError::new(code::IO, e.to_string())
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

/// `CNI_NETNS` opened and checked: a network namespace, and not the node's own (the plugin's),
/// where eth0, an address and a default route would land on the node itself.
fn container_netns(env: &CniEnv) -> Result<Netns, CniError> {
    let netns_path = env.netns.clone().expect("checked by CniEnv for ADD");
    let invalid_netns = |what: String| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {}: {what}", netns_path.display()),
        )
    };
    let netns = Netns::open(&netns_path).map_err(|e| invalid_netns(e.to_string()))?;
    if pod::is_node_netns(&netns)? {
        return Err(invalid_netns(
            "this is the node's own network namespace (the plugin's), not the container's"
                .to_owned(),
        ));
    }
    Ok(netns)
}

fn add(env: &CniEnv, node: &Node<'_>) -> Result<Value, CniError> {
    let conf = node.conf;
    let (container_id, ifname) = env.attachment();
    let netns = container_netns(env)?;
    let ctx = Ctx::new(init_node(node)?);
    let lock = store::node::lock_shared(&ctx.settings.state_dir).map_err(|e| io_err(&e))?;
    if let Some(existing) = attachment::get(&ctx, &container_id, &ifname).ok().flatten() {
        // A repeated ADD: answer as the first time did.
        return Ok(existing
            .result
            .or_else(|| conf.prev_result.clone())
            .unwrap_or(Value::Null));
    }
    let mut made = match conf.mode {
        Mode::Chained => {
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "chained mode needs a prevResult: put podnet after bridge + host-local in the conflist",
                )
            })?;
            let (address, _) = from_prev_result(prev, &ifname)?;
            let address6 = ipv6_from_prev_result(prev, &ifname);
            attachment::add_chained(
                &ctx,
                &container_id,
                &ifname,
                &netns,
                address.ip(),
                address6.map(|a| a.ip()),
            )?
        }
        Mode::Standalone => {
            let (mut a, record) =
                attachment::add_standalone(&ctx, &container_id, &ifname, &netns, &lock)?;
            a.result = Some(standalone_result(
                conf,
                &ctx.settings,
                &ifname,
                &netns,
                &record,
            ));
            a
        }
    };
    let ports = match host_ports(conf, made.ip) {
        Ok(ports) => ports,
        Err(e) => {
            let _ = attachment::undo(&ctx, &made, &lock);
            return Err(e);
        }
    };
    attachment::commit(&ctx, &made, &ports, &lock)?;
    Ok(made
        .result
        .take()
        .or_else(|| conf.prev_result.clone())
        .unwrap_or(Value::Null))
}

/// The result of a standalone ADD: the host veth and the container interface, the address
/// with its gateway and the default route, per family (IPv6 too on a dual-stack node).
fn standalone_result(
    conf: &NetConf,
    settings: &NodeSettings,
    ifname: &str,
    netns: &Netns,
    record: &PodRecord,
) -> Value {
    let old_format = conf.cni_version.starts_with("0.");
    let ip = |address: String, gateway: String, version: &str| {
        let mut ip = json!({"address": address, "gateway": gateway, "interface": 1});
        if old_format {
            ip["version"] = json!(version);
        }
        ip
    };
    let mut ips = vec![ip(
        record.address.to_string(),
        record.gateway.to_string(),
        "4",
    )];
    let mut routes = vec![json!({"dst": "0.0.0.0/0", "gw": record.gateway.to_string()})];
    if let (Some(address6), Some(gateway6)) = (record.address6, record.gateway6) {
        ips.push(ip(address6.to_string(), gateway6.to_string(), "6"));
        routes.push(json!({"dst": "::/0", "gw": gateway6.to_string()}));
    }
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": record.host_if, "mac": record.host_mac},
            {"name": ifname, "mac": record.mac, "sandbox": netns.path()},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    });
    if let Some(mtu) = settings.mtu {
        result["interfaces"][1]["mtu"] = json!(mtu);
    }
    result
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

/// The container interface's IPv6 address in a `prevResult` (`host-local` with an IPv6
/// range), if any: a dual-stack container.
fn ipv6_from_prev_result(prev: &Value, ifname: &str) -> Option<Ipv6Network> {
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let index = interfaces.iter().position(|i| {
        i["name"].as_str() == Some(ifname) && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
    });
    prev["ips"]
        .as_array()?
        .iter()
        .filter(|ip| match (index, ip["interface"].as_u64()) {
            (Some(i), Some(j)) => usize::try_from(j).is_ok_and(|j| j == i),
            _ => true,
        })
        .find_map(|ip| ip["address"].as_str()?.parse::<Ipv6Network>().ok())
}

fn del(env: &CniEnv, node: &Node<'_>) -> Result<(), CniError> {
    // A node that was never initialised has nothing of any container.
    let Some(settings) = node.recorded.clone() else {
        return Ok(());
    };
    let (container_id, ifname) = env.attachment();
    let ctx = Ctx::new(settings);
    let lock = store::node::lock_shared(&ctx.settings.state_dir).map_err(|e| io_err(&e))?;
    let standalone = node.conf.mode == Mode::Standalone;
    attachment::del(&ctx, &container_id, &ifname, standalone, &lock)?;
    Ok(())
}

fn check(env: &CniEnv, node: &Node<'_>) -> Result<(), CniError> {
    let settings = node
        .recorded
        .clone()
        .ok_or_else(|| CniError::new(code::UNKNOWN_CONTAINER, "the node is not initialised"))?;
    let (container_id, ifname) = env.attachment();
    let ctx = Ctx::new(settings);
    let a = attachment::get(&ctx, &container_id, &ifname)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("no podnet attachment for container {container_id} interface {ifname}"),
        )
    })?;
    let wanted: Vec<(u16, Proto)> = host_ports(node.conf, a.ip)?
        .iter()
        .map(|m| (m.host_port, m.proto))
        .collect();
    match attachment::check(&ctx, &a, &wanted)? {
        None => Ok(()),
        Some(what) => Err(CniError::new(code::DATAPATH, what)),
    }
}

fn status(node: &Node<'_>) -> Result<(), CniError> {
    // Ready: initialised with its maps pinned, or able to initialise at the first ADD.
    let ready = match &node.recorded {
        Some(s) => Ctx::new(s.clone()).maps().is_ok(),
        None => configured_settings(node.conf)?.is_some(),
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

fn collect(node: &Node<'_>) -> Result<(), CniError> {
    let Some(settings) = node.recorded.clone() else {
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
    let ctx = Ctx::new(settings);
    let lock = store::node::lock_exclusive(&ctx.settings.state_dir).map_err(|e| io_err(&e))?;
    gc::collect(&ctx, &valid, &lock)?;
    Ok(())
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
        assert_eq!(ipv6_from_prev_result(&prev, "eth0"), None);
    }

    #[test]
    fn dual_stack_prev_result() {
        // bridge + host-local with two ranges: both addresses on the container interface, in
        // either order; another interface's IPv6 address is not the container's.
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1234", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00:10:244:1::9/64", "gateway": "fd00:10:244:1::1", "interface": 0},
                {"address": "fd00:10:244:1::5/64", "gateway": "fd00:10:244:1::1", "interface": 2},
                {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}
            ]
        });
        let (ip, _) = from_prev_result(&prev, "eth0").unwrap();
        assert_eq!(ip.to_string(), "10.244.1.5/24");
        assert_eq!(
            ipv6_from_prev_result(&prev, "eth0")
                .map(|a| a.to_string())
                .as_deref(),
            Some("fd00:10:244:1::5/64")
        );
    }
}
