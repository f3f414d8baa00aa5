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

use std::{fmt::Write as _, process::Command, time::Duration};

use podnet_tests::{InNetns, Netns, Node, addr, describe, netprobe_bin, serve_tcp_echo, veth};

struct Args {
    rounds: usize,
    seconds: u32,
    out: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 5,
        seconds: 3,
        out: None,
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
                args.rounds = 3;
                args.seconds = 2;
            }
            "--out" => args.out = it.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// iperf3 throughput in Gbit/s from `client` to `server_ip`.
fn throughput(client: &dyn InNetns, server: &dyn InNetns, server_ip: &str, seconds: u32) -> f64 {
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-A", "1", "-B", server_ip]);
    std::thread::sleep(Duration::from_millis(200));
    let secs = seconds.to_string();
    let out = client.exec_timeout(
        &["iperf3", "-c", server_ip, "-t", &secs, "-A", "0", "-J"],
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

/// Request/response transactions per second over one TCP connection.
fn rr(client: &dyn InNetns, server: &dyn InNetns, server_ip: &str, seconds: u32) -> f64 {
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

#[derive(Default)]
struct Samples {
    tput: Vec<f64>,
    rr: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn main() {
    let args = parse_args();
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

    let kernel = Command::new("uname").arg("-r").output().map_or_else(
        |_| "?".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Same-node pod-to-pod (kernel {kernel}, {cpus} CPUs, {} rounds x {} s, client on CPU 0, server on CPU 1)\n",
        args.rounds, args.seconds
    );
    let _ = writeln!(
        md,
        "| path | TCP throughput Gbit/s median (min-max) | ratio to veth | TCP RR trans/s median (min-max) | ratio to veth |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let base_t = median(&samples[0].tput);
    let base_r = median(&samples[0].rr);
    for (name, s) in names.iter().zip(&samples) {
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
        "\npodnet vs bridge: throughput {:.3}x, request/response {:.3}x",
        median(&samples[1].tput) / median(&samples[2].tput),
        median(&samples[1].rr) / median(&samples[2].rr)
    );
    print!("{md}");
    if let Some(dir) = args.out {
        std::fs::create_dir_all(&dir).expect("results dir");
        let date = Command::new("date").arg("+%F").output().map_or_else(
            |_| "undated".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
        let path = format!("{dir}/{date}-same-node.md");
        std::fs::write(&path, &md).expect("write results");
        eprintln!("wrote {path}");
    }
}
