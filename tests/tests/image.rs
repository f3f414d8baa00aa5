//! podnet's container image under containerd: the OCI layout tarball `cargo xtask image` writes
//! is imported with `ctr image import` and run with `ctr run` (runc), and podnet works inside
//! it: `--version`, and `install-cni` as the DaemonSet's init container runs it.
//!
//! The tarball is `$PODNET_IMAGE` when set (e.g. `cargo xtask image` then
//! `PODNET_IMAGE=target/image/podnet-oci.tar`); otherwise the test packs the workspace's podnet
//! binary with the same code (`podnet_image::podnet`), with its libraries when it is not static.
//! containerd runs inside a test namespace with its own directories (`podnet_tests::cri`).

use std::path::PathBuf;

use podnet_tests::{Netns, cri::Containerd, describe, require_root, unique};

/// The containerd namespace the test imports into (not the CRI's).
const NAMESPACE: &str = "podnet-image-test";

/// The tarball to test, and the image name in it.
fn tarball(dir: &std::path::Path) -> (PathBuf, String) {
    if let Some(path) = std::env::var_os("PODNET_IMAGE") {
        let path = PathBuf::from(path);
        let name = format!("podnet.local/podnet:{}", env!("CARGO_PKG_VERSION"));
        return (path, name);
    }
    let name = format!("podnet.local/podnet:test-{}", unique("i"));
    let image = podnet_image::podnet(&podnet_tests::podnet_bin(), &name).expect("the image");
    let path = dir.join("podnet-oci.tar");
    image.write_layout_tar(&path).expect("writing the tarball");
    (path, name)
}

#[test]
fn the_image_imports_and_runs_under_containerd() {
    require_root!();
    if let Some(why) = podnet_tests::cri::missing_tools() {
        assert!(
            std::env::var_os(podnet_tests::REQUIRE_ROOT_ENV).is_none(),
            "{why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    let ns = Netns::new("img");
    let ctd = Containerd::start(&ns, None);
    let (tarball, name) = tarball(ctd.dir());
    let imported = ctd.import_into(NAMESPACE, &tarball);
    assert!(imported.contains(&name), "ctr import: {imported}");
    let images = ctd.ctr_ok(&["-n", NAMESPACE, "images", "ls", "-q"]);
    assert!(images.lines().any(|l| l == name), "{images}");

    let runc_root = ctd.runc_root(NAMESPACE).display().to_string();
    let run = |args: &[&str]| {
        let id = unique("run");
        let mut argv = vec![
            "-n",
            NAMESPACE,
            "run",
            "--rm",
            "--runc-root",
            &runc_root,
            &name,
            &id,
        ];
        argv.extend_from_slice(args);
        let out = ctd.ctr(&argv);
        assert!(
            out.status.success(),
            "ctr run {args:?}: {}\n--- containerd ---\n{}",
            describe(&out),
            ctd.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version = run(&[podnet_image::PODNET_PATH, "--version"]);
    assert_eq!(
        version.trim(),
        format!("podnet {}", env!("CARGO_PKG_VERSION")),
        "podnet --version in the image"
    );
    // The init container's work, inside the image: podnet copies itself and writes the
    // network configuration (here into the container's own /tmp).
    let installed = run(&[
        podnet_image::PODNET_PATH,
        "--state-dir",
        "/tmp/state",
        "--json",
        "install-cni",
        "--bin-dir",
        "/tmp/bin",
        "--conf-dir",
        "/tmp/net.d",
        "--mode",
        "standalone",
        "--pod-cidr",
        "10.244.1.0/24",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--uplink",
        "eth0",
    ]);
    assert!(
        installed.contains("10-podnet.conflist"),
        "install-cni: {installed}"
    );
    // `--rm` removed every container.
    let containers = ctd.ctr_ok(&["-n", NAMESPACE, "containers", "ls", "-q"]);
    assert_eq!(containers.trim(), "", "containers left: {containers}");
}
