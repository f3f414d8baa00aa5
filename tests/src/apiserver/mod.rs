//! A Kubernetes API server for tests (no package on these machines provides kube-apiserver):
//! plain HTTP, the real protocol for Nodes (core/v1), Services (core/v1) and EndpointSlices
//! (discovery.k8s.io/v1), the real object JSON (k8s-openapi types), for `kube::Client`,
//! `kube::runtime::watcher` and `kubectl`.
//!
//! What it does as the real one does:
//! - list: collection JSON (`NodeList`, ...) with `metadata.resourceVersion`, items without
//!   `kind`/`apiVersion`; `limit` + `continue` paging (`limit` ignored for
//!   `resourceVersion=0`, as the watch cache does); `remainingItemCount`;
//! - watch (`?watch=1`): newline-delimited `WatchEvent` JSON, ADDED/MODIFIED/DELETED, from a
//!   `resourceVersion` (the events after it), or from none/`0` (ADDED for everything, then
//!   changes); `allowWatchBookmarks=true` gives BOOKMARK events; `timeoutSeconds` ends the
//!   stream; a resourceVersion older than the kept history gives 200 and one ERROR event with
//!   a 410 `Expired` Status (so does a `continue` token that old on a list);
//! - a selector watch sees a MODIFIED object entering its selection as ADDED and leaving it
//!   as DELETED;
//! - create (POST, 201), get, update (PUT, 409 on a stale `metadata.resourceVersion`), delete
//!   (DELETE, the object with the deletion's resourceVersion); uid, creationTimestamp,
//!   generation and one cluster-wide resourceVersion counter kept by the server;
//! - `labelSelector` (`=`, `==`, `!=`, `k`, `!k`, `in`, `notin`), `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`); errors as `Status` objects;
//! - discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/discovery.k8s.io[/v1]`.
//!
//! Where it differs (none of it visible to a client that lists and watches these three
//! resources):
//! - plain HTTP, no authentication or authorisation (RBAC is not checked);
//! - only these three resources; no PATCH, no `deletecollection`, no subresources
//!   (`/status`), no finalizers or graceful deletion, no defaulting or validation beyond the
//!   k8s-openapi types (e.g. a Service gets no clusterIP), no admission, no
//!   `managedFields`, JSON only (no protobuf, no Table);
//! - no streaming lists (`sendInitialEvents` is refused with 400);
//! - a `continue` page lists the objects as they are now, not as they were at the first
//!   page's resourceVersion (the watch that follows replays the difference);
//! - BOOKMARKs come every [`Options::bookmark_interval`] (the real server: about a minute);
//! - the history of events is a count ([`Options::history`]), not etcd's compaction window;
//!   [`ApiServer::compact`] forgets it all at once;
//! - a list or watch from a resourceVersion newer than the server's is served as of now
//!   (the real one waits, then answers 504 "Too large resource version");
//! - [`ApiServer::restart`] with a new history jumps the resourceVersion forward and stamps
//!   every object anew (etcd restored from a backup may also go backwards).
//!
//! Stopping ([`ApiServer::stop`]) closes the port and every connection, watches included, and
//! keeps the objects, as etcd would; tests may change them while it is stopped.

mod http;
pub mod selector;
pub mod store;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use serde_json::Value;
pub use store::{ApiError, EventType, NEW_HISTORY_JUMP, Resource, Store};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; port 0 picks one (kept across restarts).
    pub listen: SocketAddr,
    /// The network namespace to listen in (its path), so agents in test namespaces reach it;
    /// `None`: the test process's.
    pub netns: Option<PathBuf>,
    /// How many change events are kept for watches to resume from.
    pub history: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            netns: None,
            history: 10_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running (or stopped) test API server. Dropping it stops it.
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    options: Options,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Makes a listening socket at `addr`, inside `netns` if given (a socket stays in the
/// namespace it was made in; the thread that enters it is used for nothing else).
fn listen(addr: SocketAddr, netns: Option<&Path>) -> std::io::Result<std::net::TcpListener> {
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(path) = netns {
            let file = std::fs::File::open(&path)?;
            // SAFETY: setns(2) on this short-lived thread only, with a namespace file we
            // opened; no other code runs on the thread.
            let rc = unsafe {
                use std::os::fd::AsRawFd as _;
                libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // std sets SO_REUSEADDR on Unix, so a restart can bind again at once.
        std::net::TcpListener::bind(addr)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the listening thread panicked")))
}

/// How long a restart waits for the stopped server's socket to close (it closes in the
/// background).
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// [`listen`], retrying while the address is still held by the server just stopped.
fn listen_retrying(
    addr: SocketAddr,
    netns: Option<&Path>,
) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + REBIND_TIMEOUT;
    loop {
        match listen(addr, netns) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl ApiServer {
    /// Starts a server with `options` and an empty store.
    pub fn start(options: Options) -> std::io::Result<Self> {
        let store = Arc::new(Mutex::new(Store::new(options.history)));
        let mut server = Self {
            store,
            addr: options.listen,
            options,
            runtime: None,
        };
        server.serve()?;
        Ok(server)
    }

    fn serve(&mut self) -> std::io::Result<()> {
        let std_listener = listen_retrying(self.addr, self.options.netns.as_deref())?;
        std_listener.set_nonblocking(true)?;
        self.addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // Tokio's listener must be made inside its runtime. (A runtime is never dropped here:
        // that panics when the caller is async.)
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
        };
        let listener = match listener {
            Ok(listener) => listener,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let shared = Arc::new(http::Shared {
            store: Arc::clone(&self.store),
            bookmark_interval: self.options.bookmark_interval,
        });
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors or the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        http::handle(Arc::clone(&shared), request)
                    });
                    // A client going away mid-request is not the server's problem.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        self.runtime = Some(runtime);
        Ok(())
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is serving.
    pub fn running(&self) -> bool {
        self.runtime.is_some()
    }

    /// Stops serving: the port closes and every connection ends (at once, in the background:
    /// this may be called from async code). The objects stay.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Serves again on the same address; with `new_history`, a new resourceVersion history
    /// (see [`Store::new_history`]): every watch or continue from before gets 410.
    pub fn restart(&mut self, new_history: bool) -> std::io::Result<()> {
        self.stop();
        if new_history {
            self.store().new_history();
        }
        self.serve()
    }

    /// The store, to read or change objects without HTTP (the changes reach watches).
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets every event so far: watches from any earlier resourceVersion get 410.
    pub fn compact(&self) {
        self.store().compact_all();
    }

    /// Creates `object` (its `metadata.namespace` or "default" for namespaced resources).
    pub fn create(&self, resource: Resource, object: Value) -> Result<Value, ApiError> {
        self.store().create(resource, None, object)
    }

    /// Replaces `object` (a stale `metadata.resourceVersion` conflicts; none never does).
    pub fn update(&self, resource: Resource, object: Value) -> Result<Value, ApiError> {
        self.store().update(resource, None, object)
    }

    /// Deletes an object ("" namespace for Nodes).
    pub fn delete(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.store().delete(resource, namespace, name)
    }

    /// A kubeconfig for this server (`server: http://...`, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: podnet-test\n  cluster:\n    server: {url}\n\
             users:\n- name: podnet-test\n  user: {{}}\ncontexts:\n- name: podnet-test\n  context:\n    cluster: podnet-test\n    user: podnet-test\n\
             current-context: podnet-test\n",
            url = self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
