//! A real container runtime for tests: containerd (Debian's `containerd` + `runc`) with its CRI
//! plugin, started per test inside a test namespace and driven over the CRI gRPC API the way
//! kubelet drives it.
//!
//! - [`pause_image`]: the sandbox image, built by hand: a few lines of C compiled with
//!   `gcc -static` into `/pause`, packed by [`podnet_image`] as an OCI layout tarball (no
//!   registry is reachable here, and containerd needs a local `sandbox_image`).
//! - [`Containerd`]: one containerd process in a namespace of the test (`nsenter --net=...`, not
//!   `ip netns exec`, whose private sysfs would hide bpffs from the CNI plugins it runs), with its
//!   own root, state, runc root, socket and CNI directories; pod namespaces are mounted under
//!   its state directory. Dropping it (also on panic) removes every sandbox and container,
//!   kills containerd and its shims, unmounts what it mounted and removes its directories.
//! - [`Cri`]: a blocking CRI client (`k8s-cri` over tonic) on containerd's socket.
//! - [`CniLog`]: the CNI invocations containerd made of a plugin, recorded by a wrapper script
//!   in front of the plugin (environment and stdin), to assert what the runtime sent.
//!
//! Nothing here touches the host's containerd (`/run/containerd`, `/var/lib/containerd`): a
//! shim's socket lives under `/run/containerd/s/` (containerd 1.6 hard-codes that directory;
//! the shim removes it when it exits).

use std::{
    collections::BTreeMap,
    fs,
    future::Future,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, PodSandboxStatusResponse, PortMapping, Protocol,
    RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest, StopPodSandboxRequest,
    VersionRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use podnet_image::{EXECUTABLE, Image};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use crate::{ChildGuard, InNetns, describe, process::run_bounded, unique};

/// The name containerd knows the sandbox image by (`sandbox_image`).
pub const PAUSE_IMAGE: &str = "podnet.test/pause:1";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long containerd may take to answer on its socket and report the runtime ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one CRI call (RunPodSandbox runs the CNI ADD of the whole list).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one `ctr` command.
const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// The pause process: sleeps until SIGINT or SIGTERM, reaping children meanwhile, as the
/// sandbox's first process must.
const PAUSE_C: &str = r"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
";

/// Whether containerd, runc, ctr and a static C toolchain are installed; the reason if not.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["containerd", "ctr", "runc", "gcc"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed: run `cargo xtask setup` (Debian containerd, runc, gcc)",
            missing.join(", ")
        )
    })
}

/// Compiles [`PAUSE_C`] with `gcc -static` in `dir` and packs it as [`PAUSE_IMAGE`]: an OCI
/// layout tarball at `dir/pause.tar`, which it returns.
pub fn pause_image(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let (source, binary) = (dir.join("pause.c"), dir.join("pause"));
    fs::write(&source, PAUSE_C).unwrap_or_else(|e| panic!("writing {}: {e}", source.display()));
    let mut gcc = Command::new("gcc");
    gcc.args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source);
    let out = run_bounded(gcc, CTR_TIMEOUT);
    assert!(
        out.status.success(),
        "gcc -static pause.c: {}",
        describe(&out)
    );
    let mut image = Image::new(PAUSE_IMAGE);
    image
        .layer()
        .file(
            "/pause",
            fs::read(&binary).expect("the pause binary"),
            EXECUTABLE,
        )
        .expect("a valid image path");
    image.entrypoint = vec!["/pause".to_owned()];
    let tarball = dir.join("pause.tar");
    image
        .write_layout_tar(&tarball)
        .unwrap_or_else(|e| panic!("writing {}: {e}", tarball.display()));
    tarball
}

/// The CNI setup containerd runs pods with: the plugin directory and the one network
/// (a conflist), which [`Containerd::start`] writes into a configuration directory of its own.
#[derive(Debug, Clone)]
pub struct CniSetup {
    pub bin_dir: PathBuf,
    pub conflist: Value,
}

/// containerd's configuration (version 2): everything under `dir`, the CRI plugin with
/// `restrict_oom_score_adj` (these machines run tests inside a cgroup whose OOM score cannot
/// be lowered), the local sandbox image, and CNI from `cni` (none: the CRI network is not
/// ready, which `ctr run` does not need).
fn config_toml(dir: &Path, cni_bin_dir: Option<&Path>) -> String {
    let path = |p: &str| dir.join(p).display().to_string();
    let bin_dir = cni_bin_dir.map_or_else(|| path("cni-bin"), |d| d.display().to_string());
    let conf_dir = path("net.d");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc_root}"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"#,
        root = path("root"),
        state = path("state"),
        socket = path("containerd.sock"),
        opt = path("opt"),
        runc_root = path("runc"),
    )
}

/// One containerd, running inside a test namespace. See the module documentation.
pub struct Containerd {
    dir: PathBuf,
    process: Option<ChildGuard>,
    /// The namespace containerd (and so every CNI plugin it runs) is in.
    pub netns: PathBuf,
}

impl Containerd {
    /// Starts containerd inside `netns` with CNI from `cni`, waits until it answers CRI, and
    /// imports the sandbox image built by [`pause_image`].
    pub fn start(netns: &(impl InNetns + ?Sized), cni: Option<&CniSetup>) -> Self {
        let dir = std::env::temp_dir().join(format!("podnet-ctd-{}", unique("c")));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // Owner-only, as containerd wants its root and state directories.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        let mut ctd = Self {
            dir,
            process: None,
            netns: netns.path(),
        };
        let conf_dir = ctd.dir.join("net.d");
        fs::create_dir_all(&conf_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", conf_dir.display()));
        if let Some(cni) = cni {
            let network = conf_dir.join("10-podnet.conflist");
            let bytes = serde_json::to_vec_pretty(&cni.conflist).expect("JSON values serialize");
            fs::write(&network, bytes)
                .unwrap_or_else(|e| panic!("writing {}: {e}", network.display()));
        }
        let config = ctd.dir.join("config.toml");
        fs::write(
            &config,
            config_toml(&ctd.dir, cni.map(|c| c.bin_dir.as_path())),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ctd.netns.display()))
            .arg("--")
            .arg("containerd")
            .arg("--config")
            .arg(&config);
        ctd.process = Some(ChildGuard::spawn(cmd));
        ctd.wait_ready(cni.is_some());
        let tarball = pause_image(&ctd.dir.join("pause"));
        ctd.import(&tarball);
        ctd
    }

    /// containerd's directory (configuration, root, state, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The runc root of containers in containerd namespace `namespace`.
    pub fn runc_root(&self, namespace: &str) -> PathBuf {
        self.dir.join("runc").join(namespace)
    }

    /// Where the CRI plugin mounts pod network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("state/io.containerd.grpc.v1.cri/netns")
    }

    /// containerd's log so far (its stderr).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    fn wait_ready(&mut self, network: bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        loop {
            if let Some(process) = &mut self.process
                && let Some(status) = process.try_status()
            {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            if self.socket().exists() {
                match Cri::connect(&self.socket()).and_then(|cri| cri.ready()) {
                    Ok((runtime, net)) if runtime && (net || !network) => return,
                    Ok(conditions) => last = format!("conditions {conditions:?}"),
                    Err(e) => last = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready after {START_TIMEOUT:?} ({last}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `ctr --address SOCKET ARGS` (bounded) and returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(args);
        run_bounded(cmd, CTR_TIMEOUT)
    }

    /// Like [`Containerd::ctr`], panicking unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n--- containerd log ---\n{}",
            describe(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports the OCI layout tarball `tarball` into the CRI's namespace.
    pub fn import(&self, tarball: &Path) {
        self.import_into(CRI_NAMESPACE, tarball);
    }

    /// Imports `tarball` into containerd namespace `namespace` (unpacked for overlayfs).
    pub fn import_into(&self, namespace: &str, tarball: &Path) -> String {
        let tarball = tarball.to_str().expect("UTF-8 paths");
        self.ctr_ok(&["-n", namespace, "images", "import", tarball])
    }

    /// A CRI client on this containerd.
    pub fn cri(&self) -> Cri {
        Cri::connect(&self.socket()).unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// Removes every sandbox through CRI and every container runc still knows, best effort.
    fn remove_everything(&self) {
        if let Ok(cri) = Cri::connect(&self.socket()) {
            for id in cri.sandbox_ids().unwrap_or_default() {
                let _ = cri.stop_pod_sandbox(&id);
                let _ = cri.remove_pod_sandbox(&id);
            }
        }
        let Ok(namespaces) = fs::read_dir(self.dir.join("runc")) else {
            return;
        };
        for root in namespaces.filter_map(Result::ok).map(|e| e.path()) {
            let Ok(containers) = fs::read_dir(&root) else {
                continue;
            };
            for id in containers.filter_map(Result::ok).map(|e| e.file_name()) {
                let mut runc = Command::new("runc");
                runc.arg("--root")
                    .arg(&root)
                    .args(["delete", "--force"])
                    .arg(&id);
                let _ = run_bounded(runc, CTR_TIMEOUT);
            }
        }
    }

    /// Kills the shims this containerd started: processes whose command line names its socket.
    fn kill_shims(&self) {
        let socket = self.socket().display().to_string();
        let Ok(procs) = fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is a shim whose
                // command line names this test's own containerd socket.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Mount points under this containerd's directory, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        mounts.dedup();
        mounts
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_everything();
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.kill_shims();
        for mount in self.mounts() {
            let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2(2) gets a valid NUL-terminated path and a valid flag; the mount
            // lies under this test's own containerd directory.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A blocking CRI client: each call runs on its own small tokio runtime, bounded by
/// [`CALL_TIMEOUT`].
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl Cri {
    /// Connects to the CRI socket at `socket`.
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async {
                // The URI is required by tonic but unused: the connector dials the socket.
                Endpoint::from_static("http://cri.invalid")
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            tokio::net::UnixStream::connect(path)
                                .await
                                .map(hyper_util::rt::TokioIo::new)
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(Self { runtime, channel })
    }

    fn call<T, F: Future<Output = Result<tonic::Response<T>, tonic::Status>>>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, String> {
        let client = RuntimeServiceClient::new(self.channel.clone());
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f(client)).await })
            .map_err(|_| format!("{what}: no answer within {CALL_TIMEOUT:?}"))?
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("{what}: {status}"))
    }

    /// `Version`: (runtime name, runtime version, CRI API version).
    pub fn version(&self) -> Result<(String, String, String), String> {
        let v = self.call("Version", |mut c| async move {
            c.version(VersionRequest::default()).await
        })?;
        Ok((v.runtime_name, v.runtime_version, v.runtime_api_version))
    }

    /// `Status`: whether the RuntimeReady and NetworkReady conditions hold.
    pub fn ready(&self) -> Result<(bool, bool), String> {
        let status = self.call("Status", |mut c| async move {
            c.status(StatusRequest::default()).await
        })?;
        let holds = |name: &str| {
            status
                .status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == name && c.status))
        };
        Ok((holds("RuntimeReady"), holds("NetworkReady")))
    }

    /// `RunPodSandbox` with `config`: the sandbox id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, String> {
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(request).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// `PodSandboxStatus` (verbose, so `info` holds the runtime's details).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse, String> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        };
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(request).await
        })
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), String> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), String> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// `ListPodSandbox`: the ids of every sandbox.
    pub fn sandbox_ids(&self) -> Result<Vec<String>, String> {
        let list = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest::default()).await
        })?;
        Ok(list.items.into_iter().map(|s| s.id).collect())
    }

    /// `ImageStatus` of `image`: whether the runtime has it.
    pub fn has_image(&self, image: &str) -> Result<bool, String> {
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..ImageSpec::default()
            }),
            verbose: false,
        };
        let client = ImageServiceClient::new(self.channel.clone());
        let answer = self
            .runtime
            .block_on(async move {
                let mut client = client;
                tokio::time::timeout(CALL_TIMEOUT, client.image_status(request)).await
            })
            .map_err(|_| "ImageStatus: no answer".to_owned())?
            .map_err(|status| format!("ImageStatus: {status}"))?;
        Ok(answer.into_inner().image.is_some())
    }
}

/// A pod sandbox configuration as kubelet writes one: metadata, hostname, a log directory,
/// the pod network namespace (mode POD), and `port_mappings` as `(protocol, containerPort,
/// hostPort)`.
pub fn sandbox_config(
    name: &str,
    log_directory: &Path,
    port_mappings: &[(Protocol, u16, u16)],
) -> PodSandboxConfig {
    let uid = unique("uid");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.clone(),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: log_directory.display().to_string(),
        port_mappings: port_mappings
            .iter()
            .map(|(protocol, container_port, host_port)| PortMapping {
                protocol: i32::from(*protocol),
                container_port: i32::from(*container_port),
                host_port: i32::from(*host_port),
                host_ip: String::new(),
            })
            .collect(),
        labels: [
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                "default".to_owned(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), uid),
        ]
        .into_iter()
        .collect(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: i32::from(NamespaceMode::Pod),
                    pid: i32::from(NamespaceMode::Pod),
                    ipc: i32::from(NamespaceMode::Pod),
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// The pod's IPv4 address in a `PodSandboxStatus`.
pub fn sandbox_ip(status: &PodSandboxStatusResponse) -> Option<Ipv4Addr> {
    status.status.as_ref()?.network.as_ref()?.ip.parse().ok()
}

/// The pod's network namespace path in a verbose `PodSandboxStatus` (containerd's `info`:
/// the runtime spec's network namespace).
pub fn sandbox_netns(status: &PodSandboxStatusResponse) -> Option<PathBuf> {
    let info: Value = serde_json::from_str(status.info.get("info")?).ok()?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .map(PathBuf::from)
}

/// One recorded plugin invocation: its `CNI_*` environment and its stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedInvocation {
    pub env: BTreeMap<String, String>,
    pub stdin: Value,
}

impl RecordedInvocation {
    /// `CNI_COMMAND`.
    pub fn command(&self) -> &str {
        self.env.get("CNI_COMMAND").map_or("", String::as_str)
    }

    /// `CNI_NETNS` ("" when unset or empty).
    pub fn netns(&self) -> &str {
        self.env.get("CNI_NETNS").map_or("", String::as_str)
    }
}

/// A wrapper script in front of a plugin that records every invocation in a directory.
#[derive(Debug)]
pub struct CniLog {
    dir: PathBuf,
}

impl CniLog {
    /// Replaces `bin_dir/plugin` with a script that saves the invocation's `CNI_*` variables
    /// and stdin under a new directory, then execs the plugin it replaced (`target`) with the
    /// same stdin and environment.
    pub fn wrap(bin_dir: &Path, plugin: &str, target: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("podnet-cni-log-{}", unique("l")));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let script = format!(
            "#!/bin/sh\n\
             n=\"{log}/$(date +%s%N)-$$\"\n\
             env | grep '^CNI_' > \"$n.env\"\n\
             cat > \"$n.stdin\"\n\
             exec '{target}' < \"$n.stdin\"\n",
            log = dir.display(),
            target = target.display(),
        );
        let at = bin_dir.join(plugin);
        let _ = fs::remove_file(&at);
        fs::write(&at, script).unwrap_or_else(|e| panic!("writing {}: {e}", at.display()));
        fs::set_permissions(&at, fs::Permissions::from_mode(EXECUTABLE))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", at.display()));
        Self { dir }
    }

    /// Every invocation so far, oldest first.
    pub fn invocations(&self) -> Vec<RecordedInvocation> {
        let mut stems: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "env"))
                    .map(|p| p.with_extension(""))
                    .collect()
            })
            .unwrap_or_default();
        stems.sort();
        stems
            .iter()
            .map(|stem| {
                let env = fs::read_to_string(stem.with_extension("env")).unwrap_or_default();
                let stdin = fs::read(stem.with_extension("stdin")).unwrap_or_default();
                RecordedInvocation {
                    env: env
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    stdin: serde_json::from_slice(&stdin).unwrap_or(Value::Null),
                }
            })
            .collect()
    }
}

impl Drop for CniLog {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
