//! The agent's own numbers and its HTTP endpoint: `/metrics` in Prometheus' text format,
//! `/healthz` (the process runs) and `/readyz` (the node is initialised and the first full
//! sync of nodes, services and endpoint slices is programmed). The datapath's counters are read
//! from the maps at each scrape, so they are never stale.

use std::{
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// Upper bounds (seconds) of the programming-latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A Prometheus histogram: cumulative bucket counts, sum and count.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
    /// Every observation, for percentiles in tests and benchmarks (bounded: the oldest go).
    recent: std::collections::VecDeque<f64>,
}

/// Observations kept for percentiles.
const RECENT_MAX: usize = 100_000;

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(seconds);
    }
}

/// What the agent counts.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    /// API events received, by resource (nodes, services, endpointslices).
    pub events_nodes: AtomicU64,
    pub events_services: AtomicU64,
    pub events_slices: AtomicU64,
    /// Relists (initial list, and every list after a watch expired or the server came back).
    pub relists: AtomicU64,
    /// Objects left out (kube-proxy's skips, and objects podnet cannot use).
    pub skipped: AtomicU64,
    /// Programming failures (the objects stay as they were in the maps).
    pub errors: AtomicU64,
    pub services_programmed: AtomicU64,
    pub backends_programmed: AtomicU64,
    pub peers_programmed: AtomicU64,
    /// Milliseconds the first full sync took, from the agent's start.
    pub initial_sync_ms: AtomicU64,
    /// Health-check node ports being served, and binds that failed (see [`super::health`]).
    pub health_check_ports: AtomicU64,
    pub health_check_bind_failures: AtomicU64,
    latency: Mutex<Histogram>,
}

impl Metrics {
    /// Records the time from an API event to its map write.
    pub fn observe_programming(&self, took: Duration) {
        if let Ok(mut h) = self.latency.lock() {
            h.observe(took.as_secs_f64());
        }
    }

    /// The `p`-th percentile (0-100) of the recorded programming latencies, in seconds.
    pub fn programming_percentile(&self, p: f64) -> Option<f64> {
        let h = self.latency.lock().ok()?;
        let mut v: Vec<f64> = h.recent.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v.get(rank.saturating_sub(1).min(v.len() - 1)).copied()
    }

    /// The programming-latency histogram and its recent percentiles.
    fn render_latency(&self, out: &mut String) {
        if let Ok(h) = self.latency.lock() {
            let name = "podnet_agent_programming_latency_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time from an API event to its map write.\n# TYPE {name} histogram"
            );
            for (bound, count) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(*out, "{name}_bucket{{le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                h.count, h.sum, h.count
            );
        }
        let recent = "podnet_agent_programming_latency_recent_seconds";
        let _ = writeln!(
            out,
            "# HELP {recent} Percentiles of the last {RECENT_MAX} programming latencies.\n# TYPE {recent} summary"
        );
        for q in [50.0, 99.0] {
            if let Some(v) = self.programming_percentile(q) {
                let _ = writeln!(*out, "{recent}{{quantile=\"{}\"}} {v}", q / 100.0);
            }
        }
    }

    /// The agent's own series in Prometheus' text format; `datapath` adds the maps' series.
    pub fn render(&self, datapath: &str) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "podnet_agent_ready",
            "1 once the first full sync is programmed.",
            "gauge",
            u64::from(self.ready.load(Ordering::Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP podnet_agent_api_events_total API watch events received.\n# TYPE podnet_agent_api_events_total counter"
        );
        for (resource, v) in [
            ("nodes", &self.events_nodes),
            ("services", &self.events_services),
            ("endpointslices", &self.events_slices),
        ] {
            let _ = writeln!(
                out,
                "podnet_agent_api_events_total{{resource=\"{resource}\"}} {}",
                load(v)
            );
        }
        gauge(
            &mut out,
            "podnet_agent_relists_total",
            "Full lists of the watched resources.",
            "counter",
            load(&self.relists),
        );
        gauge(
            &mut out,
            "podnet_agent_skipped_objects_total",
            "Objects left out (ExternalName, headless, another proxy's, unusable).",
            "counter",
            load(&self.skipped),
        );
        gauge(
            &mut out,
            "podnet_agent_programming_errors_total",
            "Changes that could not be programmed.",
            "counter",
            load(&self.errors),
        );
        gauge(
            &mut out,
            "podnet_services_programmed",
            "Services in the datapath.",
            "gauge",
            load(&self.services_programmed),
        );
        gauge(
            &mut out,
            "podnet_backends_programmed",
            "Backend slots in the datapath.",
            "gauge",
            load(&self.backends_programmed),
        );
        gauge(
            &mut out,
            "podnet_peers_programmed",
            "Other nodes in the datapath.",
            "gauge",
            load(&self.peers_programmed),
        );
        gauge(
            &mut out,
            "podnet_agent_initial_sync_milliseconds",
            "Time from start to the first full sync programmed.",
            "gauge",
            load(&self.initial_sync_ms),
        );
        gauge(
            &mut out,
            "podnet_agent_health_check_ports",
            "Health-check node ports served (eTP Local services).",
            "gauge",
            load(&self.health_check_ports),
        );
        gauge(
            &mut out,
            "podnet_agent_health_check_bind_failures_total",
            "Health-check node ports that could not be bound (in use).",
            "counter",
            load(&self.health_check_bind_failures),
        );
        self.render_latency(&mut out);
        out.push_str(datapath);
        out
    }
}

/// The longest request head read; the rest of a request is not looked at.
const MAX_REQUEST_HEAD: usize = 4096;
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads an HTTP request head from `conn`: until the blank line that ends it, the client's
/// end of stream, [`MAX_REQUEST_HEAD`] bytes or [`REQUEST_TIMEOUT`], whichever comes first
/// (a request may arrive in several segments). Empty when the client sent nothing.
pub async fn read_head<S: AsyncRead + Unpin>(conn: &mut S) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, read).await;
    head
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
/// `datapath` renders the maps' series at each scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    datapath: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, datapath) = (metrics.clone(), datapath.clone());
        tokio::spawn(async move {
            let head = read_head(&mut conn).await;
            let request = String::from_utf8_lossy(&head);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render(&datapath())),
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_owned()),
                "/readyz" => ("503 Service Unavailable", "syncing\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_text_format() {
        let m = Metrics::default();
        for ms in [1, 2, 3, 4, 50] {
            m.observe_programming(Duration::from_millis(ms));
        }
        let text = m.render("podnet_packets_total{reason=\"snat\"} 3\n");
        assert!(
            text.contains("podnet_agent_programming_latency_seconds_count 5"),
            "{text}"
        );
        assert!(
            text.contains("podnet_agent_programming_latency_seconds_bucket{le=\"0.0025\"} 2"),
            "{text}"
        );
        assert!(text.contains("podnet_packets_total{reason=\"snat\"} 3"));
        let p50 = m.programming_percentile(50.0).unwrap();
        assert!((p50 - 0.003).abs() < 1e-9, "{p50}");
    }
}
