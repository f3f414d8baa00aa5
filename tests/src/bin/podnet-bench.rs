//! Same-node pod-to-pod benchmark: TCP throughput, request/response and connection rate, with
//! their CPU cost, for three paths measured in one run, interleaved round by round:
//!
//! - `veth`: two namespaces joined by a direct veth pair (the limit);
//! - `podnet`: two pods on a podnet node, pod-to-pod over `bpf_redirect_peer`;
//! - `bridge`: the same two pods with podnet's programs detached: the seed documents' bridge
//!   (which is also what the reference `bridge` CNI plugin builds).
//!
//! Client on CPU 0, server on CPU 1. Every podnet run must move `forward_local_peer`; every
//! bridge run must leave it alone. Writes `DIR/same-node.json` for the report with `--out DIR`,
//! with what each podnet program cost per packet (`kernel.bpf_stats_enabled`, on during the
//! podnet runs only); `--perf FILE` writes perf profiles of throughput and request/response.

use podnet_tests::bench::{
    RoundArgs,
    measure::{Endpoints, Workload, measure},
    profile,
    series::{BenchOutput, PathRuns},
};
use podnet_tests::{InNetns, Netns, Node, addr, bpf_stats::Costs, veth};

fn main() {
    let args = RoundArgs::from_env();
    assert!(podnet_tests::require_root(), "the benchmark needs root");

    // Path 1: the limit, a direct veth.
    let va = Netns::new("bva");
    let vb = Netns::new("bvb");
    veth(&va, "eth0", &vb, "eth0");
    addr(&va, "eth0", "10.99.0.1/24");
    addr(&vb, "eth0", "10.99.0.2/24");

    // Paths 2 and 3: two pods on a node, with and without podnet's programs.
    let node = Node::new("10.244.99.0/24");
    let a = node.add_pod("bench-a");
    let b = node.add_pod("bench-b");
    let init_args = node.init_args();
    let init_refs: Vec<&str> = init_args.iter().map(String::as_str).collect();

    let mut runs = PathRuns::new(&["veth", "podnet", "bridge"]);
    // What podnet's programs cost per packet, over the podnet runs (statistics on only then).
    let mut costs = Costs::new();
    for round in 0..args.rounds {
        eprintln!("same-node round {}/{}", round + 1, args.rounds);
        for w in Workload::ALL {
            runs.push(
                0,
                w,
                measure(
                    w,
                    &Endpoints::direct(&va, &vb, "10.99.0.2", w),
                    args.seconds,
                ),
            );

            let before = node.stats()["forward_local_peer"];
            let m = costs.measure(&node.pin_dir, w.metric(), || {
                measure(w, &Endpoints::direct(&a.ns, &b.ns, &b.ip, w), args.seconds)
            });
            runs.push(1, w, m);
            assert!(
                node.stats()["forward_local_peer"] > before + 100,
                "podnet run used the fast path"
            );

            for pod in [&a, &b] {
                node.topo
                    .node
                    .ok(&format!("tc filter del dev {} ingress", pod.host_if));
            }
            let before = node.stats()["forward_local_peer"];
            runs.push(
                2,
                w,
                measure(w, &Endpoints::direct(&a.ns, &b.ns, &b.ip, w), args.seconds),
            );
            assert_eq!(
                node.stats()["forward_local_peer"],
                before,
                "bridge run bypassed podnet"
            );
            node.ok(&init_refs); // re-attaches the programs to both pods
        }
    }

    if let Some(file) = &args.perf {
        // Throughput, and request/response: where the extra CPU per transaction goes.
        let mut md = String::new();
        for w in [Workload::Throughput, Workload::RequestResponse] {
            let profiles = profile::available()
                .then(|| {
                    let veth = profile::profile(
                        "veth",
                        w,
                        &Endpoints::direct(&va, &vb, "10.99.0.2", w),
                        args.seconds,
                    )?;
                    let podnet = profile::profile(
                        "podnet",
                        w,
                        &Endpoints::direct(&a.ns, &b.ns, &b.ip, w),
                        args.seconds,
                    )?;
                    Some((veth, podnet))
                })
                .flatten();
            let Some((veth, podnet)) = profiles else {
                md = "## Where the time goes\n\n`perf record` is not available here.\n".to_owned();
                break;
            };
            md.push_str(&profile::markdown(
                &format!("Where the time goes: same-node {} under perf", w.metric()),
                profile::INTRO,
                &veth,
                &podnet,
            ));
        }
        std::fs::write(file, md).expect("write the perf profile");
    }

    let mut out = BenchOutput::new(
        "same-node",
        "Same-node pod-to-pod",
        "Two pods on one podnet node. `veth`: two namespaces on a direct veth pair (the limit). \
         `podnet`: pod-to-pod over `bpf_redirect_peer`. `bridge`: the same pods with podnet's \
         programs detached, so packets cross the node's Linux bridge (the seed documents' way, \
         and what the reference `bridge` plugin builds). Every podnet run must move \
         `forward_local_peer`; every bridge run must not.",
    );
    runs.into_output(&mut out, "same-node pod-to-pod");
    out.blocks.push(format!(
        "### What podnet's programs cost per packet\n\n`kernel.bpf_stats_enabled` on during \
         the podnet runs only (the statistics add two clock reads to every program run): \
         `run_time_ns / run_cnt` of each of the node's programs over all rounds of a workload; \
         every packet of a same-node flow runs `from_pod` once, on the sender's veth.\n\n{}",
        costs.markdown()
    ));
    eprint!("{}", costs.markdown());
    if let Some(dir) = &args.out {
        out.write(std::path::Path::new(dir));
    }
}
