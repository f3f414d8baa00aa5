//! What each benchmark binary hands to the report (`podnet-bench-report`): its method, notes
//! and result series, as one JSON file per benchmark. The report puts them side by side, works
//! out medians, spreads and ratios, and draws the plots.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::measure::{Measurement, Workload};

/// One path's runs of one metric in one scenario (at one point `x` of a scaling axis).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub path: String,
    /// The path this one is compared with, in the same scenario, metric and `x`.
    pub baseline: String,
    /// The scaling axis (e.g. services installed), if the scenario has one.
    pub x: Option<f64>,
    pub samples: Vec<f64>,
}

/// One benchmark's contribution to the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchOutput {
    /// File stem and section key: `same-node`, `cross-node`, `nat`, `scaling`, `cni`.
    pub name: String,
    /// The section heading.
    pub title: String,
    /// How it was measured (Markdown).
    pub method: String,
    /// Facts found along the way (Markdown lines): drop counters, setup times, ...
    pub notes: Vec<String>,
    /// Markdown blocks shown after the notes (tables such as the programs' ns per packet).
    #[serde(default)]
    pub blocks: Vec<String>,
    pub series: Vec<Series>,
}

impl BenchOutput {
    pub fn new(name: &str, title: &str, method: &str) -> Self {
        Self {
            name: name.into(),
            title: title.into(),
            method: method.into(),
            ..Self::default()
        }
    }

    /// Adds a series of plain values.
    #[expect(clippy::too_many_arguments, reason = "each is one field of the series")]
    pub fn values(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        path: &str,
        baseline: &str,
        x: Option<f64>,
        samples: Vec<f64>,
    ) {
        self.series.push(Series {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better,
            path: path.into(),
            baseline: baseline.into(),
            x,
            samples,
        });
    }

    /// Adds a workload's runs on `path`: the rate, its CPU cost, and for connection rate the
    /// connection latency percentiles.
    pub fn runs(
        &mut self,
        scenario: &str,
        path: &str,
        baseline: &str,
        x: Option<f64>,
        w: Workload,
        runs: &[Measurement],
    ) {
        let pick = |f: fn(&Measurement) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        self.values(
            scenario,
            w.metric(),
            w.unit(),
            true,
            path,
            baseline,
            x,
            pick(|m| m.value),
        );
        self.values(
            scenario,
            &format!("CPU cost of {}", w.metric()),
            w.cpu_unit(),
            false,
            path,
            baseline,
            x,
            pick(|m| m.cpu),
        );
        if w == Workload::ConnectionRate {
            for (label, f) in [
                (
                    "p50",
                    (|m: &Measurement| m.p50_us) as fn(&Measurement) -> f64,
                ),
                ("p99", |m: &Measurement| m.p99_us),
            ] {
                self.values(
                    scenario,
                    &format!("TCP connection latency {label}"),
                    "us",
                    false,
                    path,
                    baseline,
                    x,
                    pick(f),
                );
            }
        }
    }

    /// Writes `<dir>/<name>.json`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("results dir");
        let path = dir.join(format!("{}.json", self.name));
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        std::fs::write(&path, text).expect("write bench output");
        eprintln!("wrote {}", path.display());
        path
    }

    /// Reads a file [`BenchOutput::write`] wrote.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Runs of every workload on each path, kept in the order the paths were named.
pub struct PathRuns {
    pub paths: Vec<String>,
    /// `[path][workload]`.
    pub runs: Vec<[Vec<Measurement>; 3]>,
}

impl PathRuns {
    pub fn new(paths: &[&str]) -> Self {
        Self {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            runs: paths.iter().map(|_| Default::default()).collect(),
        }
    }

    pub fn push(&mut self, path: usize, w: Workload, m: Measurement) {
        let slot = Workload::ALL
            .iter()
            .position(|x| *x == w)
            .expect("a workload");
        self.runs[path][slot].push(m);
    }

    /// Adds every path's runs to `out` under `scenario`, compared with the first path.
    pub fn into_output(self, out: &mut BenchOutput, scenario: &str) {
        let baseline = self.paths[0].clone();
        for (path, runs) in self.paths.iter().zip(&self.runs) {
            for (w, runs) in Workload::ALL.iter().zip(runs) {
                if !runs.is_empty() {
                    out.runs(scenario, path, &baseline, None, *w, runs);
                }
            }
        }
    }
}
