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

/// Whether `perf record` works here (installed, and allowed to sample).
pub fn available() -> bool {
    Command::new("perf")
        .args(["stat", "-e", "cpu-clock", "-a", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One profile: the measured value, the share of samples on idle CPUs, the top working symbols
/// as `(percent of working samples, symbol)`, and the percent of working samples in BPF
/// programs.
pub struct Profile {
    pub label: String,
    pub value: f64,
    pub idle_percent: f64,
    pub top: Vec<(f64, String)>,
    pub bpf_percent: f64,
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
        idle_percent,
        top: busy.into_iter().take(TOP).collect(),
        bpf_percent,
    })
}

/// The profiles side by side as Markdown.
pub fn markdown(title: &str, intro: &str, profiles: &[Profile]) -> String {
    use std::fmt::Write as _;

    let mut md = format!("## {title}\n\n{intro}\n\n");
    for p in profiles {
        let _ = writeln!(
            md,
            "**{}** ({:.2} Gbit/s in this run; CPUs idle {:.1} % of samples; BPF programs \
             {:.2} % of working samples):\n",
            p.label, p.value, p.idle_percent, p.bpf_percent
        );
        md.push_str("| % of working samples | symbol |\n|---|---|\n");
        for (pct, sym) in &p.top {
            let _ = writeln!(md, "| {pct:.2} | `{sym}` |");
        }
        md.push('\n');
    }
    md
}
