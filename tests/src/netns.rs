//! Network namespaces: the RAII [`Netns`] the fixtures create, [`Pod`] for namespaces someone
//! else (the product) created, and veth/address helpers that only ever touch namespaces.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::process::{ChildGuard, DEFAULT_TIMEOUT, describe, run_bounded};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Timeout for the short `ip` commands the fixtures run themselves.
const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// Names are `<prefix>-<pid>-<counter>` (pid and counter in base 36), so they are unique
/// across the threads of one test binary and across test binaries running at the same time.
/// With a prefix of at most 4 characters the name fits an interface name (15 characters):
/// a pid is at most 5 base-36 digits (pid_max <= 2^22) and the counter wraps at 4 digits.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    const COUNTER_WRAP: u32 = 36 * 36 * 36 * 36;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % COUNTER_WRAP;
    format!("{prefix}-{}-{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

/// Runs a host command (only ever `ip netns ...` / `ip -n NS ...`) with a short timeout.
fn host(argv: &[&str]) -> Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    run_bounded(cmd, IP_TIMEOUT)
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Something commands can be run inside: a fixture [`Netns`] or a product-made [`Pod`].
///
/// Every command is bounded: [`InNetns::exec`], [`InNetns::sh`] and [`InNetns::ok`] kill the
/// command after [`DEFAULT_TIMEOUT`]; [`InNetns::spawn`]ed processes die with their guard.
pub trait InNetns {
    /// The namespace's name (for a fixture namespace, its `ip netns` name).
    fn name(&self) -> &str;

    /// The namespace file (`/run/netns/NAME` for named namespaces).
    fn path(&self) -> PathBuf;

    /// A not yet started command that runs `argv` inside the namespace.
    fn command(&self, argv: &[&str]) -> Command;

    /// Runs `argv` inside the namespace and returns its output (killed after
    /// [`DEFAULT_TIMEOUT`]).
    fn exec(&self, argv: &[&str]) -> Output {
        self.exec_timeout(argv, DEFAULT_TIMEOUT)
    }

    /// Like [`InNetns::exec`] with an explicit timeout.
    fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Output {
        run_bounded(self.command(argv), timeout)
    }

    /// Runs `sh -c cmd` inside the namespace.
    fn sh(&self, cmd: &str) -> Output {
        self.exec(&["sh", "-c", cmd])
    }

    /// Runs `sh -c cmd` inside the namespace, panicking with its output unless it succeeds;
    /// returns its stdout.
    fn ok(&self, cmd: &str) -> String {
        let output = self.sh(cmd);
        assert!(
            output.status.success(),
            "`{cmd}` failed in netns {}: {}",
            self.name(),
            describe(&output)
        );
        stdout_of(&output)
    }

    /// Starts `argv` inside the namespace in the background; it is killed when the guard is
    /// dropped.
    fn spawn(&self, argv: &[&str]) -> ChildGuard {
        ChildGuard::spawn(self.command(argv))
    }
}

fn ip_netns_exec(name: &str, argv: &[&str]) -> Command {
    assert!(!argv.is_empty(), "empty command for netns {name}");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name]).args(argv);
    cmd
}

/// A command that enters the network namespace at `path` (setns(2) between fork and exec).
fn setns_command(path: &Path, argv: &[&str]) -> Command {
    assert!(
        !argv.is_empty(),
        "empty command for netns {}",
        path.display()
    );
    let fd: OwnedFd = File::open(path)
        .unwrap_or_else(|e| panic!("cannot open netns {}: {e}", path.display()))
        .into();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: the hook runs in the forked child before exec and only calls setns(2) and reads
    // errno, both async-signal-safe and allocation-free. `fd` is owned by the closure, so it
    // stays open for as long as the command can be spawned (it is close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// Whether the namespace file at `path` is the network namespace this process runs in (the
/// root namespace: the harness never leaves it). Unreadable paths count as "no".
pub fn is_own_netns(path: &Path) -> bool {
    same_file(path, Path::new("/proc/self/ns/net"))
}

/// Whether two namespace files refer to the same namespace (same device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A named network namespace owned by the test: created by [`Netns::new`], and on drop (also
/// during a panic) every process left inside it is killed and it is deleted, which takes its
/// interfaces with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add <unique(prefix)>`, then brings `lo` up. Keep `prefix` to <= 4 characters.
    pub fn new(prefix: &str) -> Self {
        let mut last = None;
        // A pid can be reused by a later test process; skip names a crashed run left behind.
        for _ in 0..16 {
            let name = unique(prefix);
            let output = host(&["ip", "netns", "add", &name]);
            if output.status.success() {
                let ns = Self { name };
                let lo = host(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
                assert!(
                    lo.status.success(),
                    "bringing lo up in {}: {}",
                    ns.name,
                    describe(&lo)
                );
                return ns;
            }
            let exists = String::from_utf8_lossy(&output.stderr).contains("File exists");
            last = Some((name, output));
            if !exists {
                break;
            }
        }
        let (name, output) = last.expect("at least one attempt");
        panic!("ip netns add {name} failed: {}", describe(&output));
    }
}

impl InNetns for Netns {
    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    fn command(&self, argv: &[&str]) -> Command {
        ip_netns_exec(&self.name, argv)
    }
}

/// Kills every process inside the named namespace (only ever one the test created).
fn kill_processes_in(name: &str) {
    let output = host(&["ip", "netns", "pids", name]);
    let own = std::process::id();
    for pid in stdout_of(&output).split_whitespace() {
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; the pid was just listed as
        // running inside a namespace this test created and is about to delete.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_processes_in(&self.name);
        // Errors are ignored: nothing useful can be done about them while dropping.
        let _ = host(&["ip", "netns", "del", &self.name]);
    }
}

/// A network namespace created by someone else, typically the product's `podnet pod add`.
///
/// Commands run through `ip netns exec` when the namespace is a named one
/// (`/run/netns/NAME`), otherwise by entering `path` with setns(2). By default the namespace
/// is left alone on drop; see [`Pod::adopt`].
#[derive(Debug)]
pub struct Pod {
    name: String,
    path: PathBuf,
    owned: bool,
}

impl Pod {
    /// The namespace at an arbitrary path (e.g. `/proc/PID/ns/net`), called `name` in messages.
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            path: path.into(),
            owned: false,
        }
    }

    /// The named namespace `/run/netns/NAME`.
    pub fn named(name: &str) -> Self {
        Self::new(name, Path::new(NETNS_RUN_DIR).join(name))
    }

    /// Like [`Pod::named`], but the test takes ownership: on drop the processes inside it are
    /// killed and the namespace is deleted, so a failing test does not leak it.
    pub fn adopt(name: &str) -> Self {
        let mut pod = Self::named(name);
        pod.owned = true;
        pod
    }

    /// Whether the namespace file still exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    fn is_named(&self) -> bool {
        self.path == Path::new(NETNS_RUN_DIR).join(&self.name)
    }
}

impl InNetns for Pod {
    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn command(&self, argv: &[&str]) -> Command {
        assert!(
            !is_own_netns(&self.path),
            "pod {} ({}) is the test process's own (root) network namespace; refusing to run \
             {argv:?} there",
            self.name,
            self.path.display()
        );
        if self.is_named() {
            ip_netns_exec(&self.name, argv)
        } else {
            setns_command(&self.path, argv)
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.owned && self.is_named() && self.exists() {
            kill_processes_in(&self.name);
            let _ = host(&["ip", "netns", "del", &self.name]);
        }
    }
}

/// The two ends of a veth pair created by [`veth`]. Nothing to clean up: each end lives in a
/// test namespace and goes away with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// Namespace name of the first end.
    pub a_ns: String,
    /// Interface name of the first end.
    pub a_if: String,
    /// Namespace name of the second end.
    pub b_ns: String,
    /// Interface name of the second end.
    pub b_if: String,
}

fn must(ns: &(impl InNetns + ?Sized), argv: &[&str]) -> String {
    let output = ns.exec_timeout(argv, IP_TIMEOUT);
    assert!(
        output.status.success(),
        "{argv:?} failed in netns {}: {}",
        ns.name(),
        describe(&output)
    );
    stdout_of(&output)
}

/// Creates a veth pair `a_if` (in `a`) <-> `b_if` (in `b`) and sets both ends up.
///
/// The pair is created inside `a` with its peer moved straight into `b`
/// (`ip link add A_IF type veth peer name B_IF netns B`, run in `a`), so nothing is ever
/// created in the root namespace.
pub fn veth(
    a: &(impl InNetns + ?Sized),
    a_if: &str,
    b: &(impl InNetns + ?Sized),
    b_if: &str,
) -> VethPair {
    let b_path = b.path();
    let b_path = b_path.to_str().expect("netns paths are UTF-8");
    must(
        a,
        &[
            "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b_path,
        ],
    );
    // Links that stand for ones long up: their IPv6 link-local addresses are usable at once
    // (while one is tentative the kernel sends no Neighbor Solicitation from it).
    let no_dad = |ifname: &str| format!("net.ipv6.conf.{ifname}.accept_dad=0");
    must(a, &["sysctl", "-q", "-w", &no_dad(a_if)]);
    must(b, &["sysctl", "-q", "-w", &no_dad(b_if)]);
    must(a, &["ip", "link", "set", a_if, "up"]);
    must(b, &["ip", "link", "set", b_if, "up"]);
    VethPair {
        a_ns: a.name().to_owned(),
        a_if: a_if.to_owned(),
        b_ns: b.name().to_owned(),
        b_if: b_if.to_owned(),
    }
}

/// `ip addr add CIDR dev IFNAME` inside `ns` (e.g. `addr(&ns, "eth0", "10.1.0.1/24")`).
pub fn addr(ns: &(impl InNetns + ?Sized), ifname: &str, cidr: &str) {
    must(ns, &["ip", "addr", "add", cidr, "dev", ifname]);
}

/// `ip route add ROUTE...` inside `ns` (e.g. `route(&ns, &["default", "via", "10.1.0.1"])`).
pub fn route(ns: &(impl InNetns + ?Sized), route: &[&str]) {
    let mut argv = vec!["ip", "route", "add"];
    argv.extend_from_slice(route);
    must(ns, &argv);
}

/// The MAC address of `ifname` inside `ns`, as printed by `ip` (`aa:bb:cc:dd:ee:ff`).
pub fn mac(ns: &(impl InNetns + ?Sized), ifname: &str) -> String {
    // Ask `ip` rather than /sys: a setns'd Pod does not see its own /sys.
    let out = must(ns, &["ip", "-o", "link", "show", "dev", ifname]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no MAC for {ifname} in {}: {out}", ns.name()))
}

/// The names of all `ip netns` namespaces that currently exist.
pub fn netns_list() -> Vec<String> {
    let output = host(&["ip", "netns", "list"]);
    stdout_of(&output)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
