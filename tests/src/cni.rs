//! A small CNI driver that follows the spec the way libcni / `cnitool` do, for testing podnet's
//! CNI plugin next to the reference plugins (Debian's `containernetworking-plugins`).
//!
//! - [`CniBinDir`]: a temporary `CNI_PATH` with `bridge`, `host-local`, `portmap` and `loopback`
//!   linked from [`REFERENCE_PLUGIN_DIR`] and `podnet` linked to [`podnet_bin`].
//! - [`Cni`]: runs plugins inside a node's network namespace (`nsenter --net=NODE -- PLUGIN`,
//!   never `ip netns exec`, whose private sysfs hides bpffs), each invocation bounded by
//!   [`Cni::timeout`]. [`Cni::add`], [`Cni::check`] and [`Cni::del`] run a conflist as libcni
//!   does (ADD in order feeding each plugin the previous result, CHECK in order and DEL in
//!   reverse order with the final ADD result as `prevResult`); [`Cni::gc`], [`Cni::status`] and
//!   [`Cni::version`] run the 1.1.0 operations; [`Cni::invoke_plugin`] runs one plugin of a list
//!   and [`Cni::invoke`] is a raw invocation (any environment, any stdin bytes).
//! - [`CniNode`]: a [`Topology`] whose node namespace the plugins run in, with unique state,
//!   pin and `host-local` data directories, and the conflists the tests use. Dropping it (also
//!   on panic) runs `podnet node reset` and removes the directories, then the namespaces go.
//! - Result helpers: [`container_address`], [`host_peer`].

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Seek as _, SeekFrom, Write as _},
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::Duration,
};

use serde_json::{Map, Value, json};

use crate::{
    CLUSTER_CIDR, ChildGuard, InNetns, Topology, describe, podnet_bin, process::run_bounded, unique,
};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The reference plugins linked into every [`CniBinDir`].
pub const REFERENCE_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];
/// The versions podnet's plugin speaks.
pub const PODNET_CNI_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The version of chained conflists: the newest one Debian's reference plugins (1.1.x) speak.
pub const CHAINED_CNI_VERSION: &str = "1.0.0";
/// The version of standalone conflists (STATUS and GC need 1.1.0).
pub const STANDALONE_CNI_VERSION: &str = "1.1.0";
/// The bridge the reference `bridge` plugin makes in chained conflists.
pub const CHAINED_BRIDGE: &str = "cni0";
/// The bridge podnet makes in standalone mode when none is configured.
pub const STANDALONE_BRIDGE: &str = "podnet0";
/// How long one plugin invocation may take unless [`Cni::timeout`] says otherwise.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variables of the CNI protocol.
pub const CNI_ENV_VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// A temporary `CNI_PATH` directory: symlinks to the reference plugins and to podnet. Removed
/// on drop.
#[derive(Debug)]
pub struct CniBinDir {
    dir: PathBuf,
}

impl CniBinDir {
    /// Creates the directory; panics with a hint when the reference plugins are not installed.
    pub fn new() -> Self {
        let missing: Vec<_> = REFERENCE_PLUGINS
            .iter()
            .map(|p| Path::new(REFERENCE_PLUGIN_DIR).join(p))
            .filter(|p| !p.is_file())
            .collect();
        assert!(
            missing.is_empty(),
            "missing CNI reference plugins {missing:?}: run `cargo xtask setup` or \
             `apt-get install containernetworking-plugins`"
        );
        let podnet = podnet_bin();
        let podnet = podnet.canonicalize().unwrap_or(podnet);
        let dir = std::env::temp_dir().join(format!("podnet-cni-bin-{}", unique("b")));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let bin = Self { dir };
        for plugin in REFERENCE_PLUGINS {
            bin.link(plugin, &Path::new(REFERENCE_PLUGIN_DIR).join(plugin));
        }
        bin.link("podnet", &podnet);
        bin
    }

    fn link(&self, name: &str, target: &Path) {
        let at = self.dir.join(name);
        std::os::unix::fs::symlink(target, &at)
            .unwrap_or_else(|e| panic!("linking {} -> {}: {e}", at.display(), target.display()));
    }

    /// The directory (the value of `CNI_PATH`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The executable for plugin `type`.
    pub fn plugin(&self, plugin_type: &str) -> PathBuf {
        assert!(
            !plugin_type.is_empty() && !plugin_type.contains('/'),
            "bad plugin type {plugin_type:?}"
        );
        self.dir.join(plugin_type)
    }
}

impl Default for CniBinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CniBinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One raw plugin invocation: the `CNI_*` environment (anything not set here is unset, even if
/// the test process has it) and the bytes on stdin.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `CNI_*` (or other) variables to set.
    pub env: BTreeMap<String, OsString>,
    /// What the plugin reads on stdin.
    pub stdin: Vec<u8>,
}

impl Invocation {
    /// An invocation with `CNI_COMMAND=command` and empty stdin.
    pub fn new(command: &str) -> Self {
        Self::default().env("CNI_COMMAND", command)
    }

    /// Sets an environment variable (values need not be UTF-8).
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.insert(key.to_owned(), value.as_ref().to_owned());
        self
    }

    /// Leaves an environment variable unset.
    pub fn without(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// Sets stdin to raw bytes.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Sets stdin to a JSON value.
    pub fn stdin_json(self, value: &Value) -> Self {
        let bytes = serde_json::to_vec(value).expect("JSON values serialize");
        self.stdin(bytes)
    }
}

/// What the runtime knows about one attachment (libcni's `RuntimeConf`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty, as containerd sends on some DELs).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, as `K=V` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments: each becomes `runtimeConfig.<key>` for plugins declaring
    /// `capabilities: {<key>: true}`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// Container `container_id` in the namespace at `netns`, interface `eth0`.
    pub fn new(container_id: &str, netns: impl AsRef<Path>) -> Self {
        Self {
            container_id: container_id.to_owned(),
            netns: netns.as_ref().to_string_lossy().into_owned(),
            ifname: "eth0".to_owned(),
            args: Vec::new(),
            capability_args: Map::new(),
        }
    }

    /// Sets `CNI_IFNAME`.
    pub fn with_ifname(mut self, ifname: &str) -> Self {
        self.ifname = ifname.to_owned();
        self
    }

    /// Sets `CNI_NETNS` (e.g. to "" for a DEL after the namespace is gone).
    pub fn with_netns(mut self, netns: &str) -> Self {
        self.netns = netns.to_owned();
        self
    }

    /// Adds a `CNI_ARGS` pair.
    pub fn with_arg(mut self, key: &str, value: &str) -> Self {
        self.args.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a capability argument (e.g. `portMappings`).
    pub fn with_capability(mut self, key: &str, value: Value) -> Self {
        self.capability_args.insert(key.to_owned(), value);
        self
    }

    /// `CNI_ARGS`: `K=V;K2=V2`.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The environment of `command` for this attachment (stdin still empty).
    pub fn invocation(&self, command: &str, cni_path: &Path) -> Invocation {
        Invocation::new(command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", self.cni_args())
            .env("CNI_PATH", cni_path)
    }
}

/// A spec error object (`{"cniVersion","code","msg","details"}`) as a plugin printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub cni_version: Option<String>,
    pub code: u64,
    pub msg: String,
    pub details: Option<String>,
}

/// The outcome of one plugin process.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// What ran, for messages.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CniOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout parsed as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.stdout).ok()
    }

    /// The spec error on stdout: a JSON object with an integer `code` and a string `msg`.
    pub fn error(&self) -> Option<SpecError> {
        let v = self.json()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(SpecError {
            cni_version: text("cniVersion"),
            code: v.get("code")?.as_u64()?,
            msg: text("msg")?,
            details: text("details"),
        })
    }

    /// Whether the process panicked (Rust's exit code 101 or a panic message on stderr).
    pub fn panicked(&self) -> bool {
        self.status.code() == Some(101) || self.stderr.contains("panicked")
    }

    /// Whether [`run_bounded`] killed it at its timeout.
    pub fn timed_out(&self) -> bool {
        self.stderr.contains("[podnet-tests] killed after")
    }

    /// For panic messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\n{}",
            self.what,
            describe(&Output {
                status: self.status,
                stdout: self.stdout.clone(),
                stderr: self.stderr.clone().into_bytes(),
            })
        )
    }
}

/// A failed plugin invocation within a conflist operation.
#[derive(Debug, Clone)]
pub struct CniError {
    /// The plugin's position in the list.
    pub index: usize,
    /// Its `type`.
    pub plugin: String,
    /// `CNI_COMMAND`.
    pub command: String,
    pub output: Box<CniOutput>,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CNI {} failed in plugin #{} ({}): {}",
            self.command,
            self.index,
            self.plugin,
            self.output.describe()
        )
    }
}

impl std::error::Error for CniError {}

/// What a conflist ADD returned: every plugin's printed result, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    pub per_plugin: Vec<Value>,
}

impl AddResult {
    /// The final result (what the runtime caches and hands to CHECK and DEL).
    pub fn result(&self) -> &Value {
        self.per_plugin.last().expect("a conflist has plugins")
    }
}

/// A memfd holding `bytes`, positioned at the start.
fn memfd_with(bytes: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create(2) gets a NUL-terminated C string literal and valid flags; it has no
    // other preconditions.
    let raw = unsafe { libc::memfd_create(c"cni-stdin".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `raw` was just returned by memfd_create, is open and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = File::from(fd);
    file.write_all(bytes).expect("writing a memfd");
    file.seek(SeekFrom::Start(0)).expect("seeking a memfd");
    file.into()
}

/// Makes `cmd` read `bytes` on stdin. [`run_bounded`] points stdin at /dev/null; the pre-exec
/// hook runs after that (std sets up stdio before running hooks) and replaces it.
fn feed_stdin(cmd: &mut Command, bytes: &[u8]) {
    let fd = memfd_with(bytes);
    // SAFETY: the hook runs in the forked child before exec and only calls dup2(2) and reads
    // errno, both async-signal-safe and allocation-free. `fd` is owned by the closure, so it
    // stays open until the command is dropped (it is close-on-exec; the dup on 0 is not).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd.as_raw_fd(), libc::STDIN_FILENO) == libc::STDIN_FILENO {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Drives CNI plugins inside one network namespace (the node's).
#[derive(Debug)]
pub struct Cni {
    bin: CniBinDir,
    node_netns: PathBuf,
    /// Bound on each plugin invocation.
    pub timeout: Duration,
}

impl Cni {
    /// Plugins run inside the namespace at `node_netns` with a fresh [`CniBinDir`].
    pub fn new(node_netns: impl Into<PathBuf>) -> Self {
        Self {
            bin: CniBinDir::new(),
            node_netns: node_netns.into(),
            timeout: INVOKE_TIMEOUT,
        }
    }

    /// `CNI_PATH`.
    pub fn bin_dir(&self) -> &Path {
        self.bin.path()
    }

    /// The namespace plugins run in.
    pub fn node_netns(&self) -> &Path {
        &self.node_netns
    }

    /// Runs plugin `plugin_type` once, inside the node's namespace, exactly as given: only the
    /// invocation's variables of [`CNI_ENV_VARS`] are set (the rest of the environment is the
    /// test process's).
    pub fn invoke(&self, plugin_type: &str, inv: &Invocation) -> CniOutput {
        let (cmd, what) = self.command(plugin_type, inv);
        let out = run_bounded(cmd, self.timeout);
        CniOutput {
            what,
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts plugin `plugin_type` in the background exactly as [`Cni::invoke`] runs it (the
    /// plugin is the process itself: `nsenter` execs it). The guard kills it with SIGKILL, as a
    /// crashing runtime or the OOM killer would, when dropped or on [`ChildGuard::kill`].
    pub fn spawn(&self, plugin_type: &str, inv: &Invocation) -> ChildGuard {
        ChildGuard::spawn(self.command(plugin_type, inv).0)
    }

    /// [`Cni::spawn`] for plugin `index` of `conflist`, configured as [`Cni::invoke_plugin`]
    /// configures it.
    pub fn spawn_plugin(
        &self,
        command: &str,
        conflist: &Value,
        index: usize,
        rt: &RuntimeConf,
        prev_result: Option<&Value>,
    ) -> ChildGuard {
        let plugin = &Self::plugins(conflist)[index];
        let conf = Self::plugin_conf(conflist, index, Some(rt), prev_result);
        let inv = rt.invocation(command, self.bin_dir()).stdin_json(&conf);
        self.spawn(plugin, &inv)
    }

    /// The command that runs plugin `plugin_type` for `inv`, and a description for messages.
    fn command(&self, plugin_type: &str, inv: &Invocation) -> (Command, String) {
        let exe = self.bin.plugin(plugin_type);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node_netns.display()))
            .arg("--")
            .arg(&exe);
        for var in CNI_ENV_VARS {
            cmd.env_remove(var);
        }
        for (key, value) in &inv.env {
            cmd.env(key, value);
        }
        feed_stdin(&mut cmd, &inv.stdin);
        let env: Vec<String> = inv
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
            .collect();
        let what = format!(
            "{plugin_type} in {} with {} <<< {}",
            self.node_netns.display(),
            env.join(" "),
            String::from_utf8_lossy(&inv.stdin)
        );
        (cmd, what)
    }

    /// The stdin of plugin `index` of `conflist` (libcni's `buildOneConfig`): the plugin's
    /// object plus the list's `cniVersion` and `name`, `prevResult` when given, and
    /// `runtimeConfig` holding the capability arguments of `rt` the plugin declared in its
    /// `capabilities`.
    pub fn plugin_conf(
        conflist: &Value,
        index: usize,
        rt: Option<&RuntimeConf>,
        prev_result: Option<&Value>,
    ) -> Value {
        let plugin = &conflist["plugins"][index];
        let mut conf = plugin
            .as_object()
            .unwrap_or_else(|| panic!("plugin #{index} of {conflist} is not an object"))
            .clone();
        for key in ["cniVersion", "name"] {
            if let Some(v) = conflist.get(key) {
                conf.insert(key.to_owned(), v.clone());
            }
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".to_owned(), prev.clone());
        }
        let mut runtime = Map::new();
        if let (Some(rt), Some(caps)) = (rt, plugin.get("capabilities").and_then(Value::as_object))
        {
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true)
                    && let Some(arg) = rt.capability_args.get(cap)
                {
                    runtime.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".to_owned(), Value::Object(runtime));
        }
        Value::Object(conf)
    }

    fn plugins(conflist: &Value) -> Vec<String> {
        let plugins = conflist["plugins"]
            .as_array()
            .unwrap_or_else(|| panic!("conflist without plugins: {conflist}"));
        plugins
            .iter()
            .map(|p| {
                p["type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("plugin without type: {p}"))
                    .to_owned()
            })
            .collect()
    }

    /// Runs `command` for plugin `index` of `conflist` alone (with `rt`'s environment if given,
    /// else only `CNI_COMMAND` and `CNI_PATH`).
    pub fn invoke_plugin(
        &self,
        command: &str,
        conflist: &Value,
        index: usize,
        rt: Option<&RuntimeConf>,
        prev_result: Option<&Value>,
    ) -> CniOutput {
        let plugin = &Self::plugins(conflist)[index];
        let conf = Self::plugin_conf(conflist, index, rt, prev_result);
        let inv = match rt {
            Some(rt) => rt.invocation(command, self.bin_dir()),
            None => Invocation::new(command).env("CNI_PATH", self.bin_dir()),
        };
        self.invoke(plugin, &inv.stdin_json(&conf))
    }

    fn run_plugin(
        &self,
        command: &str,
        conflist: &Value,
        index: usize,
        rt: Option<&RuntimeConf>,
        prev_result: Option<&Value>,
    ) -> Result<CniOutput, CniError> {
        let output = self.invoke_plugin(command, conflist, index, rt, prev_result);
        if output.success() {
            Ok(output)
        } else {
            Err(CniError {
                index,
                plugin: Self::plugins(conflist)[index].clone(),
                command: command.to_owned(),
                output: Box::new(output),
            })
        }
    }

    /// ADD through the list: each plugin gets the previous plugin's result as `prevResult`
    /// and must print a JSON result.
    pub fn add(&self, conflist: &Value, rt: &RuntimeConf) -> Result<AddResult, CniError> {
        let mut per_plugin: Vec<Value> = Vec::new();
        for (index, plugin) in Self::plugins(conflist).iter().enumerate() {
            let output = self.run_plugin("ADD", conflist, index, Some(rt), per_plugin.last())?;
            let Some(result) = output.json() else {
                return Err(CniError {
                    index,
                    plugin: plugin.clone(),
                    command: "ADD (result is not JSON)".to_owned(),
                    output: Box::new(output),
                });
            };
            per_plugin.push(result);
        }
        Ok(AddResult { per_plugin })
    }

    /// CHECK through the list in order, each plugin given `result` as `prevResult`.
    pub fn check(
        &self,
        conflist: &Value,
        rt: &RuntimeConf,
        result: &Value,
    ) -> Result<(), CniError> {
        for index in 0..Self::plugins(conflist).len() {
            self.run_plugin("CHECK", conflist, index, Some(rt), Some(result))?;
        }
        Ok(())
    }

    /// DEL through the list in reverse order, each plugin given `result` (the cached ADD
    /// result, if the runtime has one) as `prevResult`. Stops at the first failure, as libcni.
    pub fn del(
        &self,
        conflist: &Value,
        rt: &RuntimeConf,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        for index in (0..Self::plugins(conflist).len()).rev() {
            self.run_plugin("DEL", conflist, index, Some(rt), result)?;
        }
        Ok(())
    }

    /// GC with `cni.dev/valid-attachments` listing `(containerID, ifname)` pairs.
    pub fn gc(&self, conflist: &Value, valid: &[(&str, &str)]) -> Result<(), CniError> {
        self.gc_with_key(conflist, "cni.dev/valid-attachments", valid)
    }

    /// GC with the attachments under `key` (the older spec text says `cni.dev/attachments`).
    pub fn gc_with_key(
        &self,
        conflist: &Value,
        key: &str,
        valid: &[(&str, &str)],
    ) -> Result<(), CniError> {
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        for (index, plugin) in Self::plugins(conflist).iter().enumerate() {
            let mut conf = Self::plugin_conf(conflist, index, None, None);
            conf[key] = Value::Array(attachments.clone());
            let inv = Invocation::new("GC")
                .env("CNI_PATH", self.bin_dir())
                .stdin_json(&conf);
            let output = self.invoke(plugin, &inv);
            if !output.success() {
                return Err(CniError {
                    index,
                    plugin: plugin.clone(),
                    command: "GC".to_owned(),
                    output: Box::new(output),
                });
            }
        }
        Ok(())
    }

    /// STATUS for every plugin of the list.
    pub fn status(&self, conflist: &Value) -> Result<(), CniError> {
        for index in 0..Self::plugins(conflist).len() {
            self.run_plugin("STATUS", conflist, index, None, None)?;
        }
        Ok(())
    }

    /// VERSION of plugin `plugin_type`, asked in `cni_version`: its JSON answer.
    pub fn version(&self, plugin_type: &str, cni_version: &str) -> Result<Value, CniError> {
        let inv = Invocation::new("VERSION").stdin_json(&json!({"cniVersion": cni_version}));
        let output = self.invoke(plugin_type, &inv);
        match output.json() {
            Some(v) if output.success() => Ok(v),
            _ => Err(CniError {
                index: 0,
                plugin: plugin_type.to_owned(),
                command: "VERSION".to_owned(),
                output: Box::new(output),
            }),
        }
    }
}

/// The address (IPv4, prefix length) a result gives the container interface `ifname`: the
/// `ips[]` entry whose `interface` is the index of the interface named `ifname` with `sandbox`
/// set (or, when no entry names an interface, the first IPv4 entry).
pub fn container_address(result: &Value, ifname: &str) -> Option<(Ipv4Addr, u8)> {
    let interface = result["interfaces"].as_array().and_then(|ifs| {
        ifs.iter().position(|i| {
            i["name"].as_str() == Some(ifname)
                && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
        })
    });
    let ips = result["ips"].as_array()?;
    let parse = |ip: &Value| -> Option<(Ipv4Addr, u8)> {
        let (addr, prefix) = ip["address"].as_str()?.split_once('/')?;
        Some((addr.parse().ok()?, prefix.parse().ok()?))
    };
    let named = ips
        .iter()
        .filter(|ip| interface.is_some_and(|i| ip["interface"].as_u64() == u64::try_from(i).ok()))
        .find_map(parse);
    named.or_else(|| {
        ips.iter()
            .filter(|ip| ip.get("interface").is_none())
            .find_map(parse)
    })
}

/// Parses `ip -o link` lines into `(index, name, peer index)`: `7: veth1@if2: <...>` gives
/// `(7, "veth1", Some(2))`.
pub fn parse_ip_links(text: &str) -> Vec<(u32, String, Option<u32>)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let index = words.next()?.strip_suffix(':')?.parse().ok()?;
            let name = words.next()?.strip_suffix(':')?;
            let (name, peer) = match name.split_once('@') {
                Some((name, peer)) => (name, peer.strip_prefix("if").and_then(|p| p.parse().ok())),
                None => (name, None),
            };
            Some((index, name.to_owned(), peer))
        })
        .collect()
}

/// The node-side peer of the veth `ifname` in `pod`, found through the veth's peer index.
pub fn host_peer(
    node: &(impl InNetns + ?Sized),
    pod: &(impl InNetns + ?Sized),
    ifname: &str,
) -> Option<String> {
    let inside = pod.exec(&["ip", "-o", "link", "show", "dev", ifname]);
    if !inside.status.success() {
        return None;
    }
    let (_, _, peer) = parse_ip_links(&String::from_utf8_lossy(&inside.stdout))
        .into_iter()
        .next()?;
    let peer = peer?;
    let links = node.exec(&["ip", "-o", "link", "show"]);
    parse_ip_links(&String::from_utf8_lossy(&links.stdout))
        .into_iter()
        .find(|(index, _, _)| *index == peer)
        .map(|(_, name, _)| name)
}

/// Files anywhere under `dir` whose names are IPv4 addresses (IPAM records, as `host-local`
/// and podnet write them).
pub fn ip_records_under(dir: &Path) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                found.push(ip);
            }
        }
    }
    found.sort();
    found
}

/// The first host address of `cidr` (`10.244.60.0/24` -> `10.244.60.1`): the gateway.
pub fn gateway_of(cidr: &str) -> Ipv4Addr {
    let (net, _) = cidr.split_once('/').expect("a CIDR");
    let net: Ipv4Addr = net.parse().expect("an IPv4 network");
    Ipv4Addr::from(u32::from(net) + 1)
}

/// Whether `ip` lies in `cidr`.
pub fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').expect("a CIDR");
    let net: Ipv4Addr = net.parse().expect("an IPv4 network");
    let prefix: u32 = prefix.parse().expect("a prefix length");
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// A node for CNI tests: a [`Topology`] whose node namespace the plugins run in, podnet's
/// state and pin directories and the `host-local` data directory, all unique. Nothing is
/// initialised: the first ADD does it. Dropping it (also on panic) runs `podnet node reset` in
/// the node namespace and removes the directories; then the namespaces go.
pub struct CniNode {
    pub topo: Topology,
    pub cni: Cni,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// `host-local`'s `dataDir` in chained conflists.
    pub host_local_dir: PathBuf,
    pub pod_cidr: String,
    id: String,
}

impl CniNode {
    /// A fresh node with pod CIDR `pod_cidr` (inside [`CLUSTER_CIDR`]).
    pub fn new(pod_cidr: &str) -> Self {
        let topo = Topology::new();
        let cni = Cni::new(topo.node.path());
        let id = unique("cn");
        Self {
            cni,
            state_dir: std::env::temp_dir().join(format!("podnet-cni-{id}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/podnet-cni-{id}")),
            host_local_dir: std::env::temp_dir().join(format!("podnet-cni-hl-{id}")),
            pod_cidr: pod_cidr.to_owned(),
            topo,
            id,
        }
    }

    /// The `node` object of podnet's plugin configuration. `netns` is the node's own
    /// namespace, so the CLI enters it even when run from elsewhere.
    pub fn node_settings(&self, bridge: Option<&str>) -> Value {
        let mut node = json!({
            "pod_cidr": self.pod_cidr,
            "cluster_cidr": CLUSTER_CIDR,
            "uplink": self.topo.uplink,
            "pin_dir": self.pin_dir,
            "netns": self.topo.node.path(),
        });
        if let Some(bridge) = bridge {
            node["bridge"] = json!(bridge);
        }
        node
    }

    /// podnet's plugin object in `mode` ("chained" or "standalone").
    pub fn podnet_plugin(&self, mode: &str, bridge: Option<&str>) -> Value {
        json!({
            "type": "podnet",
            "mode": mode,
            "stateDir": self.state_dir,
            "node": self.node_settings(bridge),
            "capabilities": {"portMappings": true},
        })
    }

    /// `bridge` (cni0, gateway, no masquerade) + `host-local` (the pod CIDR, default route)
    /// + podnet chained, in [`CHAINED_CNI_VERSION`].
    pub fn chained_conflist(&self) -> Value {
        json!({
            "cniVersion": CHAINED_CNI_VERSION,
            "name": format!("podnet-chain-{}", self.id),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": CHAINED_BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "subnet": self.pod_cidr,
                        "dataDir": self.host_local_dir,
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                self.podnet_plugin("chained", Some(CHAINED_BRIDGE)),
            ],
        })
    }

    /// podnet alone in standalone mode (default bridge), in `cni_version`.
    pub fn standalone_conflist_v(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "name": format!("podnet-{}", self.id),
            "plugins": [self.podnet_plugin("standalone", None)],
        })
    }

    /// podnet alone in standalone mode, in [`STANDALONE_CNI_VERSION`].
    pub fn standalone_conflist(&self) -> Value {
        self.standalone_conflist_v(STANDALONE_CNI_VERSION)
    }

    /// Runs the `podnet` CLI (`podnet --state-dir STATE ARGS`) inside the node namespace.
    pub fn podnet(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.topo.node.path().display()))
            .arg("--")
            .arg(podnet_bin())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args);
        for var in CNI_ENV_VARS {
            cmd.env_remove(var);
        }
        run_bounded(cmd, INVOKE_TIMEOUT)
    }

    /// Runs `podnet --json ARGS` and parses stdout; panics unless it succeeds.
    pub fn podnet_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.podnet(&all);
        assert!(
            out.status.success(),
            "podnet {all:?} failed:\n{}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "podnet {all:?}: bad JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Packets per reason, summed over CPUs (`podnet stats --json`).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.podnet_json(&["stats"])["reasons"]
            .as_array()
            .expect("stats has a list of reasons")
            .iter()
            .map(|r| {
                (
                    r["reason"].as_str().expect("reason").to_owned(),
                    r["packets"].as_u64().expect("packets"),
                )
            })
            .collect()
    }

    /// The endpoint IPs in the datapath's map (`podnet maps --json`).
    pub fn endpoints(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self.podnet_json(&["maps"])["endpoints"]
            .as_array()
            .expect("maps lists endpoints")
            .iter()
            .map(|e| {
                e["ip"]
                    .as_str()
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or_else(|| panic!("endpoint without ip: {e}"))
            })
            .collect();
        ips.sort();
        ips
    }

    /// Interface names in the node namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.topo.node.ok("ip -o link show");
        parse_ip_links(&out)
            .into_iter()
            .map(|(_, name, _)| name)
            .collect()
    }

    /// Links in the node namespace other than the fixture's (`lo`, the uplink) and the
    /// bridges: what pods left behind.
    pub fn pod_links(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| {
                ![
                    "lo",
                    self.topo.uplink.as_str(),
                    CHAINED_BRIDGE,
                    STANDALONE_BRIDGE,
                ]
                .contains(&l.as_str())
            })
            .collect()
    }

    /// `tc filter show dev IFNAME ingress` in the node namespace (trimmed; empty when none or
    /// when the interface is gone).
    pub fn ingress_filters(&self, ifname: &str) -> String {
        let out = self
            .topo
            .node
            .exec(&["tc", "filter", "show", "dev", ifname, "ingress"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// IPAM records podnet keeps under its state directory.
    pub fn podnet_ip_records(&self) -> Vec<Ipv4Addr> {
        ip_records_under(&self.state_dir)
    }

    /// IPAM records `host-local` keeps.
    pub fn host_local_ip_records(&self) -> Vec<Ipv4Addr> {
        ip_records_under(&self.host_local_dir)
    }
}

impl Drop for CniNode {
    fn drop(&mut self) {
        if self.state_dir.exists() {
            let _ = self.podnet(&["node", "reset"]);
        }
        for dir in [&self.state_dir, &self.pin_dir, &self.host_local_dir] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflist() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "net",
            "plugins": [
                {"type": "bridge", "bridge": "cni0"},
                {"type": "podnet", "capabilities": {"portMappings": true, "bandwidth": false}},
            ],
        })
    }

    #[test]
    fn plugin_conf_injects_version_name_prev_result_and_capabilities() {
        let ports = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
        let rt = RuntimeConf::new("c1", "/run/netns/x")
            .with_capability("portMappings", ports.clone())
            .with_capability("bandwidth", json!({"ingressRate": 1}));
        let first = Cni::plugin_conf(&conflist(), 0, Some(&rt), None);
        assert_eq!(
            first,
            json!({"type": "bridge", "bridge": "cni0", "cniVersion": "1.0.0", "name": "net"})
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": [], "extra": {"kept": true}});
        let second = Cni::plugin_conf(&conflist(), 1, Some(&rt), Some(&prev));
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"], json!({"portMappings": ports}));
        assert_eq!(second["name"], "net");
        let no_rt = Cni::plugin_conf(&conflist(), 1, None, None);
        assert!(no_rt.get("runtimeConfig").is_none());
        assert!(no_rt.get("prevResult").is_none());
    }

    #[test]
    fn runtime_conf_env() {
        let rt = RuntimeConf::new("c1", "/run/netns/x")
            .with_arg("IgnoreUnknown", "1")
            .with_arg("K8S_POD_NAME", "web");
        assert_eq!(rt.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=web");
        let inv = rt.invocation("ADD", Path::new("/opt/cni/bin"));
        let get = |k: &str| inv.env.get(k).map(|v| v.to_string_lossy().into_owned());
        assert_eq!(get("CNI_COMMAND").as_deref(), Some("ADD"));
        assert_eq!(get("CNI_CONTAINERID").as_deref(), Some("c1"));
        assert_eq!(get("CNI_NETNS").as_deref(), Some("/run/netns/x"));
        assert_eq!(get("CNI_IFNAME").as_deref(), Some("eth0"));
        assert_eq!(get("CNI_PATH").as_deref(), Some("/opt/cni/bin"));
        assert!(!inv.without("CNI_NETNS").env.contains_key("CNI_NETNS"));
    }

    #[test]
    fn finds_the_container_address() {
        // As the reference bridge plugin reports it: bridge, host veth, container veth.
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"},
            ],
            "ips": [{"address": "10.244.60.2/24", "gateway": "10.244.60.1", "interface": 2}],
        });
        assert_eq!(
            container_address(&result, "eth0"),
            Some((Ipv4Addr::new(10, 244, 60, 2), 24))
        );
        assert_eq!(container_address(&result, "net1"), None);
        let bare = json!({"ips": [{"address": "10.0.0.5/16", "version": "4"}]});
        assert_eq!(
            container_address(&bare, "eth0"),
            Some((Ipv4Addr::new(10, 0, 0, 5), 16))
        );
    }

    #[test]
    fn parses_ip_link_lines() {
        let text = "1: lo: <LOOPBACK,UP> mtu 65536\n\
                    5: veth12ab@if2: <BROADCAST> mtu 1500\n\
                    7: cni0: <BROADCAST> mtu 1500\n";
        assert_eq!(
            parse_ip_links(text),
            vec![
                (1, "lo".to_owned(), None),
                (5, "veth12ab".to_owned(), Some(2)),
                (7, "cni0".to_owned(), None),
            ]
        );
    }

    #[test]
    fn cidr_helpers() {
        assert_eq!(gateway_of("10.244.60.0/24"), Ipv4Addr::new(10, 244, 60, 1));
        assert!(in_cidr(Ipv4Addr::new(10, 244, 60, 9), "10.244.60.0/24"));
        assert!(!in_cidr(Ipv4Addr::new(10, 244, 61, 9), "10.244.60.0/24"));
        assert!(in_cidr(Ipv4Addr::new(1, 2, 3, 4), "0.0.0.0/0"));
    }

    #[test]
    fn stdin_reaches_the_child_through_run_bounded() {
        let mut cmd = Command::new("cat");
        feed_stdin(&mut cmd, b"{\"cniVersion\":\"1.1.0\"}");
        let out = run_bounded(cmd, Duration::from_secs(10));
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(out.stdout, b"{\"cniVersion\":\"1.1.0\"}");
    }
}
