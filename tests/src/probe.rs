//! Locating the binaries under test and driving `netprobe` (our test client/server) inside
//! namespaces.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use crate::{
    netns::InNetns,
    process::{ChildGuard, DEFAULT_TIMEOUT},
};

/// How long a netprobe server may take to print `listening ...`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("podnet-tests lives one level below the workspace root")
        .to_path_buf()
}

/// Finds the workspace binary `name`: `$env_var` if set, else next to the running test
/// executable (`target/<profile>/deps/..` -> `target/<profile>/NAME`, which also covers
/// custom target dirs and `--release`), else `<workspace>/target/debug/NAME`.
fn find_bin(env_var: &str, name: &str, how_to_build: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not exist: {how_to_build}",
            path.display()
        );
        return path;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(workspace_root().join("target/debug").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the {name} binary is missing (looked at {candidates:?}; or set {env_var}): \
                 {how_to_build}"
            )
        })
}

/// The product binary: `$PODNET_BIN`, else the workspace's `target/<profile>/podnet`.
pub fn podnet_bin() -> PathBuf {
    find_bin(
        "PODNET_BIN",
        "podnet",
        "build it with `cargo xtask test` or `cargo build -p podnet`",
    )
}

/// The netprobe tool: `$NETPROBE_BIN`, else the workspace's `target/<profile>/netprobe`
/// (cargo builds it before running this crate's integration tests).
pub fn netprobe_bin() -> PathBuf {
    find_bin(
        "NETPROBE_BIN",
        "netprobe",
        "build it with `cargo xtask test` or `cargo build -p podnet-tests --bins`",
    )
}

fn argv_with<'a>(bin: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec![bin.to_str().expect("binary paths are UTF-8")];
    argv.extend_from_slice(args);
    argv
}

/// Runs `podnet ARGS...` inside `ns` (bounded by the default exec timeout).
pub fn podnet(ns: &(impl InNetns + ?Sized), args: &[&str]) -> Output {
    let bin = podnet_bin();
    ns.exec(&argv_with(&bin, args))
}

/// `netprobe connect PROTO ADDR --show-peer EXTRA..` from `ns` (1 s timeout): its output
/// (`peer=... local=...` and the reply) or why it failed.
pub fn connect_probe(
    ns: &(impl InNetns + ?Sized),
    proto: &str,
    addr: impl std::fmt::Display,
    extra: &[&str],
) -> Result<String, String> {
    let addr = addr.to_string();
    let mut args = vec![
        "connect",
        proto,
        &addr,
        "--timeout-ms",
        "1000",
        "--show-peer",
    ];
    args.extend_from_slice(extra);
    let out = netprobe(ns, &args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(crate::describe(&out))
    }
}

/// Runs `netprobe ARGS...` inside `ns` to completion (bounded by the default exec timeout).
pub fn netprobe(ns: &(impl InNetns + ?Sized), args: &[&str]) -> Output {
    let bin = netprobe_bin();
    ns.exec(&argv_with(&bin, args))
}

/// Starts a netprobe server (`netprobe ARGS...`) inside `ns` and waits (bounded) until it
/// printed `listening`. The server dies with the returned guard.
pub fn serve(ns: &(impl InNetns + ?Sized), args: &[&str]) -> ChildGuard {
    let bin = netprobe_bin();
    let mut child = ns.spawn(&argv_with(&bin, args));
    child.wait_for_stdout("listening", LISTEN_TIMEOUT);
    child
}

/// `netprobe serve tcp --listen LISTEN`: replies `peer=.. local=.. bytes=..` once per
/// connection.
pub fn serve_tcp(ns: &(impl InNetns + ?Sized), listen: &str) -> ChildGuard {
    serve(ns, &["serve", "tcp", "--listen", listen])
}

/// `netprobe serve tcp --echo --listen LISTEN`: echoes every line (for `stream`).
pub fn serve_tcp_echo(ns: &(impl InNetns + ?Sized), listen: &str) -> ChildGuard {
    serve(ns, &["serve", "tcp", "--echo", "--listen", listen])
}

/// `netprobe serve udp --listen LISTEN`: answers each datagram with `peer=.. local=..`.
/// Bind a specific address rather than 0.0.0.0: the reply's `local=` is the bound address.
pub fn serve_udp(ns: &(impl InNetns + ?Sized), listen: &str) -> ChildGuard {
    serve(ns, &["serve", "udp", "--listen", listen])
}

/// `netprobe http --listen LISTEN`: a minimal HTTP/1.0 server.
pub fn serve_http(ns: &(impl InNetns + ?Sized), listen: &str) -> ChildGuard {
    serve(ns, &["http", "--listen", listen])
}

/// Stdout (trimmed) on success, otherwise a description of the failure.
fn result_of(output: &Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout
        ))
    }
}

/// `netprobe connect tcp ADDR` (2 s timeout) from inside `ns`: the server's reply line.
pub fn connect_tcp(ns: &(impl InNetns + ?Sized), addr: &str) -> Result<String, String> {
    result_of(&netprobe(
        ns,
        &["connect", "tcp", addr, "--timeout-ms", "2000"],
    ))
}

/// `netprobe connect udp ADDR` (2 s timeout) from inside `ns`: the server's reply.
pub fn connect_udp(ns: &(impl InNetns + ?Sized), addr: &str) -> Result<String, String> {
    result_of(&netprobe(
        ns,
        &["connect", "udp", addr, "--timeout-ms", "2000"],
    ))
}

/// `netprobe http-get ADDR` from inside `ns`: the response body of a 200 response.
pub fn http_get(ns: &(impl InNetns + ?Sized), addr: &str) -> Result<String, String> {
    result_of(&netprobe(ns, &["http-get", addr, "--timeout-ms", "2000"]))
}

/// `netprobe churn tcp ADDR --count N`: `Ok("ok=N failed=0")` iff every connection worked
/// (without the per-server tally netprobe prints after it).
pub fn churn_tcp(ns: &(impl InNetns + ?Sized), addr: &str, count: u32) -> Result<String, String> {
    let count = count.to_string();
    let counts = |out: String| -> String {
        out.split_whitespace()
            .filter(|f| f.starts_with("ok=") || f.starts_with("failed="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    result_of(&netprobe(
        ns,
        &[
            "churn",
            "tcp",
            addr,
            "--count",
            &count,
            "--timeout-ms",
            "2000",
        ],
    ))
    .map(counts)
}

/// `netprobe stream tcp ADDR --seconds S` against a [`serve_tcp_echo`] server:
/// `Ok("sent=N echoed=N bytes=B max_ms=M")` iff every line came back.
pub fn stream_tcp(
    ns: &(impl InNetns + ?Sized),
    addr: &str,
    seconds: f64,
) -> Result<String, String> {
    let secs = seconds.to_string();
    let bin = netprobe_bin();
    let argv = argv_with(&bin, &["stream", "tcp", addr, "--seconds", &secs]);
    let timeout = DEFAULT_TIMEOUT + Duration::from_secs_f64(seconds.max(0.0));
    result_of(&ns.exec_timeout(&argv, timeout))
}

/// Connections held open by `netprobe hold` (see [`hold_tcp`]); the process dies with this.
pub struct HeldConnections {
    child: ChildGuard,
    release: PathBuf,
    /// The `connected=C failed=F ms=T` line.
    pub connected_line: String,
}

impl HeldConnections {
    /// How many connected.
    pub fn connected(&self) -> u64 {
        number_field(&self.connected_line, "connected").unwrap_or(0)
    }

    /// Lets the holder go on: every connection sends a line and reads its echo, then all close.
    /// Returns `echoed=E ms=T` on success (all connected and echoed), else the failure.
    pub fn release(self, timeout: Duration) -> Result<String, String> {
        std::fs::write(&self.release, b"")
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.release.display()));
        let output = self.child.finish(timeout);
        let _ = std::fs::remove_file(&self.release);
        let echoed = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with("echoed="))
            .map(str::to_owned);
        match (output.status.success(), echoed) {
            (true, Some(line)) => Ok(line),
            _ => Err(crate::describe(&output)),
        }
    }
}

/// `netprobe hold tcp ADDR --count N` in `ns` (against `netprobe serve-many` or any echo
/// server): opens `count` connections at once, each attempt bounded by `connect_timeout`, and
/// returns once all attempts have finished, with the connections held open until
/// [`HeldConnections::release`]. `release` names a file that must not exist yet (its appearance
/// is the signal).
pub fn hold_tcp(
    ns: &(impl InNetns + ?Sized),
    addr: &str,
    count: u32,
    release: &Path,
    connect_timeout: Duration,
) -> HeldConnections {
    let _ = std::fs::remove_file(release);
    let bin = netprobe_bin();
    // Connection attempts run in windows of a few hundred, each bounded by the timeout.
    let windows = count / 256 + 1;
    let count = count.to_string();
    let timeout_ms = connect_timeout.as_millis().to_string();
    let release_arg = release.to_str().expect("UTF-8 path");
    let mut child = ns.spawn(&argv_with(
        &bin,
        &[
            "hold",
            "tcp",
            addr,
            "--count",
            &count,
            "--until-file",
            release_arg,
            "--seconds",
            "300",
            "--timeout-ms",
            &timeout_ms,
        ],
    ));
    let connected_line =
        child.wait_for_stdout("connected=", connect_timeout * windows + LISTEN_TIMEOUT);
    HeldConnections {
        child,
        release: release.to_path_buf(),
        connected_line,
    }
}

/// `netprobe serve-many tcp --listen LISTEN`: an echo server for thousands of concurrent
/// connections (for [`hold_tcp`]).
pub fn serve_many(ns: &(impl InNetns + ?Sized), listen: &str) -> ChildGuard {
    serve(ns, &["serve-many", "tcp", "--listen", listen])
}

/// The number after `key=` in a netprobe line (`connected=10 failed=0 ms=3`).
pub fn number_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The address after `key=` in a netprobe reply (`peer=1.2.3.4:5 local=... bytes=...`).
pub fn addr_field(reply: &str, key: &str) -> Option<SocketAddr> {
    reply
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The client IP the server saw (`peer=`): after SNAT, the translated source.
pub fn peer_ip_of(reply: &str) -> Option<IpAddr> {
    addr_field(reply, "peer").map(|a| a.ip())
}

/// The address the server saw the connection arrive on (`local=`): after DNAT, the backend.
pub fn local_ip_of(reply: &str) -> Option<IpAddr> {
    addr_field(reply, "local").map(|a| a.ip())
}

/// SYN retransmissions `ns` has made so far (`/proc/net/netstat`, TcpExt TCPSynRetrans).
pub fn syn_retransmits(ns: &(impl InNetns + ?Sized)) -> u64 {
    let netstat = ns.ok("cat /proc/net/netstat");
    let mut ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (ext.next(), ext.next()) else {
        panic!("no TcpExt lines in /proc/net/netstat: {netstat}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TCPSynRetrans")
}
