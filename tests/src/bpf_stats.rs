//! What each of a node's BPF programs cost per run, from the kernel's own statistics
//! (`kernel.bpf_stats_enabled`: `run_cnt` and `run_time_ns` per program): [`Enabled`] turns
//! them on for as long as it lives (and back to the old value after, also on panic),
//! [`snapshot`] reads every program pinned under a node's `progs/`, and [`Costs`] adds up the
//! difference between two snapshots per program and path, as a Markdown table.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use crate::{describe, run_bounded};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on while it lives, back to its old value after (also on panic).
/// The statistics cost two clock reads per program run while on, so they are on only around
/// what is measured.
pub struct Enabled(String);

impl Enabled {
    /// Turns the statistics on. Panics when the sysctl cannot be read or written (not root,
    /// or a kernel without it).
    pub fn new() -> Self {
        let old = std::fs::read_to_string(SYSCTL).expect("reading kernel.bpf_stats_enabled");
        std::fs::write(SYSCTL, "1").expect("enabling kernel.bpf_stats_enabled");
        Self(old.trim().to_owned())
    }
}

impl Default for Enabled {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

/// One program's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// `run_cnt` and `run_time_ns` of the program pinned at `path`.
pub fn counters(path: &Path) -> Counters {
    let v = show(path);
    Counters {
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
        run_time_ns: v["run_time_ns"].as_u64().unwrap_or(0),
    }
}

/// `bpftool prog show` of the program pinned at `path`, as JSON.
fn show(path: &Path) -> serde_json::Value {
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "prog", "show", "pinned"]).arg(path);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert!(out.status.success(), "bpftool: {}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

/// The kernel id of the program pinned at `path`.
pub fn prog_id(path: &Path) -> u64 {
    show(path)["id"].as_u64().expect("a program id")
}

/// The program's size after the verifier (bytes of BPF instructions, 8 each) and after the JIT.
pub fn sizes(path: &Path) -> (u64, u64) {
    let v = show(path);
    (
        v["bytes_xlated"].as_u64().unwrap_or(0),
        v["bytes_jited"].as_u64().unwrap_or(0),
    )
}

/// Every program pinned under `<pin_dir>/progs`, by pin name.
pub fn snapshot(pin_dir: &Path) -> BTreeMap<String, Counters> {
    let mut all = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(pin_dir.join("progs")) else {
        return all;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        all.insert(name, counters(&entry.path()));
    }
    all
}

/// Runs and run time per (path, program), summed over measurements.
#[derive(Debug, Default)]
pub struct Costs {
    /// `(path, program)` -> summed counters, in the order first seen.
    rows: Vec<((String, String), Counters)>,
}

impl Costs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds what each program ran between `before` and `after` under `path`; programs that did
    /// not run are left out.
    pub fn add(
        &mut self,
        path: &str,
        before: &BTreeMap<String, Counters>,
        after: &BTreeMap<String, Counters>,
    ) {
        for (prog, a) in after {
            let b = before.get(prog).copied().unwrap_or_default();
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            if runs == 0 {
                continue;
            }
            let ns = a.run_time_ns.saturating_sub(b.run_time_ns);
            let key = (path.to_owned(), prog.clone());
            match self.rows.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => {
                    c.run_cnt += runs;
                    c.run_time_ns += ns;
                }
                None => self.rows.push((
                    key,
                    Counters {
                        run_cnt: runs,
                        run_time_ns: ns,
                    },
                )),
            }
        }
    }

    /// Runs `f` and adds what the programs pinned under `pin_dir` ran meanwhile under `path`
    /// (statistics on only while `f` runs).
    pub fn measure<T>(&mut self, pin_dir: &Path, path: &str, f: impl FnOnce() -> T) -> T {
        let before = snapshot(pin_dir);
        let out = {
            let _on = Enabled::new();
            f()
        };
        self.add(path, &before, &snapshot(pin_dir));
        out
    }

    /// Nanoseconds per run of `program` on `path`, if it ran.
    pub fn ns_per_run(&self, path: &str, program: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|((p, g), _)| p == path && g == program)
            .map(|(_, c)| ns_per(c))
    }

    /// Rows `(path, program, runs, ns per run)`.
    pub fn rows(&self) -> Vec<(String, String, u64, f64)> {
        self.rows
            .iter()
            .map(|((p, g), c)| (p.clone(), g.clone(), c.run_cnt, ns_per(c)))
            .collect()
    }

    /// The Markdown table "program | path | runs | ns per packet".
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;

        let mut md = String::from("| program | path | runs | ns per packet |\n|---|---|---|---|\n");
        for (path, prog, runs, ns) in self.rows() {
            let _ = writeln!(md, "| `{prog}` | {path} | {runs} | {ns:.0} |");
        }
        md
    }
}

#[expect(clippy::cast_precision_loss, reason = "a ratio to print")]
fn ns_per(c: &Counters) -> f64 {
    c.run_time_ns as f64 / c.run_cnt.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_sum_differences_per_path_and_program() {
        let snap = |cnt, ns| {
            BTreeMap::from([(
                "from_pod".to_owned(),
                Counters {
                    run_cnt: cnt,
                    run_time_ns: ns,
                },
            )])
        };
        let mut costs = Costs::new();
        costs.add("rr", &snap(10, 1000), &snap(110, 21_000));
        costs.add("rr", &snap(110, 21_000), &snap(210, 31_000));
        costs.add("idle", &snap(210, 31_000), &snap(210, 31_000));
        assert_eq!(
            costs.rows().len(),
            1,
            "a program that did not run is left out"
        );
        let ns = costs.ns_per_run("rr", "from_pod").expect("ran");
        assert!((ns - 150.0).abs() < f64::EPSILON, "{ns}");
        assert!(costs.markdown().contains("| `from_pod` | rr | 200 | 150 |"));
    }
}
