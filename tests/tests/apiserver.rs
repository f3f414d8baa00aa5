//! The test Kubernetes API server (`podnet_tests::apiserver`) against the real client: a
//! `kube::Client` from the server's kubeconfig, raw watches, and `kube::runtime::watcher`.
//! Lists and watches see creates, updates and deletes in order with rising resourceVersions;
//! bookmarks arrive; selectors filter as kube-proxy's do; an expired resourceVersion gives 410
//! and the watcher relists and converges, also across a restart with a new history.
//!
//! Everything listens on 127.0.0.1 of the test process; no privileges needed.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use podnet_tests::apiserver::{ApiServer, NEW_HISTORY_JUMP, Options, Resource};
use serde_json::{Value, json};

/// Bound on waiting for one event or for convergence.
const WAIT: Duration = Duration::from_secs(20);

fn options() -> Options {
    Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    }
}

/// A client configured the way the agent is: from a kubeconfig with `server: http://...`.
async fn client(server: &ApiServer) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig()).expect("a valid kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client configuration");
    Client::try_from(config).expect("a client")
}

fn node(name: &str, pod_cidr: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.10"}]},
    }))
    .expect("a Node")
}

fn service(name: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn rv_of<K: kube::Resource>(object: &K) -> u64 {
    object
        .resource_version()
        .and_then(|rv| rv.parse().ok())
        .expect("a numeric resourceVersion")
}

/// The next event of a watch stream, bounded.
async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

#[tokio::test]
async fn list_and_watch_see_changes_in_order_with_bookmarks() {
    let server = ApiServer::start(options()).expect("the server starts");
    let nodes: Api<Node> = Api::all(client(&server).await);
    let pp = PostParams::default();
    let n1 = nodes
        .create(&pp, &node("n1", "10.244.1.0/24"))
        .await
        .expect("create n1");
    nodes
        .create(&pp, &node("n2", "10.244.2.0/24"))
        .await
        .expect("create n2");
    assert!(n1.uid().is_some() && n1.creation_timestamp().is_some());

    let list = nodes.list(&ListParams::default()).await.expect("list");
    let names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["n1", "n2"]);
    let listed_rv: u64 = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .expect("the list's resourceVersion");

    let mut events = nodes
        .watch(&WatchParams::default(), &listed_rv.to_string())
        .await
        .expect("watch")
        .boxed();
    nodes
        .create(&pp, &node("n3", "10.244.3.0/24"))
        .await
        .expect("create n3");
    let mut changed = nodes.get("n1").await.expect("get n1");
    changed.spec.as_mut().expect("spec").pod_cidr = Some("10.244.11.0/24".to_owned());
    let updated = nodes
        .replace("n1", &pp, &changed)
        .await
        .expect("replace n1");
    assert_eq!(updated.uid(), n1.uid(), "an update keeps the uid");
    // A stale resourceVersion conflicts, as optimistic concurrency wants.
    let stale = nodes
        .replace("n1", &pp, &changed)
        .await
        .expect_err("stale update");
    assert!(
        matches!(&stale, kube::Error::Api(s) if s.code == 409),
        "{stale:?}"
    );
    nodes
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete n2");
    let missing = nodes.get("n2").await.expect_err("n2 is gone");
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404),
        "{missing:?}"
    );

    let mut seen = Vec::new();
    let mut last_rv = listed_rv;
    let mut bookmarks = 0;
    while seen.len() < 3 || bookmarks == 0 {
        let event = next(&mut events).await.expect("a watch event");
        let (kind, object) = match event {
            WatchEvent::Added(n) => ("ADDED", n),
            WatchEvent::Modified(n) => ("MODIFIED", n),
            WatchEvent::Deleted(n) => ("DELETED", n),
            WatchEvent::Bookmark(b) => {
                let rv: u64 = b.metadata.resource_version.parse().expect("numeric");
                assert!(rv >= last_rv, "a bookmark never goes back");
                bookmarks += 1;
                continue;
            }
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        let rv = rv_of(&object);
        assert!(rv > last_rv, "resourceVersions rise: {rv} after {last_rv}");
        last_rv = rv;
        seen.push((kind, object.name_any()));
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "n3".to_owned()),
            ("MODIFIED", "n1".to_owned()),
            ("DELETED", "n2".to_owned())
        ]
    );
    assert!(bookmarks > 0);
}

#[tokio::test]
async fn selectors_filter_lists_and_watches_like_kube_proxy_needs() {
    let server = ApiServer::start(options()).expect("the server starts");
    let client = client(&server).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let proxied = "!service.kubernetes.io/service-proxy-name";
    server
        .create(Resource::Service, service("web", &json!({"app": "web"})))
        .expect("web");
    server
        .create(
            Resource::Service,
            service(
                "other",
                &json!({"service.kubernetes.io/service-proxy-name": "other"}),
            ),
        )
        .expect("other");
    let list = services
        .list(&ListParams::default().labels(proxied))
        .await
        .expect("list");
    assert_eq!(
        list.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["web"]
    );

    let mut events = services
        .watch(&WatchParams::default().labels(proxied), "0")
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(next(&mut events).await, Ok(WatchEvent::Added(s)) if s.name_any() == "web"));
    // Leaving the selection is a DELETED, entering it an ADDED.
    let mut web = server
        .store()
        .get(Resource::Service, "default", "web")
        .expect("web");
    web["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "x"});
    server
        .update(Resource::Service, web.clone())
        .expect("label web away");
    assert!(matches!(next(&mut events).await, Ok(WatchEvent::Deleted(s)) if s.name_any() == "web"));
    let mut other = server
        .store()
        .get(Resource::Service, "default", "other")
        .expect("other");
    other["metadata"]["labels"] = json!({});
    server
        .update(Resource::Service, other)
        .expect("label other in");
    assert!(matches!(next(&mut events).await, Ok(WatchEvent::Added(s)) if s.name_any() == "other"));

    // A single-object watch by name, as an agent watches its own Node.
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();
    nodes
        .create(&pp, &node("me", "10.244.1.0/24"))
        .await
        .expect("me");
    let mut mine = nodes
        .watch(&WatchParams::default().fields("metadata.name=me"), "0")
        .await
        .expect("watch me")
        .boxed();
    assert!(matches!(next(&mut mine).await, Ok(WatchEvent::Added(n)) if n.name_any() == "me"));
    nodes
        .create(&pp, &node("you", "10.244.2.0/24"))
        .await
        .expect("you");
    nodes
        .delete("me", &DeleteParams::default())
        .await
        .expect("delete me");
    assert!(matches!(next(&mut mine).await, Ok(WatchEvent::Deleted(n)) if n.name_any() == "me"));

    // EndpointSlices of one service, by the label kube-proxy merges them with.
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    for (name, service) in [("web-a", "web"), ("web-b", "web"), ("db-a", "db")] {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }))
        .expect("an EndpointSlice");
        slices.create(&pp, &slice).await.expect("create slice");
    }
    let web_slices = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("list slices");
    assert_eq!(
        web_slices
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["web-a", "web-b"]
    );
    let bad = slices
        .list(&ListParams::default().fields("spec.nodeName=x"))
        .await
        .expect_err("unsupported field");
    assert!(
        matches!(&bad, kube::Error::Api(s) if s.code == 400),
        "{bad:?}"
    );
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let server = ApiServer::start(options()).expect("the server starts");
    for i in 0..7 {
        server
            .create(
                Resource::Node,
                serde_json::to_value(node(&format!("n{i}"), "10.244.1.0/24")).expect("JSON"),
            )
            .expect("create");
    }
    let nodes: Api<Node> = Api::all(client(&server).await);
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = nodes.list(&params).await.expect("a page");
        pages += 1;
        names.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
        assert!(pages < 10, "paging ends");
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("n{i}")).collect::<Vec<_>>());
    // A continue token from before the kept history is gone, as when etcd compacted.
    let first = nodes
        .list(&ListParams::default().limit(3))
        .await
        .expect("a page");
    let token = first.metadata.continue_.expect("more pages");
    add_node(&server, "n7", "10.244.7.0/24");
    server.compact();
    let expired = nodes
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect_err("an expired continue token");
    assert!(
        matches!(&expired, kube::Error::Api(s) if s.code == 410),
        "{expired:?}"
    );
}

/// The nodes a watcher's events describe, applied the way a reflector applies them.
#[derive(Default)]
struct Mirror {
    nodes: BTreeMap<String, Option<String>>,
    building: BTreeMap<String, Option<String>>,
    relists: usize,
    gone: usize,
}

impl Mirror {
    fn apply(&mut self, event: Result<watcher::Event<Node>, watcher::Error>) {
        let cidr = |n: &Node| n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        match event {
            Ok(watcher::Event::Init) => {
                self.relists += 1;
                self.building.clear();
            }
            Ok(watcher::Event::InitApply(n)) => {
                self.building.insert(n.name_any(), cidr(&n));
            }
            Ok(watcher::Event::InitDone) => self.nodes = std::mem::take(&mut self.building),
            Ok(watcher::Event::Apply(n)) => {
                self.nodes.insert(n.name_any(), cidr(&n));
            }
            Ok(watcher::Event::Delete(n)) => {
                self.nodes.remove(&n.name_any());
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => self.gone += 1,
            // Connection refused while the server is down: the watcher retries.
            Err(_) => {}
        }
    }
}

/// The nodes in the server's store, as the mirror holds them.
fn stored(server: &ApiServer) -> BTreeMap<String, Option<String>> {
    server
        .store()
        .list(Resource::Node, None)
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().expect("name").to_owned(),
                n["spec"]["podCIDR"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Drives `stream` into `mirror` until it equals the server's store (and `until` holds).
async fn converge<S>(
    stream: &mut S,
    mirror: &mut Mirror,
    server: &ApiServer,
    until: impl Fn(&Mirror) -> bool,
) where
    S: futures::Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while mirror.nodes != stored(server) || !until(mirror) {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no convergence: mirror {:?}, server {:?}, relists {}, 410s {}",
                    mirror.nodes,
                    stored(server),
                    mirror.relists,
                    mirror.gone
                )
            })
            .expect("the watcher never ends");
        mirror.apply(event);
    }
}

fn add_node(server: &ApiServer, name: &str, cidr: &str) {
    server
        .create(
            Resource::Node,
            serde_json::to_value(node(name, cidr)).expect("JSON"),
        )
        .expect("create");
}

#[tokio::test]
async fn an_expired_resource_version_gives_410_and_the_watcher_relists() {
    let server = ApiServer::start(options()).expect("the server starts");
    add_node(&server, "n1", "10.244.1.0/24");
    let nodes: Api<Node> = Api::all(client(&server).await);

    // A raw watch from before the kept history: one ERROR event with 410 Expired.
    let before = server.store().resource_version();
    add_node(&server, "n2", "10.244.2.0/24");
    server.compact();
    let mut old = nodes
        .watch(&WatchParams::default(), &before.to_string())
        .await
        .expect("watch")
        .boxed();
    match next(&mut old).await {
        Ok(WatchEvent::Error(status)) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (410, "Expired"),
                "{status:?}"
            );
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, old.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "the watch ends after the error"
    );

    // The watcher: synced, then it falls behind while the server is down and the history
    // is compacted; when it comes back it gets 410, relists and converges.
    let mut server = server;
    let mut stream = watcher(nodes, watcher::Config::default()).boxed();
    let mut mirror = Mirror::default();
    converge(&mut stream, &mut mirror, &server, |m| m.relists == 1).await;
    server.stop();
    add_node(&server, "n3", "10.244.3.0/24");
    server.delete(Resource::Node, "", "n1").expect("delete n1");
    let mut n2 = server.store().get(Resource::Node, "", "n2").expect("n2");
    n2["spec"]["podCIDR"] = json!("10.244.22.0/24");
    server.update(Resource::Node, n2).expect("update n2");
    server.compact();
    server.restart(false).expect("restart");
    converge(&mut stream, &mut mirror, &server, |m| {
        m.gone >= 1 && m.relists >= 2
    })
    .await;
    assert_eq!(
        mirror.nodes.keys().collect::<Vec<_>>(),
        ["n2", "n3"],
        "converged after relisting"
    );
    // And it keeps following changes afterwards.
    add_node(&server, "n4", "10.244.4.0/24");
    converge(&mut stream, &mut mirror, &server, |m| {
        m.nodes.contains_key("n4")
    })
    .await;
}

#[tokio::test]
async fn a_restart_with_a_new_history_converges() {
    let mut server = ApiServer::start(options()).expect("the server starts");
    for i in 1..=3 {
        add_node(&server, &format!("n{i}"), &format!("10.244.{i}.0/24"));
    }
    let nodes: Api<Node> = Api::all(client(&server).await);
    let mut stream = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut mirror = Mirror::default();
    converge(&mut stream, &mut mirror, &server, |m| m.relists == 1).await;
    let old_rv = server.store().resource_version();

    server.stop();
    let down = nodes.list(&ListParams::default()).await;
    assert!(down.is_err(), "the port is closed while stopped");
    server.delete(Resource::Node, "", "n2").expect("delete n2");
    add_node(&server, "n5", "10.244.5.0/24");
    server.restart(true).expect("restart with a new history");
    assert!(server.store().resource_version() > old_rv + NEW_HISTORY_JUMP);

    converge(&mut stream, &mut mirror, &server, |m| {
        m.gone >= 1 && m.relists >= 2
    })
    .await;
    assert_eq!(mirror.nodes.keys().collect::<Vec<_>>(), ["n1", "n3", "n5"]);
    let relisted = nodes.list(&ListParams::default()).await.expect("list");
    assert!(
        relisted
            .items
            .iter()
            .all(|n| rv_of(n) > old_rv + NEW_HISTORY_JUMP)
    );
}

/// Agents run in test namespaces: the server listens inside one, and only there.
#[test]
fn serves_inside_a_test_namespace() {
    podnet_tests::require_root!();
    let ns = podnet_tests::Netns::new("api");
    let server = ApiServer::start(Options {
        netns: Some(podnet_tests::InNetns::path(&ns)),
        ..options()
    })
    .expect("the server starts in the namespace");
    let addr = server.addr().to_string();
    let out = podnet_tests::netprobe(
        &ns,
        &[
            "http-get",
            &addr,
            "--path",
            "/version",
            "--timeout-ms",
            "2000",
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("podnet-test"),
        "GET /version inside the namespace: {}",
        podnet_tests::describe(&out)
    );
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "nothing listens on {addr} in the test process's own namespace"
    );
}

/// The scale of the benchmark, served by this server: 10,000 Services and their
/// EndpointSlices (5 endpoints each, 50,000 in all) listed through `kube::runtime::watcher`
/// (paged, 500 a page) and one change seen through the watch. Prints the times, so an agent's
/// benchmark can tell how much of its sync is the test server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_sync_through_the_watcher() {
    const SERVICES: usize = 10_000;
    const ENDPOINTS_PER_SLICE: usize = 5;
    let server = ApiServer::start(Options {
        history: 4 * SERVICES,
        ..options()
    })
    .expect("the server starts");
    let started = std::time::Instant::now();
    for i in 0..SERVICES {
        let name = format!("svc-{i:05}");
        let mut svc = service(&name, &json!({"app": name}));
        svc["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", i / 250, i % 250 + 1));
        server.create(Resource::Service, svc).expect("service");
        let endpoints: Vec<Value> = (0..ENDPOINTS_PER_SLICE)
            .map(|e| {
                json!({"addresses": [format!("10.244.{}.{}", i % 200, e + 2)],
                       "conditions": {"ready": true}})
            })
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abcde"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": 8080, "protocol": "TCP"}],
        });
        server
            .create(Resource::EndpointSlice, slice)
            .expect("slice");
    }
    let created = started.elapsed();

    let client = client(&server).await;
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client);
    let started = std::time::Instant::now();
    let mut service_stream = watcher(services, watcher::Config::default()).boxed();
    let mut slice_stream = watcher(slices, watcher::Config::default()).boxed();
    let (mut seen_services, mut seen_endpoints) = (0, 0);
    loop {
        match next(&mut service_stream).await.expect("no watch error") {
            watcher::Event::InitApply(_) => seen_services += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    loop {
        match next(&mut slice_stream).await.expect("no watch error") {
            watcher::Event::InitApply(s) => seen_endpoints += s.endpoints.map_or(0, |e| e.len()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    let synced = started.elapsed();
    assert_eq!(seen_services, SERVICES);
    assert_eq!(seen_endpoints, SERVICES * ENDPOINTS_PER_SLICE);

    // One change at a time, from the write to the watcher's event.
    let mut latencies = Vec::new();
    for round in 0..20 {
        let name = format!("svc-{:05}", round * 7);
        let mut svc = server
            .store()
            .get(Resource::Service, "default", &name)
            .expect("svc");
        svc["metadata"]["labels"]["round"] = json!(round.to_string());
        let written = std::time::Instant::now();
        server.update(Resource::Service, svc).expect("update");
        loop {
            if let watcher::Event::Apply(s) = next(&mut service_stream).await.expect("event")
                && s.name_any() == name
            {
                break;
            }
        }
        latencies.push(written.elapsed());
    }
    latencies.sort();
    eprintln!(
        "{SERVICES} services + {} endpoints: created in the store in {created:?}; \
         watcher initial sync (services, then slices) {synced:?}; one change write->event \
         p50 {:?} max {:?} (this build's profile)",
        SERVICES * ENDPOINTS_PER_SLICE,
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(synced < Duration::from_secs(60), "sync took {synced:?}");
}
