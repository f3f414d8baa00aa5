//! Installs what the build and the tests need, and only what is missing: Debian packages,
//! `bpf-linker` built against Debian's LLVM 22, and a mounted bpffs. Each check is cheap, so a
//! prepared machine passes through in well under a second.

use std::{
    env, fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Debian packages, and why each is here.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Rust 1.96 with LLVM 22: compiles the eBPF programs",
    ),
    ("cargo-web", "its cargo"),
    (
        "libstd-rust-web-dev-bpf",
        "precompiled `core` for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("libzstd-dev", "needed to link bpf-linker against LLVM 22"),
    (
        "bpftool",
        "inspecting pinned maps (tests check BTF pretty-printing)",
    ),
    ("iproute2", "ip/tc/bridge in tests and the demo"),
    ("iputils-ping", "ping in tests and the demo"),
    (
        "iputils-arping",
        "a pod's spoofed gratuitous ARP in the anti-spoofing test",
    ),
    ("iperf3", "throughput benchmarks"),
    (
        "linux-perf",
        "the benchmark report's profile of where the CPU goes",
    ),
    (
        "iptables",
        "the seed documents' NAT baseline in benchmarks; tests check it is unused",
    ),
    (
        "nftables",
        "tests check that the node's nft ruleset has no NAT",
    ),
    ("procps", "sysctl"),
    (
        "containernetworking-plugins",
        "the reference CNI plugins (bridge, host-local, portmap, loopback) in /usr/lib/cni, \
         chained with podnet's CNI plugin in tests",
    ),
    (
        "containerd",
        "a real runtime: the CRI test runs pod sandboxes through podnet with its CRI plugin, \
         and the image test imports and runs podnet's image",
    ),
    ("runc", "containerd's OCI runtime"),
    (
        "protobuf-compiler",
        "protoc: the k8s-cri crate compiles the CRI protos when the tests are built",
    ),
    (
        "libc6-dev",
        "libc.a: the CRI test compiles its static pause binary with gcc -static",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

pub fn ensure_all() -> Result<()> {
    ensure_packages()?;
    ensure_bpf_linker()?;
    ensure_bpffs()
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f", "${db:Status-Status}", name])
                .output();
            !matches!(out, Ok(o) if o.status.success() && o.stdout == b"installed")
        })
        .collect()
}

fn ensure_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        let why: Vec<String> = PACKAGES
            .iter()
            .filter(|(n, _)| missing.contains(n))
            .map(|(n, why)| format!("  {n}: {why}"))
            .collect();
        bail!(
            "missing Debian packages, and not root so cannot install them:\n{}\nrun as root, or: apt-get install {}",
            why.join("\n"),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still = missing_packages();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// Where cargo installs binaries for this user.
fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

pub fn bpf_linker_path() -> PathBuf {
    cargo_bin_dir().join("bpf-linker")
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker_path())
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once per machine)"
    );
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX))
    .context("building bpf-linker failed; it needs the llvm-22-dev, libpolly-22-dev and libzstd-dev packages")?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but {} does not run",
            bpf_linker_path().display()
        );
    }
    Ok(())
}

fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, at, kind) = (fields.next(), fields.next(), fields.next());
        at == Some(BPFFS) && kind == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "bpffs is not mounted at {BPFFS}, and not root so cannot mount it: mount -t bpf bpf {BPFFS}"
        );
    }
    eprintln!("setup: mounting bpffs at {BPFFS}");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
