//! One measurement of one workload between two namespaces, with the CPU it cost: TCP
//! throughput (iperf3), TCP request/response (netprobe rr) and TCP connection rate (netprobe
//! crr). The client runs on CPU 0 and the server on CPU 1 (iperf3 -A, taskset).
//!
//! CPU cost is the whole machine's busy time (user + system + softirq, from `/proc/stat`)
//! while the client ran, per unit of work: per GB for throughput, per transaction and per
//! connection for the others. It includes the load generators themselves, which are the same
//! on every path, so the ratio between paths is the datapath's share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ChildGuard, InNetns, describe, netprobe_bin};

/// What a measurement exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Workload {
    Throughput,
    RequestResponse,
    ConnectionRate,
}

impl Workload {
    pub const ALL: [Self; 3] = [
        Self::Throughput,
        Self::RequestResponse,
        Self::ConnectionRate,
    ];

    /// The port the server listens on for this workload when nothing else is chosen.
    pub fn port(self) -> u16 {
        match self {
            Self::Throughput => 5201,
            Self::RequestResponse => 7100,
            Self::ConnectionRate => 7200,
        }
    }

    pub fn metric(self) -> &'static str {
        match self {
            Self::Throughput => "TCP throughput",
            Self::RequestResponse => "TCP request/response",
            Self::ConnectionRate => "TCP connection rate",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::Throughput => "Gbit/s",
            Self::RequestResponse => "trans/s",
            Self::ConnectionRate => "conn/s",
        }
    }

    /// The unit of CPU cost: CPU time per unit of work.
    pub fn cpu_unit(self) -> &'static str {
        match self {
            Self::Throughput => "CPU ms per GB",
            Self::RequestResponse => "CPU us per transaction",
            Self::ConnectionRate => "CPU us per connection",
        }
    }

    /// CPU cost from `cpu_seconds` busy over a run of `seconds` at `value`.
    fn cost(self, value: f64, seconds: u32, cpu_seconds: f64) -> f64 {
        let work = value * f64::from(seconds);
        if work <= 0.0 {
            return f64::NAN;
        }
        match self {
            // Gbit/s x s / 8 = GB; CPU ms per GB.
            Self::Throughput => cpu_seconds * 1e3 / (work / 8.0),
            Self::RequestResponse | Self::ConnectionRate => cpu_seconds * 1e6 / work,
        }
    }
}

/// One run of one workload.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Measurement {
    /// In the workload's unit.
    pub value: f64,
    /// In the workload's CPU unit.
    pub cpu: f64,
    /// Connections that failed (connection rate only).
    pub failed: u64,
    /// Median and 99th percentile connection lifetime in microseconds (connection rate only).
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Busy and total CPU time of the whole machine so far, in seconds, from `/proc/stat`.
fn cpu_times() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: f64 = fields.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ((total - idle) / 100.0, total / 100.0)
}

/// Runs `f`, returning its result and the machine's busy CPU seconds meanwhile.
pub fn with_cpu<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let (busy0, _) = cpu_times();
    let out = f();
    let (busy1, _) = cpu_times();
    (out, busy1 - busy0)
}

/// Where a workload's server listens and where its client connects (they differ through a
/// NodePort).
pub struct Endpoints<'a> {
    pub client: &'a dyn InNetns,
    pub server: &'a dyn InNetns,
    /// `IP:PORT` the server binds.
    pub listen: String,
    /// `IP:PORT` the client connects to.
    pub connect: String,
}

impl<'a> Endpoints<'a> {
    /// No translation in between: the client connects where the server listens, `ip` and the
    /// workload's port.
    pub fn direct(client: &'a dyn InNetns, server: &'a dyn InNetns, ip: &str, w: Workload) -> Self {
        let at = if ip.contains(':') {
            format!("[{ip}]:{}", w.port())
        } else {
            format!("{ip}:{}", w.port())
        };
        Self {
            client,
            server,
            listen: at.clone(),
            connect: at,
        }
    }
}

/// Measures `w` once for `seconds`.
pub fn measure(w: Workload, ep: &Endpoints<'_>, seconds: u32) -> Measurement {
    let m = match w {
        Workload::Throughput => iperf3(ep, seconds),
        Workload::RequestResponse => rr(ep, seconds),
        Workload::ConnectionRate => crr(ep, seconds),
    };
    assert!(m.value > 0.0, "{} measured nothing", w.metric());
    m
}

/// `IP:PORT` or `[IPv6]:PORT` as (IP, PORT), without the brackets (as iperf3 takes them).
fn split(addr: &str) -> (&str, &str) {
    let (ip, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr} is not IP:PORT"));
    (ip.trim_start_matches('[').trim_end_matches(']'), port)
}

fn taskset(cpu: &str, argv: &[&str]) -> Vec<String> {
    ["taskset", "-c", cpu]
        .iter()
        .chain(argv)
        .map(|s| (*s).to_owned())
        .collect()
}

fn iperf3(ep: &Endpoints<'_>, seconds: u32) -> Measurement {
    let (bind, port) = split(&ep.listen);
    let (target, target_port) = split(&ep.connect);
    let mut srv = ep
        .server
        .spawn(&["iperf3", "-s", "-1", "-A", "1", "-B", bind, "-p", port]);
    std::thread::sleep(Duration::from_millis(200));
    let secs = seconds.to_string();
    let (out, cpu) = with_cpu(|| {
        ep.client.exec_timeout(
            &[
                "iperf3",
                "-c",
                target,
                "-p",
                target_port,
                "-t",
                &secs,
                "-A",
                "0",
                "-J",
            ],
            Duration::from_secs(u64::from(seconds) + 20),
        )
    });
    srv.kill();
    assert!(out.status.success(), "iperf3: {}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9;
    Measurement {
        value: gbps,
        cpu: Workload::Throughput.cost(gbps, seconds, cpu),
        ..Measurement::default()
    }
}

/// The `key=` field of netprobe's output.
fn field(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|f| f.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// A netprobe server pinned to CPU 1: `serve tcp [--echo] --listen LISTEN` in `ns`.
pub fn server(ns: &dyn InNetns, listen: &str, echo: bool) -> ChildGuard {
    let bin = netprobe_bin();
    let mut argv = vec![
        "taskset",
        "-c",
        "1",
        bin.to_str().expect("utf8"),
        "serve",
        "tcp",
    ];
    if echo {
        argv.push("--echo");
    }
    argv.extend(["--listen", listen]);
    let mut srv = ns.spawn(&argv);
    srv.wait_for_stdout("listening", Duration::from_secs(10));
    srv
}

/// `netprobe MODE tcp CONNECT --seconds S` in the client namespace, pinned to CPU 0: its
/// output and the machine's busy CPU seconds while it ran.
fn client(ep: &Endpoints<'_>, mode: &str, seconds: u32) -> (std::process::Output, f64) {
    let bin = netprobe_bin();
    let secs = seconds.to_string();
    let argv = taskset(
        "0",
        &[
            bin.to_str().expect("utf8"),
            mode,
            "tcp",
            &ep.connect,
            "--seconds",
            &secs,
        ],
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    with_cpu(|| {
        ep.client
            .exec_timeout(&argv, Duration::from_secs(u64::from(seconds) + 20))
    })
}

fn rr(ep: &Endpoints<'_>, seconds: u32) -> Measurement {
    let _srv = server(ep.server, &ep.listen, true);
    let (out, cpu) = client(ep, "rr", seconds);
    assert!(out.status.success(), "rr: {}", describe(&out));
    let rate = field(&String::from_utf8_lossy(&out.stdout), "rate=").expect("rate=");
    Measurement {
        value: rate,
        cpu: Workload::RequestResponse.cost(rate, seconds, cpu),
        ..Measurement::default()
    }
}

fn crr(ep: &Endpoints<'_>, seconds: u32) -> Measurement {
    let _srv = server(ep.server, &ep.listen, false);
    let (out, cpu) = client(ep, "crr", seconds);
    // A run with failed connections exits non-zero but still reports; count them instead.
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        field(&text, key).unwrap_or_else(|| panic!("no {key} in crr output: {}", describe(&out)))
    };
    let (ok, failed, rate) = (get("ok="), get("failed="), get("rate="));
    assert!(
        ok > 0.0,
        "crr to {}: no connection worked: {}",
        ep.connect,
        describe(&out)
    );
    if failed > 0.0 {
        eprintln!(
            "  crr to {}: {failed} failed connection(s): {}",
            ep.connect,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Measurement {
        value: rate,
        cpu: Workload::ConnectionRate.cost(rate, seconds, cpu),
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a count parsed from netprobe's integer output"
        )]
        failed: failed as u64,
        p50_us: get("p50_us="),
        p99_us: get("p99_us="),
    }
}
