//! CNI benchmark: how fast containers get their network, podnet against the reference plugins,
//! measured in one run, interleaved round by round (which setup goes first rotates):
//!
//! - `podnet standalone`: podnet alone (`CniNode::standalone_conflist`): bridge, veth, IPAM,
//!   routes, endpoint and host ports in one process;
//! - `podnet chained`: `bridge` + `host-local`, then podnet (`CniNode::chained_conflist`);
//! - `reference`: the same `bridge` + `host-local`, then `portmap` (the seed documents' way:
//!   Debian's `containernetworking-plugins`).
//!
//! Every container gets one port mapping (`hostPort` 40000+i -> 80/tcp, through the
//! `portMappings` capability, which podnet and `portmap` both declare), so the three setups do
//! equivalent work. Each setup has its own fresh `CniNode` (node and outside namespaces, its
//! own state, pin and IPAM directories); container namespaces are fresh for every measurement.
//!
//! Measurements, per setup and round:
//!
//! - sequential ADD latency of N containers, each timed end to end through the whole chain as a
//!   runtime sees it (every plugin process spawned, fed its configuration and waited for), p50
//!   and p99; then their DELs one by one, timed the same way (p50);
//! - parallel bring-up: P containers ADDed from P threads released at once, wall time until the
//!   last chain finished; then their DELs, also from P threads (wall time).
//!
//! After each measurement everything is deleted and the node checked clean (no veth besides
//! the bridge, no IPAM records, no podnet endpoints, host ports or attachment records, no
//! `portmap` DNAT chains), so rounds are independent; every ADD must give a unique address in
//! the pod CIDR. Before timing, each setup does one ADD, CHECK and DEL through the test
//! driver's own `Cni` (podnet's first ADD runs `node init`), excluded; `portmap` is spared the
//! CHECK, which Debian's 1.1.1 fails for IPv4-only containers (containernetworking/plugins#819).
//!
//! The timed invocations follow `Cni::add`/`Cni::del` (libcni's order, `Cni::plugin_conf` for
//! each plugin's stdin) but wait for each plugin with a blocking pidfd poll instead of the
//! driver's `run_bounded`, which polls every 10 ms and so would add 0-10 ms per plugin process
//! (penalising longer chains). Plugins enter the node namespace with setns(2) between fork and
//! exec, as a runtime living in that namespace would run them (no `nsenter` process).
//!
//! Then the node set-up figures: `node init` from scratch and over existing pins, and CLI
//! `pod add` / `pod del` on an initialised node.
//!
//! Arguments: `--rounds N` (5), `--containers N` (50), `--parallel N` (100), `--quick`
//! (2 rounds, 20 sequential and 30 parallel containers), `--out DIR` (writes `DIR/cni.json`
//! for the report).

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fmt::Write as _,
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, ExitStatus, Stdio},
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

use podnet_tests::bench::{cmd_line, percentile, series::BenchOutput};
use podnet_tests::{
    Cni, CniError, CniNode, CniOutput, InNetns as _, Invocation, Netns, RuntimeConf,
    cni::{CNI_ENV_VARS, INVOKE_TIMEOUT},
    container_address, in_cidr, unique,
};
use serde_json::{Value, json};

/// First host port of the port mappings (outside podnet's default SNAT 1024-29999 and NodePort
/// 30000-32767 ranges).
const HOST_PORT_BASE: u16 = 40000;
const CONTAINER_PORT: u16 = 80;

struct Args {
    rounds: usize,
    containers: usize,
    parallel: usize,
    out: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 5,
        containers: 50,
        parallel: 100,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                args.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N");
            }
            "--containers" => {
                args.containers = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--containers N");
            }
            "--parallel" => {
                args.parallel = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--parallel N");
            }
            "--quick" => {
                args.rounds = 2;
                args.containers = 20;
                args.parallel = 30;
            }
            "--out" => args.out = it.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    // A /24 pod CIDR holds 253 containers; host ports must stay below 65536.
    assert!(
        args.rounds > 0
            && (1..=200).contains(&args.containers)
            && (1..=200).contains(&args.parallel),
        "--rounds must be positive, --containers and --parallel 1-200"
    );
    args
}

/// A memfd holding `bytes`, positioned at the start.
fn memfd(name: &CStr, bytes: &[u8]) -> File {
    // SAFETY: memfd_create(2) gets a NUL-terminated C string and valid flags; it has no other
    // preconditions.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `raw` was just returned by memfd_create, is open and owned by nothing else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.write_all(bytes).expect("writing a memfd");
    file.seek(SeekFrom::Start(0)).expect("seeking a memfd");
    file
}

fn read_all(mut file: File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("seeking a memfd");
    file.read_to_end(&mut bytes).expect("reading a memfd");
    bytes
}

/// Waits for `child` to exit, blocking in poll(2) on its pidfd (so the wait ends the moment it
/// exits), and kills it after `timeout`. Returns its status and whether it was killed.
fn wait_bounded(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: pidfd_open(2) takes a pid and flags and has no memory-safety preconditions; the
    // child is not reaped yet, so `pid` is still ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let raw = i32::try_from(raw).expect("a file descriptor fits i32");
    assert!(raw >= 0, "pidfd_open: {}", io::Error::last_os_error());
    // SAFETY: `raw` was just returned by pidfd_open, is open and owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if n > 0 {
            break;
        }
        if n == 0 {
            timed_out = true;
            // Not reaped yet, so the pid is still the child's.
            let _ = child.kill();
            break;
        }
        let err = io::Error::last_os_error();
        assert!(err.kind() == io::ErrorKind::Interrupted, "poll: {err}");
    }
    (child.wait().expect("waiting for a plugin"), timed_out)
}

/// Runs plugin `plugin_type` once in the node's namespace, as [`Cni::invoke`] does (only the
/// invocation's `CNI_*` variables set, `inv.stdin` on stdin), timed exactly (see the module
/// comment).
fn invoke(node: &CniNode, plugin_type: &str, inv: &Invocation) -> CniOutput {
    let netns: OwnedFd = File::open(node.cni.node_netns())
        .unwrap_or_else(|e| panic!("opening {}: {e}", node.cni.node_netns().display()))
        .into();
    let mut cmd = Command::new(node.cni.bin_dir().join(plugin_type));
    for var in CNI_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(&inv.env);
    let stdout = memfd(c"cni-stdout", &[]);
    let stderr = memfd(c"cni-stderr", &[]);
    cmd.stdin(Stdio::from(memfd(c"cni-stdin", &inv.stdin)))
        .stdout(Stdio::from(stdout.try_clone().expect("dup")))
        .stderr(Stdio::from(stderr.try_clone().expect("dup")));
    // SAFETY: the hook runs in the forked child before exec and only calls setns(2) and reads
    // errno, both async-signal-safe and allocation-free. `netns` is owned by the closure, so it
    // stays open while the command can be spawned (it is close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {plugin_type}: {e}"));
    drop(cmd); // closes our copies of the child's stdio
    let (status, timed_out) = wait_bounded(&mut child, INVOKE_TIMEOUT);
    let mut stderr = String::from_utf8_lossy(&read_all(stderr)).into_owned();
    if timed_out {
        let _ = write!(
            stderr,
            "\n[podnet-cni-bench] killed after {INVOKE_TIMEOUT:?}"
        );
    }
    let env: Vec<String> = inv
        .env
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
        .collect();
    CniOutput {
        what: format!(
            "{plugin_type} in {} with {} <<< {}",
            node.cni.node_netns().display(),
            env.join(" "),
            String::from_utf8_lossy(&inv.stdin)
        ),
        status,
        stdout: read_all(stdout),
        stderr,
    }
}

fn plugin_types(conflist: &Value) -> Vec<String> {
    conflist["plugins"]
        .as_array()
        .expect("a conflist has plugins")
        .iter()
        .map(|p| p["type"].as_str().expect("a plugin has a type").to_owned())
        .collect()
}

/// One plugin of a chain operation, as `Cni`'s ADD/DEL run it.
fn run_plugin(
    node: &CniNode,
    command: &str,
    conflist: &Value,
    (index, plugin): (usize, &str),
    rt: &RuntimeConf,
    prev_result: Option<&Value>,
) -> Result<CniOutput, CniError> {
    let conf = Cni::plugin_conf(conflist, index, Some(rt), prev_result);
    let inv = rt.invocation(command, node.cni.bin_dir()).stdin_json(&conf);
    let output = invoke(node, plugin, &inv);
    if output.success() {
        Ok(output)
    } else {
        Err(CniError {
            index,
            plugin: plugin.to_owned(),
            command: command.to_owned(),
            output: Box::new(output),
        })
    }
}

/// ADD through the list (as [`Cni::add`]): the final result.
fn chain_add(node: &CniNode, conflist: &Value, rt: &RuntimeConf) -> Result<Value, CniError> {
    let mut prev: Option<Value> = None;
    for (index, plugin) in plugin_types(conflist).iter().enumerate() {
        let output = run_plugin(node, "ADD", conflist, (index, plugin), rt, prev.as_ref())?;
        let Some(result) = output.json() else {
            return Err(CniError {
                index,
                plugin: plugin.clone(),
                command: "ADD (result is not JSON)".to_owned(),
                output: Box::new(output),
            });
        };
        prev = Some(result);
    }
    Ok(prev.expect("a conflist has plugins"))
}

/// DEL through the list in reverse order with the cached result (as [`Cni::del`]).
fn chain_del(
    node: &CniNode,
    conflist: &Value,
    rt: &RuntimeConf,
    result: &Value,
) -> Result<(), CniError> {
    for (index, plugin) in plugin_types(conflist).iter().enumerate().rev() {
        run_plugin(node, "DEL", conflist, (index, plugin), rt, Some(result))?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Standalone,
    Chained,
    Reference,
}

const KINDS: [Kind; 3] = [Kind::Standalone, Kind::Chained, Kind::Reference];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Standalone => "podnet standalone",
            Self::Chained => "podnet chained",
            Self::Reference => "reference",
        }
    }

    fn pod_cidr(self) -> &'static str {
        match self {
            Self::Standalone => "10.244.93.0/24",
            Self::Chained => "10.244.94.0/24",
            Self::Reference => "10.244.95.0/24",
        }
    }

    fn podnet(self) -> bool {
        self != Self::Reference
    }
}

/// One setup: its node and conflist.
struct Setup {
    kind: Kind,
    node: CniNode,
    conf: Value,
}

impl Setup {
    fn new(kind: Kind) -> Self {
        let node = CniNode::new(kind.pod_cidr());
        let conf = match kind {
            Kind::Standalone => node.standalone_conflist(),
            Kind::Chained => node.chained_conflist(),
            Kind::Reference => {
                // The chained conflist's bridge + host-local exactly, with portmap after them.
                let mut conf = node.chained_conflist();
                conf["name"] = json!(format!("reference-{}", unique("r")));
                conf["plugins"][1] = json!({
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                });
                conf
            }
        };
        let mapped: Vec<String> = plugin_types(&conf)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| conf["plugins"][*i]["capabilities"]["portMappings"] == json!(true))
            .map(|(_, t)| t)
            .collect();
        let wanted = if kind.podnet() { "podnet" } else { "portmap" };
        assert_eq!(
            mapped,
            vec![wanted.to_owned()],
            "{}: exactly {wanted} must declare the portMappings capability: {conf}",
            kind.name()
        );
        Self { kind, node, conf }
    }

    fn plugins(&self) -> String {
        let mut names = plugin_types(&self.conf);
        if self.kind != Kind::Standalone {
            names.insert(1, "host-local".to_owned()); // bridge's IPAM
        }
        names.join(" + ")
    }

    /// Container `i` in `pod`: one port mapping, hostPort 40000+i -> 80/tcp.
    fn runtime_conf(pod: &Netns, i: usize) -> RuntimeConf {
        let host_port = HOST_PORT_BASE + u16::try_from(i).expect("at most 200 containers");
        RuntimeConf::new(&unique("ctr"), pod.path()).with_capability(
            "portMappings",
            json!([{"hostPort": host_port, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]),
        )
    }

    /// The container address a result gives, checked to lie in the pod CIDR.
    fn ip_of(&self, result: &Value) -> Ipv4Addr {
        let (ip, _) = container_address(result, "eth0")
            .unwrap_or_else(|| panic!("{}: no address for eth0 in {result}", self.kind.name()));
        assert!(
            in_cidr(ip, &self.node.pod_cidr),
            "{}: {ip} is not in {}",
            self.kind.name(),
            self.node.pod_cidr
        );
        ip
    }

    fn assert_unique_ips(&self, results: &[Value], what: &str) {
        let ips: Vec<Ipv4Addr> = results.iter().map(|r| self.ip_of(r)).collect();
        let distinct: BTreeSet<_> = ips.iter().collect();
        assert_eq!(
            distinct.len(),
            ips.len(),
            "{} {what}: duplicate addresses: {ips:?}",
            self.kind.name()
        );
    }

    /// Panics unless the node is back to its state before any container: no host veth (only
    /// the bridge), no IPAM record, and for podnet no endpoint, host port or attachment record,
    /// for portmap no per-container DNAT chain.
    fn assert_clean(&self, what: &str) {
        let node = &self.node;
        let name = self.kind.name();
        let links = node.pod_links();
        assert!(links.is_empty(), "{name} {what}: links left: {links:?}");
        let records = node.host_local_ip_records();
        assert!(
            records.is_empty(),
            "{name} {what}: host-local records left: {records:?}"
        );
        let records = node.podnet_ip_records();
        assert!(
            records.is_empty(),
            "{name} {what}: podnet IPAM records left: {records:?}"
        );
        if self.kind.podnet() {
            let endpoints = node.endpoints();
            assert!(
                endpoints.is_empty(),
                "{name} {what}: endpoints left: {endpoints:?}"
            );
            let ports = node.podnet_json(&["nodeport", "list"]);
            assert_eq!(ports, json!([]), "{name} {what}: host ports left");
            let attachments: Vec<_> = std::fs::read_dir(node.state_dir.join("cni"))
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".json"))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                attachments.is_empty(),
                "{name} {what}: attachment records left: {attachments:?}"
            );
        } else {
            let nat = node.topo.node.ok("iptables -w -t nat -S");
            let chains: Vec<&str> = nat.lines().filter(|l| l.contains("CNI-DN-")).collect();
            assert!(
                chains.is_empty(),
                "{name} {what}: portmap chains left: {chains:?}"
            );
        }
    }

    /// One container through the test driver itself: ADD, CHECK (but portmap's), DEL (not
    /// timed). Initialises
    /// podnet's node and warms the caches.
    fn warm_up(&self) {
        let pod = Netns::new("cw");
        let rt = Self::runtime_conf(&pod, 0);
        let name = self.kind.name();
        let added = self
            .node
            .cni
            .add(&self.conf, &rt)
            .unwrap_or_else(|e| panic!("{name} warm-up: {e}"));
        self.ip_of(added.result());
        for (index, plugin) in plugin_types(&self.conf).iter().enumerate() {
            if plugin == "portmap" {
                // Debian's portmap (1.1.1) fails CHECK for an IPv4-only container: it looks
                // for IPv6 chains it never made (containernetworking/plugins#819). Check its
                // DNAT chain directly instead.
                let nat = self.node.topo.node.ok("iptables -w -t nat -S");
                assert!(
                    nat.contains("CNI-DN-"),
                    "{name} warm-up: no portmap DNAT chain:\n{nat}"
                );
                continue;
            }
            let out = self.node.cni.invoke_plugin(
                "CHECK",
                &self.conf,
                index,
                Some(&rt),
                Some(added.result()),
            );
            assert!(
                out.success(),
                "{name} warm-up: CHECK of {plugin}: {}",
                out.describe()
            );
        }
        self.node
            .cni
            .del(&self.conf, &rt, Some(added.result()))
            .unwrap_or_else(|e| panic!("{name} warm-up: {e}"));
        self.assert_clean("after the warm-up");
    }

    /// `n` containers added one after another, then deleted one after another: each ADD's and
    /// each DEL's latency in ms.
    fn sequential(&self, n: usize) -> (Vec<f64>, Vec<f64>) {
        let name = self.kind.name();
        let pods: Vec<Netns> = (0..n).map(|_| Netns::new("cs")).collect();
        let rts: Vec<RuntimeConf> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| Self::runtime_conf(p, i))
            .collect();
        let mut add_ms = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        for rt in &rts {
            let start = Instant::now();
            let result = chain_add(&self.node, &self.conf, rt);
            add_ms.push(start.elapsed().as_secs_f64() * 1e3);
            results.push(result.unwrap_or_else(|e| panic!("{name} sequential: {e}")));
        }
        self.assert_unique_ips(&results, "sequential");
        let mut del_ms = Vec::with_capacity(n);
        for (rt, result) in rts.iter().zip(&results) {
            let start = Instant::now();
            let done = chain_del(&self.node, &self.conf, rt, result);
            del_ms.push(start.elapsed().as_secs_f64() * 1e3);
            done.unwrap_or_else(|e| panic!("{name} sequential DEL: {e}"));
        }
        self.assert_clean("after the sequential DELs");
        (add_ms, del_ms)
    }

    /// `n` containers added from `n` threads released at once, then deleted the same way: the
    /// wall times in ms.
    fn parallel(&self, n: usize) -> (f64, f64) {
        let name = self.kind.name();
        let pods: Vec<Netns> = (0..n).map(|_| Netns::new("cp")).collect();
        let rts: Vec<RuntimeConf> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| Self::runtime_conf(p, i))
            .collect();
        let (results, add_ms) = all_at_once(&rts, |rt| {
            chain_add(&self.node, &self.conf, rt).unwrap_or_else(|e| panic!("{name} parallel: {e}"))
        });
        self.assert_unique_ips(&results, "parallel");
        let pairs: Vec<(&RuntimeConf, &Value)> = rts.iter().zip(&results).collect();
        let (_, del_ms) = all_at_once(&pairs, |(rt, result)| {
            chain_del(&self.node, &self.conf, rt, result)
                .unwrap_or_else(|e| panic!("{name} parallel DEL: {e}"));
        });
        self.assert_clean("after the parallel DELs");
        (add_ms, del_ms)
    }
}

/// Runs `f` on every item, one thread each, all released at once by a barrier: the results
/// in order and the wall time in ms from the release until the last one finished.
fn all_at_once<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> (Vec<R>, f64) {
    let barrier = Barrier::new(items.len() + 1);
    thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    barrier.wait();
                    f(item)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<R> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        (results, start.elapsed().as_secs_f64() * 1e3)
    })
}

/// One setup's per-round figures (ms).
#[derive(Default)]
struct Samples {
    add_p50: Vec<f64>,
    add_p99: Vec<f64>,
    del_p50: Vec<f64>,
    parallel_add: Vec<f64>,
    parallel_del: Vec<f64>,
}

impl Samples {
    fn columns(&self) -> [&[f64]; 5] {
        [
            &self.add_p50,
            &self.add_p99,
            &self.del_p50,
            &self.parallel_add,
            &self.parallel_del,
        ]
    }
}

fn main() {
    let args = parse_args();
    assert!(podnet_tests::require_root(), "the benchmark needs root");

    let setups: Vec<Setup> = KINDS.into_iter().map(Setup::new).collect();
    for setup in &setups {
        eprintln!("warm-up: {} ({})", setup.kind.name(), setup.plugins());
        setup.warm_up();
    }
    let mut samples: Vec<Samples> = KINDS.iter().map(|_| Samples::default()).collect();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for k in 0..KINDS.len() {
            let i = (round + k) % KINDS.len();
            let setup = &setups[i];
            let (add, del) = setup.sequential(args.containers);
            let (par_add, par_del) = setup.parallel(args.parallel);
            let s = &mut samples[i];
            s.add_p50.push(percentile(&add, 50));
            s.add_p99.push(percentile(&add, 99));
            s.del_p50.push(percentile(&del, 50));
            s.parallel_add.push(par_add);
            s.parallel_del.push(par_del);
            eprintln!(
                "  {:<18} ADD p50 {:.1} ms p99 {:.1} ms, DEL p50 {:.1} ms, {} parallel: ADD {:.0} ms, DEL {:.0} ms",
                setup.kind.name(),
                percentile(&add, 50),
                percentile(&add, 99),
                percentile(&del, 50),
                args.parallel,
                par_add,
                par_del
            );
        }
    }

    let plugins_version = cmd_line(
        "dpkg-query",
        &["-W", "-f", "${Version}", "containernetworking-plugins"],
    );
    let (n, p) = (args.containers, args.parallel);
    let mut out = BenchOutput::new(
        "cni",
        "Control plane: CNI ADD/DEL and node set-up",
        &format!(
            "CNI: each setup on its own fresh node namespace; every container has one port \
             mapping (hostPort {HOST_PORT_BASE}+i -> {CONTAINER_PORT}/tcp, `portMappings` \
             capability). `reference`: Debian's containernetworking-plugins {plugins_version}: \
             `bridge` (isGateway, no ipMasq) + `host-local` + `portmap` (iptables). `podnet \
             chained`: the same `bridge` + `host-local`, then podnet. `podnet standalone`: podnet \
             alone. ADD/DEL latency: {n} containers one after another per round, each timed end \
             to end through the chain as a runtime sees it (every plugin process spawned in the \
             node namespace, fed its configuration and waited for; p99 is nearest-rank), then \
             their DELs one by one. Parallel: {p} containers from {p} threads released at once, \
             wall time until the last chain finished; then their DELs the same way. After each \
             measurement the node is checked clean (no host veth, IPAM record, endpoint, host \
             port, attachment record or portmap chain) and all addresses were unique. One \
             warm-up ADD/CHECK/DEL per setup is excluded; setups are interleaved round by round. \
             Node set-up: `podnet node init` on a node whose pins were removed (`node reset`: \
             load, verify, pin and attach), `node init` again over its own pins, and \
             `podnet pod add` / `pod del` (netns, veth, IPAM, endpoint, attach from the pinned \
             programs), each timed as the CLI process a user runs."
        ),
    );
    let metrics = [
        "CNI ADD latency p50",
        "CNI ADD latency p99",
        "CNI DEL latency p50",
    ];
    for (setup, s) in setups.iter().zip(&samples) {
        let columns = s.columns();
        for (metric, v) in metrics.iter().zip(columns) {
            out.values(
                "CNI",
                metric,
                "ms",
                false,
                setup.kind.name(),
                "reference",
                None,
                v.to_vec(),
            );
        }
        out.values(
            "CNI",
            &format!("{p} parallel ADDs, wall time"),
            "ms",
            false,
            setup.kind.name(),
            "reference",
            None,
            columns[3].to_vec(),
        );
        out.values(
            "CNI",
            &format!("{p} parallel DELs, wall time"),
            "ms",
            false,
            setup.kind.name(),
            "reference",
            None,
            columns[4].to_vec(),
        );
    }
    let node_setup = node_setup(args.rounds);
    for (metric, v) in node_setup {
        out.values(
            "node set-up",
            metric,
            "ms",
            false,
            "podnet",
            "podnet",
            None,
            v,
        );
    }
    if let Some(dir) = &args.out {
        out.write(std::path::Path::new(dir));
    }
}

/// Times `node init` from scratch (after `node reset`) and over its own pins, and `pod add` /
/// `pod del`, `rounds` times each (pod add/del 10 times per round): milliseconds.
fn node_setup(rounds: usize) -> Vec<(&'static str, Vec<f64>)> {
    let node = podnet_tests::Node::new("10.244.96.0/24");
    let init = node.init_args();
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let timed = |args: &[&str]| {
        let start = Instant::now();
        node.ok(args);
        start.elapsed().as_secs_f64() * 1e3
    };
    let (mut fresh, mut again, mut add, mut del) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        node.ok(&["node", "reset"]);
        fresh.push(timed(&init));
        again.push(timed(&init));
        for i in 0..10 {
            let name = format!("setup-{i}");
            add.push(timed(&["pod", "add", &name]));
            del.push(timed(&["pod", "del", &name]));
        }
    }
    vec![
        ("node init (load, verify, pin, attach)", fresh),
        ("node init over existing pins", again),
        ("pod add (CLI, attach from pinned programs)", add),
        ("pod del (CLI)", del),
    ]
}
