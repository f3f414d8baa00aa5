//! Builds `podnet-ebpf` for `bpfel-unknown-none` the way `../shared/toolchain.md` records:
//! Debian's rustc-web (LLVM 22) with its precompiled `core`, `RUSTC_BOOTSTRAP=1` for aya-ebpf's
//! nightly features, and bpf-linker emitting BTF. Cargo keeps the build incremental.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The environment variable through which podnet's build script finds the object.
pub const OBJECT_ENV: &str = "PODNET_EBPF_OBJECT";
/// The environment variable through which the tests find the stamped "upgrade" object.
pub const UPGRADE_OBJECT_ENV: &str = "PODNET_EBPF_UPGRADE_OBJECT";
/// The stamp of the upgrade object (see podnet-ebpf's `build_stamp` module).
const UPGRADE_STAMP: &str = "upgrade-test";

const TARGET: &str = "bpfel-unknown-none";
/// Debian's rustc-web; `~/.cargo/bin/rustc` (rustup) comes first in PATH and has no BPF core.
const BPF_RUSTC: &str = "/usr/bin/rustc";

/// Builds the object and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    build_into(root, &root.join("target/bpf"), None)
}

/// Builds a second object from the same source with a build stamp, into its own target
/// directory (so neither build invalidates the other), and returns its path. The tests load it
/// with `podnet node init --ebpf-object` as a rebuilt program version (an upgrade).
pub fn build_upgrade(root: &Path) -> Result<PathBuf> {
    build_into(root, &root.join("target/bpf-upgrade"), Some(UPGRADE_STAMP))
}

/// Builds the object without drop reporting (`PODNET_EBPF_NO_MONITOR`), into its own target
/// directory, and returns its path: the baseline of the reporting's cost measurement.
pub fn build_without_monitor(root: &Path) -> Result<PathBuf> {
    build_with(
        root,
        &root.join("target/bpf-nomonitor"),
        None,
        &[("PODNET_EBPF_NO_MONITOR", "1")],
    )
}

fn build_into(root: &Path, target_dir: &Path, stamp: Option<&str>) -> Result<PathBuf> {
    build_with(root, target_dir, stamp, &[])
}

fn build_with(
    root: &Path,
    target_dir: &Path,
    stamp: Option<&str>,
    extra_env: &[(&str, &str)],
) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.env_remove("PODNET_EBPF_NO_MONITOR")
        .envs(extra_env.iter().copied());
    match stamp {
        Some(stamp) => cmd.env("PODNET_EBPF_BUILD_STAMP", stamp),
        None => cmd.env_remove("PODNET_EBPF_BUILD_STAMP"),
    };
    let status = cmd
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--package",
            "podnet-ebpf",
            "--bin",
            "podnet-ebpf",
        ])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER",
            crate::setup::bpf_linker_path(),
        )
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf",
        )
        .status()
        .context("failed to start cargo for the eBPF build")?;
    if !status.success() {
        bail!("eBPF build failed ({status}); `cargo xtask setup` installs the toolchain");
    }
    let object = target_dir.join(TARGET).join("release/podnet-ebpf");
    if !object.is_file() {
        bail!("eBPF build succeeded but {} is missing", object.display());
    }
    Ok(object)
}
