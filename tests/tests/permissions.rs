//! Who may read a node's state: pinned maps and programs (bpffs), the node, pod, peer,
//! NodePort and CNI records, IPAM records and locks are root's alone. After `node init` (from a
//! CNI ADD, with a cluster file), `pod add`, `nodeport add`, every directory under the pin
//! directory and the state directory (IPAM and CNI state included) is 0700 or stricter, every
//! file 0600 or stricter, all owned by root; and an unprivileged user cannot read them (`cat`
//! through `setpriv`; `bpftool` would prove nothing here, unprivileged BPF being disabled on
//! this machine kind whatever the permissions). `install-cni`'s directories and files, which
//! runtimes read, are writable by root alone.
//!
//! podnet runs here under umask 000, the loosest a root shell may have, so nothing can rely on
//! the umask to take bits away. The umask is the process's: this test is alone in its test
//! binary (its own process) so that no other test is affected.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use podnet_tests::{
    CniNode, InNetns as _, Netns, Pod, RuntimeConf, Scenario, describe, require_root, run_bounded,
    unique,
};
use serde_json::json;

/// The unprivileged user the read checks run as.
const NOBODY: &str = "65534";

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One path found under a walked directory, and what is wrong with it, if anything.
struct Checked {
    path: PathBuf,
    dir: bool,
    problem: Option<String>,
}

/// Every directory and file under `root` (itself included), each checked: a directory must
/// grant nothing to group and others (0700 or stricter), a file nothing beyond owner read and
/// write (0600 or stricter), and both must be root's.
fn walk(root: &Path, out: &mut Vec<Checked>) {
    let meta =
        std::fs::symlink_metadata(root).unwrap_or_else(|e| panic!("stat {}: {e}", root.display()));
    let mode = meta.permissions().mode() & 0o7777;
    let dir = meta.is_dir();
    let allowed = if dir { 0o700 } else { 0o600 };
    let mut problems = Vec::new();
    if mode & !allowed != 0 {
        problems.push(format!("mode {mode:04o}, wants {allowed:04o} or stricter"));
    }
    if !dir && !meta.is_file() {
        problems.push("neither a file nor a directory".to_owned());
    }
    if (meta.uid(), meta.gid()) != (0, 0) {
        problems.push(format!("owned by {}:{}", meta.uid(), meta.gid()));
    }
    out.push(Checked {
        path: root.to_path_buf(),
        dir,
        problem: (!problems.is_empty()).then(|| problems.join(", ")),
    });
    if dir {
        let entries =
            std::fs::read_dir(root).unwrap_or_else(|e| panic!("listing {}: {e}", root.display()));
        for entry in entries {
            walk(&entry.expect("directory entry").path(), out);
        }
    }
}

/// Runs `argv` as the unprivileged user with no supplementary groups; true if it succeeds.
fn succeeds_as_nobody(argv: &[&str]) -> bool {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ])
    .args(argv);
    run_bounded(cmd, Duration::from_secs(20)).status.success()
}

fn succeeds_as_root(argv: &[&str]) -> bool {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    if !out.status.success() {
        eprintln!("{argv:?} as root: {}", describe(&out));
    }
    out.status.success()
}

#[test]
fn pins_state_and_ipam_records_are_root_only_whatever_the_umask() {
    require_root!();
    // SAFETY: umask(2) cannot fail and only sets this process's file creation mask; this test
    // is the only one in this binary, so nothing else here depends on it.
    unsafe { libc::umask(0) };
    let mut s = Scenario::new(
        "a node's pins, state, IPAM and CNI records are root-only (0700/0600) under umask 000",
    );

    let node = CniNode::new("10.244.101.0/24");
    let cluster = TempFile(std::env::temp_dir().join(format!("{}.json", unique("pn-perm"))));
    let cluster_json = json!({"nodes": [
        {"name": "self", "node_ip": podnet_tests::NODE_IP, "pod_cidr": node.pod_cidr},
        {"name": "other", "node_ip": "198.18.0.20", "pod_cidr": "10.244.102.0/24"},
    ]});
    std::fs::write(&cluster.0, cluster_json.to_string()).expect("cluster file");

    // node init through the first CNI ADD, with the cluster file.
    let mut conf = node.standalone_conflist();
    conf["plugins"][0]["node"]["cluster"] = json!(cluster.0);
    let container = Netns::new("perm");
    let rt = RuntimeConf::new(&unique("perm"), container.path());
    node.cni.add(&conf, &rt).expect("CNI ADD");
    let peers = node.podnet_json(&["node", "peer", "list"]);
    assert!(
        peers.to_string().contains("10.244.102.0/24"),
        "the cluster file's peer is there: {peers}"
    );
    // A standalone pod and a NodePort to it.
    let pod = node.podnet_json(&["pod", "add", "web"]);
    let _pod_ns = Pod::new("web", pod["netns"].as_str().expect("pod netns"));
    node.podnet_json(&[
        "nodeport",
        "add",
        "--port",
        "30080",
        "--backend",
        "web:8080",
    ]);

    let mut checked = Vec::new();
    for root in [&node.state_dir, &node.pin_dir] {
        walk(root, &mut checked);
    }
    let dirs = checked.iter().filter(|c| c.dir).count();
    let files = checked.len() - dirs;
    s.number("dirs", dirs)
        .number("files", files)
        .number("umask", "000");
    let listing: Vec<String> = checked
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c.path.display(),
                c.problem.as_deref().unwrap_or("ok")
            )
        })
        .collect();
    eprintln!("{}", listing.join("\n"));
    // What the walk must have seen, or it proves nothing.
    let seen = |suffix: &str| checked.iter().any(|c| c.path.ends_with(suffix));
    for expected in [
        "node.json",
        "peers.json",
        "CONFIG",
        "CONNTRACK",
        "progs/from_pod",
        "progs/sock_connect4",
        "progs/sock_recvmsg4",
        "progs/sock_connect6",
        "progs/sock_getpeername6",
        "SERVICES",
        "BACKENDS",
        "SERVICES6",
        "SOCK_REV_NAT6",
    ] {
        assert!(seen(expected), "no {expected} under the node's directories");
    }
    assert!(
        checked
            .iter()
            .any(|c| c.path.starts_with(node.state_dir.join("ipam"))),
        "no IPAM records under the state directory"
    );
    let bad: Vec<&String> = checked
        .iter()
        .zip(&listing)
        .filter(|(c, _)| c.problem.is_some())
        .map(|(_, line)| line)
        .collect();
    assert!(bad.is_empty(), "not root-only:\n{bad:#?}");

    // An unprivileged user can read none of it (root can, so it is the permissions that
    // refuse). The control: a world-readable file, which nobody can read.
    let control = TempFile(std::env::temp_dir().join(unique("pn-perm-ctl")));
    std::fs::write(&control.0, b"public\n").expect("control file");
    std::fs::set_permissions(&control.0, std::fs::Permissions::from_mode(0o644))
        .expect("control mode");
    let control_path = control.0.to_str().expect("UTF-8");
    assert!(
        succeeds_as_nobody(&["cat", control_path]),
        "the unprivileged user reads a world-readable file (control)"
    );
    let node_json = node.state_dir.join("node.json");
    let map = node.pin_dir.join("CONFIG");
    let mut refused = 0;
    for path in [&node_json, &map] {
        let path = path.to_str().expect("UTF-8");
        assert!(succeeds_as_root(&["cat", path]), "root reads {path}");
        assert!(
            !succeeds_as_nobody(&["cat", path]),
            "an unprivileged user reads {path}"
        );
        refused += 1;
    }
    s.number("non_root_reads_refused", refused);
    node.cni.del(&conf, &rt, None).expect("CNI DEL");

    // `install-cni` writes where runtimes look, which others may read but never write: a
    // plugin directory others could write to would run their binary as root.
    let install = TempDir(std::env::temp_dir().join(unique("pn-perm-inst")));
    let (bin, conf_dir) = (
        install.0.join("opt/cni/bin"),
        install.0.join("etc/cni/net.d"),
    );
    let mut cmd = Command::new(podnet_tests::podnet_bin());
    cmd.args(["--state-dir", "/var/lib/podnet-example", "install-cni"])
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .args([
            "--pod-cidr",
            "10.244.103.0/24",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .args(["--uplink", "eth0"]);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "install-cni: {}", describe(&out));
    let mut installed = Vec::new();
    walk(&install.0, &mut installed);
    let writable: Vec<String> = installed
        .iter()
        .map(|c| (c.path.display().to_string(), mode_of(&c.path)))
        .filter(|(_, mode)| mode & 0o022 != 0)
        .map(|(path, mode)| format!("{path} {mode:04o}"))
        .collect();
    assert!(
        writable.is_empty(),
        "install-cni left paths others may write to: {writable:#?}"
    );
    assert_eq!(mode_of(&bin.join("podnet")), 0o755, "the plugin binary");
    assert_eq!(
        mode_of(&conf_dir.join("10-podnet.conflist")),
        0o644,
        "the network configuration"
    );
    s.number("install_cni_paths", installed.len());
}

/// A directory removed (with its contents) on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `--pin-dir` at the root of bpffs is refused before anything changes: the mount is
/// everybody's, and making it root-only (0700) as podnet makes its pin directories would hide
/// every other program's pins from everyone else (issue 17).
#[test]
fn a_pin_dir_at_the_bpffs_root_is_refused_and_its_mode_kept() {
    require_root!();
    let node = podnet_tests::Node::new("10.244.148.0/24");
    let root = Path::new("/sys/fs/bpf");
    let mode = mode_of(root);
    let mut args = node.init_args();
    let at = args
        .iter()
        .position(|a| a == "--pin-dir")
        .expect("--pin-dir");
    args[at + 1] = root.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = node.podnet(&args);
    assert!(!out.status.success(), "refused: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the root of a bpffs mount"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        mode_of(root),
        mode,
        "the mode of {} is kept",
        root.display()
    );
    for name in ["CONFIG", "ENDPOINTS", "progs"] {
        assert!(!root.join(name).exists(), "{name} pinned at the bpffs root");
    }
}
