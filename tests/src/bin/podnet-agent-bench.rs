//! `podnet-agent-bench`: what `podnet agent` costs at scale, against the test API server: the
//! initial sync of 1,000 and 10,000 Services (five endpoints each), the agent's resident memory
//! after it, and the programming latency of one Service's change at that size (watch event to
//! map write, the agent's own measure), with the aims marked in the notes.

use podnet_tests::{
    agent_cluster::sync_figures,
    bench::{RoundArgs, series::BenchOutput},
};

/// Endpoints per Service (10,000 Services: 50,000 endpoints).
const PER: usize = 5;
/// Changes timed per size.
const CHANGES: usize = 41;

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");
    let sizes = [1_000_usize, 10_000];
    let mut out = BenchOutput::new(
        "agent",
        "Kubernetes agent: initial sync, memory, programming latency",
        &format!(
            "One simulated node whose agent starts against the test API server already holding \
             N Services (ClusterIP, one port) with {PER} endpoints each, in one EndpointSlice \
             per Service. Initial sync: from the agent's start (before `node init`) to the first \
             full sync programmed in the maps (`podnet_agent_initial_sync_milliseconds`). \
             Memory: the agent's VmRSS then. One change: an EndpointSlice update of one Service, \
             {} times one after another; latency from the watch event reaching the agent to the \
             map write (`podnet_agent_programming_latency_seconds`), p50 and p99 over them. \
             {} round(s).",
            CHANGES - 1,
            args.rounds
        ),
    );
    let mut rows = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let (mut sync, mut rss, mut p50, mut p99) = (vec![], vec![], vec![], vec![]);
        for round in 0..args.rounds {
            eprintln!("{n} services, round {}/{}", round + 1, args.rounds);
            let octet = u16::try_from(190 + i * args.rounds + round).expect("a few");
            let f = sync_figures(n, PER, CHANGES, octet);
            eprintln!("  {f:?}");
            sync.push(f.sync_ms);
            rss.push(f.rss_mib);
            p50.push(f.change_p50_ms);
            p99.push(f.change_p99_ms);
        }
        let x = Some(n as f64);
        let path = "podnet agent";
        out.values(
            "initial sync",
            "initial sync time",
            "ms",
            false,
            path,
            path,
            x,
            sync.clone(),
        );
        out.values(
            "memory",
            "agent resident memory",
            "MiB",
            false,
            path,
            path,
            x,
            rss.clone(),
        );
        out.values(
            "one change",
            "programming latency p50",
            "ms",
            false,
            path,
            path,
            x,
            p50,
        );
        out.values(
            "one change",
            "programming latency p99",
            "ms",
            false,
            path,
            path,
            x,
            p99.clone(),
        );
        rows.push((n, sync, rss, p99));
    }
    let median = |v: &[f64]| podnet_tests::bench::median(v);
    if let Some((_, sync, rss, p99)) = rows.iter().find(|r| r.0 == 10_000) {
        let mark = |ok: bool| if ok { "met" } else { "not met" };
        let (s, r, p) = (median(sync), median(rss), median(p99));
        out.notes.push(format!(
            "Aim: initial sync of 10,000 Services under 2 s: {s:.0} ms, {}.",
            mark(s < 2_000.0)
        ));
        out.notes.push(format!(
            "Aim: one change under 10 ms at p99 with 10,000 Services: {p:.2} ms, {}.",
            mark(p < 10.0)
        ));
        out.notes.push(format!(
            "Aim: agent resident memory under 150 MiB at 10,000 Services: {r:.1} MiB, {}.",
            mark(r < 150.0)
        ));
    }
    if let Some(dir) = &args.out {
        out.write(std::path::Path::new(dir));
    }
}
