//! kube-proxy's rule layouts as the service benchmark reproduces them
//! (`podnet_tests::bench::kubeproxy`): each loads into a fresh node namespace with the tool
//! kube-proxy uses (`iptables-restore`, `nft -f`), has the rule counts kube-proxy would write,
//! and carries pod -> ClusterIP traffic on kernel bridge/veth pods with no podnet anywhere:
//! TCP and UDP to a ClusterIP (the client's own address preserved, every endpoint chosen),
//! REJECT for a service without endpoints, NodePort and external IP traffic masqueraded, and a
//! pod reaching itself through its service (hairpin, masqueraded).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use podnet_tests::{
    InNetns as _,
    bench::{
        kernel_node::{KernelNode, KernelPod, Layout},
        kubeproxy::{self, Config, Expected},
    },
    connect_tcp, connect_udp, local_ip_of, peer_ip_of, require_root, serve_tcp, serve_udp,
    service_table::{Protocol, ServiceTable, ServiceType, cluster_ip_service, port},
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const SHOP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const SHOP_EXTERNAL: &str = "198.18.0.50";
const SHOP_NODE_PORT: u16 = 30080;
const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Three served services (web: TCP to two backends; dns: UDP to three; shop: NodePort and
/// external IP to the third backend alone), one without endpoints and one headless.
fn table(backends: &[Ipv4Addr]) -> ServiceTable {
    let web = cluster_ip_service(
        "web",
        WEB,
        vec![port("http", Protocol::Tcp, 80, 8080)],
        &backends[..2],
    );
    let dns = cluster_ip_service(
        "dns",
        DNS,
        vec![port("dns", Protocol::Udp, 53, 5353)],
        backends,
    );
    let mut shop = cluster_ip_service(
        "shop",
        SHOP,
        vec![port("", Protocol::Tcp, 80, 8080)],
        &backends[2..],
    );
    shop.spec.kind = ServiceType::NodePort;
    shop.spec.ports[0].node_port = Some(SHOP_NODE_PORT);
    shop.spec.external_ips = vec![SHOP_EXTERNAL.to_owned()];
    let empty = cluster_ip_service(
        "empty",
        EMPTY,
        vec![port("http", Protocol::Tcp, 80, 8080)],
        &[],
    );
    let mut headless = cluster_ip_service(
        "headless",
        WEB,
        vec![port("http", Protocol::Tcp, 80, 8080)],
        backends,
    );
    headless.spec.cluster_ips = vec!["None".to_owned()];
    ServiceTable {
        service_cidrs: vec!["10.96.0.0/12".to_owned()],
        services: vec![web, dns, shop, empty, headless],
    }
}

struct Fixture {
    node: KernelNode,
    client: KernelPod,
    backends: Vec<KernelPod>,
    _servers: Vec<podnet_tests::ChildGuard>,
}

fn fixture(subnet: [u8; 3]) -> Fixture {
    let mut node = KernelNode::new(subnet);
    let client = node.add_pod();
    let backends: Vec<KernelPod> = (0..3).map(|_| node.add_pod()).collect();
    let mut servers = Vec::new();
    for b in &backends {
        servers.push(serve_tcp(&b.ns, &format!("{}:8080", b.ip)));
        servers.push(serve_udp(&b.ns, &format!("{}:5353", b.ip)));
    }
    Fixture {
        node,
        client,
        backends,
        _servers: servers,
    }
}

fn ip(v: Ipv4Addr) -> IpAddr {
    IpAddr::V4(v)
}

/// The traffic checks every layout must pass.
fn check_traffic(f: &Fixture, layout: Layout) {
    let name = layout.name();
    let backend_ips: Vec<IpAddr> = f.backends.iter().map(|b| ip(b.ip)).collect();
    // ClusterIP, TCP: the backend sees the client pod's own address; both endpoints get used.
    let mut chosen = BTreeSet::new();
    for _ in 0..24 {
        let reply = connect_tcp(&f.client.ns, &format!("{WEB}:80"))
            .unwrap_or_else(|e| panic!("{name}: pod -> {WEB}:80 failed: {e}"));
        assert_eq!(
            peer_ip_of(&reply),
            Some(ip(f.client.ip)),
            "{name}: ClusterIP traffic from a pod must keep its source: {reply}"
        );
        chosen.insert(local_ip_of(&reply).expect("local="));
    }
    assert_eq!(
        chosen,
        backend_ips[..2].iter().copied().collect::<BTreeSet<_>>(),
        "{name}: 24 connections should reach both of web's endpoints and nothing else"
    );
    assert!(
        f.node.conntrack_entries_to(WEB) > 0,
        "{name}: the node's conntrack has no flow to {WEB}: it was not translated there"
    );
    // ClusterIP, UDP: the connected client accepts only a reply from the ClusterIP.
    let mut chosen = BTreeSet::new();
    for _ in 0..24 {
        let reply = connect_udp(&f.client.ns, &format!("{DNS}:53"))
            .unwrap_or_else(|e| panic!("{name}: pod -> {DNS}:53/udp failed: {e}"));
        assert_eq!(peer_ip_of(&reply), Some(ip(f.client.ip)), "{name}: {reply}");
        chosen.insert(local_ip_of(&reply).expect("local="));
    }
    assert_eq!(
        chosen.len(),
        3,
        "{name}: 24 UDP requests should reach all three of dns's endpoints: {chosen:?}"
    );
    // No endpoints: refused at once (REJECT), not timed out.
    let err = connect_tcp(&f.client.ns, &format!("{EMPTY}:80"))
        .expect_err("a service without endpoints must not answer");
    assert!(
        err.contains("refused"),
        "{name}: a service without endpoints is rejected: {err}"
    );
    // NodePort on the node's address and the external IP: masqueraded to the node.
    for target in [
        format!("{}:{SHOP_NODE_PORT}", f.node.gateway()),
        format!("{SHOP_EXTERNAL}:80"),
    ] {
        let reply = connect_tcp(&f.client.ns, &target)
            .unwrap_or_else(|e| panic!("{name}: pod -> {target} failed: {e}"));
        assert_eq!(local_ip_of(&reply), Some(backend_ips[2]), "{name}: {reply}");
        assert_eq!(
            peer_ip_of(&reply),
            Some(ip(f.node.gateway())),
            "{name}: external-destination traffic is masqueraded: {reply}"
        );
    }
    // Hairpin: shop's only endpoint reaching shop's ClusterIP is masqueraded to the node.
    let reply = connect_tcp(&f.backends[2].ns, &format!("{SHOP}:80"))
        .unwrap_or_else(|e| panic!("{name}: hairpin to {SHOP}:80 failed: {e}"));
    assert_eq!(local_ip_of(&reply), Some(backend_ips[2]), "{name}: {reply}");
    assert_eq!(
        peer_ip_of(&reply),
        Some(ip(f.node.gateway())),
        "{name}: hairpin traffic is masqueraded: {reply}"
    );
}

/// `-A` rules of every nat chain whose name starts with `prefix`.
fn nat_rules_with_prefix(node: &KernelNode, prefix: &str) -> usize {
    node.ns
        .ok("iptables -t nat -S")
        .lines()
        .filter(|l| {
            l.strip_prefix("-A ")
                .is_some_and(|rest| rest.starts_with(prefix))
        })
        .count()
}

#[test]
fn iptables_layout_loads_counts_and_carries_clusterip_traffic() {
    require_root!();
    let f = fixture([10, 244, 210]);
    let backends: Vec<Ipv4Addr> = f.backends.iter().map(|b| b.ip).collect();
    let table = table(&backends);
    let cfg = Config {
        cluster_cidr: CLUSTER_CIDR.to_owned(),
    };
    // In transactions of two service ports, as the benchmark loads large tables: the same
    // rules in the same order in the end (the NODEPORTS jump still last).
    let (script, _) = f.node.load(Layout::Iptables, &table, &cfg, 2);
    let e = Expected::of(&table);
    assert_eq!(
        (e.served_ports, e.endpoints, e.node_ports, e.external_ips),
        (3, 6, 1, 1)
    );
    let services = f.node.ns.ok("iptables -t nat -S KUBE-SERVICES");
    let rules: Vec<&str> = services.lines().filter(|l| l.starts_with("-A ")).collect();
    assert_eq!(
        rules.len(),
        e.kube_services(),
        "KUBE-SERVICES: one rule per ClusterIP:port and external IP:port, plus the NODEPORTS \
         jump:\n{services}"
    );
    assert!(
        rules
            .last()
            .is_some_and(|r| r.ends_with("-j KUBE-NODEPORTS")),
        "the NODEPORTS jump is last:\n{services}"
    );
    assert_eq!(nat_rules_with_prefix(&f.node, "KUBE-SVC-"), e.svc_rules());
    assert_eq!(nat_rules_with_prefix(&f.node, "KUBE-SEP-"), e.sep_rules());
    assert_eq!(
        nat_rules_with_prefix(&f.node, "KUBE-EXT-"),
        2 * e.node_ports
    );
    assert_eq!(
        nat_rules_with_prefix(&f.node, "KUBE-NODEPORTS"),
        e.node_ports
    );
    let web_svc = kubeproxy::svc_chain("bench/web:http", Protocol::Tcp);
    let web_rules = f.node.ns.ok(&format!("iptables -t nat -S {web_svc}"));
    assert!(
        web_rules.contains("--probability 0.5") && web_rules.contains("! -s 10.244.0.0/16"),
        "web's chain balances two endpoints and masquerades off-cluster sources:\n{web_rules}"
    );
    let filter = f.node.ns.ok("iptables -t filter -S KUBE-SERVICES");
    assert!(
        filter.contains(&format!("-d {EMPTY}/32")) && filter.contains("REJECT"),
        "a service without endpoints is rejected in filter KUBE-SERVICES:\n{filter}"
    );
    for (chain, n) in kubeproxy::iptables_rule_counts(&script) {
        let (table, chain) = chain.split_once('/').expect("table/chain");
        let loaded = f
            .node
            .ns
            .ok(&format!("iptables -t {table} -S {chain}"))
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
        assert!(
            loaded >= n,
            "{table} {chain}: {loaded} rules loaded, the input has {n}"
        );
    }
    check_traffic(&f, Layout::Iptables);
    // The packets went through the layout's own chains.
    let counted = f
        .node
        .ns
        .ok(&format!("iptables -t nat -L {web_svc} -v -n -x"));
    let packets: u64 = counted
        .lines()
        .filter(|l| l.contains("KUBE-SEP-"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        packets >= 24,
        "web's KUBE-SEP jumps counted {packets}:\n{counted}"
    );
}

#[test]
fn nftables_layout_loads_counts_and_carries_clusterip_traffic() {
    require_root!();
    let f = fixture([10, 244, 211]);
    let backends: Vec<Ipv4Addr> = f.backends.iter().map(|b| b.ip).collect();
    let table = table(&backends);
    let cfg = Config {
        cluster_cidr: CLUSTER_CIDR.to_owned(),
    };
    // As the benchmark loads large tables: all but the balancing rules, then those one per
    // transaction; each service chain still masquerades off-cluster sources first.
    f.node.load(Layout::Nftables, &table, &cfg, 1);
    let e = Expected::of(&table);
    let map = f.node.ns.ok("nft list map ip kube-proxy service-ips");
    assert_eq!(
        map.matches(": goto ").count(),
        e.served_ports + e.external_ips,
        "service-ips: one element per ClusterIP:port and external IP:port:\n{map}"
    );
    let nodeports = f.node.ns.ok("nft list map ip kube-proxy service-nodeports");
    assert_eq!(nodeports.matches(": goto external-").count(), e.node_ports);
    let empty = f
        .node
        .ns
        .ok("nft list map ip kube-proxy no-endpoint-services");
    assert!(empty.contains(&EMPTY.to_string()), "{empty}");
    let chains = f.node.ns.ok("nft list table ip kube-proxy");
    let named = |prefix: &str| {
        chains
            .lines()
            // Per-service chains have a `/` in their names; kube-proxy's own ones do not.
            .filter(|l| l.trim_start().starts_with(&format!("chain {prefix}")) && l.contains('/'))
            .count()
    };
    assert_eq!(named("service-"), e.served_ports, "{chains}");
    assert_eq!(named("endpoint-"), e.endpoints, "{chains}");
    assert_eq!(named("external-"), e.node_ports, "{chains}");
    for (base, hook) in [
        ("nat-prerouting", "prerouting"),
        ("nat-output", "output"),
        ("nat-postrouting", "postrouting"),
    ] {
        let chain = f
            .node
            .ns
            .ok(&format!("nft list chain ip kube-proxy {base}"));
        assert!(chain.contains(&format!("type nat hook {hook}")), "{chain}");
    }
    let dns_chain =
        kubeproxy::nft_service_chain(&table.services[1], &table.services[1].spec.ports[0]);
    let dns = f
        .node
        .ns
        .ok(&format!("nft list chain ip kube-proxy {dns_chain}"));
    let masq = dns.find("jump mark-for-masquerade");
    let pick = dns.find("numgen random mod 3 vmap");
    assert!(
        masq.is_some() && pick.is_some() && masq < pick,
        "dns's chain masquerades off-cluster sources, then picks one of three endpoints:\n{dns}"
    );
    check_traffic(&f, Layout::Nftables);
}
