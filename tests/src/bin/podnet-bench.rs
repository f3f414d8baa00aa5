//! Same-node pod-to-pod benchmark: TCP throughput (iperf3) and TCP request/response rate
//! (netprobe rr) for three paths measured in one run, interleaved round by round:
//!
//! - `veth`: two namespaces joined by a direct veth pair (the limit);
//! - `podnet`: two pods on a podnet node, pod-to-pod over `bpf_redirect_peer`;
//! - `bridge`: the same two pods with podnet's programs detached (the seed documents' bridge).
//!
//! Client and server are pinned to different CPUs (iperf3 -A, taskset) for repeatability.
//! Prints a Markdown table of medians (with min-max) and ratios to `veth`, and writes it to
//! `bench/results/<date>-same-node.md` when `--out DIR` is given.

use std::fmt::Write as _;

use podnet_tests::bench::{RoundArgs, Samples, rr, throughput};
use podnet_tests::{InNetns, Netns, Node, addr, veth};

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

    let names = ["veth", "podnet", "bridge"];
    let mut samples: Vec<Samples> = names.iter().map(|_| Samples::default()).collect();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        samples[0]
            .tput
            .push(throughput(&va, &vb, "10.99.0.2", args.seconds));
        samples[0].rr.push(rr(&va, &vb, "10.99.0.2", args.seconds));

        let before = node.stats()["forward_local_peer"];
        samples[1]
            .tput
            .push(throughput(&a.ns, &b.ns, &b.ip, args.seconds));
        samples[1].rr.push(rr(&a.ns, &b.ns, &b.ip, args.seconds));
        assert!(
            node.stats()["forward_local_peer"] > before + 1000,
            "podnet run used the fast path"
        );

        for pod in [&a, &b] {
            node.topo
                .node
                .ok(&format!("tc filter del dev {} ingress", pod.host_if));
        }
        let before = node.stats()["forward_local_peer"];
        samples[2]
            .tput
            .push(throughput(&a.ns, &b.ns, &b.ip, args.seconds));
        samples[2].rr.push(rr(&a.ns, &b.ns, &b.ip, args.seconds));
        assert_eq!(
            node.stats()["forward_local_peer"],
            before,
            "bridge run bypassed podnet"
        );
        node.ok(&init_refs); // re-attaches the programs to both pods
    }

    let (kernel, cpus) = podnet_tests::bench::machine();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Same-node pod-to-pod (kernel {kernel}, {cpus} CPUs, {} rounds x {} s, client on CPU 0, server on CPU 1)\n",
        args.rounds, args.seconds
    );
    md.push_str(&podnet_tests::bench::tput_rr_table(
        &names,
        &samples,
        "veth",
        (1, 2),
    ));
    print!("{md}");
    podnet_tests::bench::write_report(args.out.as_deref(), "same-node", &md);
}
