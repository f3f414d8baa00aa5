//! Tables under pressure: a node with a deliberately tiny SNAT port range (4 ports), filled with
//! held TCP connections toward one destination, by a pod going out (SNAT) and by a pod reaching
//! its own NodePort (hairpin, whose source also becomes the node IP).
//!
//! What a user depends on: once every port toward a destination is taken, a further flow to it
//! fails visibly (the `drop_nat_no_port` counter and a `podnet stats` warning) instead of
//! silently; the established flows keep carrying data; a different destination still gets a
//! port (ports are per destination tuple); and once the held flows have closed and expired,
//! collection gives the ports back.

use std::{collections::BTreeSet, net::IpAddr, ops::RangeInclusive, time::Duration};

use podnet_tests::{
    InNetns, NODE_IP, Node, OUTSIDE_IP, Scenario, addr_field, connect_tcp, hold_tcp, require_root,
    serve_tcp, serve_tcp_echo, wait_until,
};

/// The node's whole SNAT range: four ports.
const SNAT_PORTS: RangeInclusive<u16> = 20_000..=20_003;

fn snat_ports_arg() -> String {
    format!("{}-{}", SNAT_PORTS.start(), SNAT_PORTS.end())
}

/// A node whose SNAT range is [`SNAT_PORTS`], whose closed flows expire after a second, and
/// whose collection runs only when the test asks.
fn tiny_snat_node(pod_cidr: &str) -> Node {
    let ports = snat_ports_arg();
    Node::with_args(
        pod_cidr,
        &[
            "--snat-ports",
            &ports,
            "--ct-timeout",
            "tcp_closing=1",
            "--ct-timeout",
            "tcp_time_wait=1",
            "--gc-interval",
            "0",
        ],
    )
}

/// The translated source ports of the flows whose first packet was rewritten to the node IP.
fn node_ip_ports(node: &Node) -> BTreeSet<u16> {
    let flows = node.json(&["conntrack", "list"]);
    flows
        .as_array()
        .expect("list")
        .iter()
        .filter(|f| f["dir"] == "original")
        .filter_map(|f| f["nat_src"].as_str()?.parse::<std::net::SocketAddr>().ok())
        .filter(|a| a.ip() == IpAddr::V4(NODE_IP))
        .map(|a| a.port())
        .collect()
}

/// Holds one connection per SNAT port from `client` to `target`, then shows: a further
/// connection to `target` is refused visibly, one to `other` (another destination) works, the
/// held connections still echo, and after they closed and expired `conntrack gc` gives the
/// ports back. Records the numbers in `s`.
fn exhaust_and_recover(
    node: &Node,
    client: &(impl InNetns + ?Sized),
    target: &str,
    other: &str,
    s: &mut Scenario,
) {
    let ports = u32::from(SNAT_PORTS.end() - SNAT_PORTS.start()) + 1;
    s.number("snat_ports", ports);
    let release = node.state_dir.join("release-held");
    let held = hold_tcp(client, target, ports, &release, Duration::from_secs(5));
    assert!(
        held.connected_line
            .starts_with(&format!("connected={ports} failed=0")),
        "{}",
        held.connected_line
    );
    s.number("flows_held", held.connected());
    let all: BTreeSet<u16> = SNAT_PORTS.collect();
    assert_eq!(node_ip_ports(node), all, "the held flows took every port");

    let before = node.stats();
    let refused = connect_tcp(client, target);
    assert!(
        refused.is_err(),
        "a flow got a port from a full range: {refused:?}"
    );
    let after = node.stats();
    let no_port = after["drop_nat_no_port"] - before["drop_nat_no_port"];
    s.number("packets_refused_no_port", no_port);
    assert!(no_port >= 1, "drop_nat_no_port did not move: {after:?}");
    assert_eq!(
        after["drop_ct_full"], before["drop_ct_full"],
        "the refusal is about ports, not the table"
    );
    let text = node.ok(&["stats"]);
    let warning = format!("SNAT ports exhausted: {}", after["drop_nat_no_port"]);
    assert!(text.contains(&warning), "{text}");
    assert!(text.contains(&snat_ports_arg()), "{text}");
    let warnings = node.json(&["stats"])["warnings"].clone();
    assert!(
        warnings.as_array().is_some_and(|w| w
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("SNAT")))),
        "{warnings}"
    );

    // Ports are per destination: another one still gets a port from the same range.
    let reply = connect_tcp(client, other).expect("a flow to another destination");
    let seen = addr_field(&reply, "peer").expect("peer");
    assert_eq!(seen.ip(), IpAddr::V4(NODE_IP), "{reply}");
    assert!(SNAT_PORTS.contains(&seen.port()), "{reply}");
    s.number("other_destination_port", seen.port());

    // The established flows carried on through all of it.
    let echoed = held
        .release(Duration::from_secs(30))
        .expect("the held connections still echo");
    s.number(
        "flows_echoed_after_refusal",
        podnet_tests::number_field(&echoed, "echoed").unwrap_or(0),
    );

    // Closed flows expire after a second; collection then frees their entries and ports.
    let mut collected = 0;
    let mut passes = 0;
    wait_until(
        Duration::from_secs(20),
        "collection frees the held flows",
        || {
            std::thread::sleep(Duration::from_millis(250));
            passes += 1;
            collected += node.json(&["conntrack", "gc"])["removed"]
                .as_u64()
                .expect("removed");
            collected >= 2 * u64::from(ports)
        },
    );
    s.number("entries_collected", collected);
    s.number("gc_passes", passes);
    // The whole range is back: as many flows as before get through and carry data.
    let again = hold_tcp(client, target, ports, &release, Duration::from_secs(5));
    assert!(
        again
            .connected_line
            .starts_with(&format!("connected={ports} failed=0")),
        "after collection: {}",
        again.connected_line
    );
    assert_eq!(node_ip_ports(node), all, "the ports came back");
    s.number("flows_after_collection", again.connected());
    again
        .release(Duration::from_secs(30))
        .expect("the new flows echo");
}

#[test]
fn exhausted_snat_ports_refuse_new_flows_to_that_destination_visibly() {
    require_root!();
    let mut s =
        Scenario::new("SNAT ports toward one destination exhausted by a pod (4-port range)");
    let node = tiny_snat_node("10.244.150.0/24");
    let pod = node.add_pod("client");
    let outside = &node.topo.outside;
    let _echo = serve_tcp_echo(outside, &format!("{OUTSIDE_IP}:7000"));
    let _other = serve_tcp(outside, &format!("{OUTSIDE_IP}:8080"));
    exhaust_and_recover(
        &node,
        &pod.ns,
        &format!("{OUTSIDE_IP}:7000"),
        &format!("{OUTSIDE_IP}:8080"),
        &mut s,
    );
}

#[test]
fn exhausted_snat_ports_refuse_new_hairpin_nodeport_flows_visibly() {
    require_root!();
    let mut s = Scenario::new(
        "SNAT ports toward one backend exhausted by hairpin NodePort flows (4-port range)",
    );
    let node = tiny_snat_node("10.244.151.0/24");
    let web = node.add_pod("web");
    let _echo = serve_tcp_echo(&web.ns, "0.0.0.0:7000");
    let _other = serve_tcp(&web.ns, "0.0.0.0:8080");
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30700",
        "--backend",
        "web:7000",
    ]);
    node.ok(&[
        "nodeport",
        "add",
        "--port",
        "30800",
        "--backend",
        "web:8080",
    ]);
    // The backend reaching its own NodePort: the source becomes the node IP and a port from
    // the SNAT range, toward web:7000.
    exhaust_and_recover(
        &node,
        &web.ns,
        &format!("{NODE_IP}:30700"),
        &format!("{NODE_IP}:30800"),
        &mut s,
    );
}

/// Each pod source port's translated port, for the closed and open flows to `dest` now in the
/// table.
fn translations(node: &Node, dest: &str) -> Vec<(u16, u16)> {
    let port_of = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
    };
    node.json(&["conntrack", "list"])
        .as_array()
        .expect("list")
        .iter()
        .filter(|f| f["dir"] == "original" && f["dst"] == dest)
        .filter_map(|f| Some((port_of(&f["src"])?, port_of(&f["nat_src"])?)))
        .collect()
}

/// A pod makes connections to one outside server, which closes first and so keeps each
/// translated tuple in TIME_WAIT for 60 s; then more connections from other pod ports. None of
/// the new flows may be mapped onto a tuple the server still holds: every connection has its own
/// TCP timestamp offset, so the server's PAWS check would drop the SYN and the client would
/// retransmit it a second later. Closed-by-RST flows expire after 1 s here, so only the FIN
/// lifetime (`tcp_time_wait`) can keep the tuples.
#[test]
fn a_tuple_the_server_holds_in_time_wait_is_not_given_to_another_flow() {
    require_root!();
    let mut s = Scenario::new("SNAT tuples in the server's TIME_WAIT (100-port range)");
    let node = Node::with_args(
        "10.244.152.0/24",
        &[
            "--snat-ports",
            "20000-20099",
            "--ct-timeout",
            "tcp_closing=1",
            "--gc-interval",
            "1",
        ],
    );
    let pod = node.add_pod("client");
    let target = format!("{OUTSIDE_IP}:8080");
    let _server = serve_tcp(&node.topo.outside, &target);
    let first = podnet_tests::churn_tcp(&pod.ns, &target, 20);
    assert_eq!(first.as_deref(), Ok("ok=20 failed=0"));
    let held = translations(&node, &target);
    assert_eq!(held.len(), 20, "{held:?}");
    let states: BTreeSet<String> = node
        .json(&["conntrack", "list"])
        .as_array()
        .expect("list")
        .iter()
        .filter(|f| f["dst"] == target.as_str())
        .filter_map(|f| f["state"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        states,
        BTreeSet::from(["time_wait".to_owned()]),
        "closed by FIN"
    );
    // Past the RST lifetime and two collector passes.
    std::thread::sleep(Duration::from_secs(3));
    let before = podnet_tests::syn_retransmits(&pod.ns);
    let second = podnet_tests::churn_tcp(&pod.ns, &target, 20);
    assert_eq!(second.as_deref(), Ok("ok=20 failed=0"));
    let retransmitted = podnet_tests::syn_retransmits(&pod.ns) - before;
    s.number("syn_retransmits", retransmitted);
    assert_eq!(retransmitted, 0, "SYNs retransmitted");
    let now = translations(&node, &target);
    for (pod_port, node_port) in &now {
        let clash = held.iter().find(|(p, n)| n == node_port && p != pod_port);
        assert!(
            clash.is_none(),
            "pod port {pod_port} was mapped onto node port {node_port}, still in the server's \
             TIME_WAIT for pod port {:?}",
            clash.map(|c| c.0)
        );
    }
}

/// Closed flows held for TIME_WAIT must never fill the table: above 3/4 of the limit the
/// collector ends them, oldest first, and new flows are admitted.
#[test]
fn closed_flows_give_way_under_table_pressure() {
    require_root!();
    let node = Node::with_args(
        "10.244.153.0/24",
        &["--conntrack-max", "64", "--gc-interval", "0"],
    );
    let pod = node.add_pod("client");
    let target = format!("{OUTSIDE_IP}:8080");
    let _server = serve_tcp(&node.topo.outside, &target);
    // 30 closed flows: 60 entries of 64.
    let first = podnet_tests::churn_tcp(&pod.ns, &target, 30);
    assert_eq!(first.as_deref(), Ok("ok=30 failed=0"));
    let gc = node.json(&["conntrack", "gc"]);
    assert_eq!(gc["removed"], 0, "nothing is dead yet: {gc}");
    assert!(gc["evicted"].as_u64().is_some_and(|e| e >= 12), "{gc}");
    assert!(
        gc["usage"]["live"].as_u64().is_some_and(|l| l <= 48),
        "{gc}"
    );
    let before = node.stats();
    let again = podnet_tests::churn_tcp(&pod.ns, &target, 5);
    assert_eq!(again.as_deref(), Ok("ok=5 failed=0"));
    assert_eq!(node.stats()["drop_ct_full"], before["drop_ct_full"]);
}
