//! What the benchmark binaries share: the standard arguments, the measurements
//! ([`measure`]), statistics, machine facts, and the result series they hand to the report
//! ([`series`]).

pub mod kernel_node;
pub mod kubeproxy;
pub mod measure;
pub mod profile;
pub mod series;
pub mod service_run;

use std::{process::Command, time::Duration};

use crate::{InNetns, describe, netprobe_bin, serve_tcp_echo};

/// `--rounds N --seconds S --quick --out DIR`, as every benchmark takes them (and `--perf FILE`,
/// `--sizes N,N,...` for those that use them).
pub struct RoundArgs {
    pub rounds: usize,
    pub seconds: u32,
    pub out: Option<String>,
    /// `--perf FILE`: where a benchmark that can profile writes its perf profile (Markdown).
    pub perf: Option<String>,
    /// `--sizes N,N,...`: the points of a benchmark with a scaling axis, instead of its own.
    pub sizes: Option<Vec<usize>>,
}

impl RoundArgs {
    /// Parses the process's arguments: defaults 5 rounds x 2 s; `--quick` is 2 x 1 s.
    /// `--out DIR` is where the result series go (see [`series::BenchOutput::write`]).
    pub fn from_env() -> Self {
        let mut args = Self {
            rounds: 5,
            seconds: 2,
            out: None,
            perf: None,
            sizes: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--rounds" => {
                    args.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N");
                }
                "--seconds" => {
                    args.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S");
                }
                "--quick" => {
                    args.rounds = 2;
                    args.seconds = 1;
                }
                "--out" => args.out = it.next(),
                "--perf" => args.perf = it.next(),
                "--sizes" => {
                    args.sizes = it
                        .next()
                        .and_then(|v| v.split(',').map(|n| n.parse().ok()).collect())
                        .map(Some)
                        .expect("--sizes N,N,...");
                }
                other => panic!("unknown argument {other}"),
            }
        }
        args
    }
}

/// iperf3 throughput in Gbit/s: the server bound to `bind_ip` in `server` (pinned to CPU 1),
/// the client in `client` (CPU 0) connecting to `target_ip:port`.
pub fn iperf3_gbps(
    client: &dyn InNetns,
    server: &dyn InNetns,
    bind_ip: &str,
    target_ip: &str,
    port: u16,
    seconds: u32,
) -> f64 {
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-A", "1", "-B", bind_ip]);
    std::thread::sleep(Duration::from_millis(200));
    let secs = seconds.to_string();
    let port = port.to_string();
    let out = client.exec_timeout(
        &[
            "iperf3", "-c", target_ip, "-p", &port, "-t", &secs, "-A", "0", "-J",
        ],
        Duration::from_secs(u64::from(seconds) + 20),
    );
    srv.kill();
    assert!(out.status.success(), "iperf3: {}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// iperf3 throughput in Gbit/s from `client` to the server at `server_ip`.
pub fn throughput(
    client: &dyn InNetns,
    server: &dyn InNetns,
    server_ip: &str,
    seconds: u32,
) -> f64 {
    iperf3_gbps(client, server, server_ip, server_ip, 5201, seconds)
}

/// Request/response transactions per second over one TCP connection (netprobe rr, client on
/// CPU 0, one 2-byte request in flight at a time).
pub fn rr(client: &dyn InNetns, server: &dyn InNetns, server_ip: &str, seconds: u32) -> f64 {
    let listen = format!("{server_ip}:7100");
    let _srv = serve_tcp_echo(server, &listen);
    let bin = netprobe_bin();
    let secs = seconds.to_string();
    let out = client.exec_timeout(
        &[
            "taskset",
            "-c",
            "0",
            bin.to_str().expect("utf8"),
            "rr",
            "tcp",
            &listen,
            "--seconds",
            &secs,
        ],
        Duration::from_secs(u64::from(seconds) + 20),
    );
    assert!(out.status.success(), "rr: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("rate="))
        .and_then(|r| r.parse().ok())
        .expect("rate=")
}

/// Throughput and request/response samples of one path, one per round.
#[derive(Default)]
pub struct Samples {
    pub tput: Vec<f64>,
    pub rr: Vec<f64>,
}

/// The Markdown table of throughput and request/response medians (with min-max) per path, with
/// ratios to the first path (`baseline` names it in the header), then `a` vs `b` (indexes).
pub fn tput_rr_table(
    names: &[&str],
    samples: &[Samples],
    baseline: &str,
    (a, b): (usize, usize),
) -> String {
    use std::fmt::Write as _;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "| path | TCP throughput Gbit/s median (min-max) | ratio to {baseline} | TCP RR trans/s median (min-max) | ratio to {baseline} |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let base_t = median(&samples[0].tput);
    let base_r = median(&samples[0].rr);
    for (name, s) in names.iter().zip(samples) {
        let (tmin, tmax) = spread(&s.tput);
        let (rmin, rmax) = spread(&s.rr);
        let _ = writeln!(
            md,
            "| {name} | {:.2} ({tmin:.2}-{tmax:.2}) | {:.3} | {:.0} ({rmin:.0}-{rmax:.0}) | {:.3} |",
            median(&s.tput),
            median(&s.tput) / base_t,
            median(&s.rr),
            median(&s.rr) / base_r,
        );
    }
    let _ = writeln!(
        md,
        "\n{} vs {}: throughput {:.3}x, request/response {:.3}x",
        names[a],
        names[b],
        median(&samples[a].tput) / median(&samples[b].tput),
        median(&samples[a].rr) / median(&samples[b].rr)
    );
    md
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len().is_multiple_of(2) {
        f64::midpoint(s[mid - 1], s[mid])
    } else {
        s[mid]
    }
}

/// Nearest-rank percentile `p` (0-100) of `v`.
pub fn percentile(v: &[f64], p: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (p * s.len()).div_ceil(100).max(1);
    s[rank - 1]
}

/// Smallest and largest value.
pub fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// A command's trimmed stdout, or "?".
pub fn cmd_line(program: &str, args: &[&str]) -> String {
    Command::new(program).args(args).output().map_or_else(
        |_| "?".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    )
}

/// The kernel release and the number of CPUs, for report headings.
pub fn machine() -> (String, usize) {
    (
        cmd_line("uname", &["-r"]),
        std::thread::available_parallelism().map_or(0, usize::from),
    )
}

/// Writes `md` to `<dir>/<date>-<name>.md` when `dir` is given; returns the path.
pub fn write_report(dir: Option<&str>, name: &str, md: &str) -> Option<String> {
    let dir = dir?;
    std::fs::create_dir_all(dir).expect("results dir");
    let date = cmd_line("date", &["+%F"]);
    let path = format!("{dir}/{date}-{name}.md");
    std::fs::write(&path, md).expect("write results");
    eprintln!("wrote {path}");
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
        assert_eq!(spread(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&hundred, 99) - 99.0).abs() < f64::EPSILON);
        assert!((percentile(&[7.0], 50) - 7.0).abs() < f64::EPSILON);
    }
}
