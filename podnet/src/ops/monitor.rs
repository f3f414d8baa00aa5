//! `podnet monitor`: follows the datapath's drop and refusal events live, filtered by reason,
//! until interrupted, a count of events, or a time limit. Events already in the ring when it
//! starts (from before anyone listened) are skipped.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use podnet_ebpf::abi::{monitor::is_reported_name, reason};
use serde::Serialize;

use super::{
    Ctx,
    error::{Error, Result},
};
use crate::{
    datapath::monitor::{self, BudgetTotals, DropRecord, EventRing},
    sys::{link, process},
};

/// The longest the loop waits before looking at the stop signal and the time limit again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What to follow and for how long.
#[derive(Debug, Clone, Default)]
pub struct MonitorOptions {
    /// Only these reasons (names as in `podnet stats`); empty: every reported reason.
    pub reasons: Vec<String>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// One event as `podnet monitor` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DropView {
    #[serde(flatten)]
    pub record: DropRecord,
    /// The interface's name in the node's namespace (absent if it is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// How following ended.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorSummary {
    pub events: u64,
    /// The rate limit's totals for the node (since its maps were created).
    pub totals: BudgetTotals,
}

/// The reasons `podnet monitor` can show: every `drop_*` and `reject_*` one.
pub fn reported_reasons() -> Vec<&'static str> {
    reason::NAMES
        .iter()
        .copied()
        .filter(|name| is_reported_name(name))
        .collect()
}

/// Checks `names` against the reported reasons.
pub fn check_reasons(names: &[String]) -> Result<()> {
    let valid = reported_reasons();
    match names.iter().find(|n| !valid.contains(&n.as_str())) {
        Some(name) => Err(Error::UnknownReason {
            name: name.clone(),
            valid: valid.join(", "),
        }),
        None => Ok(()),
    }
}

/// A node's event ring, open and ready: events from now on are followed.
pub struct Monitor {
    ring: EventRing,
    opts: MonitorOptions,
    pin_dir: std::path::PathBuf,
    started_ns: u64,
}

impl Monitor {
    /// Checks the options and opens the ring; from here SIGINT and SIGTERM end [`Self::run`]
    /// instead of the process.
    pub fn open(ctx: &Ctx, opts: MonitorOptions) -> Result<Self> {
        check_reasons(&opts.reasons)?;
        let pin_dir = ctx.settings.pin_dir.clone();
        let ring = EventRing::open(&pin_dir)?;
        process::on_stop_signal();
        Ok(Self {
            ring,
            opts,
            pin_dir,
            started_ns: process::monotonic_ns(),
        })
    }

    /// Gives each event that passes the filter to `emit`, until SIGINT or SIGTERM,
    /// `opts.count` events or `opts.duration`.
    pub fn run(mut self, mut emit: impl FnMut(&DropView)) -> Result<MonitorSummary> {
        let opts = &self.opts;
        let deadline = opts.duration.map(|d| Instant::now() + d);
        let mut names: HashMap<u32, Option<String>> = HashMap::new();
        let mut events = 0u64;
        let done = |events: u64| opts.count.is_some_and(|n| events >= n);
        while !done(events)
            && !process::stop_requested()
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            self.ring.wait(POLL_INTERVAL);
            while let Some(event) = self.ring.next_event() {
                if event.ktime_ns < self.started_ns {
                    continue;
                }
                let record = DropRecord::decode(&event);
                if !opts.reasons.is_empty() && !opts.reasons.contains(&record.reason) {
                    continue;
                }
                let ifname = names
                    .entry(record.ifindex)
                    .or_insert_with(|| link::ifname(record.ifindex))
                    .clone();
                emit(&DropView { record, ifname });
                events += 1;
                if done(events) {
                    break;
                }
            }
        }
        Ok(MonitorSummary {
            events,
            totals: monitor::budget_totals(&self.pin_dir)?,
        })
    }
}
