//! One service measurement, shared by the service benchmarks: backends serving TCP and UDP,
//! and from a client the TCP connection rate (netprobe `crr`) and the DNS-like UDP
//! request/response rate (`urr`) to a frontend, with their latencies.

use std::{net::Ipv4Addr, time::Duration};

use crate::{ChildGuard, InNetns, describe, netprobe_bin};

/// The service's TCP port and the backends' target port.
pub const TCP_PORT: u16 = 80;
pub const TCP_TARGET: u16 = 8080;
/// The service's UDP port and the backends' target port.
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET: u16 = 5353;
/// A UDP request without a reply within this is counted as lost.
pub const UDP_TIMEOUT_MS: &str = "500";

/// netprobe servers on a backend: TCP on `ip:8080`, UDP on `ip:5353`, on CPU 1.
pub fn serve_backend(ns: &dyn InNetns, ip: Ipv4Addr) -> [ChildGuard; 2] {
    serve_backend_on(ns, ip, TCP_TARGET, UDP_TARGET)
}

/// netprobe servers on a backend: TCP on `ip:tcp_port`, UDP on `ip:udp_port`, on CPU 1.
pub fn serve_backend_on(
    ns: &dyn InNetns,
    ip: Ipv4Addr,
    tcp_port: u16,
    udp_port: u16,
) -> [ChildGuard; 2] {
    let bin = netprobe_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let tcp = format!("{ip}:{tcp_port}");
    let udp = format!("{ip}:{udp_port}");
    let spawn = |proto: &str, listen: &str| {
        let mut child = ns.spawn(&[
            "taskset", "-c", "1", bin, "serve", proto, "--listen", listen,
        ]);
        child.wait_for_stdout("listening", Duration::from_secs(10));
        child
    };
    [spawn("tcp", &tcp), spawn("udp", &udp)]
}

/// One run's figures.
#[derive(Default, Clone, Copy)]
pub struct Run {
    pub tcp_rate: f64,
    pub tcp_failed: f64,
    pub connect_p50: f64,
    pub connect_p99: f64,
    pub udp_rate: f64,
    pub udp_failed: f64,
    pub udp_p99: f64,
}

/// The number after `key` in netprobe's output.
pub fn field(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|f| f.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// `netprobe MODE PROTO TARGET --seconds S ...` in `client`, on CPU 0: its stdout.
pub fn client_run(client: &dyn InNetns, argv: &[&str], seconds: u32) -> String {
    let bin = netprobe_bin();
    let mut all = vec!["taskset", "-c", "0", bin.to_str().expect("utf-8 path")];
    all.extend_from_slice(argv);
    let out = client.exec_timeout(&all, Duration::from_secs(u64::from(seconds) + 30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        field(&text, "ok=").is_some(),
        "netprobe {argv:?} reported nothing: {}",
        describe(&out)
    );
    text
}

/// Measures both workloads from `client` to `vip` once.
pub fn measure(client: &dyn InNetns, vip: Ipv4Addr, seconds: u32) -> Run {
    let secs = seconds.to_string();
    let tcp = format!("{vip}:{TCP_PORT}");
    let udp = format!("{vip}:{UDP_PORT}");
    let crr = client_run(
        client,
        &[
            "crr",
            "tcp",
            &tcp,
            "--seconds",
            &secs,
            "--timeout-ms",
            "2000",
        ],
        seconds,
    );
    let urr = client_run(
        client,
        &[
            "urr",
            "udp",
            &udp,
            "--seconds",
            &secs,
            "--timeout-ms",
            UDP_TIMEOUT_MS,
        ],
        seconds,
    );
    let get = |text: &str, key: &str| field(text, key).unwrap_or(f64::NAN);
    let run = Run {
        tcp_rate: get(&crr, "rate="),
        tcp_failed: get(&crr, "failed="),
        connect_p50: get(&crr, "connect_p50_us="),
        connect_p99: get(&crr, "connect_p99_us="),
        udp_rate: get(&urr, "rate="),
        udp_failed: get(&urr, "failed="),
        udp_p99: get(&urr, "p99_us="),
    };
    assert!(
        get(&crr, "ok=") > 0.0 && get(&urr, "ok=") > 0.0,
        "no TCP connection or UDP request to {vip} worked: {crr} / {urr}"
    );
    run
}
