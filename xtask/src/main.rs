//! `cargo xtask`: the project's one entry point for set-up, building, testing and the demo.
//!
//! Every command first makes sure the machine has what it needs (see [`setup`]), so the
//! README's two commands work on a fresh machine and are quick on a prepared one.

mod ebpf;
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
    BuildEbpf,
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
    /// Run the benchmarks (release build) and write bench/results/<date>-*.md: same-node
    /// pod-to-pod (podnet-bench), NAT, podnet vs iptables (podnet-nat-bench), then CNI
    /// ADD/DEL, podnet vs bridge + host-local + portmap (podnet-cni-bench), then cross-node
    /// pod-to-pod, podnet native routing vs kernel routes + bridge (podnet-multinode-bench).
    Bench {
        /// Fewer, shorter rounds (a few minutes in all).
        #[arg(long)]
        quick: bool,
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
        Task::BuildEbpf => {
            setup::ensure_all()?;
            ebpf::build(&root).map(drop)
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
            for bench in [
                "podnet-bench",
                "podnet-nat-bench",
                "podnet-cni-bench",
                "podnet-multinode-bench",
            ] {
                let mut cmd = Command::new(root.join("target/release").join(bench));
                cmd.arg("--out").arg(root.join("bench/results"));
                if quick {
                    cmd.arg("--quick");
                }
                run(cmd
                    .env("PODNET_BIN", root.join("target/release/podnet"))
                    .env("NETPROBE_BIN", root.join("target/release/netprobe")))?;
            }
            Ok(())
        }
        Task::Demo { args } => {
            setup::ensure_all()?;
            build_userspace(&root, true)?;
            let bin = root.join("target/release/podnet");
            run(Command::new(bin).arg("demo").args(args))
        }
    }
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
