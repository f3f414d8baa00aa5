//! `cargo xtask`: the project's one entry point for set-up, building, testing and the demo.
//!
//! Every command first makes sure the machine has what it needs (see [`setup`]), so the
//! README's two commands work on a fresh machine and are quick on a prepared one.

mod ebpf;
mod image;
mod layers;
mod robustness;
mod setup;

use setup::run;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "podnet build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, bpf-linker, bpffs.
    Setup,
    /// Build the eBPF object (podnet-ebpf) for bpfel-unknown-none.
    BuildEbpf {
        /// Build it without drop reporting (`podnet monitor`), into `target/bpf-nomonitor`: the
        /// baseline of the reporting's cost measurement (see the README's `podnet monitor`).
        #[arg(long)]
        no_monitor: bool,
    },
    /// Build the eBPF object, then podnet with it embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, lint and run the whole test suite (this is what CI runs).
    Test {
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the benchmark suite (release build) and write one report, bench/results/<date>.md,
    /// with SVG plots beside it: same-node and cross-node pod-to-pod, NAT (NodePort and SNAT)
    /// and service scaling against iptables, pod to ClusterIP with up to 30,000 services
    /// against kube-proxy's iptables and nftables layouts, and the control plane against the
    /// reference CNI chain, every path measured side by side in the same run.
    Bench {
        /// 2 rounds x 1 s and fewer containers: a smoke run of every figure in under 3 minutes.
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz from_pod and from_uplink with more inputs than the suite's fixed-seed run
    /// (tests/tests/fuzz.rs); a failure prints the input in hex with its seed and index.
    Fuzz {
        /// Number of inputs.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
        /// Seed of the inputs (decimal or 0x-hex); default: a new one from the clock.
        #[arg(long)]
        seed: Option<String>,
        /// Replay one input, `<program>:<hex frame>`, as a failure prints it.
        #[arg(long)]
        replay: Option<String>,
    },
    /// Check that podnet's imports point one way (front ends -> ops -> store, datapath -> sys
    /// -> config, model) and form no cycle; `test` runs this first.
    Layers,
    /// Write podnet's container image (a static release build) as an OCI image layout
    /// tarball, for `ctr -n k8s.io image import` on each node (no Docker, no registry).
    Image {
        /// Where to write it.
        #[arg(long, default_value = "target/image/podnet-oci.tar")]
        out: PathBuf,
        /// The image's name (default: podnet.local/podnet:<version>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Set up, build, and run the self-contained demo topology in network namespaces.
    Demo {
        /// Arguments passed on to `podnet demo`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::ensure_all(),
        Task::Layers => layers::check(&root),
        Task::BuildEbpf { no_monitor } => {
            setup::ensure_all()?;
            if no_monitor {
                let object = ebpf::build_without_monitor(&root)?;
                println!("{}", object.display());
                Ok(())
            } else {
                ebpf::build(&root).map(drop)
            }
        }
        Task::Build { release } => {
            setup::ensure_all()?;
            build_userspace(&root, release)
        }
        Task::Test { args } => {
            setup::ensure_all()?;
            test(&root, &args)
        }
        Task::Bench { quick } => {
            setup::ensure_all()?;
            build_userspace(&root, true)?;
            bench(&root, quick)
        }
        Task::Fuzz {
            iterations,
            seed,
            replay,
        } => {
            setup::ensure_all()?;
            fuzz(&root, iterations, seed, replay)
        }
        Task::Image { out, name } => {
            setup::ensure_all()?;
            let out = if out.is_absolute() {
                out
            } else {
                root.join(out)
            };
            image::build(&root, &out, &name.unwrap_or_else(image::default_name)).map(drop)
        }
        Task::Demo { args } => {
            setup::ensure_all()?;
            build_userspace(&root, true)?;
            let bin = root.join("target/release/podnet");
            run(Command::new(bin).arg("demo").args(args))
        }
    }
}

/// Runs every benchmark binary into `target/bench`, then the report into `bench/results`.
fn bench(root: &Path, quick: bool) -> Result<()> {
    let start = std::time::Instant::now();
    let _wakeups = hold_fast_wakeups();
    let work = root.join("target/bench");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let release = root.join("target/release");
    let perf = [work.join("perf-same-node.md"), work.join("perf-nat.md")];
    let benches: [(&str, Vec<&std::ffi::OsStr>); 8] = [
        ("podnet-bench", vec!["--perf".as_ref(), perf[0].as_os_str()]),
        ("podnet-multinode-bench", vec![]),
        (
            "podnet-nat-bench",
            vec!["--perf".as_ref(), perf[1].as_os_str()],
        ),
        ("podnet-ipv6-bench", vec![]),
        ("podnet-service-bench", vec![]),
        ("podnet-selection-bench", vec![]),
        (
            "podnet-agent-bench",
            vec!["--rounds".as_ref(), "1".as_ref()],
        ),
        ("podnet-cni-bench", vec![]),
    ];
    for (bench, extra) in benches {
        let mut cmd = Command::new(release.join(bench));
        cmd.arg("--out").arg(&work).args(extra);
        if quick {
            cmd.arg("--quick");
        }
        run(cmd
            .env("PODNET_BIN", release.join("podnet"))
            .env("NETPROBE_BIN", release.join("netprobe")))?;
    }
    let profile = if quick {
        "`cargo xtask bench --quick`: 2 rounds x 1 s per figure (CNI: 20 sequential and 30 parallel containers per round), a smoke run whose spreads mean little"
    } else {
        "`cargo xtask bench`: 5 rounds x 2 s per figure (CNI: 50 sequential and 100 parallel containers per round)"
    };
    let mut cmd = Command::new(release.join("podnet-bench-report"));
    cmd.arg("--in")
        .arg(&work)
        .arg("--out")
        .arg(root.join("bench/results"))
        .args(["--profile", profile])
        .arg("--elapsed")
        .arg(start.elapsed().as_secs_f64().to_string());
    for file in perf.iter().filter(|f| f.exists()) {
        cmd.arg("--perf").arg(file);
    }
    run(&mut cmd)
}

/// Asks the kernel's PM QoS for zero CPU wake-up latency for as long as the returned file is
/// open (`/dev/cpu_dma_latency`, released when it closes, also if the run fails), so idle CPUs
/// poll instead of halting. Request/response figures otherwise swing several-fold with
/// whatever else keeps the CPUs awake. `None` where the kernel does not offer it.
fn hold_fast_wakeups() -> Option<std::fs::File> {
    use std::io::Write as _;

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .ok()?;
    file.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(file)
}

/// Builds the eBPF object and then the userspace workspace, which embeds it.
fn build_userspace(root: &Path, release: bool) -> Result<()> {
    let object = ebpf::build(root)?;
    let mut cmd = cargo(root, &object);
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    layers::check(root)?;
    let object = ebpf::build(root)?;
    let upgrade = ebpf::build_upgrade(root)?;
    run(Command::new("cargo")
        .current_dir(root)
        .args(["fmt", "--all", "--check"]))
    .context("formatting differs: run `cargo fmt --all`")?;
    run(cargo(root, &object).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The integration tests spawn the podnet binary and the test tools; build them once.
    run(cargo(root, &object).args(["build", "--workspace", "--bins"]))?;
    let mut cmd = cargo(root, &object);
    cmd.args(["test", "--workspace", "--no-fail-fast", "--"])
        .args(args);
    // Under CI a privileged test that would skip is a failure: CI runs as root.
    cmd.env("PODNET_TESTS_REQUIRE_ROOT", "1")
        .env(ebpf::UPGRADE_OBJECT_ENV, upgrade);
    let records = robustness::reset(root)?;
    let outcome = run(&mut cmd);
    robustness::print_summary(&records);
    outcome
}

/// Runs the fuzz test alone with `iterations` inputs from `seed` (or replays one input), and
/// prints its line of the robustness summary.
fn fuzz(root: &Path, iterations: u64, seed: Option<String>, replay: Option<String>) -> Result<()> {
    let object = ebpf::build(root)?;
    let seed = seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{:#x}", now.as_nanos() & u128::from(u64::MAX))
    });
    println!("fuzzing with {iterations} inputs, seed {seed}");
    let mut cmd = cargo(root, &object);
    cmd.args([
        "test",
        "--package",
        "podnet-tests",
        "--test",
        "fuzz",
        "--",
        "--exact",
        "fuzzed_frames_keep_the_datapath_invariants",
        "--nocapture",
    ])
    .env("PODNET_TESTS_REQUIRE_ROOT", "1")
    .env("PODNET_FUZZ_ITERATIONS", iterations.to_string())
    .env("PODNET_FUZZ_SEED", &seed);
    if let Some(replay) = replay {
        cmd.env("PODNET_FUZZ_REPLAY", replay);
    }
    let records = robustness::reset(root)?;
    let outcome = run(&mut cmd);
    robustness::print_summary(&records);
    outcome
}

/// A host `cargo` command that sees the freshly built eBPF object.
fn cargo(root: &Path, object: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).env(ebpf::OBJECT_ENV, object);
    cmd
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
