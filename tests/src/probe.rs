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

/// `netprobe churn tcp ADDR --count N`: `Ok("ok=N failed=0")` iff every connection worked.
pub fn churn_tcp(ns: &(impl InNetns + ?Sized), addr: &str, count: u32) -> Result<String, String> {
    let count = count.to_string();
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
