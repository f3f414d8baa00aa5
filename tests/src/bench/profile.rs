//! Where the CPU goes: a system-wide `perf record` (software `cpu-clock` sampling, which works
//! in VMs without hardware counters) around one measurement, summarised as the top symbols and
//! the share spent in BPF programs and in the main kernel subsystems on the path.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use super::measure::{Endpoints, Workload, measure};
use crate::unique;

/// Symbols shown per profile.
const TOP: usize = 14;
/// Where idle CPUs are sampled (halting, or polling under a PM QoS request): left out, so the
/// shares are of the time the CPUs were working.
const IDLE: [&str; 6] = [
    "pv_native_safe_halt",
    "native_safe_halt",
    "default_idle",
    "poll_idle",
    "cpuidle_enter_state",
    "acpi_safe_halt",
];

/// The processes whose samples count: the load generators, the kernel's softirq threads and
/// the idle task (softirq work that lands on an idle CPU runs there). Whatever else runs on the
/// machine (builds, other tests) is left out.
const COMMS: &str = "iperf3,netprobe,ksoftirqd/0,ksoftirqd/1,swapper/0,swapper/1";

/// How the profiles were taken, for the report.
pub const INTRO: &str = "One extra run of the workload per path, with `perf record -a -e cpu-clock` \
    (software sampling; this VM has no hardware counters) over both CPUs; `perf report --sort \
    sym --comms iperf3,netprobe,ksoftirqd/N,swapper/N --percentage relative`, as shares of the \
    samples taken while the CPUs worked. Samples cover the client, the server and the softirq \
    work of the path; samples of other processes (builds and tests sharing the machine) are \
    left out. A `cpu-clock` sample can only land while \
    interrupts are on, so time spent with them off (waking the other CPU, queueing to a \
    backlog) shows up where they are turned back on (`_raw_spin_unlock_irqrestore`, \
    `handle_softirqs`).";

/// Whether `perf record` works here (installed, and allowed to sample).
pub fn available() -> bool {
    Command::new("perf")
        .args(["stat", "-e", "cpu-clock", "-a", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One profile: the measured value, the share of samples on idle CPUs, every working symbol as
/// `(percent of working samples, symbol)` (largest first), and the percent of working samples
/// in BPF programs.
pub struct Profile {
    pub label: String,
    pub value: f64,
    /// The unit of `value` (the workload's).
    pub unit: &'static str,
    pub idle_percent: f64,
    pub symbols: Vec<(f64, String)>,
    pub bpf_percent: f64,
}

impl Profile {
    fn share(&self, symbol: &str) -> f64 {
        self.symbols
            .iter()
            .find(|(_, s)| s == symbol)
            .map_or(0.0, |(p, _)| *p)
    }
}

/// Profiles one run of `w` over `ep`; `None` when perf fails.
pub fn profile(label: &str, w: Workload, ep: &Endpoints<'_>, seconds: u32) -> Option<Profile> {
    let data = std::env::temp_dir().join(format!("{}.perf", unique("prof")));
    let data_arg = data.to_str()?.to_owned();
    let mut record = Command::new("perf")
        .args([
            "record",
            "-a",
            "-e",
            "cpu-clock",
            "-F",
            "1999",
            "-o",
            &data_arg,
            "--",
        ])
        .args(["sleep", &(seconds + 1).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let m = measure(w, ep, seconds);
    let recorded = record.wait().is_ok_and(|s| s.success());
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "--comms",
            COMMS,
            "--percentage",
            "relative",
            "-q",
            "-i",
            &data_arg,
        ])
        .output();
    let _ = std::fs::remove_file(&data);
    let report = report.ok().filter(|_| recorded)?;
    let text = String::from_utf8_lossy(&report.stdout);
    let rows: Vec<(f64, String)> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            // `[k] symbol` or `[.] symbol`.
            let sym = rest.trim().split_once(']').map_or(rest, |(_, s)| s).trim();
            Some((pct, sym.to_owned()))
        })
        .collect();
    let idle_percent: f64 = rows
        .iter()
        .filter(|(_, s)| IDLE.contains(&s.as_str()))
        .map(|(p, _)| p)
        .sum();
    let working = (100.0 - idle_percent).max(f64::EPSILON);
    let busy: Vec<(f64, String)> = rows
        .into_iter()
        .filter(|(_, s)| !IDLE.contains(&s.as_str()))
        .map(|(p, s)| (p * 100.0 / working, s))
        .collect();
    let bpf_percent = busy
        .iter()
        .filter(|(_, s)| s.starts_with("bpf_prog_"))
        .map(|(p, _)| p)
        .sum::<f64>()
        .max(0.0);
    Some(Profile {
        label: label.to_owned(),
        value: m.value,
        unit: w.unit(),
        idle_percent,
        symbols: busy,
        bpf_percent,
    })
}

/// Longest symbol shown whole: a BPF program's subprogram carries its mangled Rust name.
const SYMBOL_CHARS: usize = 60;

/// `sym`, cut to [`SYMBOL_CHARS`] characters.
fn short(sym: &str) -> String {
    match sym.char_indices().nth(SYMBOL_CHARS) {
        Some((cut, _)) => format!("{}...", &sym[..cut]),
        None => sym.to_owned(),
    }
}

/// Two profiles side by side as Markdown: the top symbols of each with their share in both,
/// then the symbols whose share differs most (what the second path does more or less of).
pub fn markdown(title: &str, intro: &str, base: &Profile, other: &Profile) -> String {
    use std::fmt::Write as _;

    let mut md = format!("## {title}\n\n{intro}\n\n");
    for p in [base, other] {
        let _ = writeln!(
            md,
            "- **{}**: {:.2} {} in this run; CPUs idle in {:.1} % of samples; BPF programs \
             {:.2} % of the working samples.",
            p.label, p.value, p.unit, p.idle_percent, p.bpf_percent
        );
    }
    let mut rows: Vec<&str> = Vec::new();
    for p in [other, base] {
        for (_, sym) in p.symbols.iter().take(TOP) {
            if !rows.contains(&sym.as_str()) {
                rows.push(sym);
            }
        }
    }
    let _ = writeln!(
        md,
        "\n| symbol | {} % | {} % | difference, points |\n|---|---|---|---|",
        base.label, other.label
    );
    for sym in rows.iter().take(TOP) {
        let (a, b) = (base.share(sym), other.share(sym));
        let _ = writeln!(md, "| `{}` | {a:.2} | {b:.2} | {:+.2} |", short(sym), b - a);
    }
    let mut all: Vec<&str> = base
        .symbols
        .iter()
        .chain(&other.symbols)
        .map(|(_, s)| s.as_str())
        .collect();
    all.sort_unstable();
    all.dedup();
    let mut diffs: Vec<(f64, &str)> = all
        .into_iter()
        .map(|s| (other.share(s) - base.share(s), s))
        .collect();
    diffs.sort_by(|x, y| y.0.abs().total_cmp(&x.0.abs()));
    let _ = writeln!(
        md,
        "\nLargest differences ({} minus {}, points of the working samples): {}.\n",
        other.label,
        base.label,
        diffs
            .iter()
            .take(8)
            .map(|(d, s)| format!("`{}` {d:+.2}", short(s)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    md
}
