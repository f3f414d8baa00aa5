//! What the CLI prints: each operation's report as text (`--json` prints the report itself).

use podnet::{
    datapath::loader,
    model::{nodeport::NodePort, peer::PeerNode, pod::PodRecord},
    ops::{
        collector::Collector,
        conntrack::{self, Flow, GcReport as CtGcReport},
        gc::GcReport,
        monitor::{DropView, MonitorSummary},
        node::{InitReport, NodeStatus, ResetReport},
        nodeport::ApplySummary,
        pod::DelReport,
        service::{ApplyReport as ServiceApply, ServiceView},
        stats::{MapsView, Stats},
    },
};
use serde::Serialize;

/// Prints `value` as pretty JSON, or as `text` renders it.
pub fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("reports always serialize")
        );
    } else {
        println!("{}", text(value));
    }
}

/// Prints one line: `value` as compact JSON, or its text.
pub fn print_line<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).expect("reports always serialize")
        );
    } else {
        println!("{}", text(value));
    }
}

/// `podnet monitor`: one event, like `cilium monitor --type drop`.
pub fn drop_event(v: &DropView) -> String {
    let r = &v.record;
    let p = &r.packet;
    let end = |addr: Option<std::net::IpAddr>, port: Option<u16>| match (addr, port) {
        (Some(a), Some(port)) => std::net::SocketAddr::new(a, port).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".to_owned(),
    };
    let mut line = String::new();
    if r.suppressed_before > 0 {
        line.push_str(&format!(
            "({} earlier event(s) not reported: rate limit or full buffer)\n",
            r.suppressed_before
        ));
    }
    let verb = if r.action == "answered" {
        "reject"
    } else {
        "drop"
    };
    let ifname = v.ifname.as_deref().unwrap_or("?");
    line.push_str(&format!(
        "{verb} reason={} {} if={ifname}({}) ",
        r.reason, r.hook, r.ifindex
    ));
    match p.l3.as_deref() {
        Some("ipv4" | "ipv6") => {
            line.push_str(&format!(
                "{} -> {}",
                end(p.src, p.sport),
                end(p.dst, p.dport)
            ));
            if let Some(proto) = &p.proto {
                line.push_str(&format!(" {proto}"));
            }
            if let Some((kind, code)) = p.icmp {
                line.push_str(&format!(" type={kind} code={code}"));
            }
            if p.fragment {
                line.push_str(" fragment");
            }
        }
        Some(other) => line.push_str(&format!("ethertype={other}")),
        None => line.push_str("(unreadable)"),
    }
    line.push_str(&format!(" len={}", r.len));
    line
}

/// `podnet monitor`'s last line (on stderr).
pub fn monitor_summary(s: &MonitorSummary) -> String {
    format!(
        "{} event(s) shown; node totals: {} held back by the rate limit, {} lost to a full buffer",
        s.events, s.totals.suppressed, s.totals.lost
    )
}

/// `node init` and the collector it started.
#[derive(Serialize)]
pub struct InitView {
    #[serde(flatten)]
    pub report: InitReport,
    pub collector: Collector,
}

pub fn init(v: &InitView) -> String {
    let r = &v.report;
    format!(
        "node ready: node IP {}, pod CIDR {} (gateway {} on {}), uplink {}{}\n{}\n{}",
        r.settings
            .node_ip
            .map_or_else(String::new, |ip| ip.to_string()),
        r.settings.pod_cidr,
        r.settings.gateway(),
        r.settings.bridge,
        r.settings.uplink,
        ipv6_line(&r.settings),
        loader::describe(&r.load),
        v.collector
    )
}

/// The IPv6 half of a dual-stack node, as a line of its own (empty on an IPv4-only node).
fn ipv6_line(s: &podnet::config::NodeSettings) -> String {
    match (s.pod_cidr6, s.gateway6()) {
        (Some(cidr), Some(gateway)) => format!(
            "\nIPv6: pod CIDR {cidr} (gateway {gateway} on {}), cluster CIDR {}, node IPv6 {} (routed by the kernel)",
            s.bridge,
            s.effective_cluster_cidr6().unwrap_or(cidr),
            s.node_ip6
                .map_or_else(|| "none".to_owned(), |ip| ip.to_string()),
        ),
        _ => String::new(),
    }
}

pub fn status(s: &NodeStatus) -> String {
    format!(
        "node: {} pod CIDR {} cluster CIDR {} uplink {} bridge {}\npins: {}\nprograms: {}\nattached to: {}\npods: {}  endpoints: {}  IPs allocated: {}  ready: {}",
        s.settings
            .node_ip
            .map_or_else(String::new, |ip| ip.to_string()),
        s.settings.pod_cidr,
        s.settings.cluster_cidr,
        s.settings.uplink,
        s.settings.bridge,
        s.settings.pin_dir.display(),
        s.programs.join(", "),
        s.attached.join(", "),
        s.pods,
        s.endpoints,
        s.ipam_allocated,
        s.ready,
    ) + &ipv6_line(&s.settings)
        + &if s.settings.pod_cidr6.is_some() {
            format!("  IPv6 IPs allocated: {}", s.ipam_allocated6)
        } else {
            String::new()
        }
}

pub fn reset(r: &ResetReport) -> String {
    format!(
        "node reset: {} pod(s) deleted, {} pin(s) removed, {} CNI attachment record(s) removed, {} chained attachment(s) detached, {} peer route(s) removed, bridge deleted: {}, conntrack collector stopped: {}",
        r.pods_deleted.len(),
        r.pins_removed,
        r.cni_records_removed,
        r.chained_detached,
        r.peer_routes_removed,
        r.bridge_deleted,
        r.collector_stopped
    )
}

pub fn pod_added(r: &PodRecord) -> String {
    let v6 = match (r.address6, r.gateway6) {
        (Some(address), Some(gateway)) => format!(" and {address} (gateway {gateway})"),
        _ => String::new(),
    };
    format!(
        "pod {} added: {} on {} (mac {}), gateway {}{v6}, netns {}, host veth {}",
        r.name,
        r.address,
        r.ifname,
        r.mac,
        r.gateway,
        r.netns.display(),
        r.host_if
    )
}

pub fn pod_deleted(r: &DelReport) -> String {
    if r.existed || r.veth_removed || !r.released.is_empty() {
        format!("pod {} deleted", r.name)
    } else {
        format!("pod {} was already gone", r.name)
    }
}

pub fn pods(pods: &[PodRecord]) -> String {
    let mut out = format!(
        "{:<20} {:<18} {:<18} {:<12} NETNS",
        "NAME", "IP", "MAC", "HOST-VETH"
    );
    for p in pods {
        out.push_str(&format!(
            "\n{:<20} {:<18} {:<18} {:<12} {}",
            p.name,
            p.address,
            p.mac,
            p.host_if,
            p.netns.display()
        ));
        if let Some(address6) = p.address6 {
            out.push_str(&format!("\n{:<20} {address6}", ""));
        }
    }
    out
}

pub fn maps(v: &MapsView) -> String {
    let mut out = format!("CONFIG: {}\nENDPOINTS ({}):", v.config, v.endpoints.len());
    for e in &v.endpoints {
        out.push_str(&format!(
            "\n  {:<15} -> ifindex {:<5} mac {} netns {}",
            e.ip, e.ifindex, e.mac, e.netns_ino
        ));
    }
    if !v.endpoints6.is_empty() {
        out.push_str(&format!("\nENDPOINTS6 ({}):", v.endpoints6.len()));
        for e in &v.endpoints6 {
            out.push_str(&format!(
                "\n  {:<24} -> ifindex {:<5} mac {} netns {}",
                e.ip, e.ifindex, e.mac, e.netns_ino
            ));
        }
    }
    out
}

pub fn stats(v: &Stats) -> String {
    let mut out = format!("{:<26} {:>12} {:>14}", "REASON", "PACKETS", "BYTES");
    for s in &v.reasons {
        out.push_str(&format!(
            "\n{:<26} {:>12} {:>14}",
            s.reason, s.packets, s.bytes
        ));
    }
    out.push_str(&format!(
        "\nconntrack: {} of {} entries in use ({} flows)",
        v.conntrack.live,
        v.conntrack.limit,
        v.conntrack.live / 2
    ));
    out.push_str(&format!(
        "\nconntrack6: {} of {} entries in use ({} flows)",
        v.conntrack6.live,
        v.conntrack6.limit,
        v.conntrack6.live / 2
    ));
    for w in &v.warnings {
        out.push_str(&format!("\nWARNING: {w}"));
    }
    out
}

pub fn flows(flows: &[Flow]) -> String {
    let mut out = conntrack::header();
    for f in flows {
        out.push_str(&format!("\n{f}"));
    }
    out.push_str(&format!("\n{} entries", flows.len()));
    out
}

pub fn ct_gc(r: &CtGcReport) -> String {
    format!(
        "conntrack gc: scanned {} entries, removed {} dead, ended {} closed early (table above 3/4); {} of {} in use, IPv6 {} of {}",
        r.scanned, r.removed, r.evicted, r.usage.live, r.usage.limit, r.usage6.live, r.usage6.limit
    )
}

pub fn gc(r: &GcReport) -> String {
    format!(
        "gc: {} attachment(s), {} host port(s), {} half-made pod(s), {} veth(s), {} address(es), {} endpoint(s) and {} temporary file(s) freed; {} socket program(s) of dead nodes detached",
        r.attachments.len(),
        r.host_ports,
        r.pods.len(),
        r.veths.len(),
        r.addresses.len(),
        r.endpoints.len() + r.endpoints6.len(),
        r.temp_files,
        r.sock_programs.len()
    )
}

pub fn peer(p: &PeerNode) -> String {
    let mut out = format!("{} {} via {}", p.name, p.pod_cidr, p.node_ip);
    if let (Some(cidr6), Some(ip6)) = (p.pod_cidr6, p.node_ip6) {
        out.push_str(&format!(", {cidr6} via {ip6}"));
    }
    out
}

pub fn peers(peers: &[PeerNode]) -> String {
    let mut out = format!("{:<20} {:<18} NODE-IP", "NAME", "POD-CIDR");
    for p in peers {
        out.push_str(&format!(
            "\n{:<20} {:<18} {}",
            p.name,
            p.pod_cidr.to_string(),
            p.node_ip
        ));
        if let (Some(cidr6), Some(ip6)) = (p.pod_cidr6, p.node_ip6) {
            out.push_str(&format!("\n{:<20} {:<18} {ip6}", "", cidr6.to_string()));
        }
    }
    out
}

fn backends(np: &NodePort) -> String {
    np.backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `PORT/PROTO -> backends`.
pub fn nodeport(np: &NodePort) -> String {
    format!("{}/{} -> {}", np.port, np.proto, backends(np))
}

pub fn nodeports(ports: &[NodePort]) -> String {
    let mut out = format!("{:<7} {:<5} BACKENDS", "PORT", "PROTO");
    for np in ports {
        out.push_str(&format!(
            "\n{:<7} {:<5} {}",
            np.port,
            np.proto,
            backends(np)
        ));
    }
    out
}

pub fn applied(s: &ApplySummary) -> String {
    format!(
        "nodeports applied: {} added, {} updated, {} removed, {} unchanged",
        s.added, s.updated, s.removed, s.unchanged
    )
}

pub fn services_applied(r: &ServiceApply) -> String {
    format!(
        "services applied: {} added, {} updated, {} removed, {} unchanged; {} frontends with {} backend slots ({} written, {} removed) in {} ms",
        r.added,
        r.updated,
        r.removed,
        r.unchanged,
        r.frontends,
        r.backends,
        r.frontends_written,
        r.frontends_removed,
        r.elapsed_ms
    ) + &stale(&r.stale)
}

/// `; N backends left (F flow entries, S sockets removed)`, when any backend left.
fn stale(s: &podnet::ops::stale::StaleReport) -> String {
    if s.backends_left == 0 {
        return String::new();
    }
    let mut out = format!(
        "; {} backends left ({} flow entries, {} sockets removed)",
        s.backends_left, s.flow_entries_removed, s.sockets_destroyed
    );
    for e in &s.socket_errors {
        out.push_str(&format!("\nsockets not cleaned in {e}"));
    }
    out
}

fn frontends(v: &ServiceView) -> String {
    v.frontends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn services(views: &[ServiceView]) -> String {
    let mut out = format!(
        "{:<32} {:<12} {:<44} ENDPOINTS",
        "SERVICE", "TYPE", "FRONTENDS"
    );
    for v in views {
        out.push_str(&format!(
            "\n{:<32} {:<12} {:<44} {}",
            format!("{}/{}", v.namespace, v.name),
            v.service_type,
            frontends(v),
            v.backends.join(", ")
        ));
    }
    out
}

pub fn service(v: &ServiceView) -> String {
    let spec = &v.service.spec;
    let ports: Vec<String> = spec
        .ports
        .iter()
        .map(|p| {
            let node_port = p
                .node_port
                .map_or_else(String::new, |n| format!(" nodePort {n}"));
            format!("{}/{} -> {}{node_port}", p.port, p.protocol, p.target())
        })
        .collect();
    format!(
        "service {}/{} ({})\nfrontends: {}\nports: {}\nendpoints: {}\nexternalTrafficPolicy {:?}, internalTrafficPolicy {:?}, sessionAffinity {:?}",
        v.namespace,
        v.name,
        v.service_type,
        frontends(v),
        ports.join(", "),
        v.backends.join(", "),
        spec.external_traffic_policy,
        spec.internal_traffic_policy,
        spec.session_affinity,
    )
}
