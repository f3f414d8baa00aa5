//! Embeds the eBPF object built by `cargo xtask build-ebpf`. The object's path comes from
//! `PODNET_EBPF_OBJECT` (set by xtask) or defaults to the workspace's BPF target dir; cargo
//! rebuilds podnet whenever the object changes.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PODNET_EBPF_OBJECT");
    let object = env::var_os("PODNET_EBPF_OBJECT").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpf/bpfel-unknown-none/release/podnet-ebpf")
        },
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("podnet.bpf.o");
    if let Err(err) = fs::copy(&object, &out) {
        panic!(
            "the eBPF object {} is missing ({err}): build through `cargo xtask build` (or `cargo xtask build-ebpf` first)",
            object.display()
        );
    }
}
