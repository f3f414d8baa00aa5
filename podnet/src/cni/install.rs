//! `podnet install-cni`: puts the plugin where a runtime looks for it and writes a network
//! configuration for each mode. The binary is the `podnet` binary itself (it acts as the plugin
//! when `CNI_COMMAND` is set), copied atomically so a runtime never executes a half-written file.
//! The chosen mode is written as `<conf-dir>/10-podnet.conflist`, the runtime's network; the
//! other mode as `podnet-<mode>.conflist.example`, which runtimes ignore.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::{Value, json};

use super::spec::Mode;
use crate::config::NodeSettings;

/// What `install-cni` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub binary: PathBuf,
    pub network: PathBuf,
    pub example: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { op, path, source }
}

/// The node settings a conflist carries (what the first ADD initialises the node with).
fn node_object(settings: &NodeSettings, bridge: &str) -> Value {
    let mut node = json!({
        "pod_cidr": settings.pod_cidr.to_string(),
        "cluster_cidr": settings.cluster_cidr.to_string(),
        "uplink": settings.uplink,
        "pin_dir": settings.pin_dir,
        "bridge": bridge,
    });
    if let Some(ip) = settings.node_ip {
        node["node_ip"] = json!(ip.to_string());
    }
    if let Some(cidr) = settings.pod_cidr6 {
        node["pod_cidr6"] = json!(cidr.to_string());
    }
    if let Some(cidr) = settings.cluster_cidr6 {
        node["cluster_cidr6"] = json!(cidr.to_string());
    }
    if let Some(ip) = settings.node_ip6 {
        node["node_ip6"] = json!(ip.to_string());
    }
    node
}

/// `host-local`'s ranges and routes: the pod CIDR, and on a dual-stack node the IPv6 one as a
/// second range (so each container gets an address of each family and a default route each).
fn host_local_ipam(settings: &NodeSettings) -> (Value, Value) {
    let mut ranges = vec![json!([{"subnet": settings.pod_cidr.to_string()}])];
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if let Some(cidr) = settings.pod_cidr6 {
        ranges.push(json!([{"subnet": cidr.to_string()}]));
        routes.push(json!({"dst": "::/0"}));
    }
    (Value::Array(ranges), Value::Array(routes))
}

/// The network configuration list for `mode`.
pub fn conflist(settings: &NodeSettings, mode: Mode) -> Value {
    let podnet = |mode: &str, bridge: &str| {
        json!({
            "type": "podnet",
            "mode": mode,
            "stateDir": settings.state_dir,
            "node": node_object(settings, bridge),
            "capabilities": {"portMappings": true},
        })
    };
    match mode {
        // containerd 1.6 (libcni before 1.2) knows CNI up to 1.0.0 and refuses a 1.1.0 result
        // ("unsupported CNI result version"); newer runtimes read `cniVersions` and take the
        // highest they know, 1.1.0, with STATUS and GC.
        Mode::Standalone => json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["1.0.0", "1.1.0"],
            "name": "podnet",
            "plugins": [podnet("standalone", &settings.bridge)],
        }),
        // The reference plugins packaged in Debian speak CNI up to 1.0.0.
        Mode::Chained => {
            let (ranges, routes) = host_local_ipam(settings);
            json!({
                "cniVersion": "1.0.0",
                "name": "podnet",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": true,
                        "ipMasq": false,
                        "ipam": {
                            "type": "host-local",
                            "ranges": ranges,
                            "routes": routes,
                        },
                    },
                    podnet("chained", "cni0"),
                ],
            })
        }
    }
}

/// Mode of directories `install-cni` creates: runtimes read them, only root writes them (a
/// directory others could write to would let them plant a plugin that runs as root).
const INSTALL_DIR_MODE: u32 = 0o755;

/// Writes `path` atomically with `mode`. The temporary file is created with `mode` from the
/// start (never more open than that, whatever the umask), so nobody can open it for writing
/// before it is in place.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(INSTALL_DIR_MODE)
        .create(dir)
        .map_err(io("creating", dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy())
    ));
    // A leftover of an interrupted install: start afresh so its mode is not inherited.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &tmp)(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    // The umask may have cleared bits the mode asks for (e.g. the binary's execute bits).
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting permissions of", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

/// Installs `exe` as `<bin_dir>/podnet` and the configurations for `mode` in `conf_dir`.
pub fn install(
    exe: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    settings: &NodeSettings,
    mode: Mode,
) -> Result<InstallReport, InstallError> {
    let binary = bin_dir.join("podnet");
    let bytes = std::fs::read(exe).map_err(io("reading", exe))?;
    write_atomic(&binary, &bytes, 0o755)?;
    let (other, other_name) = match mode {
        Mode::Chained => (Mode::Standalone, "standalone"),
        Mode::Standalone => (Mode::Chained, "chained"),
    };
    let network = conf_dir.join("10-podnet.conflist");
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
    write_atomic(&network, &pretty(&conflist(settings, mode)), 0o644)?;
    let example = conf_dir.join(format!("podnet-{other_name}.conflist.example"));
    write_atomic(&example, &pretty(&conflist(settings, other)), 0o644)?;
    Ok(InstallReport {
        binary,
        network,
        example,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pod_cidr6: Option<&str>) -> NodeSettings {
        let mut s: NodeSettings = serde_json::from_value(json!({
            "pod_cidr": "10.244.1.0/24",
            "cluster_cidr": "10.244.0.0/16",
            "uplink": "eth0",
        }))
        .expect("valid settings");
        s.pod_cidr6 = pod_cidr6.map(|c| c.parse().expect("IPv6 CIDR"));
        s
    }

    #[test]
    fn chained_conflists_have_a_range_per_family() {
        let single = conflist(&settings(None), Mode::Chained);
        assert_eq!(
            single["plugins"][0]["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}]])
        );
        assert!(single["plugins"][1]["node"].get("pod_cidr6").is_none());
        let dual = conflist(&settings(Some("fd00:10:244:1::/64")), Mode::Chained);
        assert_eq!(
            dual["plugins"][0]["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            dual["plugins"][0]["ipam"]["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        assert_eq!(
            dual["plugins"][1]["node"]["pod_cidr6"],
            "fd00:10:244:1::/64"
        );
        let standalone = conflist(&settings(Some("fd00:10:244:1::/64")), Mode::Standalone);
        assert_eq!(
            standalone["plugins"][0]["node"]["pod_cidr6"],
            "fd00:10:244:1::/64"
        );
    }
}
