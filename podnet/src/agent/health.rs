//! Health-check node ports (`spec.healthCheckNodePort`), served by `podnet agent`: the process
//! each node runs on Kubernetes (the DaemonSet's container) serves them, as kube-proxy does.
//!
//! For each Service with `externalTrafficPolicy: Local` and a health-check port, an HTTP server
//! listens on `0.0.0.0:PORT` in the node's network namespace (where the agent runs) and answers
//! every request, whatever its path, with `200 OK` while this node has at least one local ready
//! endpoint of the service and `503 Service Unavailable` while it has none, so an external load
//! balancer sends traffic only to nodes that can serve it without leaving the node. The body is
//! kube-proxy's, byte for byte (indented with tabs, shown here with spaces):
//!
//! ```text
//! {
//!     "service": {
//!         "namespace": "shop",
//!         "name": "web"
//!     },
//!     "localEndpoints": 1,
//!     "serviceProxyHealthy": true
//! }
//! ```
//!
//! with `Content-Type: application/json` and `X-Content-Type-Options: nosniff`. A local endpoint
//! is a ready endpoint whose address lies in this node's pod CIDR: the rule the datapath's
//! Local policy uses. `serviceProxyHealthy` is the agent's readiness (its first full sync is
//! programmed); while false the answer is 503.
//!
//! The programming thread owns the set of listeners ([`HealthChecks`]) and updates it after a
//! change is in the maps, so the answer never runs ahead of the datapath: listeners open and
//! close as such services come and go, and their counts follow the EndpointSlices. A port that
//! cannot be bound (another process holds it) is logged and counted
//! (`podnet_agent_health_check_bind_failures_total`), tried again at the service's next change,
//! and never stops the agent.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ipnetwork::Ipv4Network;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    runtime::Handle,
    task::JoinHandle,
};

use super::metrics::{Metrics, read_head};
use crate::model::service::{Metadata, Service, TrafficPolicy};

/// Where the health-check ports listen: every address of the node (kube-proxy's default).
pub const LISTEN_IP: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
/// The pause after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one service asks of the health server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Ready endpoints in this node's pod CIDR.
    pub local_endpoints: usize,
}

/// The check `svc` asks for on a node with pod CIDR `pod_cidr`: none unless its external traffic
/// policy is Local and it has a health-check port.
pub fn check_of(svc: &Service, pod_cidr: Ipv4Network) -> Option<Check> {
    let port = svc.spec.health_check_node_port.filter(|p| *p != 0)?;
    if svc.spec.external_traffic_policy != TrafficPolicy::Local {
        return None;
    }
    let local_endpoints = svc
        .backends()
        .iter()
        // Counted by IPv4 address: every pod has one, and a dual-stack pod counts once.
        .filter(|(addr, conditions, _)| {
            conditions.ready && matches!(addr, std::net::IpAddr::V4(a) if pod_cidr.contains(*a))
        })
        .count();
    Some(Check {
        port,
        local_endpoints,
    })
}

/// kube-proxy's JSON body for service `key`.
pub fn body(key: &Metadata, local_endpoints: usize, proxy_healthy: bool) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let (namespace, name) = (quote(&key.namespace), quote(&key.name));
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {namespace},\n\t\t\"name\": {name}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}"
    )
}

/// The whole HTTP response: 200 with at least one local endpoint and a healthy agent, else
/// 503; the body left out for a `HEAD` request.
pub fn response(key: &Metadata, local_endpoints: usize, proxy_healthy: bool, head: bool) -> String {
    let status = if local_endpoints > 0 && proxy_healthy {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = body(key, local_endpoints, proxy_healthy);
    let length = body.len();
    let body = if head { "" } else { body.as_str() };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    )
}

/// Reads one request head from `conn` and answers it with the service's state at that moment.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    key: &Metadata,
    local_endpoints: &AtomicUsize,
    metrics: &Metrics,
) {
    // A client that sends nothing gets nothing; one that stops mid-request gets the answer.
    let head = read_head(&mut conn).await;
    if head.is_empty() {
        return;
    }
    let is_head = head.starts_with(b"HEAD ");
    let reply = response(
        key,
        local_endpoints.load(Ordering::Relaxed),
        metrics.ready.load(Ordering::Relaxed),
        is_head,
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Accepts connections on `listener` until the task is aborted (which closes the port).
async fn serve(
    listener: TcpListener,
    key: Metadata,
    local_endpoints: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let key = Arc::new(key);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let (key, local_endpoints, metrics) =
            (key.clone(), local_endpoints.clone(), metrics.clone());
        tokio::spawn(async move { answer(conn, &key, &local_endpoints, &metrics).await });
    }
}

/// One service's health check: its port, its count, and its server while the port is bound.
struct Served {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    server: Option<JoinHandle<()>>,
}

/// The node's health-check listeners, owned by the programming thread.
pub struct HealthChecks {
    runtime: Handle,
    listen_ip: Ipv4Addr,
    pod_cidr: Ipv4Network,
    metrics: Arc<Metrics>,
    served: BTreeMap<Metadata, Served>,
}

impl HealthChecks {
    /// Listeners are spawned on `runtime` (called from outside it); endpoints in `pod_cidr` are
    /// local.
    pub fn new(runtime: Handle, pod_cidr: Ipv4Network, metrics: Arc<Metrics>) -> Self {
        Self {
            runtime,
            listen_ip: LISTEN_IP,
            pod_cidr,
            metrics,
            served: BTreeMap::new(),
        }
    }

    /// What `svc` asks of this node's health server.
    pub fn check(&self, svc: &Service) -> Option<Check> {
        check_of(svc, self.pod_cidr)
    }

    /// Service `key` now asks for `check` (`None`: no health check, or no such service).
    pub fn set(&mut self, key: &Metadata, check: Option<Check>) {
        self.update(key, check);
        self.count_open();
    }

    /// A full list: exactly the services of `checks` have health checks.
    pub fn replace_all(&mut self, checks: &BTreeMap<Metadata, Check>) {
        let gone: Vec<Metadata> = self
            .served
            .keys()
            .filter(|k| !checks.contains_key(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.close(key);
        }
        for (key, check) in checks {
            self.update(key, Some(*check));
        }
        self.count_open();
    }

    fn update(&mut self, key: &Metadata, check: Option<Check>) {
        let Some(check) = check else {
            self.close(key);
            return;
        };
        if self.served.get(key).is_some_and(|s| s.port != check.port) {
            self.close(key);
        }
        let served = self.served.entry(key.clone()).or_insert_with(|| Served {
            port: check.port,
            local_endpoints: Arc::default(),
            server: None,
        });
        served
            .local_endpoints
            .store(check.local_endpoints, Ordering::Relaxed);
        if served.server.is_none() {
            let addr = SocketAddrV4::new(self.listen_ip, check.port);
            served.server = listen(
                &self.runtime,
                addr,
                key,
                served.local_endpoints.clone(),
                &self.metrics,
            );
        }
    }

    /// Stops service `key`'s server and waits until its port is closed (so the port can be
    /// bound again at once).
    fn close(&mut self, key: &Metadata) {
        let Some(served) = self.served.remove(key) else {
            return;
        };
        if let Some(server) = served.server {
            server.abort();
            // The programming thread is outside the runtime, so it may wait on it.
            let _ = self.runtime.block_on(server);
            eprintln!(
                "podnet agent: health check of {key} on port {} closed",
                served.port
            );
        }
    }

    fn count_open(&self) {
        let open = self.served.values().filter(|s| s.server.is_some()).count();
        self.metrics
            .health_check_ports
            .store(open as u64, Ordering::Relaxed);
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for served in self.served.values() {
            if let Some(server) = &served.server {
                server.abort();
            }
        }
    }
}

/// Binds `addr` and serves service `key` there; `None` (logged and counted) when the port
/// cannot be bound.
fn listen(
    runtime: &Handle,
    addr: SocketAddrV4,
    key: &Metadata,
    local_endpoints: Arc<AtomicUsize>,
    metrics: &Arc<Metrics>,
) -> Option<JoinHandle<()>> {
    let bound = std::net::TcpListener::bind(addr).and_then(|listener| {
        listener.set_nonblocking(true)?;
        let _runtime = runtime.enter();
        TcpListener::from_std(listener)
    });
    match bound {
        Ok(listener) => {
            eprintln!("podnet agent: health check of {key} on {addr}");
            Some(runtime.spawn(serve(
                listener,
                key.clone(),
                local_endpoints,
                metrics.clone(),
            )))
        }
        Err(e) => {
            metrics
                .health_check_bind_failures
                .fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "podnet agent: health check of {key}: cannot listen on {addr}: {e} (tried again at the service's next change)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::model::service::{Conditions, Endpoint};

    fn key() -> Metadata {
        Metadata {
            name: "web".to_owned(),
            namespace: "shop".to_owned(),
        }
    }

    #[test]
    fn the_response_is_kube_proxys() {
        let ok = response(&key(), 2, true, false);
        let (head, body) = ok.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
        let headers: Vec<&str> = lines.collect();
        for h in [
            "Content-Type: application/json",
            "X-Content-Type-Options: nosniff",
            &format!("Content-Length: {}", body.len()),
        ] {
            assert!(headers.contains(&h), "{h} in {headers:?}");
        }
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let parsed: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"service": {"namespace": "shop", "name": "web"},
                               "localEndpoints": 2, "serviceProxyHealthy": true})
        );

        let none = response(&key(), 0, true, false);
        assert!(
            none.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{none}"
        );
        assert!(none.contains("\"localEndpoints\": 0,"), "{none}");
        let syncing = response(&key(), 3, false, false);
        assert!(syncing.starts_with("HTTP/1.1 503 "), "{syncing}");
        assert!(
            syncing.contains("\"serviceProxyHealthy\": false"),
            "{syncing}"
        );
        let head = response(&key(), 1, true, true);
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn local_endpoints_are_ready_ones_in_the_pod_cidr() {
        let endpoint = |ip: [u8; 4], ready: bool| Endpoint {
            addresses: vec![std::net::IpAddr::V4(Ipv4Addr::from(ip))],
            conditions: Conditions {
                ready,
                serving: true,
                terminating: !ready,
            },
            node_name: None,
        };
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"port": 80, "nodePort": 30080}],
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}
        }))
        .expect("service");
        svc.endpoints = vec![
            endpoint([10, 244, 1, 2], true),
            endpoint([10, 244, 1, 3], false),
            endpoint([10, 244, 2, 2], true),
            endpoint([10, 244, 1, 4], true),
        ];
        let cidr: Ipv4Network = "10.244.1.0/24".parse().expect("cidr");
        assert_eq!(
            check_of(&svc, cidr),
            Some(Check {
                port: 32000,
                local_endpoints: 2
            })
        );
        let other: Ipv4Network = "10.244.3.0/24".parse().expect("cidr");
        assert_eq!(check_of(&svc, other).map(|c| c.local_endpoints), Some(0));
        svc.spec.external_traffic_policy = TrafficPolicy::Cluster;
        assert_eq!(check_of(&svc, cidr), None, "only eTP Local has one");
        svc.spec.external_traffic_policy = TrafficPolicy::Local;
        svc.spec.health_check_node_port = None;
        assert_eq!(check_of(&svc, cidr), None);
    }

    #[test]
    fn any_request_is_answered_and_a_silent_client_is_not() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let metrics = Metrics::default();
        metrics.ready.store(true, Ordering::Relaxed);
        let count = AtomicUsize::new(1);
        runtime.block_on(async {
            for (request, status, with_body) in [
                ("GET /anything HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", true),
                ("HEAD / HTTP/1.0\r\n\r\n", "200 OK", false),
            ] {
                let (mut client, server) = tokio::io::duplex(8192);
                client.write_all(request.as_bytes()).await.expect("write");
                answer(server, &key(), &count, &metrics).await;
                let mut reply = String::new();
                client.read_to_string(&mut reply).await.expect("read");
                assert!(
                    reply.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                    "{reply}"
                );
                assert_eq!(
                    reply.contains("\"localEndpoints\": 1"),
                    with_body,
                    "{reply}"
                );
            }
            // A request in several segments is read whole before the answer.
            let (mut client, server) = tokio::io::duplex(8192);
            let answered = tokio::spawn(async move {
                let metrics = Metrics::default();
                metrics.ready.store(true, Ordering::Relaxed);
                answer(server, &key(), &AtomicUsize::new(1), &metrics).await;
            });
            for part in ["GET ", "/ HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
                client.write_all(part.as_bytes()).await.expect("write");
                tokio::task::yield_now().await;
            }
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.expect("read");
            answered.await.expect("answered");
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
            count.store(0, Ordering::Relaxed);
            let (mut client, server) = tokio::io::duplex(8192);
            client
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            answer(server, &key(), &count, &metrics).await;
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.expect("read");
            assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
            // A client that closes without a request gets nothing.
            let (client, server) = tokio::io::duplex(8192);
            drop(client);
            answer(server, &key(), &count, &metrics).await;
        });
    }
}
