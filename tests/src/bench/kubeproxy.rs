//! kube-proxy's rule layouts, written from a [`ServiceTable`]: the benchmark's baselines.
//!
//! Our own generators, written after reading kube-proxy's sources
//! (kubernetes/kubernetes `pkg/proxy/iptables/proxier.go` and `pkg/proxy/nftables/proxier.go`,
//! `syncProxyRules` and `setupNFTables`), producing what kube-proxy would hand to
//! `iptables-restore` and `nft -f` for the same services, with kube-proxy's chain names
//! (SHA-256 of the service port name, base32), comments, marks and rule order.
//!
//! Modelled configuration: IPv4 only, `--detect-local-mode ClusterCIDR` with `cluster_cidr`,
//! masquerade bit 14 (mark `0x004000`), `--nodeport-addresses` unset (all local addresses),
//! iptables `localhostNodePorts=false` (so no `route_localnet` and no `KUBE-FIREWALL`),
//! `masqueradeAll=false`, every service with Cluster traffic policies and no session affinity
//! (`KUBE-SVL-*` / `local-*` chains, `-m recent` / affinity sets are not generated).
//!
//! Left out of both, as not on a ClusterIP packet's path or not part of a single full sync:
//! the mangle `KUBE-PROXY-CANARY` chain, nfacct counters, the LoadBalancer source-range
//! firewall chains (`KUBE-FW-*`, `firewall-*`; the `firewall-ips` map and `KUBE-PROXY-FIREWALL`
//! chain exist but stay empty), kubelet's `KUBE-FIREWALL` rule, the stale-chain clean-up
//! of later syncs, healthCheckNodePort rules, and conntrack clean-up of UDP flows.

use std::{collections::BTreeMap, fmt::Write as _};

use sha2::{Digest as _, Sha256};

use crate::service_table::{Protocol, Service, ServicePort, ServiceTable};

/// kube-proxy's default `--masquerade-bit`.
pub const MASQUERADE_BIT: u32 = 14;
/// Above this many endpoints kube-proxy's iptables mode drops the per-endpoint comments
/// (`largeClusterEndpointsThreshold`).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// What kube-proxy needs besides the services.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster CIDR that `--detect-local-mode ClusterCIDR` treats as local (pod) sources.
    pub cluster_cidr: String,
}

/// The masquerade mark as kube-proxy prints it (`fmt.Sprintf("%#08x", 1<<bit)`).
pub fn masquerade_mark() -> String {
    format!("{:#08x}", 1u32 << MASQUERADE_BIT)
}

fn base32_sha256(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u64, 0u32);
    for byte in digest {
        buffer = (buffer << 8) | u64::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                ALPHABET[usize::try_from((buffer >> bits) & 31).unwrap_or(0)],
            ));
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[usize::try_from((buffer << (5 - bits)) & 31).unwrap_or(0)],
        ));
    }
    out
}

/// kube-proxy's `ServicePortName.String()`: `namespace/name`, plus `:port` for a named port.
pub fn service_port_name(svc: &Service, port: &ServicePort) -> String {
    if port.name.is_empty() {
        svc.namespaced_name()
    } else {
        format!("{}:{}", svc.namespaced_name(), port.name)
    }
}

/// iptables mode: `KUBE-SVC-` + the first 16 base32 characters of SHA-256(port name +
/// protocol) (`portProtoHash`).
pub fn svc_chain(port_name: &str, protocol: Protocol) -> String {
    format!(
        "KUBE-SVC-{}",
        &base32_sha256(&format!("{port_name}{}", protocol.lower()))[..16]
    )
}

/// iptables mode: the `KUBE-EXT-` chain of a service port reachable from outside.
pub fn ext_chain(port_name: &str, protocol: Protocol) -> String {
    format!(
        "KUBE-EXT-{}",
        &base32_sha256(&format!("{port_name}{}", protocol.lower()))[..16]
    )
}

/// iptables mode: `KUBE-SEP-` + 16 characters of SHA-256(port name + protocol + `IP:PORT`).
pub fn sep_chain(port_name: &str, protocol: Protocol, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        &base32_sha256(&format!("{port_name}{}{endpoint}", protocol.lower()))[..16]
    )
}

/// nftables mode: `hashAndTruncate`, 8 base32 characters of SHA-256(name), `-`, the name
/// (never longer than nft's limit for Kubernetes names, so never truncated here).
fn nft_hashed(name: &str) -> String {
    format!("{}-{name}", &base32_sha256(name)[..8])
}

/// nftables mode: `namespace/name/protocol/port`.
fn nft_port_base(svc: &Service, port: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        svc.metadata.namespace,
        svc.metadata.name,
        port.protocol.lower(),
        port.name
    )
}

/// nftables mode: the service chain `service-HASH-ns/name/proto/port`.
pub fn nft_service_chain(svc: &Service, port: &ServicePort) -> String {
    format!("service-{}", nft_hashed(&nft_port_base(svc, port)))
}

/// nftables mode: the external chain `external-HASH-ns/name/proto/port`.
pub fn nft_external_chain(svc: &Service, port: &ServicePort) -> String {
    format!("external-{}", nft_hashed(&nft_port_base(svc, port)))
}

/// nftables mode: the endpoint chain `endpoint-HASH-ns/name/proto/port__IP/PORT`.
pub fn nft_endpoint_chain(svc: &Service, port: &ServicePort, ip: &str) -> String {
    format!(
        "endpoint-{}",
        nft_hashed(&format!(
            "{}__{ip}/{}",
            nft_port_base(svc, port),
            port.target_port
        ))
    )
}

/// `1/n` as kube-proxy prints it (`%0.10f`).
fn probability(n: usize) -> String {
    #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
    let p = 1.0 / n as f64;
    format!("{p:.10}")
}

/// The frontends of one service port: (kind, address) for the ClusterIP, external IPs.
fn cluster_ips(svc: &Service) -> Vec<&str> {
    svc.frontend_cluster_ips().take(1).collect()
}

/// Whether traffic from outside can reach this port (NodePort or external IPs), which gives
/// it an external chain.
fn externally_accessible(svc: &Service, port: &ServicePort) -> bool {
    port.node_port.is_some() || !svc.spec.external_ips.is_empty()
}

/// Service ports kube-proxy programs: those of services with a ClusterIP.
fn service_ports(table: &ServiceTable) -> impl Iterator<Item = (&Service, &ServicePort)> {
    table
        .services
        .iter()
        .filter(|s| !cluster_ips(s).is_empty())
        .flat_map(|s| s.spec.ports.iter().map(move |p| (s, p)))
}

/// A small builder of iptables-restore lines.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn line(&mut self, parts: &[&str]) {
        let _ = writeln!(self.0, "{}", parts.join(" "));
    }
}

fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

/// kube-proxy's iptables mode for `table`: the `iptables-restore --noflush` input of one full
/// sync (filter and nat tables), with the jumps from the built-in chains that kube-proxy
/// ensures with separate `iptables -I` calls written as `-I` lines in the same input.
pub fn iptables_restore(table: &ServiceTable, cfg: &Config) -> String {
    iptables_transactions(table, cfg, usize::MAX).concat()
}

/// [`iptables_restore`] split into inputs of at most `per` service ports each (the first also
/// has kube-proxy's own chains, the last the `KUBE-NODEPORTS` jump), to be loaded one after
/// the other with `--noflush`: the same rules in the same order as one full sync.
pub fn iptables_transactions(table: &ServiceTable, cfg: &Config, per: usize) -> Vec<String> {
    let per = per.max(1);
    let mut parts: Vec<[Lines; 4]> = Vec::new();
    let mark = masquerade_mark();
    let total_endpoints: usize = service_ports(table)
        .map(|(s, _)| s.usable_endpoint_ips().len())
        .sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    let mut filter_chains = Lines::default();
    let mut filter_rules = Lines::default();
    let mut nat_chains = Lines::default();
    let mut nat_rules = Lines::default();
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        filter_chains.line(&[&format!(":{chain} - [0:0]")]);
    }
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        nat_chains.line(&[&format!(":{chain} - [0:0]")]);
    }
    // The jumps kube-proxy ensures (EnsureRule Prepend) from the built-in chains, in its
    // order; each prepends, as `-I` does.
    let new = "-m conntrack --ctstate NEW";
    for (chain, target, comment, extra) in [
        (
            "INPUT",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            new,
        ),
        (
            "FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            new,
        ),
        (
            "INPUT",
            "KUBE-NODEPORTS",
            "kubernetes health check service ports",
            "",
        ),
        (
            "FORWARD",
            "KUBE-SERVICES",
            "kubernetes service portals",
            new,
        ),
        ("OUTPUT", "KUBE-SERVICES", "kubernetes service portals", new),
        ("FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules", ""),
        (
            "INPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            new,
        ),
        (
            "OUTPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            new,
        ),
        (
            "FORWARD",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            new,
        ),
    ] {
        let mut parts = vec!["-I", chain];
        if !extra.is_empty() {
            parts.push(extra);
        }
        let comment = quoted(comment);
        parts.extend(["-m", "comment", "--comment", &comment, "-j", target]);
        filter_rules.line(&parts);
    }
    let portals = quoted("kubernetes service portals");
    nat_rules.line(&[
        "-I",
        "OUTPUT",
        "-m",
        "comment",
        "--comment",
        &portals,
        "-j",
        "KUBE-SERVICES",
    ]);
    nat_rules.line(&[
        "-I",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        &portals,
        "-j",
        "KUBE-SERVICES",
    ]);
    nat_rules.line(&[
        "-I",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        &quoted("kubernetes postrouting rules"),
        "-j",
        "KUBE-POSTROUTING",
    ]);
    let mark_mask = format!("{mark}/{mark}");
    nat_rules.line(&[
        "-A",
        "KUBE-POSTROUTING",
        "-m",
        "mark",
        "!",
        "--mark",
        &mark_mask,
        "-j",
        "RETURN",
    ]);
    nat_rules.line(&["-A", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", &mark]);
    nat_rules.line(&[
        "-A",
        "KUBE-POSTROUTING",
        "-m",
        "comment",
        "--comment",
        &quoted("kubernetes service traffic requiring SNAT"),
        "-j",
        "MASQUERADE",
        "--random-fully",
    ]);
    nat_rules.line(&["-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", &mark]);

    for (i, (svc, port)) in service_ports(table).enumerate() {
        if i > 0 && i % per == 0 {
            parts.push([
                std::mem::take(&mut filter_chains),
                std::mem::take(&mut filter_rules),
                std::mem::take(&mut nat_chains),
                std::mem::take(&mut nat_rules),
            ]);
        }
        let name = service_port_name(svc, port);
        let proto = port.protocol.lower();
        let vip = cluster_ips(svc)[0];
        let dport = port.port.to_string();
        let endpoints = svc.usable_endpoint_ips();
        let has_endpoints = !endpoints.is_empty();
        let svc_chain = svc_chain(&name, port.protocol);
        let ext_chain = ext_chain(&name, port.protocol);
        let external = has_endpoints && externally_accessible(svc, port);
        let cluster_comment = quoted(&format!("{name} cluster IP"));
        if has_endpoints {
            nat_rules.line(&[
                "-A",
                "KUBE-SERVICES",
                "-m",
                "comment",
                "--comment",
                &cluster_comment,
                "-m",
                proto,
                "-p",
                proto,
                "-d",
                vip,
                "--dport",
                &dport,
                "-j",
                &svc_chain,
            ]);
        } else {
            filter_rules.line(&[
                "-A",
                "KUBE-SERVICES",
                "-m",
                "comment",
                "--comment",
                &quoted(&format!("{name} has no endpoints")),
                "-m",
                proto,
                "-p",
                proto,
                "-d",
                vip,
                "--dport",
                &dport,
                "-j",
                "REJECT",
            ]);
        }
        for ip in &svc.spec.external_ips {
            if has_endpoints {
                nat_rules.line(&[
                    "-A",
                    "KUBE-SERVICES",
                    "-m",
                    "comment",
                    "--comment",
                    &quoted(&format!("{name} external IP")),
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "-d",
                    ip,
                    "--dport",
                    &dport,
                    "-j",
                    &ext_chain,
                ]);
            } else {
                filter_rules.line(&[
                    "-A",
                    "KUBE-EXTERNAL-SERVICES",
                    "-m",
                    "comment",
                    "--comment",
                    &quoted(&format!("{name} has no endpoints")),
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "-d",
                    ip,
                    "--dport",
                    &dport,
                    "-j",
                    "REJECT",
                ]);
            }
        }
        if let Some(node_port) = port.node_port {
            let node_port = node_port.to_string();
            if has_endpoints {
                nat_rules.line(&[
                    "-A",
                    "KUBE-NODEPORTS",
                    "-m",
                    "comment",
                    "--comment",
                    &name,
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "--dport",
                    &node_port,
                    "-j",
                    &ext_chain,
                ]);
            } else {
                filter_rules.line(&[
                    "-A",
                    "KUBE-EXTERNAL-SERVICES",
                    "-m",
                    "comment",
                    "--comment",
                    &quoted(&format!("{name} has no endpoints")),
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "--dport",
                    &node_port,
                    "-j",
                    "REJECT",
                ]);
            }
        }
        if !has_endpoints {
            continue;
        }
        // The service's own chains.
        nat_rules.line(&[
            "-A",
            &svc_chain,
            "-m",
            "comment",
            "--comment",
            &cluster_comment,
            "-m",
            proto,
            "-p",
            proto,
            "-d",
            vip,
            "--dport",
            &dport,
            "!",
            "-s",
            &cfg.cluster_cidr,
            "-j",
            "KUBE-MARK-MASQ",
        ]);
        if external {
            nat_chains.line(&[&format!(":{ext_chain} - [0:0]")]);
            nat_rules.line(&[
                "-A",
                &ext_chain,
                "-m",
                "comment",
                "--comment",
                &quoted(&format!(
                    "masquerade traffic for {name} external destinations"
                )),
                "-j",
                "KUBE-MARK-MASQ",
            ]);
            nat_rules.line(&["-A", &ext_chain, "-j", &svc_chain]);
        }
        nat_chains.line(&[&format!(":{svc_chain} - [0:0]")]);
        let n = endpoints.len();
        let seps: Vec<(String, String, &str)> = endpoints
            .iter()
            .map(|ip| {
                let ep = format!("{ip}:{}", port.target_port);
                (sep_chain(&name, port.protocol, &ep), ep, *ip)
            })
            .collect();
        for (i, (sep, ep, _)) in seps.iter().enumerate() {
            let mut parts = vec!["-A", svc_chain.as_str()];
            let comment = quoted(&format!("{name} -> {ep}"));
            if !large {
                parts.extend(["-m", "comment", "--comment", &comment]);
            }
            let p = probability(n - i);
            if i + 1 < n {
                parts.extend(["-m", "statistic", "--mode", "random", "--probability", &p]);
            }
            parts.extend(["-j", sep]);
            nat_rules.line(&parts);
        }
        for (sep, ep, ip) in &seps {
            nat_chains.line(&[&format!(":{sep} - [0:0]")]);
            let mut head = vec!["-A", sep.as_str()];
            if !large {
                head.extend(["-m", "comment", "--comment", &name]);
            }
            let mut masq = head.clone();
            masq.extend(["-s", ip, "-j", "KUBE-MARK-MASQ"]);
            nat_rules.line(&masq);
            let mut dnat = head;
            dnat.extend([
                "-m",
                proto,
                "-p",
                proto,
                "-j",
                "DNAT",
                "--to-destination",
                ep,
            ]);
            nat_rules.line(&dnat);
        }
    }
    nat_rules.line(&[
        "-A",
        "KUBE-SERVICES",
        "-m",
        "comment",
        "--comment",
        &quoted("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "!",
        "-d",
        "127.0.0.0/8",
        "-j",
        "KUBE-NODEPORTS",
    ]);
    filter_rules.line(&[
        "-A",
        "KUBE-FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ]);
    filter_rules.line(&[
        "-A",
        "KUBE-FORWARD",
        "-m",
        "comment",
        "--comment",
        &quoted("kubernetes forwarding rules"),
        "-m",
        "mark",
        "--mark",
        &mark_mask,
        "-j",
        "ACCEPT",
    ]);
    filter_rules.line(&[
        "-A",
        "KUBE-FORWARD",
        "-m",
        "comment",
        "--comment",
        &quoted("kubernetes forwarding conntrack rule"),
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ]);
    parts.push([filter_chains, filter_rules, nat_chains, nat_rules]);
    parts
        .into_iter()
        .map(|[fc, fr, nc, nr]| {
            format!(
                "*filter\n{}{}COMMIT\n*nat\n{}{}COMMIT\n",
                fc.0, fr.0, nc.0, nr.0
            )
        })
        .collect()
}

/// The rules (`-A`/`-I` lines) per `table/chain` in an iptables-restore input.
pub fn iptables_rule_counts(restore: &str) -> BTreeMap<String, usize> {
    let mut table = "";
    let mut counts = BTreeMap::new();
    for line in restore.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rest) = line
            .strip_prefix("-A ")
            .or_else(|| line.strip_prefix("-I "))
        {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            *counts.entry(format!("{table}/{chain}")).or_default() += 1;
        }
    }
    counts
}

/// kube-proxy's nftables mode for `table`: the `nft -f` input of one full sync, in the
/// `add ...` form knftables writes (table `ip kube-proxy`).
pub fn nft_script(table: &ServiceTable, cfg: &Config) -> String {
    nft_transactions(table, cfg, usize::MAX).concat()
}

/// [`nft_script`] in several inputs to be loaded one after the other, ending in the same
/// table as one full sync: the first has everything but the services' `numgen` balancing
/// rules, which follow in inputs of at most `per` rules (each service chain's masquerade rule
/// still comes first). The anonymous verdict maps of those rules are what makes one large
/// transaction slow: the kernel resolves each by walking the transaction.
pub fn nft_transactions(table: &ServiceTable, cfg: &Config, per: usize) -> Vec<String> {
    let per = per.max(1);
    let mut balancing: Vec<String> = Vec::new();
    let mark = masquerade_mark();
    let t = "ip kube-proxy";
    let mut chains = String::new();
    let mut rules = String::new();
    let mut elements = String::new();
    let _ = writeln!(
        chains,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // kube-proxy names its priorities `dstnat - 10`, `dstnat + 10`, `dstnat`, `srcnat`; this
    // nft (1.0.6) refuses the symbolic `dstnat` on most of these hooks, so every base chain
    // gets the same priority as a number (dstnat is -100, srcnat 100).
    for (name, kind, hook, priority) in [
        ("filter-prerouting", "filter", "prerouting", "-110"),
        ("filter-input", "filter", "input", "-110"),
        ("filter-forward", "filter", "forward", "-110"),
        ("filter-output", "filter", "output", "-110"),
        ("filter-output-post-dnat", "filter", "output", "-90"),
        ("nat-prerouting", "nat", "prerouting", "-100"),
        ("nat-output", "nat", "output", "-100"),
        ("nat-postrouting", "nat", "postrouting", "100"),
    ] {
        let _ = writeln!(
            chains,
            "add chain {t} {name} {{ type {kind} hook {hook} priority {priority} ; }}"
        );
    }
    for name in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
    ] {
        let _ = writeln!(chains, "add chain {t} {name}");
    }
    let _ = writeln!(
        chains,
        "add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    for (dst, src, extra) in [
        ("nodeport-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting", "ct state new "),
        ("firewall-check", "filter-output", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new "),
        (
            "cluster-ips-check",
            "filter-output-post-dnat",
            "ct state new ",
        ),
    ] {
        let _ = writeln!(rules, "add rule {t} {src} {extra}jump {dst}");
    }
    let _ = writeln!(
        rules,
        "add rule {t} mark-for-masquerade mark set mark or {mark}"
    );
    let _ = writeln!(
        rules,
        "add rule {t} masquerading mark and {mark} == 0 return"
    );
    let _ = writeln!(rules, "add rule {t} masquerading mark set mark xor {mark}");
    let _ = writeln!(rules, "add rule {t} masquerading masquerade fully-random");
    let _ = writeln!(
        chains,
        "add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        rules,
        "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    if !table.service_cidrs.is_empty() {
        let _ = writeln!(
            rules,
            "add rule {t} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            table.service_cidrs.join(", ")
        );
    }
    for (name, key, comment) in [
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service",
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service",
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "firewall-ips",
            "ipv4_addr . inet_proto . inet_service",
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "service-ips",
            "ipv4_addr . inet_proto . inet_service",
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service",
            "NodePort traffic",
        ),
    ] {
        let _ = writeln!(
            chains,
            "add map {t} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"
        );
    }
    let _ = writeln!(rules, "add rule {t} reject-chain reject");
    let _ = writeln!(
        rules,
        "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    let _ = writeln!(
        rules,
        "add rule {t} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    );
    let _ = writeln!(
        rules,
        "add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
    );
    let _ = writeln!(
        rules,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    let _ = writeln!(
        rules,
        "add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );

    for (svc, port) in service_ports(table) {
        let name = service_port_name(svc, port);
        let proto = port.protocol.lower();
        let vip = cluster_ips(svc)[0];
        let endpoints = svc.usable_endpoint_ips();
        let has_endpoints = !endpoints.is_empty();
        let service_chain = nft_service_chain(svc, port);
        let external_chain = nft_external_chain(svc, port);
        let external = has_endpoints && externally_accessible(svc, port);
        let _ = writeln!(elements, "add element {t} cluster-ips {{ {vip} }}");
        let key = |ip: &str| format!("{ip} . {proto} . {}", port.port);
        if has_endpoints {
            let _ = writeln!(
                elements,
                "add element {t} service-ips {{ {} : goto {service_chain} }}",
                key(vip)
            );
        } else {
            let _ = writeln!(
                elements,
                "add element {t} no-endpoint-services {{ {} comment \"{name}\" : goto reject-chain }}",
                key(vip)
            );
        }
        for ip in &svc.spec.external_ips {
            if has_endpoints {
                let _ = writeln!(
                    elements,
                    "add element {t} service-ips {{ {} : goto {external_chain} }}",
                    key(ip)
                );
            } else {
                let _ = writeln!(
                    elements,
                    "add element {t} no-endpoint-services {{ {} comment \"{name}\" : goto reject-chain }}",
                    key(ip)
                );
            }
        }
        if let Some(node_port) = port.node_port {
            if has_endpoints {
                let _ = writeln!(
                    elements,
                    "add element {t} service-nodeports {{ {proto} . {node_port} : goto {external_chain} }}"
                );
            } else {
                let _ = writeln!(
                    elements,
                    "add element {t} no-endpoint-nodeports {{ {proto} . {node_port} comment \"{name}\" : goto reject-chain }}"
                );
            }
        }
        if !has_endpoints {
            continue;
        }
        let endpoint_chains: Vec<String> = endpoints
            .iter()
            .map(|ip| nft_endpoint_chain(svc, port, ip))
            .collect();
        for chain in &endpoint_chains {
            let _ = writeln!(chains, "add chain {t} {chain}");
        }
        let _ = writeln!(chains, "add chain {t} {service_chain}");
        if external {
            let _ = writeln!(chains, "add chain {t} {external_chain}");
        }
        let _ = writeln!(
            rules,
            "add rule {t} {service_chain} ip daddr {vip} {proto} dport {} ip saddr != {} jump mark-for-masquerade",
            port.port, cfg.cluster_cidr
        );
        if external {
            let _ = writeln!(
                rules,
                "add rule {t} {external_chain} jump mark-for-masquerade"
            );
            let _ = writeln!(rules, "add rule {t} {external_chain} goto {service_chain}");
        }
        let vmap: Vec<String> = endpoint_chains
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        balancing.push(format!(
            "add rule {t} {service_chain} numgen random mod {} vmap {{ {} }}\n",
            endpoint_chains.len(),
            vmap.join(" , ")
        ));
        for (chain, ip) in endpoint_chains.iter().zip(&endpoints) {
            let _ = writeln!(
                rules,
                "add rule {t} {chain} ip saddr {ip} jump mark-for-masquerade"
            );
            let _ = writeln!(
                rules,
                "add rule {t} {chain} meta l4proto {proto} dnat to {ip}:{}",
                port.target_port
            );
        }
    }
    if balancing.len() <= per {
        return vec![format!("{chains}{rules}{}{elements}", balancing.concat())];
    }
    std::iter::once(format!("{chains}{rules}{elements}"))
        .chain(balancing.chunks(per).map(<[String]>::concat))
        .collect()
}

/// What kube-proxy would write for `table`, counted independently of the generators: the
/// figures the layout test checks the loaded rules against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Service ports with a ClusterIP and endpoints.
    pub served_ports: usize,
    /// Endpoints summed over those ports.
    pub endpoints: usize,
    /// Service ports with a NodePort and endpoints.
    pub node_ports: usize,
    /// External IP frontends of ports with endpoints.
    pub external_ips: usize,
}

impl Expected {
    pub fn of(table: &ServiceTable) -> Self {
        let mut e = Self {
            served_ports: 0,
            endpoints: 0,
            node_ports: 0,
            external_ips: 0,
        };
        for s in &table.services {
            if s.frontend_cluster_ips().next().is_none() || s.usable_endpoint_ips().is_empty() {
                continue;
            }
            for p in &s.spec.ports {
                e.served_ports += 1;
                e.endpoints += s.usable_endpoint_ips().len();
                e.node_ports += usize::from(p.node_port.is_some());
                e.external_ips += s.spec.external_ips.len();
            }
        }
        e
    }

    /// nat `KUBE-SERVICES`: one rule per ClusterIP:port and per external IP:port, plus the
    /// jump to `KUBE-NODEPORTS` at its end.
    pub fn kube_services(self) -> usize {
        self.served_ports + self.external_ips + 1
    }

    /// Rules of all `KUBE-SVC-*` chains: the off-cluster masquerade rule plus one per endpoint.
    pub fn svc_rules(self) -> usize {
        self.served_ports + self.endpoints
    }

    /// Rules of all `KUBE-SEP-*` chains: the hairpin masquerade mark and the DNAT.
    pub fn sep_rules(self) -> usize {
        2 * self.endpoints
    }

    /// nft chains of the services: one `service-*` per port, one `endpoint-*` per endpoint,
    /// one `external-*` per port reachable from outside.
    pub fn nft_service_chains(self, externally_reachable_ports: usize) -> usize {
        self.served_ports + self.endpoints + externally_reachable_ports
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::service_table::{cluster_ip_service, port};

    #[test]
    fn chain_names_are_kube_proxys() {
        // The names kube-proxy's own tests expect for ns1/svc1 port p80 and endpoint
        // 10.180.0.1:80.
        assert_eq!(
            svc_chain("ns1/svc1:p80", Protocol::Tcp),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            sep_chain("ns1/svc1:p80", Protocol::Tcp, "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let mut svc = cluster_ip_service(
            "svc1",
            Ipv4Addr::new(172, 30, 0, 41),
            vec![port("p80", Protocol::Tcp, 80, 80)],
            &[Ipv4Addr::new(10, 180, 0, 1)],
        );
        svc.metadata.namespace = "ns1".into();
        assert_eq!(
            nft_service_chain(&svc, &svc.spec.ports[0]),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(masquerade_mark(), "0x004000");
        assert_eq!(probability(3), "0.3333333333");
    }

    #[test]
    fn probabilities_and_counts() {
        let svc = cluster_ip_service(
            "web",
            Ipv4Addr::new(10, 96, 0, 10),
            vec![port("http", Protocol::Tcp, 80, 8080)],
            &[
                Ipv4Addr::new(10, 244, 0, 2),
                Ipv4Addr::new(10, 244, 0, 3),
                Ipv4Addr::new(10, 244, 0, 4),
            ],
        );
        let table = ServiceTable {
            service_cidrs: vec!["10.96.0.0/12".into()],
            services: vec![svc],
        };
        let cfg = Config {
            cluster_cidr: "10.244.0.0/16".into(),
        };
        let text = iptables_restore(&table, &cfg);
        assert!(text.contains("--probability 0.3333333333"), "{text}");
        assert!(text.contains("--probability 0.5000000000"), "{text}");
        assert_eq!(
            text.matches("-m statistic").count(),
            2,
            "the last is unconditional"
        );
        let counts = iptables_rule_counts(&text);
        let e = Expected::of(&table);
        assert_eq!(counts["nat/KUBE-SERVICES"], e.kube_services());
        let nft = nft_script(&table, &cfg);
        assert!(
            nft.contains("numgen random mod 3 vmap { 0 : goto endpoint-"),
            "{nft}"
        );
        assert!(
            nft.contains("10.96.0.10 . tcp . 80 : goto service-"),
            "{nft}"
        );
    }
}
