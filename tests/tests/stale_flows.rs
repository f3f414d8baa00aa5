//! Stale flows (issue 15 item 5), in namespaces, driven through `podnet service apply`: a
//! backend that leaves a service takes its flows and balanced sockets with it, so clients move
//! to a live backend at once, while a change that keeps a client's backend leaves its flow
//! alone.
//!
//! - A UDP client in a pod sends a request every 200 ms to a ClusterIP (per packet at its veth,
//!   and connected at the socket) and records which backend answered: deleting its backend
//!   loses at most one request and moves the replies; a rollout of every backend (two new ones
//!   added, the old ones removed one by one) loses at most one request per step.
//! - TCP: an established connection through the ClusterIP to a backend that is deleted is
//!   reset when the client next sends (per-packet path: its flow is gone, the datapath answers
//!   with a RST), or aborted at once while it waits (socket path: `SOCK_DESTROY`).
//!
//! - The agent: an EndpointSlice deleted in the API moves a UDP client off its endpoint.
//!
//! The old backends keep serving throughout, so a client that stayed on one would still get
//! replies: only moving passes.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use podnet_tests::ServicePath as Path;
use podnet_tests::{
    InNetns, Node, PodInfo, Scenario, addr_field, agent_cluster::AgentCluster, apiserver::Resource,
    require_root, serve_tcp_echo, serve_udp, wait_until,
};
use serde_json::{Value, json};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
/// The UDP client's request interval, which is also how long it waits for each reply.
const INTERVAL: Duration = Duration::from_millis(200);
/// How long each step of a test watches the client (five requests).
const STEP: Duration = Duration::from_millis(1000);
/// The client stops by itself after this many requests (two minutes).
const MAX_REQUESTS: u64 = 600;

/// A service table with one ClusterIP service `echo` (UDP 53 -> 5353, TCP 80 -> 8080) whose
/// ready endpoints are `backends`.
fn table(backends: &[&PodInfo]) -> Value {
    let addresses: Vec<&str> = backends.iter().map(|p| p.ip.as_str()).collect();
    json!({"services": [{
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIPs": [VIP.to_string()],
            "ports": [
                {"name": "dns", "protocol": "UDP", "port": UDP_PORT, "targetPort": UDP_TARGET},
                {"name": "tcp", "protocol": "TCP", "port": TCP_PORT, "targetPort": TCP_TARGET}
            ]
        },
        "endpoints": [{"addresses": addresses, "conditions": {"ready": true}}]
    }]})
}

/// `podnet service apply` of [`table`]`(backends)`; its report.
fn apply(node: &Node, backends: &[&PodInfo]) -> Value {
    let path = node.state_dir.join("stale-table.json");
    std::fs::write(&path, table(backends).to_string()).expect("write table");
    node.json(&["service", "apply", "-f", path.to_str().expect("utf-8")])
}

/// Runs `f` on a new thread inside the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::spawn(move || {
        podnet::sys::netns::Netns::open(&netns)
            .expect("open netns")
            .enter()
            .expect("enter netns");
        f()
    })
}

/// One request of the UDP client: when it was sent and which backend answered (`None`: no
/// reply within [`INTERVAL`]).
#[derive(Clone, Copy, Debug)]
struct Request {
    at: Instant,
    backend: Option<Ipv4Addr>,
}

/// A UDP client in a pod: a connected socket to `VIP:53`, one request per [`INTERVAL`]. An
/// error on the socket (a destroyed socket reports `ECONNABORTED`) makes it connect a new
/// one, as a resolver would; a send that fails is retried once on the new socket.
struct UdpClient {
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

fn udp_connect() -> UdpSocket {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.connect((VIP, UDP_PORT)).expect("connect");
    sock.set_read_timeout(Some(INTERVAL)).expect("timeout");
    sock
}

impl UdpClient {
    fn start(pod: &PodInfo) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = in_netns(pod.ns.path(), move || {
            let mut sock = udp_connect();
            let mut reconnects = 0;
            let mut buf = [0u8; 512];
            for seq in 0..MAX_REQUESTS {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let at = Instant::now();
                let payload = format!("request {seq}\n");
                if sock.send(payload.as_bytes()).is_err() {
                    sock = udp_connect();
                    reconnects += 1;
                    let _ = sock.send(payload.as_bytes());
                }
                let backend = match sock.recv(&mut buf) {
                    Ok(n) => {
                        addr_field(&String::from_utf8_lossy(&buf[..n]), "local").and_then(|a| {
                            match a {
                                SocketAddr::V4(a) => Some(*a.ip()),
                                SocketAddr::V6(_) => None,
                            }
                        })
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        None
                    }
                    Err(_) => {
                        sock = udp_connect();
                        reconnects += 1;
                        None
                    }
                };
                l.lock().expect("log").push(Request { at, backend });
                if let Some(rest) = INTERVAL.checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            reconnects
        });
        Self {
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests sent since `since`.
    fn since(&self, since: Instant) -> Vec<Request> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.at >= since)
            .copied()
            .collect()
    }

    /// Waits one [`STEP`] after `since`; the requests sent meanwhile.
    fn step(&self, since: Instant) -> Vec<Request> {
        if let Some(rest) = STEP.checked_sub(since.elapsed()) {
            std::thread::sleep(rest);
        }
        self.since(since)
    }

    /// Stops the client; how often it connected a new socket.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("client thread")
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lost(requests: &[Request]) -> usize {
    requests.iter().filter(|r| r.backend.is_none()).count()
}

/// The backend of the last answered request.
fn last_backend(requests: &[Request]) -> Ipv4Addr {
    requests
        .iter()
        .rev()
        .find_map(|r| r.backend)
        .unwrap_or_else(|| panic!("no reply at all: {requests:?}"))
}

fn ip(pod: &PodInfo) -> Ipv4Addr {
    pod.ip.parse().expect("pod ip")
}

/// Asserts a step lost at most one request and that its last three replies came from `allowed`.
fn assert_moved(what: &str, requests: &[Request], allowed: &[Ipv4Addr]) {
    assert!(
        requests.len() >= 4,
        "{what}: too few requests: {requests:?}"
    );
    assert!(
        lost(requests) <= 1,
        "{what}: lost {}: {requests:?}",
        lost(requests)
    );
    for r in &requests[requests.len() - 3..] {
        assert!(
            r.backend.is_some_and(|b| allowed.contains(&b)),
            "{what}: replies must come from {allowed:?}: {requests:?}"
        );
    }
}

fn udp_backend_deletion_and_rollout(path: Path, pod_cidr: &str) {
    let mut s = Scenario::new(format!(
        "stale UDP flows ({path:?} path): a deleted backend and a rollout of all backends"
    ));
    let node = Node::with_args(pod_cidr, &path.init_args());
    let pods: Vec<PodInfo> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| node.add_pod(n))
        .collect();
    let client = node.add_pod("client");
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| serve_udp(&p.ns, &format!("{}:{UDP_TARGET}", p.ip)))
        .collect();
    let (a, b, c, d, e) = (&pods[0], &pods[1], &pods[2], &pods[3], &pods[4]);
    apply(&node, &[a, b]);
    let udp = UdpClient::start(&client);
    let warm = udp.step(Instant::now());
    assert_eq!(lost(&warm), 0, "warm-up: {warm:?}");
    let on = last_backend(&warm);
    let (gone, other) = if on == ip(a) { (a, b) } else { (b, a) };
    assert_eq!(on, ip(gone));

    // A change that keeps the client's backend (another backend added) leaves its flow alone.
    let t = Instant::now();
    let kept = apply(&node, &[a, b, c]);
    assert_eq!(kept["stale"]["backends_left"], 0, "{kept}");
    let same = udp.step(t);
    assert_eq!(lost(&same), 0, "kept: {same:?}");
    assert!(
        same.iter().all(|r| r.backend == Some(on)),
        "a kept backend keeps its client: {same:?}"
    );

    // Deleting the client's backend moves it at once.
    let t = Instant::now();
    let deleted = apply(&node, &[other, c]);
    // It leaves both frontends of the service (UDP and TCP).
    assert_eq!(deleted["stale"]["backends_left"], 2, "{deleted}");
    let moved = udp.step(t);
    assert_moved("deleted backend", &moved, &[ip(other), ip(c)]);
    let mut lost_per_step = vec![lost(&moved)];

    // A rollout: two new backends, then the old ones removed one by one.
    let mut steps: Vec<(&str, Vec<&PodInfo>)> = vec![
        ("new backends added", vec![other, c, d, e]),
        ("first old backend removed", vec![c, d, e]),
        ("second old backend removed", vec![d, e]),
    ];
    for (what, backends) in steps.drain(..) {
        let t = Instant::now();
        apply(&node, &backends);
        let requests = udp.step(t);
        let allowed: Vec<Ipv4Addr> = backends.iter().map(|p| ip(p)).collect();
        assert_moved(what, &requests, &allowed);
        lost_per_step.push(lost(&requests));
    }
    let reconnects = udp.finish();
    if path == Path::Tc {
        assert_eq!(reconnects, 0, "the per-packet path needs no new socket");
    }
    s.number(
        "lost requests per step (deletion, add, remove, remove)",
        format!("{lost_per_step:?}"),
    )
    .number("client reconnects", reconnects);
    println!("{path:?}: lost per step {lost_per_step:?}, reconnects {reconnects}");
}

#[test]
fn a_udp_client_moves_off_a_deleted_backend_and_through_a_rollout_tc_path() {
    require_root!();
    udp_backend_deletion_and_rollout(Path::Tc, "10.244.230.0/24");
}

#[test]
fn a_udp_client_moves_off_a_deleted_backend_and_through_a_rollout_socket_path() {
    require_root!();
    udp_backend_deletion_and_rollout(Path::Socket, "10.244.231.0/24");
}

/// How a round of a TCP connection through the ClusterIP went.
#[derive(Debug)]
enum Ended {
    /// The line came back.
    Echoed,
    /// The read (or write) failed with this kind of error this long after the round's start.
    Failed(ErrorKind, Duration),
}

/// A TCP connection to `VIP:80` from a thread in a namespace, driven in rounds: each round
/// optionally sends a line and then reads (2 s at most), reporting how it went.
struct TcpClient {
    go: std::sync::mpsc::Sender<(Instant, bool)>,
    results: std::sync::mpsc::Receiver<Ended>,
    thread: Option<JoinHandle<()>>,
}

impl TcpClient {
    /// Connects from the namespace at `netns` and checks one echo.
    fn connect(netns: PathBuf) -> Self {
        let (go, go_rx) = std::sync::mpsc::channel::<(Instant, bool)>();
        let (results_tx, results) = std::sync::mpsc::channel();
        let thread = in_netns(netns, move || {
            let stream = TcpStream::connect_timeout(
                &SocketAddr::from((VIP, TCP_PORT)),
                Duration::from_secs(2),
            )
            .expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            let mut line = String::new();
            writer.write_all(b"hello\n").expect("write");
            reader.read_line(&mut line).expect("first echo");
            assert_eq!(line, "hello\n");
            let _ = results_tx.send(Ended::Echoed);
            // Bounded: a round per signal, and the signals stop with the test.
            while let Ok((since, send)) = go_rx.recv_timeout(Duration::from_secs(30)) {
                line.clear();
                let sent = if send {
                    writer.write_all(b"again\n")
                } else {
                    Ok(())
                };
                let ended = match sent.and_then(|()| reader.read_line(&mut line)) {
                    Ok(n) if n > 0 => Ended::Echoed,
                    Ok(_) => Ended::Failed(ErrorKind::UnexpectedEof, since.elapsed()),
                    Err(e) => Ended::Failed(e.kind(), since.elapsed()),
                };
                let failed = matches!(ended, Ended::Failed(..));
                if results_tx.send(ended).is_err() || failed {
                    break;
                }
            }
        });
        let client = Self {
            go,
            results,
            thread: Some(thread),
        };
        assert!(matches!(client.result(), Ended::Echoed), "connected");
        client
    }

    /// Starts a round at `since`: sends a line first if `send`, then reads.
    fn start(&self, since: Instant, send: bool) {
        self.go.send((since, send)).expect("client alive");
    }

    fn result(&self) -> Ended {
        self.results
            .recv_timeout(Duration::from_secs(10))
            .expect("a round's result")
    }

    /// A whole round that sends a line now.
    fn round(&self) -> Ended {
        self.start(Instant::now(), true);
        self.result()
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        let (go, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.go, go));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection from a pod (through `path`) and one from the node (always at the socket) to a
/// backend that stays while another is added, then is deleted. Returns how the pod's and the
/// node's connections ended.
fn tcp_to_a_deleted_backend(path: Path, pod_cidr: &str) -> [(ErrorKind, Duration); 2] {
    let node = Node::with_args(pod_cidr, &path.init_args());
    let (a, b) = (node.add_pod("a"), node.add_pod("b"));
    let client = node.add_pod("client");
    let _servers = [&a, &b].map(|p| serve_tcp_echo(&p.ns, &format!("0.0.0.0:{TCP_TARGET}")));
    apply(&node, &[&a]);
    let pod = TcpClient::connect(client.ns.path());
    let host = TcpClient::connect(node.topo.node.path());

    // Another backend added: both connections carry on.
    let kept = apply(&node, &[&a, &b]);
    assert_eq!(kept["stale"]["backends_left"], 0, "{kept}");
    for (who, c) in [("pod", &pod), ("node", &host)] {
        let round = c.round();
        assert!(
            matches!(round, Ended::Echoed),
            "{who}: a kept backend keeps its connection: {round:?}"
        );
    }

    // Their backend deleted. At the socket a client learns while it waits (blocked in a
    // read); per packet when it next sends.
    let before = node.stats();
    let t = Instant::now();
    host.start(t, false);
    if path == Path::Socket {
        pod.start(t, false);
    }
    let report = apply(&node, &[&b]);
    if path == Path::Tc {
        pod.start(t, true);
    }
    let ended = [pod.result(), host.result()];
    let after = node.stats();
    let mut out = Vec::new();
    for (who, ended) in ["pod", "node"].iter().zip(ended) {
        let Ended::Failed(kind, elapsed) = ended else {
            panic!(
                "{who}: the connection to the deleted backend still works: {ended:?} ({report})"
            );
        };
        assert!(
            elapsed < Duration::from_secs(2),
            "{who}: closed promptly: {kind:?} after {elapsed:?}"
        );
        println!("{path:?}: the {who}'s connection saw {kind:?} {elapsed:?} after the apply began");
        out.push((kind, elapsed));
    }
    assert_eq!(
        out[1].0,
        ErrorKind::ConnectionAborted,
        "the node's socket destroyed"
    );
    match path {
        Path::Tc => {
            // Reset by a RST: seen by the write when the RST came first (it answers any
            // segment, the client's delayed ACK of the last echo included), else by the read.
            assert!(
                matches!(out[0].0, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                "reset by a RST: {:?}",
                out[0].0
            );
            assert!(
                after["reject_ct_no_state"] > before["reject_ct_no_state"],
                "answered by the datapath: {after:?}"
            );
            assert!(
                report["stale"]["flow_entries_removed"].as_u64() >= Some(2),
                "{report}"
            );
            assert_eq!(report["stale"]["sockets_destroyed"], 1, "{report}");
        }
        Path::Socket => {
            assert_eq!(out[0].0, ErrorKind::ConnectionAborted, "destroyed");
            assert_eq!(report["stale"]["sockets_destroyed"], 2, "{report}");
        }
    }
    // New connections reach the live backend.
    for netns in [client.ns.path(), node.topo.node.path()] {
        let fresh = TcpClient::connect(netns);
        assert!(
            matches!(fresh.round(), Ended::Echoed),
            "a new connection works"
        );
    }
    [out[0], out[1]]
}

#[test]
fn a_tcp_connection_to_a_deleted_backend_is_reset_tc_path() {
    require_root!();
    let mut s = Scenario::new("stale TCP flow (per-packet path): reset on the next segment");
    let [(kind, elapsed), (_, node_elapsed)] =
        tcp_to_a_deleted_backend(Path::Tc, "10.244.232.0/24");
    s.number("pod's error", format!("{kind:?}"))
        .number("ms to the pod's error", elapsed.as_millis())
        .number("ms to the node socket's abort", node_elapsed.as_millis());
}

#[test]
fn a_tcp_connection_to_a_deleted_backend_is_aborted_socket_path() {
    require_root!();
    let mut s = Scenario::new("stale TCP socket (socket path): destroyed while it waits");
    let [(kind, elapsed), (_, node_elapsed)] =
        tcp_to_a_deleted_backend(Path::Socket, "10.244.233.0/24");
    s.number("pod's error", format!("{kind:?}"))
        .number("ms to the pod's abort", elapsed.as_millis())
        .number("ms to the node socket's abort", node_elapsed.as_millis());
}

/// A `web` service: ClusterIP `10.96.0.20:80` and NodePort `node_port`, TCP to 8080.
fn web_service(backends: &[&PodInfo], node_port: u16) -> Value {
    let addresses: Vec<&str> = backends.iter().map(|p| p.ip.as_str()).collect();
    json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIPs": ["10.96.0.20"],
            "ports": [{"protocol": "TCP", "port": 80, "targetPort": TCP_TARGET, "nodePort": node_port}]
        },
        "endpoints": [{"addresses": addresses, "conditions": {"ready": true}}]
    })
}

#[test]
fn a_service_change_rewrites_only_what_changed() {
    require_root!();
    let mut s = Scenario::new(
        "service apply: a change to one service writes only its changed frontends; other flows stay",
    );
    let node = Node::with_args("10.244.234.0/24", &Path::Tc.init_args());
    let (a, b) = (node.add_pod("a"), node.add_pod("b"));
    let client = node.add_pod("client");
    let _udp = serve_udp(&a.ns, &format!("{}:{UDP_TARGET}", a.ip));
    let apply_both = |web: Value| {
        let mut t = table(&[&a]);
        t["services"].as_array_mut().expect("list").push(web);
        let path = node.state_dir.join("two-services.json");
        std::fs::write(&path, t.to_string()).expect("write table");
        node.json(&["service", "apply", "-f", path.to_str().expect("utf-8")])
    };
    let first = apply_both(web_service(&[&b], 30080));
    assert_eq!(first["frontends_written"], 4, "{first}");
    let udp = UdpClient::start(&client);
    let warm = udp.step(Instant::now());
    assert_eq!(lost(&warm), 0, "warm-up: {warm:?}");

    // Another service's endpoints change: its two frontends are written, nothing else.
    let t = Instant::now();
    let endpoints = apply_both(web_service(&[&a, &b], 30080));
    assert_eq!(
        (
            &endpoints["updated"],
            &endpoints["unchanged"],
            &endpoints["frontends_written"],
            &endpoints["frontends_removed"],
            &endpoints["stale"]["backends_left"],
        ),
        (&json!(1), &json!(1), &json!(2), &json!(0), &json!(0)),
        "{endpoints}"
    );
    // Its NodePort changes: that one frontend goes and the new one is written.
    let nodeport = apply_both(web_service(&[&a, &b], 30081));
    assert_eq!(
        (
            &nodeport["frontends_written"],
            &nodeport["frontends_removed"]
        ),
        (&json!(1), &json!(1)),
        "{nodeport}"
    );
    let during = udp.step(t);
    assert_eq!(lost(&during), 0, "{during:?}");
    assert!(
        during.iter().all(|r| r.backend == Some(ip(&a))),
        "{during:?}"
    );
    udp.finish();
    s.number("frontends written: endpoints change", 2)
        .number("frontends written: NodePort change", 1);
}

/// An EndpointSlice of the `echo` Service with one ready endpoint on `node`.
fn echo_slice(name: &str, ip: &str, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": UDP_TARGET, "protocol": "UDP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}]
    })
}

#[test]
fn the_agent_moves_a_udp_client_off_an_endpoint_that_goes() {
    require_root!();
    let mut s = Scenario::new(
        "podnet agent: a UDP client (socket path) moves off an endpoint whose EndpointSlice goes",
    );
    let cluster = AgentCluster::new(1, 235);
    let node = &cluster.nodes[0];
    let (a, b) = (node.cli.add_pod("a"), node.cli.add_pod("b"));
    let client = node.cli.add_pod("client");
    let _servers = [&a, &b].map(|p| serve_udp(&p.ns, &format!("{}:{UDP_TARGET}", p.ip)));
    cluster
        .api
        .create(
            Resource::Service,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "echo", "namespace": "default"},
                "spec": {"type": "ClusterIP", "clusterIP": VIP.to_string(), "clusterIPs": [VIP.to_string()],
                         "ports": [{"name": "dns", "protocol": "UDP", "port": UDP_PORT, "targetPort": UDP_TARGET}]}
            }),
        )
        .expect("Service");
    for (name, pod) in [("echo-a", &a), ("echo-b", &b)] {
        cluster
            .api
            .create(
                Resource::EndpointSlice,
                echo_slice(name, &pod.ip, &node.name),
            )
            .expect("EndpointSlice");
    }
    // The agent saves its table at most once a second; the maps are ahead of it.
    wait_until(Duration::from_secs(10), "both endpoints programmed", || {
        let out = node.cli.podnet(&["service", "show", "default/echo"]);
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success() && text.contains(&a.ip) && text.contains(&b.ip)
    });
    let udp = UdpClient::start(&client);
    let warm = udp.step(Instant::now());
    let on = last_backend(&warm);
    let (gone, other) = if on == ip(&a) {
        ("echo-a", &b)
    } else {
        ("echo-b", &a)
    };
    let t = Instant::now();
    cluster
        .api
        .delete(Resource::EndpointSlice, "default", gone)
        .expect("delete slice");
    let moved = udp.step(t);
    assert_moved("endpoint gone (agent)", &moved, &[ip(other)]);
    let reconnects = udp.finish();
    assert!(reconnects >= 1, "the client's socket was destroyed");
    s.number("lost requests", lost(&moved))
        .number("client reconnects", reconnects);
    println!("agent: lost {}, reconnects {reconnects}", lost(&moved));
}
