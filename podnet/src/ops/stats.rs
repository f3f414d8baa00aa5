//! What `podnet stats` and `podnet maps` report: the per-reason counters, conntrack
//! occupancy, the warnings an operator cannot miss, and the configuration and endpoints as the
//! programs see them.

use podnet_ebpf::abi::NodeConfig;
use serde::Serialize;

use super::{
    Ctx,
    conntrack::{self, Usage},
    error::Result,
};
use crate::datapath::maps::{ConfigView, Endpoint6Entry, EndpointEntry, ReasonCount};

/// `podnet stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub reasons: Vec<ReasonCount>,
    pub conntrack: Usage,
    /// The IPv6 table (`CONNTRACK6`).
    pub conntrack6: Usage,
    /// New flows being refused, one line per cause (empty when none are).
    pub warnings: Vec<String>,
}

pub fn stats(ctx: &Ctx) -> Result<Stats> {
    let maps = ctx.maps()?;
    let reasons = maps.stats()?;
    let config = maps.config()?;
    Ok(Stats {
        warnings: warnings(&reasons, &config),
        conntrack: conntrack::usage(&maps)?,
        conntrack6: conntrack::usage_of::<podnet_ebpf::abi::Addr6>(&maps)?,
        reasons,
    })
}

/// One line per cause of refused new flows (the counters are cumulative since the maps were
/// created).
fn warnings(reasons: &[ReasonCount], config: &NodeConfig) -> Vec<String> {
    let packets = |reason: &str| {
        reasons
            .iter()
            .find(|r| r.reason == reason)
            .map_or(0, |r| r.packets)
    };
    let mut warnings = Vec::new();
    let ct_full = packets("drop_ct_full");
    if ct_full > 0 {
        warnings.push(format!(
            "conntrack table full: {ct_full} packet(s) of new flows refused; raise --conntrack-max or run `podnet conntrack gc`"
        ));
    }
    let no_port = packets("drop_nat_no_port");
    if no_port > 0 {
        warnings.push(format!(
            "SNAT ports exhausted: {no_port} packet(s) of new flows refused, no free port in {}-{} toward their destination; widen --snat-ports or run `podnet conntrack gc`",
            config.snat_port_min, config.snat_port_max
        ));
    }
    warnings
}

/// `podnet maps`.
#[derive(Debug, Clone, Serialize)]
pub struct MapsView {
    pub config: ConfigView,
    pub endpoints: Vec<EndpointEntry>,
    /// IPv6 endpoints (dual-stack nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints6: Vec<Endpoint6Entry>,
}

pub fn maps(ctx: &Ctx) -> Result<MapsView> {
    let maps = ctx.maps()?;
    Ok(MapsView {
        config: maps.config()?.into(),
        endpoints: maps.endpoints()?,
        endpoints6: maps.endpoints6()?,
    })
}
