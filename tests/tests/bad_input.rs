//! Bad input everywhere: one table for the CLI, one for the CNI plugin. Each row is an input, the
//! exit status (CLI) or the spec's error code (CNI) it must get, a fragment its message must
//! contain, and "no partial state": a [`Snapshot`] of everything the node owns (files under its
//! state, IPAM and pin directories; links, addresses, routes and tc filters in its namespace; the
//! namespaces named after it) taken before and after must be equal.
//!
//! Rows run against a node that was never initialised (a refused `node init`, or a first CNI
//! ADD, must not leave half a node) or against a working node with a pod, a NodePort and a peer
//! (a refused command must not disturb it). The existing tests in `pods.rs`, `nat.rs`, `cni.rs`
//! and `multinode.rs` check other inputs without snapshots; these tables do not repeat them.
//!
//! Pod CIDRs 10.244.120.0/24 - 10.244.129.0/24.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use podnet_tests::{
    Cni, CniNode, CniOutput, InNetns as _, Invocation, NETNS_RUN_DIR, Netns, Node, PodnetCli,
    RuntimeConf, Scenario, Snapshot, Topology, Watch, describe, require_root, run_bounded, unique,
};
use serde_json::{Value, json};

/// File names whose contents move by themselves or by design and are not compared: the
/// per-reason counters (idle pods' IPv6 neighbour discovery is counted), and IPAM's round-robin
/// cursor, which a rolled-back allocation moves as `host-local`'s does (it reserves nothing).
const VOLATILE: [&str; 2] = ["STATS", "last_reserved_ip"];

/// Exit status of a refusal podnet itself makes, and of an argument clap rejects.
const REFUSED: i32 = 1;
const USAGE: i32 = 2;

/// A temporary path removed on drop (a file, a plain directory or a bpffs directory).
struct TempPath(PathBuf);

impl TempPath {
    fn new(dir: &Path, stem: &str) -> Self {
        Self(dir.join(format!("podnet-bad-{stem}-{}", unique("t"))))
    }

    fn str(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A pin directory holding an `ENDPOINTS` map with the wrong value size, as an older podnet
/// with another ABI would have left it.
fn old_abi_pin_dir() -> TempPath {
    let dir = TempPath::new(Path::new("/sys/fs/bpf"), "oldabi");
    std::fs::create_dir_all(&dir.0).expect("creating a bpffs directory");
    let mut cmd = std::process::Command::new("bpftool");
    cmd.args(["map", "create"])
        .arg(dir.0.join("ENDPOINTS"))
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "ENDPOINTS",
        ]);
    let out = run_bounded(cmd, std::time::Duration::from_secs(30));
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        describe(&out)
    );
    dir
}

/// A directory that is not on bpffs (the test machine's /tmp: tmpfs or ext4).
fn plain_dir() -> TempPath {
    let dir = TempPath::new(&std::env::temp_dir(), "nobpffs");
    std::fs::create_dir_all(&dir.0).expect("creating a directory");
    dir
}

/// A file holding `text`.
fn text_file(stem: &str, text: &str) -> TempPath {
    let file = TempPath::new(&std::env::temp_dir(), stem);
    std::fs::write(&file.0, text).expect("writing");
    file
}

/// A cluster file listing `nodes` as `(name, node IP, pod CIDR)`.
fn cluster_file(nodes: &[(&str, &str, &str)]) -> TempPath {
    let file = TempPath::new(&std::env::temp_dir(), "cluster");
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|(name, ip, cidr)| json!({"name": name, "node_ip": ip, "pod_cidr": cidr}))
        .collect();
    std::fs::write(&file.0, json!({ "nodes": nodes }).to_string()).expect("writing");
    file
}

/// The netns prefix podnet names a node's pod namespaces with (`podnet-<state dir>-<pod>`).
fn netns_prefix(state_dir: &Path) -> String {
    let name = state_dir
        .file_name()
        .expect("state dirs have a name")
        .to_string_lossy();
    format!("podnet-{name}-")
}

/// Runs every row: each must be refused with its status or code and message, and leave the
/// snapshot as it was. Every row runs even when one fails; the failures are added to `failures`
/// and reported together by [`assert_no_failures`].
fn run_rows<R>(
    rows: &[R],
    watch: &Watch<'_>,
    what: impl Fn(&R) -> String,
    run_and_check: impl Fn(&R),
    failures: &mut Vec<String>,
) {
    let mut before = Snapshot::take(watch);
    for row in rows {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_and_check(row)));
        let after = Snapshot::take(watch);
        let diff = after.diff(&before);
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(msg);
        }
        if !diff.is_empty() {
            failures.push(format!(
                "{}: left state behind:\n  {}",
                what(row),
                diff.join("\n  ")
            ));
        }
        before = after;
    }
}

fn assert_no_failures(failures: &[String], rows: usize) {
    assert!(
        failures.is_empty(),
        "{} failure(s) in {rows} rows:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Checks a CLI refusal: exit status, message on stderr, nothing on stdout.
fn check_cli(what: &str, out: &Output, status: i32, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(status),
        "{what}: exit status: {}",
        describe(out)
    );
    assert!(
        stderr.contains(message),
        "{what}: the message should mention {message:?}: {}",
        describe(out)
    );
    assert!(
        !stderr.contains("panicked"),
        "{what}: panicked: {}",
        describe(out)
    );
    // One clear line: no cause repeated right after a message that already names it.
    for line in stderr.lines() {
        let parts: Vec<&str> = line.split(": ").collect();
        assert!(
            parts.windows(2).all(|w| w[0] != w[1]),
            "{what}: a cause is repeated: {line}"
        );
    }
}

/// Checks a CNI refusal: non-zero exit, no panic, the spec's error JSON on stdout with `code`
/// and a `msg` (or `details`) mentioning `message`.
fn check_cni(what: &str, out: &CniOutput, code: u64, message: &str) {
    assert!(!out.success(), "{what}: must fail: {}", out.describe());
    assert!(!out.panicked(), "{what}: panicked: {}", out.describe());
    let err = out
        .error()
        .unwrap_or_else(|| panic!("{what}: no spec error on stdout: {}", out.describe()));
    assert!(
        err.cni_version.is_some(),
        "{what}: no cniVersion: {}",
        out.describe()
    );
    assert_eq!(err.code, code, "{what}: code: {}", out.describe());
    let text = format!("{} {}", err.msg, err.details.unwrap_or_default());
    assert!(
        text.contains(message),
        "{what}: the message should mention {message:?}: {}",
        out.describe()
    );
}

/// A node that was never initialised: a topology, and state and pin directories that do not
/// exist yet. Dropping it resets whatever a row might have made and removes the directories.
struct FreshNode {
    topo: Topology,
    cli: PodnetCli,
    pin_dir: PathBuf,
}

impl FreshNode {
    fn new() -> Self {
        let id = unique("bi");
        Self {
            topo: Topology::new(),
            cli: PodnetCli {
                state_dir: std::env::temp_dir().join(format!("podnet-bad-{id}")),
            },
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/podnet-bad-{id}")),
        }
    }

    /// `node init` for pod CIDR 10.244.121.0/24, with `overrides` replacing (or adding) flags.
    fn init_args(&self, overrides: &[(&str, &str)]) -> Vec<String> {
        let base: Vec<String> = [
            "node",
            "init",
            "--netns",
            self.topo.node.name(),
            "--uplink",
            self.topo.uplink.as_str(),
            "--pod-cidr",
            "10.244.121.0/24",
            "--cluster-cidr",
            podnet_tests::CLUSTER_CIDR,
            "--pin-dir",
            self.pin_dir.to_str().expect("UTF-8"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        with_flags(base, overrides)
    }
}

/// `args` with each `(flag, value)` of `overrides` replacing that flag's value, or appended.
fn with_flags(mut args: Vec<String>, overrides: &[(&str, &str)]) -> Vec<String> {
    for (flag, value) in overrides {
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = (*value).to_owned(),
            None => args.extend([(*flag).to_owned(), (*value).to_owned()]),
        }
    }
    args
}

impl Drop for FreshNode {
    fn drop(&mut self) {
        if self.cli.state_dir.join("node.json").exists() {
            let _ = self.cli.podnet(&["node", "reset"]);
        }
        let _ = std::fs::remove_dir_all(&self.cli.state_dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// One CLI row.
struct CliRow {
    what: String,
    /// Against the working node (`true`) or the never initialised one.
    ready: bool,
    args: Vec<String>,
    status: i32,
    message: &'static str,
}

fn row(what: &str, ready: bool, args: &[&str], status: i32, message: &'static str) -> CliRow {
    CliRow {
        what: what.to_owned(),
        ready,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        status,
        message,
    }
}

#[test]
fn cli_bad_input_is_refused_clearly_and_leaves_nothing() {
    require_root!();
    let mut scenario =
        Scenario::new("CLI bad input table: refused with a clear message, no partial state");
    // The working node: a pod, a NodePort to it, a peer.
    let node = Node::new("10.244.120.0/24");
    let _pod = node.add_pod("a");
    node.ok(&["nodeport", "add", "--port", "30080", "--backend", "a:80"]);
    node.ok(&[
        "node",
        "peer",
        "add",
        "--name",
        "peer-1",
        "--node-ip",
        "198.18.0.20",
        "--pod-cidr",
        "10.244.126.0/24",
    ]);
    let fresh = FreshNode::new();
    let (old_abi, no_bpffs) = (old_abi_pin_dir(), plain_dir());
    let overlapping_peers = cluster_file(&[
        ("self", "198.18.0.10", "10.244.121.0/24"),
        ("n1", "198.18.0.21", "10.244.122.0/24"),
        ("n2", "198.18.0.22", "10.244.122.128/25"),
    ]);
    let overlapping_self = cluster_file(&[
        ("self", "198.18.0.10", "10.244.121.0/24"),
        ("n1", "198.18.0.21", "10.244.121.64/26"),
    ]);
    let config_unknown = text_file("config", r#"{"frobnicate": true}"#);
    let config_vxlan = text_file("config", r#"{"vxlan_device": "vxlanvxlanvxlanv"}"#);
    let config_not_json = text_file("config", "pod_cidr = 10.244.121.0/24");
    let long_netns = "n".repeat(300);
    let node_netns = node.topo.node.path();
    let node_netns = node_netns.to_str().expect("UTF-8");
    let long_pod = "p".repeat(64);
    let long_peer = "q".repeat(64);

    let init = |what: &str, overrides: &[(&str, &str)], status, message| CliRow {
        what: format!("node init: {what}"),
        ready: false,
        args: fresh.init_args(overrides),
        status,
        message,
    };
    let reinit = |what: &str, overrides: &[(&str, &str)], status, message| CliRow {
        what: format!("node init again: {what}"),
        ready: true,
        args: with_flags(node.init_args(), overrides),
        status,
        message,
    };
    let rows = vec![
        // CIDRs.
        init(
            "pod CIDR not an address",
            &[("--pod-cidr", "10.244.300.0/24")],
            USAGE,
            "invalid value '10.244.300.0/24' for '--pod-cidr",
        ),
        init(
            "pod CIDR not a CIDR",
            &[("--pod-cidr", "banana")],
            USAGE,
            "for '--pod-cidr",
        ),
        init(
            "pod CIDR with host bits",
            &[("--pod-cidr", "10.244.121.7/24")],
            REFUSED,
            "has host bits set; did you mean 10.244.121.0/24?",
        ),
        init(
            "pod CIDR prefix /33",
            &[("--pod-cidr", "10.244.121.0/33")],
            USAGE,
            "invalid prefix",
        ),
        init(
            "pod CIDR too small for a pod (/31)",
            &[("--pod-cidr", "10.244.121.0/31")],
            REFUSED,
            "is too small",
        ),
        init(
            "pod CIDR larger than the cluster CIDR",
            &[("--pod-cidr", "10.244.0.0/15")],
            REFUSED,
            "is not inside cluster CIDR",
        ),
        init(
            "pod CIDR outside the cluster CIDR",
            &[("--pod-cidr", "10.245.121.0/24")],
            REFUSED,
            "is not inside cluster CIDR 10.244.0.0/16",
        ),
        init(
            "cluster CIDR with host bits",
            &[("--cluster-cidr", "10.244.1.0/16")],
            REFUSED,
            "cluster CIDR 10.244.1.0/16 has host bits set",
        ),
        init(
            "node IP inside the cluster CIDR",
            &[("--node-ip", "10.244.9.9")],
            REFUSED,
            "lies inside the cluster CIDR",
        ),
        init(
            "cluster file with overlapping peers",
            &[("--cluster", overlapping_peers.str())],
            REFUSED,
            "overlaps n1's 10.244.122.0/24",
        ),
        init(
            "cluster file with a peer overlapping this node",
            &[("--cluster", overlapping_self.str())],
            REFUSED,
            "overlaps this node's 10.244.121.0/24",
        ),
        // Port ranges.
        init(
            "SNAT ports beyond 65535",
            &[("--snat-ports", "1024-70000")],
            USAGE,
            "\"70000\" in port range \"1024-70000\" is not a port",
        ),
        init(
            "SNAT ports reversed",
            &[("--snat-ports", "2000-1000")],
            USAGE,
            "must be MIN-MAX with 1 <= MIN <= MAX",
        ),
        init(
            "SNAT ports from 0",
            &[("--snat-ports", "0-100")],
            USAGE,
            "must be MIN-MAX with 1 <= MIN <= MAX",
        ),
        init(
            "SNAT ports not a range",
            &[("--snat-ports", "1024")],
            USAGE,
            "is not MIN-MAX",
        ),
        init(
            "SNAT ports overlap the NodePort range",
            &[("--snat-ports", "30000-31000")],
            REFUSED,
            "overlap the NodePort range 30000-32767",
        ),
        init(
            "NodePort range overlaps the SNAT ports",
            &[("--nodeport-range", "20000-40000")],
            REFUSED,
            "SNAT ports 1024-29999 overlap the NodePort range 20000-40000",
        ),
        init(
            "NodePort range reversed",
            &[("--nodeport-range", "32767-30000")],
            USAGE,
            "must be MIN-MAX",
        ),
        init(
            "NodePort range beyond 65535",
            &[("--nodeport-range", "30000-65536")],
            USAGE,
            "is not a port",
        ),
        // Names.
        init(
            "bridge name of 16 bytes",
            &[("--bridge", "abcdefghijklmnop")],
            REFUSED,
            "invalid interface name \"abcdefghijklmnop\": longer than 15 bytes",
        ),
        init(
            "bridge name with a slash",
            &[("--bridge", "br/0")],
            REFUSED,
            "contains '/'",
        ),
        init(
            "uplink name of 16 bytes",
            &[("--uplink", "uplinkuplinkupli")],
            REFUSED,
            "longer than 15 bytes",
        ),
        init(
            "uplink that does not exist",
            &[("--uplink", "nosuch0")],
            REFUSED,
            "uplink nosuch0 does not exist",
        ),
        init(
            "node netns name of 300 bytes",
            &[("--netns", &long_netns)],
            REFUSED,
            "File name too long",
        ),
        // A settings file.
        init(
            "config file that does not exist",
            &[("--config", "/nonexistent/node.json")],
            REFUSED,
            "reading /nonexistent/node.json",
        ),
        init(
            "config file that is not JSON",
            &[("--config", config_not_json.str())],
            REFUSED,
            "parsing",
        ),
        init(
            "config file with an unknown setting",
            &[("--config", config_unknown.str())],
            REFUSED,
            "unknown field `frobnicate`",
        ),
        init(
            "config file with a VXLAN device name of 16 bytes",
            &[("--config", config_vxlan.str())],
            REFUSED,
            "invalid interface name \"vxlanvxlanvxlanv\"",
        ),
        // The node's namespace.
        init(
            "netns path that does not exist",
            &[("--netns", "/nonexistent/podnet-ns")],
            REFUSED,
            "network namespace /nonexistent/podnet-ns not found",
        ),
        init(
            "netns path that is a regular file",
            &[("--netns", "/etc/hostname")],
            REFUSED,
            "/etc/hostname is not a network namespace",
        ),
        init(
            "netns path that is a directory",
            &[("--netns", NETNS_RUN_DIR)],
            REFUSED,
            "/run/netns is not a network namespace",
        ),
        init(
            "netns path that is a mount namespace",
            &[("--netns", "/proc/self/ns/mnt")],
            REFUSED,
            "/proc/self/ns/mnt is not a network namespace",
        ),
        // The pin directory.
        init(
            "pin dir not on bpffs",
            &[("--pin-dir", no_bpffs.str())],
            REFUSED,
            "bpffs is not mounted at",
        ),
        init(
            "pin dir at the root of bpffs (shared by the whole machine)",
            &[("--pin-dir", "/sys/fs/bpf")],
            REFUSED,
            "/sys/fs/bpf is the root of a bpffs mount",
        ),
        init(
            "pin dir with a map of an older ABI",
            &[("--pin-dir", old_abi.str())],
            REFUSED,
            "does not match this podnet's ABI (key/value sizes 4/8",
        ),
        // Sizes and timeouts.
        init(
            "MTU 100",
            &[("--mtu", "100")],
            REFUSED,
            "MTU 100 is outside 576..=65535",
        ),
        init(
            "conntrack-max 1",
            &[("--conntrack-max", "1")],
            REFUSED,
            "conntrack_max must be at least 2",
        ),
        init(
            "a conntrack timeout of 0",
            &[("--ct-timeout", "tcp_syn=0")],
            REFUSED,
            "at least 1 second",
        ),
        init(
            "an unknown conntrack timeout",
            &[("--ct-timeout", "tcp_bogus=5")],
            REFUSED,
            "tcp_bogus",
        ),
        init(
            "an unknown mode",
            &[("--mode", "geneve")],
            REFUSED,
            "geneve",
        ),
        init(
            "a cgroup that does not exist",
            &[("--cgroup", "/nonexistent/cgroup")],
            REFUSED,
            "cgroup /nonexistent/cgroup is not a directory",
        ),
        // Re-running init on the working node with something it cannot take.
        reinit(
            "a conntrack size its pinned table was not made with",
            &[("--conntrack-max", "1000")],
            REFUSED,
            "run `podnet node init` again",
        ),
        reinit(
            "another pod CIDR while it has pods",
            &[("--pod-cidr", "10.244.127.0/24")],
            REFUSED,
            "delete them (or `podnet node reset`)",
        ),
        // Pods.
        row(
            "pod add: name of 64 characters",
            true,
            &["pod", "add", &long_pod],
            REFUSED,
            "invalid pod name",
        ),
        row(
            "pod add: name starting with '-'",
            true,
            &["pod", "add", "--", "-x"],
            REFUSED,
            "invalid pod name",
        ),
        row(
            "pod add: empty name",
            true,
            &["pod", "add", ""],
            REFUSED,
            "invalid pod name",
        ),
        row(
            "pod add: a name that exists",
            true,
            &["pod", "add", "a"],
            REFUSED,
            "pod a already exists",
        ),
        row(
            "pod add: netns that does not exist",
            true,
            &["pod", "add", "x", "--netns", "/nonexistent/pod-ns"],
            REFUSED,
            "network namespace /nonexistent/pod-ns not found",
        ),
        row(
            "pod add: netns that is a directory",
            true,
            &["pod", "add", "x", "--netns", "/tmp"],
            REFUSED,
            "/tmp is not a network namespace",
        ),
        row(
            "pod add: netns that is a mount namespace",
            true,
            &["pod", "add", "x", "--netns", "/proc/self/ns/mnt"],
            REFUSED,
            "is not a network namespace",
        ),
        row(
            "pod add: the node's own netns",
            true,
            &["pod", "add", "x", "--netns", node_netns],
            REFUSED,
            "is the node's own network namespace",
        ),
        row(
            "pod del: invalid name",
            true,
            &["pod", "del", "../a"],
            REFUSED,
            "invalid pod name",
        ),
        // NodePorts.
        row(
            "nodeport add: port 0",
            true,
            &["nodeport", "add", "--port", "0", "--backend", "a:80"],
            REFUSED,
            "port 0 is outside the NodePort range 30000-32767",
        ),
        row(
            "nodeport add: port 65536",
            true,
            &["nodeport", "add", "--port", "65536", "--backend", "a:80"],
            USAGE,
            "invalid value '65536' for '--port",
        ),
        row(
            "nodeport add: port above the NodePort range",
            true,
            &["nodeport", "add", "--port", "32768", "--backend", "a:80"],
            REFUSED,
            "port 32768 is outside the NodePort range",
        ),
        row(
            "nodeport add: backend port 70000",
            true,
            &["nodeport", "add", "--port", "30081", "--backend", "a:70000"],
            USAGE,
            "\"70000\" is not a port (1-65535)",
        ),
        row(
            "nodeport add: backend without a port",
            true,
            &["nodeport", "add", "--port", "30081", "--backend", "a"],
            USAGE,
            "is not POD:PORT or IP:PORT",
        ),
        row(
            "nodeport add: unknown backend pod",
            true,
            &[
                "nodeport",
                "add",
                "--port",
                "30081",
                "--backend",
                "ghost:80",
            ],
            REFUSED,
            "no pod named ghost",
        ),
        row(
            "nodeport add: backend on no node",
            true,
            &[
                "nodeport",
                "add",
                "--port",
                "30081",
                "--backend",
                "10.244.200.9:80",
            ],
            REFUSED,
            "neither in this node's pod CIDR",
        ),
        row(
            "nodeport add: protocol sctp",
            true,
            &[
                "nodeport",
                "add",
                "--port",
                "30081",
                "--proto",
                "sctp",
                "--backend",
                "a:80",
            ],
            USAGE,
            "protocol \"sctp\" is not tcp or udp",
        ),
        row(
            "nodeport add: unknown policy",
            true,
            &[
                "nodeport",
                "add",
                "--port",
                "30081",
                "--policy",
                "global",
                "--backend",
                "a:80",
            ],
            USAGE,
            "policy \"global\" is not cluster or local",
        ),
        row(
            "nodeport add: a port that is taken",
            true,
            &["nodeport", "add", "--port", "30080", "--backend", "a:81"],
            REFUSED,
            "tcp port 30080 is already a NodePort",
        ),
        row(
            "nodeport set: a port that is not a NodePort",
            true,
            &["nodeport", "set", "--port", "30082", "--backend", "a:80"],
            REFUSED,
            "no tcp NodePort 30082",
        ),
        // Peers.
        row(
            "peer add: invalid CIDR",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.244.999.0/24",
            ],
            USAGE,
            "for '--pod-cidr",
        ),
        row(
            "peer add: CIDR with host bits",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.244.128.5/24",
            ],
            REFUSED,
            "pod CIDR 10.244.128.5/24 has host bits set",
        ),
        row(
            "peer add: CIDR outside the cluster",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.250.0.0/24",
            ],
            REFUSED,
            "is not inside the cluster CIDR",
        ),
        row(
            "peer add: CIDR overlapping this node's",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.244.120.128/25",
            ],
            REFUSED,
            "overlaps this node's 10.244.120.0/24",
        ),
        row(
            "peer add: CIDR overlapping a peer's",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.244.0.0/17",
            ],
            REFUSED,
            "overlaps",
        ),
        row(
            "peer add: the node IP of a peer",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.20",
                "--pod-cidr",
                "10.244.128.0/24",
            ],
            REFUSED,
            "node IP 198.18.0.20 is already node peer-1's",
        ),
        row(
            "peer add: a name that exists",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "peer-1",
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.244.128.0/24",
            ],
            REFUSED,
            "peer peer-1 already exists",
        ),
        row(
            "peer add: name of 64 characters",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                &long_peer,
                "--node-ip",
                "198.18.0.30",
                "--pod-cidr",
                "10.244.128.0/24",
            ],
            REFUSED,
            "invalid peer name",
        ),
        row(
            "peer add: invalid node IP",
            true,
            &[
                "node",
                "peer",
                "add",
                "--name",
                "p2",
                "--node-ip",
                "198.18.0.300",
                "--pod-cidr",
                "10.244.128.0/24",
            ],
            USAGE,
            "for '--node-ip",
        ),
        row(
            "peer del: a name that does not exist",
            true,
            &["node", "peer", "del", "--name", "nobody"],
            REFUSED,
            "no peer named nobody",
        ),
    ];

    let (ready_rows, fresh_rows): (Vec<&CliRow>, Vec<&CliRow>) = rows.iter().partition(|r| r.ready);
    let volatile: Vec<String> = VOLATILE.iter().map(|s| (*s).to_owned()).collect();
    let fresh_watch = Watch {
        dirs: vec![
            fresh.cli.state_dir.clone(),
            fresh.pin_dir.clone(),
            old_abi.0.clone(),
            no_bpffs.0.clone(),
        ],
        node: &fresh.topo.node,
        netns_dir: PathBuf::from(NETNS_RUN_DIR),
        netns_prefix: netns_prefix(&fresh.cli.state_dir),
        volatile: volatile.clone(),
    };
    let ready_watch = Watch {
        dirs: vec![node.state_dir.clone(), node.pin_dir.clone()],
        node: &node.topo.node,
        netns_dir: PathBuf::from(NETNS_RUN_DIR),
        netns_prefix: netns_prefix(&node.state_dir),
        volatile,
    };
    // The snapshots see the node: its files, pins, links, routes and filters, the pod's netns.
    let ready_before = Snapshot::take(&ready_watch);
    for part in [
        "file ",
        "link pn",
        "addr podnet0",
        "route ",
        "tc filter pn",
        "netns ",
    ] {
        assert!(
            ready_before.has(part),
            "the snapshot misses {part:?}: {ready_before:?}"
        );
    }
    assert!(
        Snapshot::take(&fresh_watch).has("file "),
        "the old-ABI pin is seen"
    );

    let check = |r: &&CliRow| {
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let out = if r.ready {
            node.podnet(&args)
        } else {
            fresh.cli.podnet(&args)
        };
        check_cli(&r.what, &out, r.status, r.message);
    };
    let name = |r: &&CliRow| r.what.clone();
    let mut failures = Vec::new();
    run_rows(&fresh_rows, &fresh_watch, name, check, &mut failures);
    run_rows(&ready_rows, &ready_watch, name, check, &mut failures);
    assert_no_failures(&failures, rows.len());
    let checked = rows.len();
    assert!(
        !fresh.cli.state_dir.exists(),
        "a refused node init made the state directory"
    );

    // The snapshot does notice a change: a pod added for real shows up.
    node.ok(&["pod", "add", "probe"]);
    let diff = Snapshot::take(&ready_watch).diff(&ready_before);
    assert!(
        diff.iter().any(|d| d.contains("pods/probe.json"))
            && diff.iter().any(|d| d.starts_with("added link pn")),
        "a real pod add must show in the snapshot: {diff:?}"
    );
    node.ok(&["pod", "del", "probe"]);
    assert_eq!(
        Snapshot::take(&ready_watch).diff(&ready_before),
        Vec::<String>::new(),
        "pod del undoes pod add"
    );
    scenario.number("rows", checked);
    scenario.number("rows on a fresh node", fresh_rows.len());
    scenario.number("rows on a working node", ready_rows.len());
}

/// One CNI row: an ADD with `inv`, refused with `code`.
struct CniRow {
    what: String,
    ready: bool,
    inv: Invocation,
    code: u64,
    message: &'static str,
}

/// A standalone conflist whose `node` settings have `key` set to `value` (removed for null).
fn with_node_setting(conf: &Value, key: &str, value: Value) -> Value {
    let mut conf = conf.clone();
    let node = conf["plugins"][0]["node"]
        .as_object_mut()
        .expect("the conflist has node settings");
    if value.is_null() {
        node.remove(key);
    } else {
        node.insert(key.to_owned(), value);
    }
    conf
}

#[test]
fn cni_bad_input_is_refused_with_spec_codes_and_leaves_nothing() {
    require_root!();
    let mut scenario = Scenario::new("CNI bad input table: spec error codes, no partial state");
    // The working node: initialised by a first ADD, with a live container holding hostPort 8080.
    let node = CniNode::new("10.244.124.0/24");
    let conf = node.standalone_conflist();
    let live = Netns::new("bil");
    let ports = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let live_rt =
        RuntimeConf::new(&unique("ctr"), live.path()).with_capability("portMappings", ports);
    node.cni
        .add(&conf, &live_rt)
        .unwrap_or_else(|e| panic!("{e}"));
    let fresh = CniNode::new("10.244.125.0/24");
    let fresh_conf = fresh.standalone_conflist();
    let (old_abi, no_bpffs) = (old_abi_pin_dir(), plain_dir());
    let overlapping_peers = cluster_file(&[
        ("n1", "198.18.0.21", "10.244.128.0/24"),
        ("n2", "198.18.0.22", "10.244.128.0/25"),
    ]);
    // A container namespace per node, so a row that wrongly succeeds on one cannot spoil the
    // other's rows.
    let (pod, fresh_pod) = (Netns::new("bip"), Netns::new("bif"));

    // An ADD for a new container against `cni` with `conf`, port mappings `ports`.
    let add = |cni: &CniNode, conf: &Value, ports: Option<Value>| {
        let netns = if std::ptr::eq(cni, &fresh) {
            fresh_pod.path()
        } else {
            pod.path()
        };
        let mut rt = RuntimeConf::new(&unique("ctr"), netns);
        if let Some(ports) = ports {
            rt = rt.with_capability("portMappings", ports);
        }
        let stdin = Cni::plugin_conf(conf, 0, Some(&rt), None);
        rt.invocation("ADD", cni.cni.bin_dir()).stdin_json(&stdin)
    };
    let ready = |what: &str, inv: Invocation, code, message| CniRow {
        what: what.to_owned(),
        ready: true,
        inv,
        code,
        message,
    };
    let first = |what: &str, inv: Invocation, code, message| CniRow {
        what: format!("first ADD: {what}"),
        ready: false,
        inv,
        code,
        message,
    };
    let setting =
        |key: &str, value: Value| add(&fresh, &with_node_setting(&fresh_conf, key, value), None);
    let mapping = |m: Value| add(&node, &conf, Some(json!([m])));
    let node_netns = node.topo.node.path();
    let rows = vec![
        // CNI_NETNS.
        ready(
            "CNI_NETNS does not exist",
            add(&node, &conf, None).env("CNI_NETNS", "/run/netns/podnet-bad-gone"),
            4,
            "CNI_NETNS /run/netns/podnet-bad-gone: network namespace /run/netns/podnet-bad-gone not found",
        ),
        ready(
            "CNI_NETNS is a regular file",
            add(&node, &conf, None).env("CNI_NETNS", "/etc/hostname"),
            4,
            "CNI_NETNS /etc/hostname: /etc/hostname is not a network namespace",
        ),
        ready(
            "CNI_NETNS is a directory",
            add(&node, &conf, None).env("CNI_NETNS", NETNS_RUN_DIR),
            4,
            "is not a network namespace",
        ),
        ready(
            "CNI_NETNS is a mount namespace",
            add(&node, &conf, None).env("CNI_NETNS", "/proc/self/ns/mnt"),
            4,
            "is not a network namespace",
        ),
        ready(
            "CNI_NETNS is the plugin's own (the node's)",
            add(&node, &conf, None).env("CNI_NETNS", &node_netns),
            4,
            "the node's own network namespace",
        ),
        first(
            "CNI_NETNS is the plugin's own (the node's)",
            add(&fresh, &fresh_conf, None).env("CNI_NETNS", fresh.topo.node.path()),
            4,
            "the node's own network namespace",
        ),
        // CNI_IFNAME and CNI_CONTAINERID.
        ready(
            "CNI_IFNAME of 16 bytes",
            add(&node, &conf, None).env("CNI_IFNAME", "eth0123456789012"),
            4,
            "CNI_IFNAME \"eth0123456789012\" is not a valid interface name",
        ),
        ready(
            "CNI_IFNAME with a slash",
            add(&node, &conf, None).env("CNI_IFNAME", "../eth0"),
            4,
            "CNI_IFNAME \"../eth0\"",
        ),
        ready(
            "CNI_IFNAME with a colon",
            add(&node, &conf, None).env("CNI_IFNAME", "eth0:1"),
            4,
            "CNI_IFNAME \"eth0:1\"",
        ),
        ready(
            "CNI_CONTAINERID with a slash",
            add(&node, &conf, None).env("CNI_CONTAINERID", "a/../../b"),
            4,
            "CNI_CONTAINERID \"a/../../b\" must match",
        ),
        ready(
            "CNI_CONTAINERID empty",
            add(&node, &conf, None).env("CNI_CONTAINERID", ""),
            4,
            "CNI_CONTAINERID is required",
        ),
        // Port mappings.
        ready(
            "hostPort 0",
            mapping(json!({"hostPort": 0, "containerPort": 80})),
            7,
            "hostPort 0 -> containerPort 80: ports are 1-65535",
        ),
        ready(
            "containerPort 0",
            mapping(json!({"hostPort": 8081, "containerPort": 0})),
            7,
            "ports are 1-65535",
        ),
        ready(
            "hostPort 70000",
            mapping(json!({"hostPort": 70000, "containerPort": 80})),
            7,
            "70000",
        ),
        ready(
            "protocol sctp",
            mapping(json!({"hostPort": 8081, "containerPort": 80, "protocol": "sctp"})),
            7,
            "protocol \"sctp\" of hostPort 8081 is not tcp or udp",
        ),
        ready(
            "hostPort taken by another container",
            mapping(json!({"hostPort": 8080, "containerPort": 80})),
            7,
            "tcp port 8080 is already a NodePort",
        ),
        // Go's field names, as containerd's CRI plugin sends them: read, and checked the same.
        ready(
            "HostPort 0 (Go's names)",
            mapping(json!({"HostPort": 0, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""})),
            7,
            "hostPort 0 -> containerPort 80: ports are 1-65535",
        ),
        ready(
            "HostPort taken by another container (Go's names)",
            mapping(
                json!({"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}),
            ),
            7,
            "tcp port 8080 is already a NodePort",
        ),
        ready(
            "HostPort as a string",
            mapping(json!({"HostPort": "8081", "ContainerPort": 80})),
            7,
            "runtimeConfig.portMappings is not a list of port mappings",
        ),
        ready(
            "a port mapping that is a list",
            mapping(json!([8081, 80])),
            7,
            "runtimeConfig.portMappings is not a list of port mappings",
        ),
        // The node settings of the first ADD.
        first(
            "pod_cidr not an address",
            setting("pod_cidr", json!("10.244.300.0/24")),
            7,
            "invalid node settings",
        ),
        first(
            "pod_cidr with host bits",
            setting("pod_cidr", json!("10.244.125.9/24")),
            7,
            "has host bits set",
        ),
        first(
            "pod_cidr too small",
            setting("pod_cidr", json!("10.244.125.0/31")),
            7,
            "is too small",
        ),
        first(
            "pod_cidr outside the cluster CIDR",
            setting("pod_cidr", json!("10.245.125.0/24")),
            7,
            "is not inside cluster CIDR",
        ),
        first(
            "cluster file with overlapping peers",
            setting("cluster", json!(overlapping_peers.0)),
            7,
            "overlaps n1's 10.244.128.0/24",
        ),
        first(
            "SNAT ports reversed",
            setting("snat_ports", json!("2000-1000")),
            7,
            "must be MIN-MAX",
        ),
        first(
            "SNAT ports overlap the NodePort range",
            setting("snat_ports", json!("30000-31000")),
            7,
            "overlap the NodePort range",
        ),
        first(
            "bridge name of 16 bytes",
            setting("bridge", json!("abcdefghijklmnop")),
            7,
            "longer than 15 bytes",
        ),
        first(
            "uplink that does not exist",
            setting("uplink", json!("nosuch0")),
            7,
            "uplink nosuch0 does not exist",
        ),
        first(
            "node netns that does not exist",
            setting("netns", json!("/run/netns/podnet-bad-gone")),
            7,
            "entering the node's namespace /run/netns/podnet-bad-gone",
        ),
        first(
            "pin dir not on bpffs",
            setting("pin_dir", json!(no_bpffs.0)),
            100,
            "bpffs is not mounted at",
        ),
        first(
            "pin dir with a map of an older ABI",
            setting("pin_dir", json!(old_abi.0)),
            100,
            "run `podnet node init` again",
        ),
    ];

    let volatile: Vec<String> = VOLATILE.iter().map(|s| (*s).to_owned()).collect();
    let ready_watch = Watch {
        dirs: vec![node.state_dir.clone(), node.pin_dir.clone()],
        node: &node.topo.node,
        netns_dir: PathBuf::from(NETNS_RUN_DIR),
        netns_prefix: netns_prefix(&node.state_dir),
        volatile: volatile.clone(),
    };
    let fresh_watch = Watch {
        dirs: vec![
            fresh.state_dir.clone(),
            fresh.pin_dir.clone(),
            old_abi.0.clone(),
            no_bpffs.0.clone(),
        ],
        node: &fresh.topo.node,
        netns_dir: PathBuf::from(NETNS_RUN_DIR),
        netns_prefix: netns_prefix(&fresh.state_dir),
        volatile,
    };
    let ready_before = Snapshot::take(&ready_watch);
    for part in ["file ", "link pn", "addr podnet0", "route ", "tc filter pn"] {
        assert!(
            ready_before.has(part),
            "the snapshot misses {part:?}: {ready_before:?}"
        );
    }
    let (ready_rows, fresh_rows): (Vec<&CniRow>, Vec<&CniRow>) = rows.iter().partition(|r| r.ready);
    let check = |r: &&CniRow| {
        let cni = if r.ready { &node } else { &fresh };
        let out = cni.cni.invoke("podnet", &r.inv);
        check_cni(&r.what, &out, r.code, r.message);
    };
    let name = |r: &&CniRow| r.what.clone();
    let mut failures = Vec::new();
    run_rows(&fresh_rows, &fresh_watch, name, check, &mut failures);
    run_rows(&ready_rows, &ready_watch, name, check, &mut failures);
    assert_no_failures(&failures, rows.len());
    let checked = rows.len();
    assert!(
        !fresh.state_dir.exists(),
        "a refused first ADD made the state directory"
    );
    // Nothing reached the containers' namespaces either.
    for ns in [&pod, &fresh_pod] {
        let links = ns.ok("ip -o link show");
        assert_eq!(
            links.lines().count(),
            1,
            "only lo in the container: {links}"
        );
    }

    // The snapshot does notice a change: a real ADD shows up, and its DEL removes it again.
    let rt = RuntimeConf::new(&unique("ctr"), pod.path());
    node.cni.add(&conf, &rt).unwrap_or_else(|e| panic!("{e}"));
    let diff = Snapshot::take(&ready_watch).diff(&ready_before);
    assert!(
        diff.iter().any(|d| d.starts_with("added link pn")),
        "a real ADD must show in the snapshot: {diff:?}"
    );
    node.cni
        .del(&conf, &rt, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        Snapshot::take(&ready_watch).diff(&ready_before),
        Vec::<String>::new(),
        "DEL undoes ADD"
    );
    scenario.number("rows", checked);
    scenario.number("rows on a fresh node", fresh_rows.len());
    scenario.number("rows on a working node", ready_rows.len());
}
