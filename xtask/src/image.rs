//! `cargo xtask image`: podnet's container image as an OCI image layout tarball, with no
//! Docker and no registry (`ctr -n k8s.io image import` takes it on a node).
//!
//! The image holds one file, `/usr/local/bin/podnet`: a release build linked statically
//! (glibc, `-C target-feature=+crt-static`), because the DaemonSet's `install-cni` copies the
//! same binary to the host's CNI directory, where it must run with whatever libraries the host
//! has. podnet runs no other program, so the image needs no shell and no libraries. The build
//! goes to `target/<host triple>/release`, apart from the ordinary `target/release`, so the
//! static flags never rebuild the everyday build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use podnet_image::dynamic_libraries;

use crate::{ebpf, setup::run};

/// The host's target triple, for a `--target` build (so RUSTFLAGS reach only podnet).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The repository of the image's name; the tag is podnet's version.
pub const REPOSITORY: &str = "podnet.local/podnet";

/// The image's name: `podnet.local/podnet:<version>`.
pub fn default_name() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the eBPF object and the static podnet, writes the image to `out` and returns the
/// binary it packed.
pub fn build(root: &Path, out: &Path, name: &str) -> Result<PathBuf> {
    let object = ebpf::build(root)?;
    run(Command::new("cargo")
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--package",
            "podnet",
            "--bin",
            "podnet",
        ])
        .args(["--target", TARGET])
        .env(ebpf::OBJECT_ENV, &object)
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let binary = root.join("target").join(TARGET).join("release/podnet");
    let libraries = dynamic_libraries(&binary)
        .with_context(|| format!("checking {} is static", binary.display()))?;
    if !libraries.is_empty() {
        bail!("{} is not static: it loads {libraries:?}", binary.display());
    }
    let image = podnet_image::podnet(&binary, name)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    image
        .write_layout_tar(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let layout = image.layout()?;
    println!(
        "wrote {} ({name}, manifest {}); on a node: ctr -n k8s.io image import {}",
        out.display(),
        layout.manifest_digest,
        out.display()
    );
    Ok(binary)
}
