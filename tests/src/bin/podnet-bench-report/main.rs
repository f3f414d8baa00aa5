//! `podnet-bench-report`: puts the benchmark binaries' results side by side in one report,
//! `OUT/<date>.md`, with the machine facts, the aims and whether this run met them, a table
//! per benchmark (medians, min-max spread over rounds, ratios to the baseline measured in the
//! same run) and SVG plots `OUT/<date>-*.svg`.
//!
//! Arguments: `--in DIR` (the `*.json` files the benchmarks wrote), `--out DIR`,
//! `--profile TEXT` (how the run was configured), `--elapsed SECONDS` (the whole run), and
//! optionally `--perf FILE`, repeatable (Markdown perf profiles to include).

mod plot;

use std::{fmt::Write as _, path::PathBuf};

use podnet_tests::bench::{cmd_line, machine, median, series::BenchOutput, series::Series, spread};

/// The order of the sections, by benchmark name.
const ORDER: [&str; 9] = [
    "same-node",
    "cross-node",
    "nat",
    "ipv6",
    "scaling",
    "services",
    "selection",
    "agent",
    "cni",
];

struct Args {
    input: PathBuf,
    out: PathBuf,
    profile: String,
    elapsed: Option<f64>,
    perf: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        input: PathBuf::new(),
        out: PathBuf::new(),
        profile: String::new(),
        elapsed: None,
        perf: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--in" => args.input = value()?.into(),
            "--out" => args.out = value()?.into(),
            "--profile" => args.profile = value()?,
            "--elapsed" => {
                args.elapsed = Some(value()?.parse().map_err(|e| format!("--elapsed: {e}"))?);
            }
            "--perf" => args.perf.push(value()?.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.input.as_os_str().is_empty() || args.out.as_os_str().is_empty() {
        return Err("usage: podnet-bench-report --in DIR --out DIR [--profile TEXT] [--elapsed S] [--perf FILE]".into());
    }
    Ok(args)
}

/// Decimals that suit a value of `v`'s magnitude.
fn decimals(v: f64) -> usize {
    if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    }
}

/// A cell: median and min-max, all three with the precision the median's magnitude suits.
fn cell(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "n/a".into();
    }
    let (m, (lo, hi)) = (median(samples), spread(samples));
    let d = decimals(m);
    format!("{m:.d$} ({lo:.d$}-{hi:.d$})")
}

/// All series of one benchmark, and lookups into them.
struct Results<'a> {
    series: Vec<&'a Series>,
}

impl<'a> Results<'a> {
    fn find(&self, scenario: &str, metric: &str, path: &str, x: Option<f64>) -> Option<&'a Series> {
        self.series
            .iter()
            .copied()
            .find(|s| s.scenario == scenario && s.metric == metric && s.path == path && s.x == x)
    }

    /// Median of `s` over the median of its baseline.
    fn ratio(&self, s: &Series) -> Option<f64> {
        if s.path == s.baseline {
            return None;
        }
        let base = self.find(&s.scenario, &s.metric, &s.baseline, s.x)?;
        Some(median(&s.samples) / median(&base.samples))
    }
}

/// The distinct values of `key` over `series`, in first-seen order.
fn distinct<T: PartialEq + Clone>(series: &[&Series], key: impl Fn(&Series) -> T) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for s in series {
        let k = key(s);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// The Markdown table of one benchmark: a row per scenario and metric, a column per path.
fn table(r: &Results<'_>) -> String {
    let mut md = String::new();
    let paths = distinct(&r.series, |s| s.path.clone());
    let scaled = r.series.iter().any(|s| s.x.is_some());
    let _ = write!(
        md,
        "| {}metric |",
        if scaled { "services | " } else { "scenario | " }
    );
    for p in &paths {
        let _ = write!(md, " {p} |");
    }
    // One ratio column per (path, baseline) pair: a benchmark whose scenarios compare a path
    // with different baselines (the IPv6 one: the kernel per family, and IPv4) gets a column
    // for each.
    let compared: Vec<&Series> = r
        .series
        .iter()
        .copied()
        .filter(|s| s.path != s.baseline)
        .collect();
    let ratio_pairs = distinct(&compared, |s| (s.path.clone(), s.baseline.clone()));
    for (p, base) in &ratio_pairs {
        let _ = write!(md, " {p} / {base} |");
    }
    md.push('\n');
    let columns = 2 + paths.len() + ratio_pairs.len();
    md.push_str(&"|---".repeat(columns));
    md.push_str("|\n");
    let rows = distinct(&r.series, |s| {
        (s.scenario.clone(), s.metric.clone(), s.x.map(f64::to_bits))
    });
    for (scenario, metric, x) in rows {
        let x = x.map(f64::from_bits);
        let first = r
            .series
            .iter()
            .find(|s| s.scenario == scenario && s.metric == metric && s.x == x)
            .expect("a row comes from a series");
        let lead = x.map_or_else(|| scenario.clone(), |x| format!("{x:.0}"));
        let better = if first.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = write!(md, "| {lead} | {metric}, {} ({better}) |", first.unit);
        for p in &paths {
            let c = r
                .find(&scenario, &metric, p, x)
                .map_or_else(|| "".into(), |s| cell(&s.samples));
            let _ = write!(md, " {c} |");
        }
        for (p, base) in &ratio_pairs {
            let c = r
                .find(&scenario, &metric, p, x)
                .filter(|s| &s.baseline == base)
                .and_then(|s| r.ratio(s))
                .map_or_else(|| "".into(), |v| format!("**{v:.3}**"));
            let _ = write!(md, " {c} |");
        }
        md.push('\n');
    }
    md
}

/// One aim of the issue, checked against this run.
struct Aim {
    what: &'static str,
    measured: String,
    met: bool,
}

fn aims(all: &[BenchOutput]) -> Vec<Aim> {
    let results = |name: &str| Results {
        series: all
            .iter()
            .filter(|o| o.name == name)
            .flat_map(|o| o.series.iter())
            .collect(),
    };
    let ratio = |r: &Results<'_>, scenario: &str, metric: &str, path: &str, x: Option<f64>| {
        r.find(scenario, metric, path, x).and_then(|s| r.ratio(s))
    };
    let mut out = Vec::new();
    let same = results("same-node");
    if let Some(v) = ratio(
        &same,
        "same-node pod-to-pod",
        "TCP throughput",
        "podnet",
        None,
    ) {
        out.push(Aim {
            what: "same-node pod-to-pod throughput at least 0.95x the direct veth",
            measured: format!("{v:.3}x"),
            met: v >= 0.95,
        });
    }
    let nat = results("nat");
    let mut nat_ratios = Vec::new();
    for scenario in ["outside to pod via NodePort", "pod to outside (SNAT)"] {
        for metric in [
            "TCP throughput",
            "TCP request/response",
            "TCP connection rate",
        ] {
            if let Some(v) = ratio(&nat, scenario, metric, "podnet", None) {
                nat_ratios.push((format!("{scenario}: {metric}"), v));
            }
        }
    }
    if !nat_ratios.is_empty() {
        out.push(Aim {
            what: "NodePort and SNAT ahead of iptables on every scenario",
            measured: nat_ratios
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}x"))
                .collect::<Vec<_>>()
                .join("; "),
            met: nat_ratios.iter().all(|(_, v)| *v > 1.0),
        });
    }
    let scaling = results("scaling");
    if let Some(v) = ratio(
        &scaling,
        "NodePort service scaling",
        "TCP connection rate",
        "podnet",
        Some(10_000.0),
    ) {
        out.push(Aim {
            what: "at 10,000 services, at least 3x iptables on connection rate",
            measured: format!("{v:.3}x"),
            met: v >= 3.0,
        });
    }
    out.extend(service_aims(all, &results("services")));
    let cni = results("cni");
    if let Some(v) = ratio(
        &cni,
        "CNI",
        "CNI ADD latency p50",
        "podnet standalone",
        None,
    ) {
        out.push(Aim {
            what: "CNI ADD in standalone mode faster than the reference chain (p50 latency ratio below 1)",
            measured: format!("{v:.3}x"),
            met: v < 1.0,
        });
    }
    out
}

/// The service benchmark's aims: podnet ahead of both kube-proxy layouts at every size, at
/// least 3x the iptables layout at 10,000 services, and flat (within 10 %) from the smallest
/// to the largest table. Reported as not met, with the reason, when podnet was not measured.
fn service_aims(all: &[BenchOutput], r: &Results<'_>) -> Vec<Aim> {
    const PODNET: &str = "podnet";
    const LAYOUTS: [&str; 2] = ["kube-proxy iptables", "kube-proxy nftables"];
    const RATES: [&str; 2] = ["TCP connection rate", "UDP request/response rate"];
    const AHEAD: &str = "services: podnet ahead of both kube-proxy layouts at every size (TCP connection rate and UDP request rate)";
    const TRIPLE: &str = "services: at 10,000 services, at least 3x the kube-proxy iptables layout on TCP connection rate";
    const FLAT: &str =
        "services: podnet flat (within 10 %) from the fewest to the most services, TCP and UDP";
    if r.series.is_empty() {
        return Vec::new();
    }
    let scenario = "pod to ClusterIP";
    let med = |metric: &str, path: &str, x: f64| {
        r.find(scenario, metric, path, Some(x))
            .map(|s| median(&s.samples))
    };
    let sizes: Vec<f64> = distinct(&r.series, |s| s.x.map(f64::to_bits))
        .into_iter()
        .flatten()
        .map(f64::from_bits)
        .collect();
    if !r.series.iter().any(|s| s.path == PODNET) {
        let why = all
            .iter()
            .filter(|o| o.name == "services")
            .flat_map(|o| o.notes.iter())
            .find(|n| n.starts_with("podnet series skipped"))
            .cloned()
            .unwrap_or_else(|| "podnet series not measured".to_owned());
        return [AHEAD, TRIPLE, FLAT]
            .into_iter()
            .map(|what| Aim {
                what,
                measured: why.clone(),
                met: false,
            })
            .collect();
    }
    let mut out = Vec::new();
    // The worst ratio of podnet over each layout, over sizes and both rates.
    let mut worst: Vec<String> = Vec::new();
    let mut ahead = true;
    for layout in LAYOUTS {
        let mut min: Option<(f64, f64, &str)> = None;
        for &x in &sizes {
            for metric in RATES {
                if let (Some(p), Some(b)) = (med(metric, PODNET, x), med(metric, layout, x)) {
                    let v = p / b;
                    if min.is_none_or(|(m, _, _)| v < m) {
                        min = Some((v, x, metric));
                    }
                }
            }
        }
        if let Some((v, x, metric)) = min {
            ahead &= v > 1.0;
            worst.push(format!(
                "lowest over {layout}: {v:.3}x ({metric}, {x:.0} services)"
            ));
        }
    }
    out.push(Aim {
        what: AHEAD,
        measured: worst.join("; "),
        met: ahead && !worst.is_empty(),
    });
    let metric = RATES[0];
    if let (Some(p), Some(b)) = (
        med(metric, PODNET, 10_000.0),
        med(metric, LAYOUTS[0], 10_000.0),
    ) {
        out.push(Aim {
            what: TRIPLE,
            measured: format!("{:.3}x", p / b),
            met: p / b >= 3.0,
        });
    }
    if let (Some(&lo), Some(&hi)) = (sizes.first(), sizes.last()) {
        let mut parts = Vec::new();
        let mut flat = true;
        for metric in RATES {
            if let (Some(a), Some(b)) = (med(metric, PODNET, lo), med(metric, PODNET, hi)) {
                let v = b / a;
                flat &= (v - 1.0).abs() <= 0.10;
                parts.push(format!("{metric} at {hi:.0} / at {lo:.0}: {v:.3}"));
            }
        }
        out.push(Aim {
            what: FLAT,
            measured: parts.join("; "),
            met: flat && !parts.is_empty(),
        });
    }
    out
}

/// Bars of every non-baseline path's ratio for `metric`, across all benchmarks.
fn bars(all: &[BenchOutput], metric: &str) -> (Vec<plot::Bar>, bool) {
    let mut bars = Vec::new();
    let mut higher = true;
    for o in all {
        let r = Results {
            series: o.series.iter().collect(),
        };
        for s in o
            .series
            .iter()
            .filter(|s| s.metric == metric && s.x.is_none())
        {
            if let Some(v) = r.ratio(s) {
                higher = s.higher_is_better;
                bars.push(plot::Bar {
                    label: format!("{}: {} / {}", s.scenario, s.path, s.baseline),
                    ratio: v,
                });
            }
        }
    }
    (bars, higher)
}

/// Lines (one per path) of `metric` against the scaling axis of benchmark `bench`.
fn scaling_lines(all: &[BenchOutput], bench: &str, metric: &str) -> Vec<plot::Line> {
    let series: Vec<&Series> = all
        .iter()
        .filter(|o| o.name == bench)
        .flat_map(|o| o.series.iter())
        .filter(|s| s.x.is_some() && s.metric == metric)
        .collect();
    distinct(&series, |s| s.path.clone())
        .into_iter()
        .map(|path| plot::Line {
            points: series
                .iter()
                .filter(|s| s.path == path)
                .map(|s| {
                    let (lo, hi) = spread(&s.samples);
                    (s.x.unwrap_or_default(), median(&s.samples), lo, hi)
                })
                .collect(),
            name: path,
        })
        .collect()
}

fn run() -> Result<PathBuf, String> {
    let args = parse_args()?;
    let mut all: Vec<BenchOutput> = Vec::new();
    for name in ORDER {
        let path = args.input.join(format!("{name}.json"));
        if path.exists() {
            all.push(BenchOutput::read(&path)?);
        }
    }
    if all.is_empty() {
        return Err(format!("no benchmark results in {}", args.input.display()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let date = cmd_line("date", &["+%F"]);
    let (kernel, cpus) = machine();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let memory = cmd_line("sh", &["-c", "free -g | awk '/Mem:/ {print $2}'"]);
    let mut commit = format!("`{}`", cmd_line("git", &["rev-parse", "--short", "HEAD"]));
    if !cmd_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" plus uncommitted changes");
    }

    let mut md = String::new();
    let _ = writeln!(md, "# podnet benchmark report, {date}\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (`podnet-bench-report`); every figure in it was measured \
         in this one run.\n"
    );
    let _ = writeln!(
        md,
        "- **Machine:** kernel {kernel}, {cpus} CPUs ({cpu_model}), {memory} GiB memory; podnet at commit {commit}."
    );
    let _ = writeln!(
        md,
        "- **Run:** {}{}.",
        args.profile,
        args.elapsed
            .map_or_else(String::new, |s| format!(", {:.1} minutes in all", s / 60.0))
    );
    let _ = writeln!(
        md,
        "- **Method:** each figure is measured once per round, the paths interleaved within \
         the round (and for NAT the mode going first alternates), so drift on this shared \
         machine hits every path alike. Cells are the median over rounds, with the min-max \
         spread; ratios are median over the baseline's median, from this run. The client is \
         pinned to CPU 0 and the server to CPU 1 (iperf3 `-A`, `taskset`), so the two sides \
         never share a core, and `cargo xtask bench` holds `/dev/cpu_dma_latency` at 0 for the \
         run, so idle CPUs poll rather than halt (wake-up latency otherwise dominates \
         request/response on this VM). Throughput: iperf3, one TCP stream. Request/response: netprobe \
         `rr`, one 2-byte request in flight over one connection. Connection rate: netprobe \
         `crr`, one connection at a time (connect, request, reply, close), with the p50/p99 \
         connection lifetime as latency. CPU cost: the machine's busy CPU time (user, system, \
         softirq; `/proc/stat`) while the client ran, per GB, per transaction or per \
         connection; it includes the load generators, which are the same on every path.\n"
    );

    let _ = writeln!(md, "## Aims, as ratios in this run\n");
    let _ = writeln!(md, "| aim | measured | met |\n|---|---|---|");
    for aim in aims(&all) {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            aim.what,
            aim.measured,
            if aim.met { "yes" } else { "**no**" }
        );
    }
    md.push('\n');

    let _ = writeln!(md, "## Plots\n");
    let plots = [
        (
            "throughput",
            "TCP throughput",
            "TCP throughput, ratio to the baseline (higher is better)",
        ),
        (
            "request-response",
            "TCP request/response",
            "TCP request/response rate, ratio to the baseline (higher is better)",
        ),
        (
            "connection-rate",
            "TCP connection rate",
            "TCP connection rate, ratio to the baseline (higher is better)",
        ),
        (
            "cpu-throughput",
            "CPU cost of TCP throughput",
            "CPU per GB moved, ratio to the baseline (lower is better)",
        ),
        (
            "cpu-connection-rate",
            "CPU cost of TCP connection rate",
            "CPU per connection, ratio to the baseline (lower is better)",
        ),
        (
            "cni-add",
            "CNI ADD latency p50",
            "CNI ADD latency p50, ratio to the reference chain (lower is better)",
        ),
    ];
    for (stem, metric, title) in plots {
        let (bars, higher) = bars(&all, metric);
        if bars.is_empty() {
            continue;
        }
        let file = format!("{date}-{stem}.svg");
        plot::ratio_bars(
            &args.out.join(&file),
            title,
            "ratio to baseline (1.0 = same as the baseline)",
            &bars,
            higher,
        )?;
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    let nodeports = "NodePort services installed (log scale)";
    let services = "services installed (log scale)";
    for (bench, stem, metric, x, y, title) in [
        (
            "scaling",
            "scaling-rate",
            "TCP connection rate",
            nodeports,
            "connections/s",
            "NodePort connection rate vs services installed",
        ),
        (
            "scaling",
            "scaling-latency",
            "TCP connection latency p50",
            nodeports,
            "median connection lifetime, us",
            "NodePort connection latency (median) vs services installed",
        ),
        (
            "services",
            "services-tcp-rate",
            "TCP connection rate",
            services,
            "connections/s",
            "Pod to ClusterIP: TCP connection rate vs services",
        ),
        (
            "services",
            "services-connect-p99",
            "TCP connect latency p99",
            services,
            "99th percentile connect latency, us",
            "Pod to ClusterIP: TCP connect latency (p99) vs services",
        ),
        (
            "services",
            "services-udp-rate",
            "UDP request/response rate",
            services,
            "requests/s",
            "Pod to ClusterIP: DNS-like UDP request rate vs services",
        ),
        (
            "services",
            "services-load-time",
            "service table load time",
            services,
            "seconds",
            "Loading the service table: iptables-restore, nft -f, podnet service apply",
        ),
    ] {
        let lines = scaling_lines(&all, bench, metric);
        if lines.is_empty() {
            continue;
        }
        let file = format!("{date}-{stem}.svg");
        plot::scaling_lines(&args.out.join(&file), title, x, y, &lines)?;
        let _ = writeln!(md, "![{title}]({file})\n");
    }

    for o in &all {
        let r = Results {
            series: o.series.iter().collect(),
        };
        let _ = writeln!(md, "## {}\n\n{}\n", o.title, o.method);
        md.push_str(&table(&r));
        md.push('\n');
        for note in &o.notes {
            let _ = writeln!(md, "- {note}");
        }
        if !o.notes.is_empty() {
            md.push('\n');
        }
        for block in &o.blocks {
            md.push_str(block);
            md.push('\n');
        }
    }
    for perf in &args.perf {
        let text = std::fs::read_to_string(perf).map_err(|e| format!("{}: {e}", perf.display()))?;
        md.push_str(&text);
        md.push('\n');
    }
    let path = args.out.join(format!("{date}.md"));
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(path) => {
            println!("wrote {}", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podnet-bench-report: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(path: &str, samples: &[f64]) -> Series {
        Series {
            scenario: "s".into(),
            metric: "TCP throughput".into(),
            unit: "Gbit/s".into(),
            higher_is_better: true,
            path: path.into(),
            baseline: "veth".into(),
            x: None,
            samples: samples.to_vec(),
        }
    }

    #[test]
    fn ratios_are_medians_over_the_baseline_median() {
        let (base, p) = (
            series("veth", &[10.0, 8.0, 12.0]),
            series("podnet", &[9.0, 1.0, 9.5]),
        );
        let r = Results {
            series: vec![&base, &p],
        };
        assert!((r.ratio(&p).expect("a ratio") - 0.9).abs() < 1e-9);
        assert_eq!(r.ratio(&base), None, "the baseline has no ratio to itself");
        let md = table(&r);
        assert!(md.contains("| veth | podnet | podnet / veth |"), "{md}");
        assert!(
            md.contains("10.0 (8.0-12.0) | 9.00 (1.00-9.50) | **0.900** |"),
            "{md}"
        );
    }
    fn point(metric: &str, path: &str, x: f64, v: f64) -> Series {
        Series {
            scenario: "pod to ClusterIP".into(),
            metric: metric.into(),
            unit: "x".into(),
            higher_is_better: true,
            path: path.into(),
            baseline: "kube-proxy iptables".into(),
            x: Some(x),
            samples: vec![v],
        }
    }

    #[test]
    fn service_aims_are_checked_against_both_layouts() {
        let mut out = BenchOutput::new("services", "t", "m");
        for (x, ipt, nft, podnet) in [(1.0, 100.0, 100.0, 150.0), (10_000.0, 40.0, 95.0, 140.0)] {
            for metric in ["TCP connection rate", "UDP request/response rate"] {
                out.series
                    .push(point(metric, "kube-proxy iptables", x, ipt));
                out.series
                    .push(point(metric, "kube-proxy nftables", x, nft));
                out.series.push(point(metric, "podnet", x, podnet));
            }
        }
        let all = vec![out];
        let r = Results {
            series: all[0].series.iter().collect(),
        };
        let aims = service_aims(&all, &r);
        let met: Vec<bool> = aims.iter().map(|a| a.met).collect();
        // Ahead of both everywhere; 140/40 = 3.5x at 10,000; 140/150 is within 10 %.
        assert_eq!(
            met,
            [true, true, true],
            "{:?}",
            aims.iter().map(|a| &a.measured).collect::<Vec<_>>()
        );

        let mut without = all[0].clone();
        without.series.retain(|s| s.path != "podnet");
        without
            .notes
            .push("podnet series skipped: no service command".into());
        let all = vec![without];
        let r = Results {
            series: all[0].series.iter().collect(),
        };
        let aims = service_aims(&all, &r);
        assert_eq!(aims.len(), 3);
        assert!(
            aims.iter()
                .all(|a| !a.met && a.measured.contains("no service command"))
        );
    }
}
