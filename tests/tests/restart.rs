//! Restart and upgrade under load (issue 8, item 1). While long TCP streams (pod -> outside
//! through SNAT, outside -> NodePort -> pod through DNAT, pod -> pod) and a steady stream of
//! short NodePort and SNAT connections run, the node is re-initialised, upgraded to a rebuilt
//! program version, and `podnet pod add` and the CNI plugin's ADD are killed with SIGKILL at
//! different points of their run, again and again.
//!
//! What a user depends on: no established connection drops and no byte is lost, no new
//! connection fails, the upgrade really replaces the programs while keeping the maps and flows,
//! no address is ever handed out twice, a repeated `pod add` / ADD after a kill works, and one
//! `podnet gc` reclaims whatever the killed operations left behind (addresses, namespaces, host
//! veths, endpoints, records, temporary files), leaving the live pods alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use podnet_ebpf::abi::map_name;
use podnet_tests::{
    ChildGuard, Cni, InNetns as _, NETNS_RUN_DIR, NODE_IP, Netns, Node, OUTSIDE_IP, RuntimeConf,
    Scenario, connect_tcp, describe, netprobe_bin, peer_ip_of, require_root, run_bounded,
    serve_tcp, serve_tcp_echo, unique, wait_until,
};
use serde_json::{Value, json};

/// The main scenario's pod CIDR (this file owns 10.244.140.0/24 - 10.244.149.0/24).
const POD_CIDR: &str = "10.244.140.0/24";
/// How many times `pod add` is killed, and how many times the CNI ADD is.
const KILLS: u32 = 16;
/// Bytes per stream line: every 50 ms one line goes out and must come back unchanged.
const LINE_BYTES: &str = "16384";
/// One short connection every this many milliseconds per churn client.
const CHURN_INTERVAL_MS: &str = "5";
/// Upper bound of every load generator (they stop at the stop file long before).
const LOAD_MAX_SECONDS: &str = "180";
/// How long a client waits for an echo or a connection before counting it failed: generous,
/// because other builds and tests share this machine.
const CLIENT_TIMEOUT_MS: &str = "5000";

/// The stamped eBPF object `cargo xtask test` builds as a rebuilt program version.
fn upgrade_object() -> PathBuf {
    let path = std::env::var_os("PODNET_EBPF_UPGRADE_OBJECT").map_or_else(
        || {
            podnet_tests::workspace_root()
                .join("target/bpf-upgrade/bpfel-unknown-none/release/podnet-ebpf")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the upgrade object {} is missing: run the tests through `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// `key=value` words of a netprobe result line.
fn fields(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str, what: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no {key}= in {fields:?}"))
}

/// Load generators (netprobe `stream` and `crr` clients, each with a name) that run until
/// [`Load::stop`] creates their stop file.
struct Load {
    stop_file: PathBuf,
    clients: Vec<(&'static str, ChildGuard)>,
}

impl Load {
    fn new() -> Self {
        Self {
            stop_file: std::env::temp_dir().join(format!("podnet-restart-stop-{}", unique("s"))),
            clients: Vec::new(),
        }
    }

    fn stop_arg(&self) -> String {
        self.stop_file.display().to_string()
    }

    /// A stream of checked lines from `ns` to `target`.
    fn stream(&mut self, what: &'static str, ns: &dyn podnet_tests::InNetns, target: &str) {
        let bin = netprobe_bin();
        let stop = self.stop_arg();
        let argv = [
            bin.to_str().expect("UTF-8 path"),
            "stream",
            "tcp",
            target,
            "--seconds",
            LOAD_MAX_SECONDS,
            "--timeout-ms",
            CLIENT_TIMEOUT_MS,
            "--line-bytes",
            LINE_BYTES,
            "--stop-file",
            &stop,
        ];
        self.clients.push((what, ns.spawn(&argv)));
    }

    /// Short connections from `ns` to `target`, one every [`CHURN_INTERVAL_MS`].
    fn churn(&mut self, what: &'static str, ns: &dyn podnet_tests::InNetns, target: &str) {
        let bin = netprobe_bin();
        let stop = self.stop_arg();
        let argv = [
            bin.to_str().expect("UTF-8 path"),
            "crr",
            "tcp",
            target,
            "--seconds",
            LOAD_MAX_SECONDS,
            "--timeout-ms",
            CLIENT_TIMEOUT_MS,
            "--interval-ms",
            CHURN_INTERVAL_MS,
            "--stop-file",
            &stop,
        ];
        self.clients.push((what, ns.spawn(&argv)));
    }

    /// Panics if a client has already ended (a stream that broke ends early).
    fn assert_running(&mut self) {
        for (what, child) in &mut self.clients {
            assert!(
                child.try_status().is_none(),
                "{what} ended while the load should run: {}\n{}",
                child.stdout(),
                child.stderr()
            );
        }
    }

    /// Stops every client and returns what each reported, with its exit status.
    fn stop(mut self) -> Vec<(&'static str, bool, String, String)> {
        std::fs::write(&self.stop_file, b"stop").expect("writing the stop file");
        self.clients
            .drain(..)
            .map(|(what, mut child)| {
                let status = child.wait_timeout(Duration::from_secs(60));
                (
                    what,
                    status.is_some_and(|s| s.success()),
                    child.stdout(),
                    child.stderr(),
                )
            })
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stop_file);
    }
}

/// The program attached to `ifname`'s ingress in the node: (id, tag).
fn attached_program(node: &Node, ifname: &str) -> (u64, String) {
    let out = node
        .topo
        .node
        .ok(&format!("tc -j filter show dev {ifname} ingress"));
    let filters: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let prog = filters
        .as_array()
        .and_then(|fs| fs.iter().find_map(|f| f["options"].get("prog")))
        .unwrap_or_else(|| panic!("no program attached to {ifname}: {out}"));
    (
        prog["id"].as_u64().expect("program id"),
        prog["tag"].as_str().expect("program tag").to_owned(),
    )
}

/// The id of every pinned map of the node, by name (bpftool reads; it changes nothing).
fn map_ids(node: &Node) -> BTreeMap<&'static str, u64> {
    map_name::ALL
        .iter()
        .map(|name| {
            let mut cmd = Command::new("bpftool");
            cmd.args(["-j", "map", "show", "pinned"])
                .arg(node.pin_dir.join(name));
            let out = run_bounded(cmd, Duration::from_secs(20));
            assert!(out.status.success(), "bpftool: {}", describe(&out));
            let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
            (*name, v["id"].as_u64().expect("map id"))
        })
        .collect()
}

/// The conntrack entry of the flow whose original direction goes to `dst`: (src, nat_src,
/// nat_dst).
fn flow_to(node: &Node, dst: &str) -> (String, String, String) {
    let flows = node.json(&["conntrack", "list"]);
    let flow = flows
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["dst"] == dst))
        .unwrap_or_else(|| panic!("no flow to {dst}: {flows}"));
    let text = |k: &str| flow[k].as_str().expect("address").to_owned();
    (text("src"), text("nat_src"), text("nat_dst"))
}

/// `podnet node init` again, optionally with another eBPF object; returns the load report.
fn reinit(node: &Node, object: Option<&Path>) -> Value {
    let mut args = node.init_args();
    if let Some(object) = object {
        args.extend(["--ebpf-object".to_owned(), object.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    node.json(&refs)["load"].clone()
}

/// Everything podnet keeps for pods on the node, read from its state, the node's namespace
/// and the maps.
#[derive(Debug, Default, PartialEq, Eq)]
struct Census {
    /// IPAM reservations: address -> owner.
    ipam: BTreeMap<Ipv4Addr, String>,
    /// Pod records: name -> (address, host veth).
    pods: BTreeMap<String, (Ipv4Addr, String)>,
    /// CNI attachment records: container ID -> address.
    attachments: BTreeMap<String, Ipv4Addr>,
    /// podnet's host veths (`pn` + 8 hex digits) in the node.
    veths: BTreeSet<String>,
    /// Namespaces podnet made for this node's pods (among the names the test used).
    netns: BTreeSet<String>,
    /// Endpoint addresses in the datapath's map.
    endpoints: BTreeSet<Ipv4Addr>,
    /// Temporary files of interrupted writes in the pod, attachment and IPAM directories.
    temp_files: usize,
}

fn json_files(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("record readable");
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp."))
            .count()
    })
}

/// The namespace `pod add NAME` makes on `node`.
fn pod_netns_name(node: &Node, pod: &str) -> String {
    let dir = node.state_dir.file_name().expect("state dir has a name");
    format!("podnet-{}-{pod}", dir.to_string_lossy())
}

fn census(node: &Node, pod_names: &[String]) -> Census {
    let state = &node.state_dir;
    let ipam = std::fs::read_dir(state.join("ipam"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                    let owner = std::fs::read_to_string(e.path()).ok()?;
                    Some((ip, owner.trim().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let pods = json_files(&state.join("pods"))
        .iter()
        .map(|p| {
            let ip = p["address"].as_str().expect("address");
            let ip = ip.split('/').next().expect("CIDR").parse().expect("IPv4");
            let host_if = p["host_if"].as_str().expect("host_if").to_owned();
            (p["name"].as_str().expect("name").to_owned(), (ip, host_if))
        })
        .collect();
    let attachments = json_files(&state.join("cni"))
        .iter()
        .map(|a| {
            let id = a["container_id"].as_str().expect("container_id").to_owned();
            (id, a["ip"].as_str().expect("ip").parse().expect("IPv4"))
        })
        .collect();
    let veths = node
        .links()
        .into_iter()
        .filter(|l| {
            l.len() == 10 && l.starts_with("pn") && l[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    let netns = pod_names
        .iter()
        .map(|p| pod_netns_name(node, p))
        .filter(|n| Path::new(NETNS_RUN_DIR).join(n).exists())
        .collect();
    let endpoints = node.json(&["maps"])["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["ip"].as_str().expect("ip").parse().expect("IPv4"))
        .collect();
    let temp_files = ["pods", "cni", "ipam"]
        .iter()
        .map(|d| temp_files(&state.join(d)))
        .sum();
    Census {
        ipam,
        pods,
        attachments,
        veths,
        netns,
        endpoints,
        temp_files,
    }
}

/// The IPv4 addresses configured on `ifname` inside `ns`.
fn addresses_in(ns: &dyn podnet_tests::InNetns, ifname: &str) -> Vec<Ipv4Addr> {
    let out = ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", ifname]);
    // One line per address: `2: eth0    inet 10.244.140.2/24 brd 10.244.140.255 scope ...`.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip_while(|w| *w != "inet");
            words.nth(1)?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// What a killed operation left: nothing, a half-made pod (an address reserved, no record),
/// or a complete one (the kill came after it finished writing its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Nothing,
    HalfMade,
    Complete,
}

/// Evenly spread kill delays over `0 ..= 1.2 x typical`, so the kills land before, in every
/// phase of, and after the operation.
fn delays(typical: Duration) -> Vec<Duration> {
    let span = typical.mul_f64(1.2);
    (0..KILLS)
        .map(|i| span.mul_f64(f64::from(i) / f64::from(KILLS - 1)))
        .collect()
}

fn millis(ds: &[Duration]) -> String {
    ds.iter()
        .map(|d| d.as_millis().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn count(outcomes: &[Left], which: Left) -> usize {
    outcomes.iter().filter(|o| **o == which).count()
}

/// Records the kills of `what` (at `delays`, leaving `outcomes`, `retried` of them repeated)
/// in the scenario, and checks that at least one kill landed half-way through `what`.
fn record_kills(
    s: &mut Scenario,
    what: &str,
    typical: Duration,
    delays: &[Duration],
    outcomes: &[Left],
    retried: usize,
) {
    s.number(&format!("{what} kills"), KILLS)
        .number(&format!("{what} typical ms"), typical.as_millis())
        .number(&format!("{what} kill delays ms"), millis(delays))
        .number(
            &format!("{what} killed before any change"),
            count(outcomes, Left::Nothing),
        )
        .number(
            &format!("{what} killed half-way"),
            count(outcomes, Left::HalfMade),
        )
        .number(
            &format!("{what} finished before the kill"),
            count(outcomes, Left::Complete),
        )
        .number(&format!("{what} repeated after a kill"), retried);
    assert!(
        count(outcomes, Left::HalfMade) >= 1,
        "no kill landed inside {what} ({outcomes:?} at {delays:?})"
    );
}

/// Waits `delay` after `child` was started, then kills it (and its process group) with
/// SIGKILL. Returns whether it had already exited by itself.
fn kill_after(mut child: ChildGuard, delay: Duration) -> bool {
    thread::sleep(delay);
    let finished = child.try_status().is_some();
    child.kill();
    finished
}

#[test]
fn restart_upgrade_and_killed_adds_under_load_drop_nothing_and_gc_reclaims_the_rest() {
    require_root!();
    let mut s = Scenario::new(
        "restart, upgrade, kill -9 of pod add and CNI ADD, all under stream and churn load",
    );
    let node = Node::new(POD_CIDR);
    let started = Instant::now();
    let web = node.add_pod("web");
    let web_took = started.elapsed();
    let client_added = Instant::now();
    let client = node.add_pod("client");
    // The quicker of two: the first add on a node also warms caches.
    let typical_pod_add = web_took.min(client_added.elapsed());
    let outside = &node.topo.outside;
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30700",
        "--backend",
        "web:7000",
    ]);
    node.ok(&["nodeport", "add", "--port", "30080", "--backend", "web:80"]);
    let _web_echo = serve_tcp_echo(&web.ns, "0.0.0.0:7000");
    let _web_reply = serve_tcp(&web.ns, "0.0.0.0:80");
    let _outside_echo = serve_tcp_echo(outside, &format!("{OUTSIDE_IP}:7000"));
    let _outside_reply = serve_tcp(outside, &format!("{OUTSIDE_IP}:8080"));

    let mut load = Load::new();
    load.stream(
        "stream pod -> outside (SNAT)",
        &client.ns,
        &format!("{OUTSIDE_IP}:7000"),
    );
    load.stream(
        "stream outside -> NodePort -> pod (DNAT)",
        outside,
        &format!("{NODE_IP}:30700"),
    );
    load.stream("stream pod -> pod", &client.ns, &format!("{}:7000", web.ip));
    load.churn(
        "churn outside -> NodePort -> pod",
        outside,
        &format!("{NODE_IP}:30080"),
    );
    load.churn(
        "churn pod -> outside (SNAT)",
        &client.ns,
        &format!("{OUTSIDE_IP}:8080"),
    );
    // Every stream is established (its flow is tracked) before anything happens.
    let snat_flow = format!("{OUTSIDE_IP}:7000");
    let dnat_flow = format!("{NODE_IP}:30700");
    wait_until(Duration::from_secs(20), "the streams' flows", || {
        let flows = node.json(&["conntrack", "list"]);
        let to = |dst: &str| {
            flows
                .as_array()
                .is_some_and(|fs| fs.iter().any(|f| f["dst"] == dst))
        };
        to(&snat_flow) && to(&dnat_flow)
    });
    let flows_before = (flow_to(&node, &snat_flow), flow_to(&node, &dnat_flow));
    let maps_before = map_ids(&node);
    let watched = [
        node.topo.uplink.clone(),
        web.host_if.clone(),
        client.host_if.clone(),
    ];
    let progs_before: Vec<(u64, String)> =
        watched.iter().map(|i| attached_program(&node, i)).collect();

    // (a) node init again, same programs.
    let report = reinit(&node, None);
    assert_eq!(
        report["maps_reused"].as_array().map(Vec::len),
        Some(map_name::ALL.len()),
        "{report}"
    );
    assert_eq!(report["links_updated"], 2, "{report}");
    let progs_reinit: Vec<(u64, String)> =
        watched.iter().map(|i| attached_program(&node, i)).collect();
    for ((before, after), ifname) in progs_before.iter().zip(&progs_reinit).zip(&watched) {
        assert_ne!(before.0, after.0, "{ifname}: node init loads new programs");
        assert_eq!(
            before.1, after.1,
            "{ifname}: the same object gives the same program"
        );
    }
    assert_eq!(map_ids(&node), maps_before, "node init keeps every map");
    s.number("node init re-run: programs replaced", progs_reinit.len());
    load.assert_running();

    // (c) kill -9 of `podnet pod add` at delays spread over its run.
    let cli_delays = delays(typical_pod_add);
    let mut pod_names: Vec<String> = vec!["web".to_owned(), "client".to_owned()];
    let mut cli_outcomes = Vec::new();
    let mut cli_retried = 0;
    for (i, delay) in cli_delays.iter().enumerate() {
        let name = format!("k{i}");
        pod_names.push(name.clone());
        let finished = kill_after(
            ChildGuard::spawn(node.command(&["--json", "pod", "add", &name])),
            *delay,
        );
        let now = census(&node, &pod_names);
        let reserved = now.ipam.values().any(|o| *o == format!("pod:{name}"));
        let left = if now.pods.contains_key(&name) {
            Left::Complete
        } else if reserved {
            Left::HalfMade
        } else {
            // Nothing reserved: then nothing else may exist either (the address is the first
            // thing made and the last thing removed).
            let host_if = podnet::model::names::host_ifname(&name);
            assert!(
                !now.veths.contains(&host_if) && !now.netns.contains(&pod_netns_name(&node, &name)),
                "pod add killed after {delay:?} left a veth or namespace without an address: {now:?}"
            );
            Left::Nothing
        };
        assert!(
            !finished || left == Left::Complete,
            "{name} finished but is {left:?}"
        );
        cli_outcomes.push(left);
        // Every other one is added again at once (it must work); the rest wait for gc.
        if i % 2 == 1 {
            let out = node.podnet(&["--json", "pod", "add", &name]);
            if left == Left::Complete {
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("already exists"),
                    "{}",
                    describe(&out)
                );
            } else {
                assert!(
                    out.status.success(),
                    "pod add {name} again: {}",
                    describe(&out)
                );
                cli_retried += 1;
            }
        }
    }
    record_kills(
        &mut s,
        "pod add",
        typical_pod_add,
        &cli_delays,
        &cli_outcomes,
        cli_retried,
    );
    load.assert_running();

    // (b) upgrade: node init with the rebuilt object.
    let pods_now = census(&node, &pod_names).pods.len();
    let upgrade = upgrade_object();
    let report = reinit(&node, Some(&upgrade));
    assert_eq!(report["object"], upgrade.display().to_string(), "{report}");
    assert_eq!(report["links_updated"], pods_now, "{report}");
    let progs_upgraded: Vec<(u64, String)> =
        watched.iter().map(|i| attached_program(&node, i)).collect();
    for (((before, reinit), after), ifname) in progs_before
        .iter()
        .zip(&progs_reinit)
        .zip(&progs_upgraded)
        .zip(&watched)
    {
        assert_ne!(
            reinit.0, after.0,
            "{ifname}: the upgrade loads new programs"
        );
        assert_ne!(before.1, after.1, "{ifname}: the upgraded program differs");
    }
    assert_eq!(map_ids(&node), maps_before, "the upgrade keeps every map");
    assert_eq!(
        (flow_to(&node, &snat_flow), flow_to(&node, &dnat_flow)),
        flows_before,
        "the streams' conntrack entries (and SNAT port) are the ones from before"
    );
    let upgraded_pod_tag = progs_upgraded[1].1.clone();
    s.number("upgrade: programs replaced", progs_upgraded.len())
        .number("upgrade: maps kept (same ids)", maps_before.len())
        .number(
            "upgrade: pod program tag",
            format!("{} -> {upgraded_pod_tag}", progs_before[1].1),
        );
    load.assert_running();

    // (d) kill -9 of the CNI plugin mid-ADD (standalone mode, on the same node).
    let cni = Cni::new(node.topo.node.path());
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": "podnet-restart",
        "plugins": [{"type": "podnet", "mode": "standalone", "stateDir": node.state_dir}],
    });
    let mut live_containers: Vec<(String, Netns)> = Vec::new();
    let mut typical_cni_add = Duration::MAX;
    let mut first_result = None;
    for id in ["restart-first", "restart-second"] {
        let container = Netns::new("rc");
        let rt = RuntimeConf::new(id, container.path());
        let add_started = Instant::now();
        let result = cni.add(&conflist, &rt).expect("a clean CNI ADD");
        typical_cni_add = typical_cni_add.min(add_started.elapsed());
        first_result.get_or_insert((rt, result));
        live_containers.push((id.to_owned(), container));
    }
    let (first_rt, first_result) = first_result.expect("two ADDs ran");
    let cni_delays = delays(typical_cni_add);
    let mut cni_outcomes = Vec::new();
    let mut cni_retried = 0;
    for (i, delay) in cni_delays.iter().enumerate() {
        let id = format!("restart-c{i}");
        let container = Netns::new("rc");
        let rt = RuntimeConf::new(&id, container.path());
        let before = census(&node, &pod_names);
        let finished = kill_after(cni.spawn_plugin("ADD", &conflist, 0, &rt, None), *delay);
        let now = census(&node, &pod_names);
        let new_owner = now
            .ipam
            .values()
            .any(|o| !before.ipam.values().any(|b| b == o));
        let left = if now.attachments.contains_key(&id) {
            Left::Complete
        } else if new_owner || now.pods.len() > before.pods.len() {
            Left::HalfMade
        } else {
            assert_eq!(now.veths, before.veths, "ADD killed after {delay:?}");
            Left::Nothing
        };
        assert!(
            !finished || left == Left::Complete,
            "{id} finished but is {left:?}"
        );
        cni_outcomes.push(left);
        if i % 2 == 1 {
            // The runtime tries the ADD again: it must work, whatever the kill left.
            let result = cni
                .add(&conflist, &rt)
                .unwrap_or_else(|e| panic!("ADD {id} again after a kill: {e}"));
            assert!(
                podnet_tests::container_address(result.result(), "eth0").is_some(),
                "{}",
                result.result()
            );
            cni_retried += 1;
            live_containers.push((id, container));
        }
        // Otherwise the runtime gives up on the sandbox: its namespace goes, no DEL comes.
    }
    record_kills(
        &mut s,
        "CNI ADD",
        typical_cni_add,
        &cni_delays,
        &cni_outcomes,
        cni_retried,
    );
    // Containers added after the upgrade run the upgraded program.
    let last = &live_containers.last().expect("a live container").1;
    let host = podnet_tests::host_peer(&node.topo.node, last, "eth0").expect("host veth");
    assert_eq!(attached_program(&node, &host).1, upgraded_pod_tag);
    load.assert_running();

    // The load ends: every stream complete, every connection made.
    let disrupted_for = started.elapsed();
    let mut streamed_bytes = 0;
    for (what, ok, out, err) in load.stop() {
        let f = fields(&out);
        if what.starts_with("stream") {
            let (sent, echoed) = (number(&f, "sent", what), number(&f, "echoed", what));
            assert!(ok && sent == echoed && sent > 0, "{what}: {out} {err}");
            streamed_bytes += number(&f, "bytes", what);
            s.number(
                &format!("{what}: lines/bytes/slowest ms"),
                format!("{echoed}/{}/{}", f["bytes"], f["max_ms"]),
            );
        } else {
            let (ok_n, failed) = (number(&f, "ok", what), number(&f, "failed", what));
            s.number(
                &format!("{what}: ok/failed/slowest ms"),
                format!("{ok_n}/{failed}/{}", f["max_ms"]),
            );
            assert!(ok && failed == 0 && ok_n > 0, "{what}: {out} {err}");
        }
    }
    s.number("streams", 3)
        .number("bytes streamed and checked", streamed_bytes)
        .number("seconds under load", disrupted_for.as_secs());
    let stats = node.stats();
    for reason in [
        "drop_ct_full",
        "drop_nat_no_port",
        "drop_no_route",
        "drop_redirect_failed",
    ] {
        assert_eq!(stats[reason], 0, "{reason}: {stats:?}");
    }

    // No address is held by two live pods or containers, and each sits where its records say.
    let cni_ns: BTreeMap<&str, &Netns> = live_containers
        .iter()
        .map(|(id, ns)| (id.as_str(), ns))
        .collect();
    // Half-made pods' namespaces count too: their addresses must not clash with a live one.
    let check_addresses = |census: &Census| -> usize {
        let mut seen: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for name in &pod_names {
            let netns = pod_netns_name(&node, name);
            if !census.netns.contains(&netns) {
                continue;
            }
            for addr in addresses_in(&podnet_tests::Pod::named(&netns), "eth0") {
                seen.entry(addr).or_default().push(format!("pod {name}"));
            }
            if let Some((ip, _)) = census.pods.get(name) {
                let configured = addresses_in(&podnet_tests::Pod::named(&netns), "eth0");
                assert_eq!(configured, vec![*ip], "pod {name}");
                assert_eq!(
                    census.ipam.get(ip),
                    Some(&format!("pod:{name}")),
                    "{census:?}"
                );
            }
        }
        for (id, ns) in &cni_ns {
            let ip = census.attachments[*id];
            let configured = addresses_in(*ns, "eth0");
            assert_eq!(configured, vec![ip], "container {id}");
            seen.entry(ip).or_default().push(format!("container {id}"));
            assert!(census.ipam.contains_key(&ip), "{ip} of {id} is reserved");
        }
        let twice: Vec<_> = seen.iter().filter(|(_, who)| who.len() > 1).collect();
        assert!(twice.is_empty(), "addresses held twice: {twice:?}");
        twice.len()
    };
    let before_gc = census(&node, &pod_names);
    let duplicates = check_addresses(&before_gc);

    // What one `podnet gc` must leave: exactly the live pods and containers.
    let live_cli: Vec<String> = pod_names
        .iter()
        .filter(|n| before_gc.pods.contains_key(*n))
        .cloned()
        .collect();
    let live_ips: BTreeSet<Ipv4Addr> = live_cli
        .iter()
        .map(|n| before_gc.pods[n].0)
        .chain(cni_ns.keys().map(|id| before_gc.attachments[*id]))
        .collect();
    let leftovers = |c: &Census| -> BTreeMap<&'static str, usize> {
        // A CNI pod lives if a live container's attachment has its address.
        let live_pod = |name: &String| {
            live_cli.contains(name)
                || cni_ns
                    .keys()
                    .any(|id| c.attachments.get(*id) == Some(&c.pods[name].0))
        };
        BTreeMap::from([
            (
                "reservations without a live owner",
                c.ipam.keys().filter(|ip| !live_ips.contains(ip)).count(),
            ),
            (
                "pod records of no live pod",
                c.pods.keys().filter(|n| !live_pod(n)).count(),
            ),
            (
                "attachment records of no live container",
                c.attachments
                    .keys()
                    .filter(|id| !cni_ns.contains_key(id.as_str()))
                    .count(),
            ),
            (
                "host veths of no live pod",
                c.veths
                    .iter()
                    .filter(|v| !c.pods.iter().any(|(n, (_, h))| h == *v && live_pod(n)))
                    .count(),
            ),
            (
                "pod namespaces of no live pod",
                c.netns
                    .iter()
                    .filter(|ns| !live_cli.iter().any(|n| pod_netns_name(&node, n) == **ns))
                    .count(),
            ),
            (
                "endpoints of no live pod",
                c.endpoints
                    .iter()
                    .filter(|ip| !live_ips.contains(ip))
                    .count(),
            ),
            ("temporary files", c.temp_files),
        ])
    };
    let found = leftovers(&before_gc);
    for (what, n) in &found {
        s.number(&format!("before gc: {what}"), n);
    }
    assert!(
        found.values().sum::<usize>() > 0,
        "the kills left nothing for gc to do: {before_gc:?}"
    );
    let report = node.json(&["gc"]);
    let after_gc = census(&node, &pod_names);
    for (what, n) in leftovers(&after_gc) {
        s.number(&format!("after gc: {what}"), n);
        assert_eq!(n, 0, "after gc, {what}: {after_gc:?}\ngc: {report}");
    }
    assert_eq!(
        after_gc.ipam.keys().copied().collect::<BTreeSet<_>>(),
        live_ips
    );
    assert_eq!(after_gc.endpoints, live_ips);
    check_addresses(&after_gc);
    s.number("addresses held twice", duplicates);
    let again = node.json(&["gc"]);
    assert_eq!(
        again,
        json!({"attachments": [], "host_ports": 0, "pods": [], "veths": [], "addresses": [],
               "endpoints": [], "temp_files": 0, "sock_programs": []}),
        "a second gc finds nothing"
    );
    // The pods that lived through all of it still work: a repeated one reaches web.
    let survivor = live_cli
        .iter()
        .find(|n| n.starts_with('k'))
        .expect("a repeated pod");
    let survivor_ns = podnet_tests::Pod::named(&pod_netns_name(&node, survivor));
    let reply = connect_tcp(&survivor_ns, &format!("{}:80", web.ip)).expect("survivor -> web");
    assert_eq!(
        peer_ip_of(&reply),
        Some(std::net::IpAddr::V4(after_gc.pods[survivor].0))
    );
    cni.del(&conflist, &first_rt, Some(first_result.result()))
        .expect("DEL of a container that lived through it all");
}

#[test]
fn node_init_refuses_a_bad_ebpf_object_and_changes_nothing() {
    require_root!();
    let mut s = Scenario::new("node init --ebpf-object given files that are not podnet objects");
    let node = Node::new("10.244.141.0/24");
    let pod = node.add_pod("a");
    let watched = [node.topo.uplink.clone(), pod.host_if.clone()];
    let progs: Vec<(u64, String)> = watched.iter().map(|i| attached_program(&node, i)).collect();
    let maps = map_ids(&node);
    let status = node.json(&["node", "status"]);

    let dir = std::env::temp_dir().join(format!("podnet-bad-objects-{}", unique("o")));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("writing a test file");
        path
    };
    let good = std::fs::read(upgrade_object()).expect("the upgrade object");
    let cases = [
        (write("empty.o", b""), "not an eBPF object"),
        (write("text.o", b"not an object\n"), "not an eBPF object"),
        (write("truncated.o", &good[..4096]), "not an eBPF object"),
        (netprobe_bin(), "not an eBPF object"),
        (dir.join("missing.o"), "reading the eBPF object"),
    ];
    for (path, needle) in &cases {
        let mut args = node.init_args();
        args.extend(["--ebpf-object".to_owned(), path.display().to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.podnet(&refs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was loaded", path.display());
        assert!(
            err.contains(needle) && err.contains(&path.display().to_string()),
            "{}: {err}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let after: Vec<(u64, String)> = watched.iter().map(|i| attached_program(&node, i)).collect();
    assert_eq!(after, progs, "the programs are the ones from before");
    assert_eq!(map_ids(&node), maps);
    assert_eq!(node.json(&["node", "status"]), status, "nothing changed");
    // The pod still works on the programs it had.
    assert!(
        pod.ping(&node.topo.outside_ip.to_string(), 1)
            .status
            .success()
    );
    s.number("bad objects refused", cases.len());
}

/// The only JSON file in `dir` (a CNI attachment record).
fn only_record(dir: &Path) -> PathBuf {
    let records: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("records dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().expect("one record")
}

#[test]
fn each_state_a_kill_can_leave_is_repeated_or_collected() {
    require_root!();
    let mut s = Scenario::new(
        "the states a killed pod add or CNI ADD leaves, made on purpose: repeated, then collected",
    );
    let node = Node::new("10.244.142.0/24");
    let names = vec!["a".to_owned()];
    let record = node.state_dir.join("pods/a.json");

    // `pod add` killed just before writing its record: everything made but the record.
    let a = node.add_pod("a");
    std::fs::remove_file(&record).expect("remove the record");
    let again = node.add_pod("a");
    assert_eq!(
        again.ip, a.ip,
        "a repeated add gets the address it had reserved"
    );
    assert_eq!(
        addresses_in(&again.ns, "eth0"),
        vec![a.ip.parse::<Ipv4Addr>().expect("IPv4")]
    );
    // The same state again, now left for gc, with a temporary file of an interrupted write.
    std::fs::remove_file(&record).expect("remove the record");
    std::fs::write(node.state_dir.join("pods/.tmp.b.json.4242"), b"{").expect("temp file");
    let before = census(&node, &names);
    assert_eq!(before.netns.len(), 1, "{before:?}");
    assert_eq!(before.veths.len(), 1, "{before:?}");
    assert_eq!(before.endpoints.len(), 1, "{before:?}");

    // A CNI ADD killed after making its pod, before its attachment record.
    let cni = Cni::new(node.topo.node.path());
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": "podnet-half-made",
        "plugins": [{"type": "podnet", "mode": "standalone", "stateDir": node.state_dir}],
    });
    let container = Netns::new("hm");
    let rt = RuntimeConf::new("half-made", container.path());
    cni.add(&conflist, &rt).expect("ADD");
    let attachments = node.state_dir.join("cni");
    std::fs::remove_file(only_record(&attachments)).expect("remove the attachment record");
    let result = cni.add(&conflist, &rt).expect("ADD again after a kill");
    let (ip, _) = podnet_tests::container_address(result.result(), "eth0").expect("address");
    assert_eq!(addresses_in(&container, "eth0"), vec![ip]);
    std::fs::remove_file(only_record(&attachments)).expect("remove the attachment record");

    let report = node.json(&["gc"]);
    s.number("gc: pods", report["pods"].as_array().map_or(0, Vec::len))
        .number(
            "gc: addresses",
            report["addresses"].as_array().map_or(0, Vec::len),
        )
        .number("gc: temporary files", &report["temp_files"]);
    assert_eq!(report["pods"].as_array().map(Vec::len), Some(2), "{report}");
    assert_eq!(
        report["addresses"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["temp_files"], 1, "{report}");
    let after = census(&node, &names);
    assert_eq!(after, Census::default(), "nothing is left");
    assert!(
        addresses_in(&container, "eth0").is_empty(),
        "the container's half-made interface went with its host veth"
    );
    assert!(!again.ns.exists(), "the pod's namespace is gone");
}

#[test]
fn gc_alongside_pod_adds_never_takes_what_an_add_is_making() {
    require_root!();
    let mut s = Scenario::new("podnet gc run again and again while 12 pod adds run in parallel");
    let node = Node::new("10.244.143.0/24");
    let names: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
    let mut adds: Vec<ChildGuard> = names
        .iter()
        .map(|n| ChildGuard::spawn(node.command(&["--json", "pod", "add", n])))
        .collect();
    let (mut runs, mut freed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while adds.iter_mut().any(|a| a.try_status().is_none()) {
        assert!(Instant::now() < deadline, "the adds did not finish");
        let report = node.json(&["gc"]);
        runs += 1;
        freed += ["pods", "veths", "addresses", "endpoints"]
            .iter()
            .map(|k| report[k].as_array().map_or(0, Vec::len))
            .sum::<usize>();
    }
    for (name, add) in names.iter().zip(&mut adds) {
        let status = add.wait_timeout(Duration::from_secs(30)).expect("exited");
        assert!(status.success(), "pod add {name}: {}", add.stderr());
    }
    s.number("gc runs during the adds", runs)
        .number("things gc freed", freed);
    assert_eq!(freed, 0, "gc took something of an add in progress");
    let after = census(&node, &names);
    let ips: BTreeSet<Ipv4Addr> = after.pods.values().map(|(ip, _)| *ip).collect();
    assert_eq!(after.pods.len(), names.len(), "{after:?}");
    assert_eq!(ips.len(), names.len(), "distinct addresses: {after:?}");
    assert_eq!(after.ipam.keys().copied().collect::<BTreeSet<_>>(), ips);
    assert_eq!(after.endpoints, ips);
    assert_eq!(after.veths.len(), names.len());
    assert_eq!(after.netns.len(), names.len());
    for (name, (ip, _)) in &after.pods {
        let ns = podnet_tests::Pod::named(&pod_netns_name(&node, name));
        assert_eq!(addresses_in(&ns, "eth0"), vec![*ip], "pod {name}");
    }
}

#[test]
fn killed_pod_dels_are_finished_by_a_repeat_or_by_gc() {
    require_root!();
    let mut s = Scenario::new(
        "kill -9 of pod del at delays spread over its run: repeated at once, or collected by gc",
    );
    let node = Node::new("10.244.145.0/24");
    node.add_pod("timing");
    let start = Instant::now();
    node.ok(&["pod", "del", "timing"]);
    let typical = start.elapsed();
    let names: Vec<String> = (0..KILLS).map(|i| format!("d{i}")).collect();
    for name in &names {
        node.add_pod(name);
    }
    let kill_delays = delays(typical);
    let (mut finished, mut repeated) = (0, 0);
    for (i, (name, delay)) in names.iter().zip(&kill_delays).enumerate() {
        let done = kill_after(
            ChildGuard::spawn(node.command(&["--json", "pod", "del", name])),
            *delay,
        );
        finished += usize::from(done);
        // Every other one is repeated at once, and that must finish the job.
        if i % 2 == 0 {
            node.ok(&["pod", "del", name]);
            repeated += 1;
        }
    }
    let before = census(&node, &names);
    // A pod whose del was killed before it changed anything is still a whole pod; one killed
    // after removing its record is a half-deleted pod (an address reserved, no record).
    let half_deleted: Vec<&String> = before
        .ipam
        .iter()
        .filter(|(_, owner)| {
            owner
                .strip_prefix("pod:")
                .is_some_and(|n| !before.pods.contains_key(n))
        })
        .map(|(_, owner)| owner)
        .collect();
    s.number("dels killed", KILLS)
        .number("kill delays ms", millis(&kill_delays))
        .number("finished before the kill", finished)
        .number("repeated at once", repeated)
        .number("whole pods left", before.pods.len())
        .number("half-deleted pods left", half_deleted.len());
    let report = node.json(&["gc"]);
    let after = census(&node, &names);
    // gc takes every half-deleted pod and nothing of a whole one.
    assert_eq!(after.pods, before.pods, "gc keeps whole pods: {report}");
    let owners: BTreeSet<String> = after.pods.keys().map(|n| format!("pod:{n}")).collect();
    assert_eq!(
        after.ipam.values().cloned().collect::<BTreeSet<_>>(),
        owners,
        "only whole pods hold addresses after gc: {report}"
    );
    let addresses: BTreeSet<Ipv4Addr> = after.pods.values().map(|(ip, _)| *ip).collect();
    assert_eq!(after.endpoints, addresses, "{report}");
    let host_ifs: BTreeSet<String> = after.pods.values().map(|(_, h)| h.clone()).collect();
    assert_eq!(after.veths, host_ifs, "{report}");
    assert_eq!(after.netns.len(), after.pods.len(), "{after:?}");
    // A repeated del finishes the whole ones; then nothing is left.
    for name in after.pods.keys() {
        node.ok(&["pod", "del", name]);
    }
    assert_eq!(census(&node, &names), Census::default(), "nothing is left");
    // The names are free again.
    let again = node.add_pod("d1");
    assert!(
        node.topo
            .node
            .sh(&format!("ping -c 1 -W 1 {}", again.ip))
            .status
            .success()
    );
}

#[test]
fn killed_node_inits_drop_no_connection_and_a_rerun_restores_the_node() {
    require_root!();
    let mut s = Scenario::new(
        "kill -9 of node init at delays spread over its run, under three streams, then a re-run",
    );
    let node = Node::new("10.244.146.0/24");
    let (web, client) = (node.add_pod("web"), node.add_pod("client"));
    let init = node.init_args();
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let start = Instant::now();
    node.ok(&init);
    let typical = start.elapsed();
    let _echo_out = serve_tcp_echo(&node.topo.outside, &format!("{OUTSIDE_IP}:7000"));
    let _echo_web = serve_tcp_echo(&web.ns, "0.0.0.0:7000");
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30700",
        "--backend",
        "web:7000",
    ]);
    let bin = netprobe_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let stream = |ns: &dyn podnet_tests::InNetns, to: String| {
        ns.spawn(&[bin, "stream", "tcp", &to, "--seconds", "5"])
    };
    let mut streams = [
        ("SNAT", stream(&client.ns, format!("{OUTSIDE_IP}:7000"))),
        (
            "NodePort",
            stream(&node.topo.outside, format!("{NODE_IP}:30700")),
        ),
        ("pod to pod", stream(&client.ns, format!("{}:7000", web.ip))),
    ];
    thread::sleep(Duration::from_millis(500));
    let kill_delays = delays(typical);
    let mut finished = 0;
    for delay in kill_delays.iter().step_by(2) {
        finished += usize::from(kill_after(ChildGuard::spawn(node.command(&init)), *delay));
    }
    // One complete run restores whatever a kill left half-done.
    let report = node.json(&init);
    assert!(
        report["load"]["maps_reused"]
            .as_array()
            .is_some_and(|m| m.len() == map_name::ALL.len()),
        "every map kept: {report}"
    );
    for ifname in [web.host_if.as_str(), client.host_if.as_str(), "uplink0"] {
        let filters = node
            .topo
            .node
            .ok(&format!("tc filter show dev {ifname} ingress"));
        assert!(
            filters.contains("bpf"),
            "{ifname} has its program: {filters}"
        );
    }
    let mut lines = 0;
    for (what, child) in &mut streams {
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("stream ends");
        let out = child.stdout();
        assert!(status.success(), "{what} stream: {out} {}", child.stderr());
        let f = fields(&out);
        assert_eq!(f.get("sent"), f.get("echoed"), "{what} stream: {out}");
        lines += number(&f, "echoed", what);
    }
    assert!(client.ping(&web.ip, 1).status.success());
    s.number("node init kills", kill_delays.len().div_ceil(2))
        .number(
            "kill delays ms",
            millis(&kill_delays.iter().step_by(2).copied().collect::<Vec<_>>()),
        )
        .number("finished before the kill", finished)
        .number("streams", streams.len())
        .number("lines echoed", lines)
        .number("lines lost", 0);
}

/// A CNI DEL killed with SIGKILL at any point is finished by the runtime's next DEL, or, when
/// no DEL comes again (the container's namespace is gone), by `podnet gc`: nothing of the
/// container is left either way (issue 17: kill -9 of CNI DEL).
#[test]
fn killed_cni_dels_are_finished_by_a_repeat_or_by_gc() {
    require_root!();
    let mut s = Scenario::new(
        "kill -9 of CNI DEL at delays spread over its run: repeated, or collected by gc",
    );
    let node = Node::new("10.244.147.0/24");
    let cni = Cni::new(node.topo.node.path());
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": "podnet-killed-del",
        "plugins": [{"type": "podnet", "mode": "standalone", "stateDir": node.state_dir}],
    });
    let timing = Netns::new("kt");
    let rt = RuntimeConf::new("killed-del-timing", timing.path());
    cni.add(&conflist, &rt).expect("ADD");
    let start = Instant::now();
    cni.del(&conflist, &rt, None).expect("DEL");
    let typical = start.elapsed();
    let kill_delays = delays(typical);
    let mut containers: Vec<(String, Option<Netns>)> = Vec::new();
    for i in 0..kill_delays.len() {
        let id = format!("killed-del-{i}");
        let ns = Netns::new("kd");
        cni.add(&conflist, &RuntimeConf::new(&id, ns.path()))
            .unwrap_or_else(|e| panic!("ADD {id}: {e}"));
        containers.push((id, Some(ns)));
    }
    let (mut finished, mut repeated, mut abandoned) = (0, 0, 0);
    for (i, ((id, ns), delay)) in containers.iter_mut().zip(&kill_delays).enumerate() {
        let path = ns.as_ref().expect("netns").path().to_path_buf();
        let rt = RuntimeConf::new(id, &path);
        finished += usize::from(kill_after(
            cni.spawn_plugin("DEL", &conflist, 0, &rt, None),
            *delay,
        ));
        if i % 2 == 0 {
            // The runtime retries the DEL: it must succeed and finish the job.
            cni.del(&conflist, &rt, None)
                .unwrap_or_else(|e| panic!("DEL {id} again after a kill: {e}"));
            repeated += 1;
        } else {
            // The runtime gives up: the container's namespace goes, no DEL comes.
            drop(ns.take());
            abandoned += 1;
        }
    }
    let before = census(&node, &[]);
    s.number("DELs killed", kill_delays.len())
        .number("kill delays ms", millis(&kill_delays))
        .number("finished before the kill", finished)
        .number("repeated at once", repeated)
        .number("abandoned (namespace gone)", abandoned)
        .number("attachments left before gc", before.attachments.len())
        .number("addresses left before gc", before.ipam.len());
    let repeated_ids: BTreeSet<String> = (0..kill_delays.len())
        .step_by(2)
        .map(|i| format!("killed-del-{i}"))
        .collect();
    assert!(
        before
            .attachments
            .keys()
            .all(|id| !repeated_ids.contains(id)),
        "a repeated DEL leaves no attachment: {before:?}"
    );
    let report = node.json(&["gc"]);
    assert_eq!(
        census(&node, &[]),
        Census::default(),
        "gc leaves nothing of the abandoned containers: {report}"
    );
}
