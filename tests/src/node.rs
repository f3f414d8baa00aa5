//! A podnet node on a [`Topology`]: `podnet node init` run for real against the topology's node
//! namespace, with its own pin, state and netns-name space, so tests run in parallel. The
//! `podnet` binary runs from the test process's mount namespace (never through `ip netns exec`,
//! whose private sysfs hides bpffs) and enters the node's namespace itself (`--netns`).
//!
//! Dropping the node runs `podnet node reset` and removes its directories, also on panic.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::{InNetns as _, Pod, Topology, describe, podnet_bin, run_bounded, unique};

/// The service CIDR the service tests' nodes are initialised with (Kubernetes' default).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Which path carries pods' service traffic on a test node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServicePath {
    /// Per packet at the pod's veth (`node init --no-socket-lb`).
    Tc,
    /// Socket-level balancing for the node and its pods (the default).
    Socket,
}

impl ServicePath {
    /// `node init` arguments for a node whose pods take this path, with [`SERVICE_CIDR`].
    pub fn init_args(self) -> Vec<&'static str> {
        let mut args = vec!["--service-cidr", SERVICE_CIDR];
        if self == Self::Tc {
            args.push("--no-socket-lb");
        }
        args
    }
}

/// The cluster CIDR every test node's pod CIDR comes from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

pub struct Node {
    pub topo: Topology,
    pub cli: PodnetCli,
    pub pin_dir: PathBuf,
    pub pod_cidr: String,
}

impl std::ops::Deref for Node {
    type Target = PodnetCli;

    fn deref(&self) -> &PodnetCli {
        &self.cli
    }
}

/// A pod as `podnet pod add --json` reports it.
pub struct PodInfo {
    pub name: String,
    pub ip: String,
    pub host_if: String,
    pub ns: Pod,
}

impl PodInfo {
    /// Pings `ip` from this pod `count` times (50 ms apart, 1 s per reply at most).
    pub fn ping(&self, ip: &str, count: u32) -> Output {
        ping(&self.ns, ip, count)
    }
}

/// Pings `ip` from inside `ns`, bounded: `count` echoes 50 ms apart, 1 s wait per reply.
pub fn ping(ns: &(impl crate::InNetns + ?Sized), ip: &str, count: u32) -> Output {
    ns.sh(&format!("ping -c {count} -i 0.05 -W 1 {ip}"))
}

impl Node {
    /// A topology plus `podnet node init` with `pod_cidr`.
    pub fn new(pod_cidr: &str) -> Self {
        Self::with_args(pod_cidr, &[])
    }

    pub fn with_args(pod_cidr: &str, extra: &[&str]) -> Self {
        let topo = Topology::new();
        let id = unique("pt");
        let node = Self {
            cli: PodnetCli {
                state_dir: std::env::temp_dir().join(format!("podnet-test-{id}")),
            },
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/podnet-test-{id}")),
            pod_cidr: pod_cidr.to_owned(),
            topo,
        };
        let mut args = node.init_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        node.ok(&refs);
        node
    }

    /// The arguments of this node's `node init`.
    pub fn init_args(&self) -> Vec<String> {
        [
            "node",
            "init",
            "--netns",
            self.topo.node.name(),
            "--uplink",
            &self.topo.uplink,
            "--pod-cidr",
            &self.pod_cidr,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--pin-dir",
            self.pin_dir.to_str().expect("UTF-8 path"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// The interfaces in the node's namespace.
    pub fn links(&self) -> Vec<String> {
        let out = crate::InNetns::ok(&self.topo.node, "ip -o link show | awk -F': ' '{print $2}'");
        out.lines()
            .map(|l| l.split('@').next().unwrap_or(l).to_owned())
            .collect()
    }
}

/// The `podnet` CLI of one node (`podnet --state-dir DIR ...`): what every node fixture offers,
/// reached through `Deref` (`node.ok(...)`, `node.stats()`).
pub struct PodnetCli {
    pub state_dir: PathBuf,
}

impl PodnetCli {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(podnet_bin());
        cmd.arg("--state-dir").arg(&self.state_dir).args(args);
        cmd
    }

    /// Runs `podnet --state-dir <node> ARGS`.
    pub fn podnet(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args), Duration::from_secs(60))
    }

    /// Runs podnet and panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podnet(args);
        assert!(
            out.status.success(),
            "podnet {args:?} failed:\n{}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs podnet with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("podnet {args:?}: bad JSON ({e}):\n{stdout}"))
    }

    pub fn add_pod(&self, name: &str) -> PodInfo {
        let v = self.json(&["pod", "add", name]);
        let field = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {v}"))
                .to_owned()
        };
        let address = field("address");
        let ip = address.split('/').next().expect("CIDR").to_owned();
        PodInfo {
            name: name.to_owned(),
            ip,
            host_if: field("host_if"),
            ns: Pod::new(name, field("netns")),
        }
    }

    /// Packets per reason, summed over CPUs (`podnet stats --json`).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.json(&["stats"])["reasons"]
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
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.podnet(&["node", "reset"]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
