//! What podnet's programs cost per packet on the same-node pod-to-pod paths, from the kernel's
//! BPF statistics: two pods on a podnet node, each workload of the same-node benchmark run once
//! (`--seconds S`, default 3) with `kernel.bpf_stats_enabled` on (its old value restored after,
//! also on panic), then the table "program | path | runs | ns per packet" on stdout.
//!
//! With `--test-run N`, also runs `from_pod` N times in the kernel (`BPF_PROG_TEST_RUN`
//! through `bpftool prog run`, as if on pod a's veth) on one TCP segment from pod a to pod b,
//! and prints the kernel's mean time per run: the program alone, with no traffic around it.
//!
//! With `--single-runs N`, runs it N times one run at a time on a fresh frame (one `bpftool
//! batch`), with anti-spoofing on, and prints the median: to a local pod, and to the outside
//! through a SNAT flow (started by one SYN first). A single run's time includes the test
//! run's own clock reads, the same for every object compared.
//!
//! `cargo xtask build-ebpf && cargo build -p podnet-tests --bins && \
//!  target/debug/podnet-perpacket --seconds 3 --test-run 1000000` (as root). Not a test:
//! figures, not verdicts.

use std::net::Ipv4Addr;

use podnet_tests::{
    InNetns, Node, OUTSIDE_IP, PodInfo,
    bench::measure::{Endpoints, Workload, measure},
    bpf_stats::Costs,
    describe, mac, unique,
};

/// Offset of `ifindex` in `struct __sk_buff` (after ten u32 fields).
const SKB_IFINDEX_OFF: usize = 40;
/// `struct __sk_buff` as far as `BPF_PROG_TEST_RUN` reads it (through `ifindex`).
const SKB_CTX_LEN: usize = SKB_IFINDEX_OFF + 4;

/// TCP flags of the frames sent.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// An Ethernet + IPv4 + TCP (ACK) frame from `src` to `dst`, with a valid IPv4 checksum.
fn tcp_ack(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    tcp_frame(src_mac, src, dst, TCP_ACK)
}

/// An Ethernet + IPv4 + TCP frame with `flags` from `src` to `dst`, valid IPv4 checksum.
fn tcp_frame(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16));
    ip[10..12].copy_from_slice(&u16::try_from(csum & 0xffff).expect("16 bits").to_be_bytes());
    f.extend_from_slice(&ip);
    // TCP: ports 40000 -> 7100, seq, ack, data offset 5, flags ACK, window, checksum, urg.
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&7100u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&tcp);
    f
}

/// The MAC of `pod`'s `eth0`.
fn pod_mac(pod: &PodInfo) -> [u8; 6] {
    let bytes: Vec<u8> = mac(&pod.ns, "eth0")
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// Mean ns per run of `from_pod` on a segment from `a` to `b`, `repeat` runs in the kernel.
fn test_run(node: &Node, a: &PodInfo, b: &PodInfo, repeat: u32) -> String {
    let frame = tcp_ack(
        pod_mac(a),
        a.ip.parse().expect("IPv4"),
        b.ip.parse().expect("IPv4"),
    );
    run_frames(node, a, &[(frame, repeat)])
}

/// Median ns of `single` separate one-run test runs of `from_pod` on `frame` from `a` (each
/// on a fresh copy of the frame, in one `bpftool batch`), after one run of `first` if given
/// (to start a flow).
fn single_runs(node: &Node, a: &PodInfo, first: Option<Vec<u8>>, frame: &[u8], single: u32) -> f64 {
    let mut frames: Vec<(Vec<u8>, u32)> = first.into_iter().map(|f| (f, 1)).collect();
    let skip = frames.len();
    frames.extend((0..single).map(|_| (frame.to_vec(), 1)));
    let out = run_frames(node, a, &frames);
    let ns: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("duration: ").nth(1))
        .filter_map(|d| d.trim().trim_end_matches("ns").parse().ok())
        .skip(skip)
        .collect();
    assert!(!ns.is_empty(), "no durations in: {out}");
    podnet_tests::bench::median(&ns)
}

/// Runs `from_pod` on each `(frame, repeat)` in turn, as if on `a`'s veth; bpftool's output.
fn run_frames(node: &Node, a: &PodInfo, frames: &[(Vec<u8>, u32)]) -> String {
    let prog = podnet_tests::bpf_stats::prog_id(&node.pin_dir.join("progs/from_pod"));
    let ifindex: u32 = node
        .topo
        .node
        .ok(&format!("cat /sys/class/net/{}/ifindex", a.host_if))
        .trim()
        .parse()
        .expect("ifindex");
    let mut ctx = vec![0u8; SKB_CTX_LEN];
    ctx[SKB_IFINDEX_OFF..].copy_from_slice(&ifindex.to_ne_bytes());
    let dir = std::env::temp_dir();
    let ctx_path = dir.join(unique("pp-ctx"));
    std::fs::write(&ctx_path, ctx).expect("ctx file");
    let mut batch = String::new();
    let mut files = vec![ctx_path.clone()];
    for (i, (frame, repeat)) in frames.iter().enumerate() {
        let data_path = dir.join(unique(&format!("pp-data{i}")));
        std::fs::write(&data_path, frame).expect("frame file");
        batch.push_str(&format!(
            "prog run id {prog} data_in {} ctx_in {} repeat {repeat}\n",
            data_path.display(),
            ctx_path.display()
        ));
        files.push(data_path);
    }
    let batch_path = dir.join(unique("pp-batch"));
    std::fs::write(&batch_path, batch).expect("batch file");
    files.push(batch_path.clone());
    // In the node's namespace, so the context's ifindex is pod a's host-side veth.
    let out = node
        .topo
        .node
        .sh(&format!("bpftool batch file {}", batch_path.display()));
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    assert!(out.status.success(), "bpftool batch: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    assert!(podnet_tests::require_root(), "needs root");
    let mut seconds = 3;
    let mut repeat = None;
    let mut single = None;
    let mut extra: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S");
            }
            "--test-run" => {
                repeat = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--test-run N"),
                );
            }
            "--single-runs" => {
                single = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--single-runs N"),
                );
            }
            "--ebpf-object" => {
                extra = vec![
                    "--ebpf-object".to_owned(),
                    it.next().expect("--ebpf-object PATH"),
                ];
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let node = Node::with_args("10.244.98.0/24", &extra_refs);
    let init = |more: &[&str]| {
        let mut args = node.init_args();
        args.extend(extra.iter().cloned());
        args.extend(more.iter().map(|s| (*s).to_owned()));
        node.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let a = node.add_pod("pp-a");
    let b = node.add_pod("pp-b");
    let (xlated, jited) = podnet_tests::bpf_stats::sizes(&node.pin_dir.join("progs/from_pod"));
    println!("from_pod: {xlated} bytes after the verifier, {jited} bytes JITed");
    if let Some(single) = single {
        // Each run on a fresh frame, so anti-spoofing stays on: the paths as pods take them.
        let (a_mac, a_ip) = (pod_mac(&a), a.ip.parse().expect("IPv4"));
        let to_pod = tcp_ack(a_mac, a_ip, b.ip.parse().expect("IPv4"));
        let ns = single_runs(&node, &a, None, &to_pod, single);
        println!("from_pod, one run at a time, median of {single}: to a local pod {ns:.0} ns");
        let syn = tcp_frame(a_mac, a_ip, OUTSIDE_IP, TCP_SYN);
        let ack = tcp_ack(a_mac, a_ip, OUTSIDE_IP);
        let before = node.stats();
        let ns = single_runs(&node, &a, Some(syn), &ack, single);
        let after = node.stats();
        let snat = after["snat"] - before.get("snat").copied().unwrap_or(0);
        println!("  to the outside (SNAT flow, {snat} packets SNATed) {ns:.0} ns");
    }
    if let Some(repeat) = repeat {
        // The program rewrites the frame's MACs, and every run of a test run sees the frame
        // the previous run left: with anti-spoofing on, all runs but the first would be drops.
        init(&["--no-anti-spoof"]);
        let before = node.stats();
        let out = test_run(&node, &a, &b, repeat);
        let after = node.stats();
        let counted: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} +{}", v - before.get(k).copied().unwrap_or(0)))
            .collect();
        eprintln!("counted under: {}", counted.join(", "));
        init(&[]);
        println!(
            "from_pod under BPF_PROG_TEST_RUN, {repeat} runs: {}",
            out.trim()
        );
    }
    let mut costs = Costs::new();
    for w in Workload::ALL.into_iter().filter(|_| seconds > 0) {
        let m = costs.measure(&node.pin_dir, w.metric(), || {
            measure(w, &Endpoints::direct(&a.ns, &b.ns, &b.ip, w), seconds)
        });
        eprintln!("{}: {:.1} {}", w.metric(), m.value, w.unit());
    }
    print!("{}", costs.markdown());
}
