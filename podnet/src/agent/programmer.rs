//! The agent's programming thread: it owns the node's operation context (maps, netlink) and
//! applies the changes the watches produce, one at a time and in order, recording the time
//! from each API event to its map write (the cleanup of flows and sockets of backends a change
//! removed follows the write, outside that time, before the next change). It also runs
//! `node init` first, and the conntrack collector beside it, and keeps the health-check node
//! ports ([`super::health`]) in step with the service table. (Operations block on their own
//! netlink runtime, so they run here and not on the agent's async workers.)

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use super::{AgentError, health::HealthChecks, metrics::Metrics};
use crate::{
    config::NodeSettings,
    model::{peer::PeerNode, service::Metadata, service::Service},
    ops::{self, Ctx},
};

/// What the watches ask for.
pub enum Work {
    Peers(Vec<PeerNode>),
    Upsert(Service, Instant),
    Remove(Metadata, Instant),
    /// A full list: make the table exactly `services`.
    ReplaceAll {
        services: Vec<Service>,
        since: Instant,
        /// The agent's start, on the first full sync (which makes the agent ready).
        first_sync_of: Option<Instant>,
    },
}

/// The sending side.
pub struct Handle {
    tx: mpsc::Sender<Work>,
    /// The node's settings as `node init` completed them (e.g. the node's IPv6 address found
    /// on the uplink): what peers are checked against.
    pub settings: NodeSettings,
}

impl Handle {
    pub fn send(&self, work: Work) {
        // The thread only ends with the process.
        let _ = self.tx.send(work);
    }
}

/// The table is saved once the agent has been idle this long after a change (the maps are
/// written at once; the file only lets `podnet service list` see the table, and a restart
/// compares with the maps anyway), so saving never delays a change.
const SAVE_WHEN_IDLE: Duration = Duration::from_secs(2);

/// Runs `node init` from `settings`, starts the collector, and starts the programming thread.
pub fn start(
    settings: NodeSettings,
    metrics: Arc<Metrics>,
    mut health: HealthChecks,
) -> Result<Handle, AgentError> {
    let report = ops::node::check(settings)?.init()?;
    let settings = report.settings;
    if settings.gc_interval > 0 {
        let every = Duration::from_secs(u64::from(settings.gc_interval));
        let collector = Ctx::new(settings.clone());
        std::thread::Builder::new()
            .name("podnet-collector".to_owned())
            .spawn(move || {
                if let Err(e) = ops::collector::run(&collector, every, |_| {}) {
                    eprintln!("podnet agent: conntrack collector: {e}");
                }
            })?;
    }
    let ctx = Ctx::new(settings.clone());
    let mut table = ops::service::Programmed::load(&ctx)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("podnet-programmer".to_owned())
        .spawn(move || program(&ctx, &mut table, &rx, &metrics, &mut health))?;
    Ok(Handle { tx, settings })
}

fn program(
    ctx: &Ctx,
    table: &mut ops::service::Programmed,
    rx: &mpsc::Receiver<Work>,
    metrics: &Metrics,
    health: &mut HealthChecks,
) {
    let mut dirty = false;
    loop {
        match rx.recv_timeout(SAVE_WHEN_IDLE) {
            Ok(work) => dirty |= apply(ctx, table, work, metrics, health),
            Err(mpsc::RecvTimeoutError::Timeout) if dirty => {
                if let Err(e) = table.save(ctx) {
                    eprintln!("podnet agent: saving the service table: {e}");
                }
                dirty = false;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Applies one change (then the health checks follow what the maps hold); whether the service
/// table changed.
fn apply(
    ctx: &Ctx,
    table: &mut ops::service::Programmed,
    work: Work,
    metrics: &Metrics,
    health: &mut HealthChecks,
) -> bool {
    let (result, since, table_changed) = match work {
        Work::Peers(peers) => {
            let n = peers.len() as u64;
            let done = ops::peer::replace(ctx, peers);
            if done.is_ok() {
                metrics.peers_programmed.store(n, Ordering::Relaxed);
            }
            (done, None, false)
        }
        Work::Upsert(svc, since) => {
            let (key, check) = (svc.metadata.clone(), health.check(&svc));
            let done = table.upsert(ctx, svc).map(drop);
            if done.is_ok() {
                health.set(&key, check);
            }
            (done, Some(since), true)
        }
        Work::Remove(key, since) => {
            let done = table.remove(ctx, &key).map(drop);
            if done.is_ok() {
                health.set(&key, None);
            }
            (done, Some(since), true)
        }
        Work::ReplaceAll {
            services,
            since,
            first_sync_of,
        } => {
            let checks: BTreeMap<Metadata, _> = services
                .iter()
                .filter_map(|s| Some((s.metadata.clone(), health.check(s)?)))
                .collect();
            let done = table.replace_all(ctx, services).map(drop);
            if let Some(start) = first_sync_of {
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                metrics.initial_sync_ms.store(ms, Ordering::Relaxed);
                metrics.ready.store(done.is_ok(), Ordering::Relaxed);
            }
            if done.is_ok() {
                health.replace_all(&checks);
            }
            (done, Some(since), true)
        }
    };
    match result {
        Ok(()) => {
            if let Some(since) = since {
                metrics.observe_programming(since.elapsed());
            }
            let (services, backends) = table.size();
            metrics
                .services_programmed
                .store(services as u64, Ordering::Relaxed);
            metrics
                .backends_programmed
                .store(backends as u64, Ordering::Relaxed);
        }
        Err(e) => {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("podnet agent: programming: {e}");
        }
    }
    // The change is in the maps (and its latency recorded): now what still points at
    // backends it removed goes, before the next change is taken.
    if let Err(e) = table.forget_stale(ctx) {
        eprintln!("podnet agent: flows and sockets of a backend that left: {e}");
    }
    for e in table.take_stale_errors() {
        eprintln!("podnet agent: sockets of a backend that left: {e}");
    }
    table_changed
}

/// The datapath's series for `/metrics`: per-reason packet counters, conntrack occupancy and
/// SNAT port pressure, read from the maps at each scrape.
pub fn datapath_series(settings: &NodeSettings) -> String {
    use std::fmt::Write as _;
    let Ok(stats) = ops::stats::stats(&Ctx::new(settings.clone())) else {
        return String::new();
    };
    let mut out = String::from(
        "# HELP podnet_packets_total Packets the datapath handled, by reason.\n# TYPE podnet_packets_total counter\n",
    );
    for r in &stats.reasons {
        let _ = writeln!(
            out,
            "podnet_packets_total{{reason=\"{}\"}} {}",
            r.reason, r.packets
        );
    }
    let _ = writeln!(
        out,
        "# HELP podnet_conntrack_entries Conntrack entries in use.\n# TYPE podnet_conntrack_entries gauge\npodnet_conntrack_entries {}\n# HELP podnet_conntrack_limit Conntrack entries admitted.\n# TYPE podnet_conntrack_limit gauge\npodnet_conntrack_limit {}",
        stats.conntrack.live, stats.conntrack.limit
    );
    let no_port = stats
        .reasons
        .iter()
        .find(|r| r.reason == "drop_nat_no_port")
        .map_or(0, |r| r.packets);
    let _ = writeln!(
        out,
        "# HELP podnet_snat_port_exhausted_total Packets of new flows refused for want of a SNAT port.\n# TYPE podnet_snat_port_exhausted_total counter\npodnet_snat_port_exhausted_total {no_port}"
    );
    out
}
