//! `podnet gc` and the socket programs of dead nodes (issue 17, item 7): two nodes on the
//! machine share the cgroup; one node's network namespace is deleted without `node reset`, and
//! `podnet gc` run with the other node's settings detaches the dead node's four programs while
//! the live node's stay attached and keep balancing its ClusterIP.
//!
//! What attaches where is read with `bpftool cgroup show` (the kernel's `BPF_PROG_QUERY`), not
//! through podnet. Whatever happens, the dead node's programs are detached at the end through
//! their pins, so a failed run leaves nothing running on the machine's sockets.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::programs::ProgramInfo;
use podnet::datapath::{
    cgroup::{attach_type, cgroup2_root, detach_sock},
    pins::program_pin,
    services_map::{Frontend, ServicesMap},
};
use podnet_ebpf::abi::{program_name, proto::IPPROTO_TCP, svc_flag};
use podnet_tests::{
    InNetns as _, Node, connect_tcp, describe, local_ip_of, require_root, run_bounded, serve_tcp,
    testrun::service_spec,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Ids of the programs `bpftool cgroup show` lists on `cgroup`.
fn attached_ids(cgroup: &Path) -> BTreeSet<u32> {
    let out = Command::new("bpftool")
        .args(["--json", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .map(|id| u32::try_from(id).expect("program ids are u32"))
        .collect()
}

/// The ids of a node's socket programs (both families), from its pins.
fn sock_ids(pin_dir: &Path) -> BTreeSet<u32> {
    program_name::SOCK
        .iter()
        .map(|name| {
            ProgramInfo::from_pin(program_pin(pin_dir, name))
                .unwrap_or_else(|e| panic!("{name} pinned under {}: {e}", pin_dir.display()))
                .id()
        })
        .collect()
}

/// Detaches a node's socket programs through its pins when dropped (also on panic): what
/// `node reset` would do, for a node whose namespace is gone.
struct DetachOnDrop {
    cgroup: PathBuf,
    pin_dir: PathBuf,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        for name in program_name::SOCK {
            let _ = detach_sock(
                &self.cgroup,
                attach_type(name),
                &program_pin(&self.pin_dir, name),
            );
        }
    }
}

/// Deletes the named namespace of `node` without `node reset` (like `ip netns del` by hand).
fn delete_node_netns(node: &Node) {
    let name = node.topo.node.name();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", name]);
    let out = run_bounded(cmd, std::time::Duration::from_secs(20));
    assert!(
        out.status.success(),
        "ip netns del {name}: {}",
        describe(&out)
    );
}

#[test]
fn gc_detaches_the_socket_programs_of_a_node_whose_namespace_is_gone() {
    require_root!();
    let cgroup = cgroup2_root().expect("a cgroup2 hierarchy");
    let live = Node::new("10.244.66.0/24");
    // No collector: nothing but the bind mount holds the namespace, so deleting it ends it.
    let dead = Node::with_args("10.244.67.0/24", &["--gc-interval", "0"]);
    let _detach = DetachOnDrop {
        cgroup: cgroup.clone(),
        pin_dir: dead.pin_dir.clone(),
    };
    let (live_ids, dead_ids) = (sock_ids(&live.pin_dir), sock_ids(&dead.pin_dir));
    let attached = attached_ids(&cgroup);
    assert!(
        live_ids.is_subset(&attached) && dead_ids.is_subset(&attached),
        "both nodes' programs attached: {live_ids:?} {dead_ids:?} in {attached:?}"
    );

    // While both nodes live, gc leaves every socket program alone.
    let report = live.json(&["gc"]);
    assert_eq!(report["sock_programs"], serde_json::json!([]), "{report}");
    let attached = attached_ids(&cgroup);
    assert!(live_ids.is_subset(&attached) && dead_ids.is_subset(&attached));

    delete_node_netns(&dead);
    assert!(
        dead_ids.is_subset(&attached_ids(&cgroup)),
        "a deleted namespace leaves its node's programs attached"
    );

    let report = live.json(&["gc"]);
    let detached = report["sock_programs"].as_array().expect("a list");
    assert_eq!(detached.len(), program_name::SOCK.len(), "{report}");
    for name in program_name::SOCK {
        assert!(
            detached
                .iter()
                .any(|d| d.as_str().is_some_and(|d| d.starts_with(name))),
            "{name} detached: {report}"
        );
    }
    let attached = attached_ids(&cgroup);
    assert!(
        attached.is_disjoint(&dead_ids),
        "the dead node's programs are gone: {dead_ids:?} in {attached:?}"
    );
    assert!(
        live_ids.is_subset(&attached),
        "the live node's programs stay: {live_ids:?} in {attached:?}"
    );
    // A second gc finds nothing more.
    let report = live.json(&["gc"]);
    assert_eq!(report["sock_programs"], serde_json::json!([]), "{report}");

    // The live node still balances its ClusterIP at the socket.
    let web = live.add_pod("web");
    let _server = serve_tcp(&web.ns, "0.0.0.0:8080");
    let mut maps = ServicesMap::open(&live.pin_dir).expect("service maps");
    let backend = (web.ip.parse().expect("pod IP"), 8080);
    let frontend = Frontend {
        addr: VIP.into(),
        port: 80,
        proto: IPPROTO_TCP,
    };
    maps.write(&service_spec(frontend, &[backend], svc_flag::CLUSTER_IP))
        .expect("service");
    let before = live.stats();
    let reply = connect_tcp(&live.topo.node, &format!("{VIP}:80")).expect("node -> ClusterIP");
    assert_eq!(local_ip_of(&reply), Some(backend.0.into()), "{reply}");
    let after = live.stats();
    assert_eq!(
        after["sock_service"] - before["sock_service"],
        1,
        "{after:?}"
    );
}
