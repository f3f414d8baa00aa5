//! podnet under a real container runtime: containerd's CRI plugin (Debian's containerd 1.6 +
//! runc) runs pod sandboxes through podnet's CNI plugin, driven over the CRI gRPC API the way
//! kubelet drives it (see `podnet_tests::cri`). Chained (bridge + host-local + podnet) and
//! standalone, each with a hostPort that must answer from outside through podnet's eBPF host
//! ports (no `portmap` plugin in the list).
//!
//! Each test makes its own node namespace (`CniNode`) and runs its own containerd inside it.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use k8s_cri::v1::Protocol;
use podnet_ebpf::abi::map_name;
use podnet_tests::{
    CHAINED_BRIDGE, CniNode, InNetns as _, NODE_IP, OUTSIDE_IP, Pod, STANDALONE_BRIDGE, Snapshot,
    Watch, connect_tcp, cri, describe, in_cidr, local_ip_of, peer_ip_of, require_root, serve_tcp,
    unique,
};
use serde_json::{Value, json};

/// The hostPort of the test pods.
const HOST_PORT: u16 = 38080;
/// The containerPort behind it.
const CONTAINER_PORT: u16 = 80;

/// Skips (printing why) when containerd, runc or gcc are missing, unless root is required
/// (CI), where it fails.
macro_rules! require_containerd {
    () => {
        if let Some(why) = cri::missing_tools() {
            assert!(
                std::env::var_os(podnet_tests::REQUIRE_ROOT_ENV).is_none(),
                "{why}"
            );
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// `cniVersion` and `cniVersions` of the network `podnet install-cni` writes in `mode`.
fn installed_versions(mode: Mode) -> Vec<(&'static str, Value)> {
    let dir = std::env::temp_dir().join(unique("pn-cri-install"));
    let out = std::process::Command::new(podnet_tests::podnet_bin())
        .args(["--state-dir", "/var/lib/podnet-example", "install-cni"])
        .arg("--bin-dir")
        .arg(dir.join("bin"))
        .arg("--conf-dir")
        .arg(dir.join("net.d"))
        .args([
            "--mode",
            if mode == Mode::Chained {
                "chained"
            } else {
                "standalone"
            },
        ])
        .args([
            "--pod-cidr",
            "10.244.1.0/24",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .args(["--uplink", "eth0"])
        .output()
        .expect("podnet runs");
    let network = std::fs::read(dir.join("net.d/10-podnet.conflist"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "install-cni: {}", describe(&out));
    let network: Value = serde_json::from_slice(&network.expect("the network")).expect("JSON");
    ["cniVersion", "cniVersions"]
        .into_iter()
        .filter_map(|key| Some((key, network.get(key)?.clone())))
        .collect()
}

/// podnet alone, or after bridge + host-local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Chained,
    Standalone,
}

/// `podnet nodeport list --json`: the host ports podnet holds.
fn host_ports(node: &CniNode) -> Vec<u64> {
    let list = node.podnet_json(&["nodeport", "list"]);
    let entries = list
        .as_array()
        .or_else(|| list["nodeports"].as_array())
        .cloned()
        .unwrap_or_default();
    entries.iter().filter_map(|e| e["port"].as_u64()).collect()
}

/// Files left in podnet's state directory other than the node's own.
fn state_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found.sort();
    found
}

/// A node with containerd running pods through podnet in `mode`, and the record of what
/// containerd made podnet do. Dropped in field order: containerd (and every sandbox) first.
struct Runtime {
    ctd: cri::Containerd,
    log: cri::CniLog,
    node: CniNode,
    mode: Mode,
}

impl Runtime {
    fn start(mode: Mode, pod_cidr: &str) -> Self {
        let node = CniNode::new(pod_cidr);
        let mut conflist = match mode {
            Mode::Chained => node.chained_conflist(),
            Mode::Standalone => node.standalone_conflist(),
        };
        // The versions `install-cni` writes: containerd 1.6 must take them.
        for (key, value) in installed_versions(mode) {
            conflist[key] = value;
        }
        let podnet = podnet_tests::podnet_bin()
            .canonicalize()
            .expect("the podnet binary");
        let log = cri::CniLog::wrap(node.cni.bin_dir(), "podnet", &podnet);
        let ctd = cri::Containerd::start(
            &node.topo.node,
            Some(&cri::CniSetup {
                bin_dir: node.cni.bin_dir().to_path_buf(),
                conflist,
            }),
        );
        Self {
            ctd,
            log,
            node,
            mode,
        }
    }

    /// Everything the node owns, with what moves by itself (counters, conntrack entries of
    /// finished flows, which expire, and the IPAM allocators' cursors) left out.
    fn snapshot(&self) -> Snapshot {
        let node = &self.node;
        Snapshot::take(&Watch {
            dirs: vec![
                node.state_dir.clone(),
                node.pin_dir.clone(),
                node.host_local_dir.clone(),
            ],
            node: &node.topo.node,
            netns_dir: self.ctd.netns_dir(),
            netns_prefix: String::new(),
            volatile: [
                map_name::STATS,
                map_name::CONNTRACK,
                map_name::CT_USAGE,
                "last_reserved_ip",
                "last_reserved_ip.0",
            ]
            .map(str::to_owned)
            .to_vec(),
        })
    }

    /// One pod's life as kubelet drives it: RunPodSandbox with a hostPort, traffic from
    /// outside, StopPodSandbox, RemovePodSandbox.
    fn pod_lifecycle(&self, name: &str) {
        let Self {
            ctd,
            log,
            node,
            mode,
        } = self;
        let cri = ctd.cri();
        let config = cri::sandbox_config(
            name,
            &ctd.dir().join("pod-logs"),
            &[(Protocol::Tcp, CONTAINER_PORT, HOST_PORT)],
        );
        let id = cri
            .run_pod_sandbox(config)
            .unwrap_or_else(|e| panic!("{e}\n--- containerd ---\n{}", ctd.log()));
        let status = cri
            .pod_sandbox_status(&id)
            .unwrap_or_else(|e| panic!("{e}"));
        let ip =
            cri::sandbox_ip(&status).unwrap_or_else(|| panic!("no pod IP in {:?}", status.status));
        assert!(
            in_cidr(ip, &node.pod_cidr),
            "pod IP {ip} outside {}",
            node.pod_cidr
        );
        let netns = cri::sandbox_netns(&status).expect("the sandbox's network namespace");
        let netns_text = netns.display().to_string();
        assert!(
            netns.starts_with(ctd.netns_dir()),
            "{netns_text} not under containerd's state"
        );
        let pod = Pod::new(name, &netns);
        let eth0 = pod.ok("ip -4 -o addr show dev eth0");
        assert!(eth0.contains(&format!("{ip}/24")), "{eth0}");
        assert_eq!(node.endpoints(), vec![ip], "podnet registered the pod");
        assert_eq!(host_ports(node), vec![u64::from(HOST_PORT)]);

        // The hostPort answers from outside, at the pod, which sees the outside client.
        let server = serve_tcp(&pod, &format!("0.0.0.0:{CONTAINER_PORT}"));
        let reply = connect_tcp(&node.topo.outside, &format!("{NODE_IP}:{HOST_PORT}"))
            .unwrap_or_else(|e| panic!("outside -> {NODE_IP}:{HOST_PORT}: {e}"));
        assert_eq!(
            local_ip_of(&reply),
            Some(IpAddr::V4(ip)),
            "the connection arrives at the pod: {reply}"
        );
        assert!(
            reply.contains(&format!("local={ip}:{CONTAINER_PORT}")),
            "{reply}"
        );
        assert_eq!(
            peer_ip_of(&reply),
            Some(IpAddr::V4(OUTSIDE_IP)),
            "a host port keeps the client's address, as podnet's NodePorts do: {reply}"
        );
        drop(server);

        cri.stop_pod_sandbox(&id)
            .unwrap_or_else(|e| panic!("{e}\n--- containerd ---\n{}", ctd.log()));
        assert!(!netns.exists(), "containerd removed the pod's namespace");
        assert_eq!(node.endpoints(), Vec::<Ipv4Addr>::new(), "endpoint gone");
        assert_eq!(host_ports(node), Vec::<u64>::new(), "host port gone");
        assert!(
            connect_tcp(&node.topo.outside, &format!("{NODE_IP}:{HOST_PORT}")).is_err(),
            "hostPort {HOST_PORT} must not answer after StopPodSandbox"
        );
        cri.remove_pod_sandbox(&id)
            .unwrap_or_else(|e| panic!("{e}\n--- containerd ---\n{}", ctd.log()));
        assert_eq!(
            cri.sandbox_ids().unwrap_or_else(|e| panic!("{e}")),
            Vec::<String>::new()
        );

        // What containerd made podnet do, as kubelet's calls reach it.
        let calls: Vec<_> = log
            .invocations()
            .into_iter()
            .filter(|i| i.env.get("CNI_CONTAINERID") == Some(&id))
            .collect();
        let summary: Vec<(String, String, bool)> = calls
            .iter()
            .map(|i| {
                (
                    i.command().to_owned(),
                    i.netns().to_owned(),
                    i.stdin.get("prevResult").is_some(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                // RunPodSandbox; chained, podnet gets the bridge plugin's result.
                ("ADD".to_owned(), netns_text.clone(), *mode == Mode::Chained),
                // StopPodSandbox: the namespace and the cached result.
                ("DEL".to_owned(), netns_text, true),
                // RemovePodSandbox: again, with neither.
                ("DEL".to_owned(), String::new(), false),
            ],
            "{calls:#?}"
        );
        // containerd's own JSON for the port mapping: Go's field names (go-cni has no tags).
        assert_eq!(
            calls[0].stdin["runtimeConfig"]["portMappings"],
            json!([{
                "HostPort": HOST_PORT,
                "ContainerPort": CONTAINER_PORT,
                "Protocol": "tcp",
                "HostIP": "",
            }])
        );
        assert!(
            calls[0]
                .env
                .get("CNI_ARGS")
                .is_some_and(|a| a.contains(&format!("K8S_POD_NAME={name}"))),
            "{:?}",
            calls[0].env
        );

        assert_eq!(node.pod_links(), Vec::<String>::new(), "no veth left");
        assert_eq!(
            node.podnet_ip_records(),
            Vec::<Ipv4Addr>::new(),
            "podnet IPAM"
        );
        assert_eq!(
            node.host_local_ip_records(),
            Vec::<Ipv4Addr>::new(),
            "host-local IPAM"
        );
        let bridge = match mode {
            Mode::Chained => CHAINED_BRIDGE,
            Mode::Standalone => STANDALONE_BRIDGE,
        };
        let ports = node
            .topo
            .node
            .exec(&["ip", "-o", "link", "show", "master", bridge]);
        assert!(
            String::from_utf8_lossy(&ports.stdout).trim().is_empty(),
            "nothing on {bridge}: {}",
            describe(&ports)
        );
        let records = state_files(&node.state_dir);
        assert!(
            !records.iter().any(|f| f.contains(&id)),
            "a record of {id} is left: {records:?}"
        );
        assert_eq!(
            std::fs::read_dir(ctd.netns_dir())
                .map(Iterator::count)
                .unwrap_or(0),
            0,
            "no pod namespace left"
        );
    }
}

/// In `mode`: a first pod (whose ADD also initialises the node), then a second one whose
/// whole life must leave the node exactly as it found it.
fn pods_through_containerd(mode: Mode, pod_cidr: &str) {
    let runtime = Runtime::start(mode, pod_cidr);
    let cri = runtime.ctd.cri();
    let (name, version, api) = cri.version().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("runtime {name} {version}, CRI {api}");
    assert!(
        cri.has_image(cri::PAUSE_IMAGE)
            .unwrap_or_else(|e| panic!("{e}")),
        "the sandbox image was imported"
    );
    runtime.pod_lifecycle("web-1");
    let before = runtime.snapshot();
    runtime.pod_lifecycle("web-2");
    assert_eq!(
        runtime.snapshot().diff(&before),
        Vec::<String>::new(),
        "a pod's whole life leaves nothing behind"
    );
}

#[test]
fn chained_pod_sandbox_with_host_port_through_containerd() {
    require_root!();
    require_containerd!();
    pods_through_containerd(Mode::Chained, "10.244.150.0/24");
}

#[test]
fn standalone_pod_sandbox_with_host_port_through_containerd() {
    require_root!();
    require_containerd!();
    pods_through_containerd(Mode::Standalone, "10.244.151.0/24");
}
