//! The API server's HTTP side: URL routing, discovery documents, and the list, watch, get,
//! create, update and delete handlers over the [`Store`].

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame, body::Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{
    selector::{FieldSelector, LabelSelector},
    store::{ApiError, Event, EventType, Resource, Store, expired, not_found},
};

pub(super) type Body = BoxBody<Bytes, Infallible>;

/// What every connection shares.
pub(super) struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub bookmark_interval: Duration,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The version this server claims (`/version`).
pub const GIT_VERSION: &str = "v1.33.0-podnet-test";

fn json_response(status: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.status())
}

/// `%XX` and `+` decoding of a query component.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(text.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query parameters the handlers read.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    label_selector: LabelSelector,
    field_selector: FieldSelector,
    limit: Option<usize>,
    continue_token: Option<String>,
    bookmarks: bool,
    timeout: Option<Duration>,
    send_initial_events: bool,
}

fn parse_query(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let bad = |m: String| ApiError::new(400, "BadRequest", m);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        let truthy = value == "1" || value == "true";
        match percent_decode(key).as_str() {
            "watch" => q.watch = truthy,
            "resourceVersion" => q.resource_version = Some(value),
            "labelSelector" => q.label_selector = LabelSelector::parse(&value).map_err(bad)?,
            "fieldSelector" => q.field_selector = FieldSelector::parse(&value).map_err(bad)?,
            "limit" => {
                q.limit = Some(value.parse().map_err(|_| bad(format!("limit {value:?}")))?);
            }
            "continue" => q.continue_token = Some(value).filter(|v| !v.is_empty()),
            "allowWatchBookmarks" => q.bookmarks = truthy,
            "timeoutSeconds" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| bad(format!("timeoutSeconds {value:?}")))?;
                q.timeout = Some(Duration::from_secs(secs));
            }
            "sendInitialEvents" => q.send_initial_events = truthy,
            // resourceVersionMatch, pretty, ...: accepted, no effect here.
            _ => {}
        }
    }
    Ok(q)
}

/// A request's target: a resource collection or one object.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

enum Route {
    Document(Value),
    Resource(Target),
}

fn resource_list(group_version: &str) -> Value {
    let resources: Vec<Value> = Resource::ALL
        .into_iter()
        .filter(|r| r.api_version() == group_version)
        .map(|r| {
            json!({
                "name": r.plural(),
                "singularName": r.kind().to_ascii_lowercase(),
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["create", "delete", "get", "list", "update", "watch"],
            })
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

fn discovery_group() -> Value {
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": "discovery.k8s.io",
        "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"},
    })
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["version"] => {
            return Some(Route::Document(json!({
                "major": "1", "minor": "33", "gitVersion": GIT_VERSION,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
            })));
        }
        ["api"] => {
            return Some(Route::Document(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [],
            })));
        }
        ["apis"] => {
            let mut group = discovery_group();
            if let Some(g) = group.as_object_mut() {
                g.remove("kind");
                g.remove("apiVersion");
            }
            return Some(Route::Document(json!({
                "kind": "APIGroupList", "apiVersion": "v1", "groups": [group],
            })));
        }
        ["apis", "discovery.k8s.io"] => return Some(Route::Document(discovery_group())),
        ["api", "v1"] => return Some(Route::Document(resource_list("v1"))),
        ["apis", "discovery.k8s.io", "v1"] => {
            return Some(Route::Document(resource_list("discovery.k8s.io/v1")));
        }
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io/v1", rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let resource = Resource::from_plural(plural)?;
    if resource.api_version() != group_version || (namespace.is_some() && !resource.namespaced()) {
        return None;
    }
    // A namespaced object is only addressed inside its namespace.
    if resource.namespaced() && namespace.is_none() && name.is_some() {
        return None;
    }
    Some(Route::Resource(Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    }))
}

/// Serves one request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let not_found_doc = || {
        error_response(&ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                parts.uri.path()
            ),
        ))
    };
    let Some(route) = route(parts.uri.path()) else {
        return Ok(not_found_doc());
    };
    let target = match route {
        Route::Document(doc) if parts.method == Method::GET => return Ok(json_response(200, &doc)),
        Route::Document(_) => return Ok(method_not_allowed()),
        Route::Resource(target) => target,
    };
    let query = match parse_query(parts.uri.query()) {
        Ok(q) => q,
        Err(e) => return Ok(error_response(&e)),
    };
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::new(
                400,
                "BadRequest",
                e.to_string(),
            )));
        }
    };
    let response = match (&parts.method, &target.name) {
        (&Method::GET, None) if query.watch => watch(&shared, &target, &query),
        (&Method::GET, None) => list(&shared, &target, &query),
        (&Method::GET, Some(name)) => {
            let namespace = target.namespace.as_deref().unwrap_or("");
            shared
                .store()
                .get(target.resource, namespace, name)
                .ok_or_else(|| not_found(target.resource, name))
                .map(|o| json_response(200, &o))
        }
        (&Method::POST, None) => parse_body(&body).and_then(|object| {
            shared
                .store()
                .create(target.resource, target.namespace.as_deref(), object)
                .map(|o| json_response(201, &o))
        }),
        (&Method::PUT, Some(name)) => parse_body(&body).and_then(|object| {
            if object["metadata"]["name"].as_str() != Some(name) {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                ));
            }
            shared
                .store()
                .update(target.resource, target.namespace.as_deref(), object)
                .map(|o| json_response(200, &o))
        }),
        (&Method::DELETE, Some(name)) => shared
            .store()
            .delete(
                target.resource,
                target.namespace.as_deref().unwrap_or(""),
                name,
            )
            .map(|o| json_response(200, &o)),
        _ => return Ok(method_not_allowed()),
    };
    Ok(response.unwrap_or_else(|e| error_response(&e)))
}

fn method_not_allowed() -> Response<Body> {
    error_response(&ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    ))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")))
}

fn matches(target: &Target, query: &Query, object: &Value) -> bool {
    target
        .namespace
        .as_deref()
        .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
        && query.label_selector.matches(object)
        && query.field_selector.matches(object)
}

/// An object as a list item: without `apiVersion` and `kind`, as the real server serves them.
fn list_item(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

/// `continue` tokens: the snapshot's resourceVersion and the last key listed, hex-encoded.
fn encode_continue(rv: u64, namespace: &str, name: &str) -> String {
    format!("{rv}/{namespace}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '/');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.to_owned(),
        parts.next()?.to_owned(),
    ))
}

fn list(shared: &Shared, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let store = shared.store();
    let mut rv = store.resource_version();
    let after = match &query.continue_token {
        Some(token) => {
            let (token_rv, namespace, name) = decode_continue(token)
                .ok_or_else(|| ApiError::new(400, "BadRequest", "invalid continue token"))?;
            if token_rv < store.oldest() {
                return Err(expired(token_rv, store.oldest()));
            }
            rv = token_rv;
            Some((namespace, name))
        }
        None => None,
    };
    // resourceVersion=0 is served from the watch cache, which ignores limit.
    let limit = query
        .limit
        .filter(|l| *l > 0 && query.resource_version.as_deref() != Some("0"));
    let (mut items, mut remaining) = (Vec::new(), 0_usize);
    let selected = store
        .objects_after(
            target.resource,
            after
                .as_ref()
                .map(|(ns, name)| (ns.as_str(), name.as_str())),
        )
        .filter(|o| matches(target, query, o));
    for object in selected {
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
        } else {
            items.push(list_item(object.clone()));
        }
    }
    drop(store);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if remaining > 0
        && let Some(last) = items.last()
    {
        let last = &last["metadata"];
        metadata["continue"] = json!(encode_continue(
            rv,
            last["namespace"].as_str().unwrap_or(""),
            last["name"].as_str().unwrap_or("")
        ));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", target.resource.kind()),
            "apiVersion": target.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// What a watch with `target` and `query` sends for `event`, if anything: MODIFIED becomes
/// ADDED or DELETED when the object enters or leaves the selection, as in the real server.
fn translate(target: &Target, query: &Query, event: &Event) -> Option<Bytes> {
    if event.resource != target.resource {
        return None;
    }
    let now = matches(target, query, &event.object);
    let kind = match (event.kind, &event.old) {
        (EventType::Modified, Some(old)) => match (matches(target, query, old), now) {
            (true, true) => EventType::Modified,
            (true, false) => EventType::Deleted,
            (false, true) => EventType::Added,
            (false, false) => return None,
        },
        (kind, _) if now => kind,
        _ => return None,
    };
    Some(event_line(kind.as_str(), &event.object))
}

/// How many lines a watch may have queued for its connection.
const WATCH_QUEUE: usize = 1024;

fn watch(shared: &Shared, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    if query.send_initial_events {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "sendInitialEvents (streaming lists) is not supported by this test server",
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_QUEUE);
    let mut initial = Vec::new();
    let mut gone = false;
    let (mut events, start) = {
        let store = shared.store();
        let events = store.subscribe();
        let start = store.resource_version();
        match query.resource_version.as_deref() {
            None | Some("" | "0") => {
                for object in store.list(target.resource, target.namespace.as_deref()) {
                    if matches(target, query, &object) {
                        initial.push(event_line("ADDED", &object));
                    }
                }
            }
            Some(rv) => {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::new(
                        400,
                        "BadRequest",
                        format!("resourceVersion {rv:?} is not a number"),
                    )
                })?;
                match store.events_since(rv) {
                    Ok(past) => {
                        initial.extend(past.iter().filter_map(|e| translate(target, query, e)));
                    }
                    // The real server answers 200 and ends the stream with an ERROR event.
                    Err(error) => {
                        initial.push(event_line("ERROR", &error.status()));
                        gone = true;
                    }
                }
            }
        }
        (events, start)
    };
    let target = Target {
        resource: target.resource,
        namespace: target.namespace.clone(),
        name: None,
    };
    let query = Query {
        label_selector: query.label_selector.clone(),
        field_selector: query.field_selector.clone(),
        bookmarks: query.bookmarks,
        timeout: query.timeout,
        ..Query::default()
    };
    let bookmark_interval = shared.bookmark_interval;
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let mut last_rv = start;
        let deadline = query.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut bookmarks = tokio::time::interval(bookmark_interval);
        bookmarks.tick().await;
        loop {
            let line = tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if event.resource_version <= start => continue,
                    Ok(event) => {
                        last_rv = event.resource_version;
                        match translate(&target, &query, &event) {
                            Some(line) => line,
                            None => continue,
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx.send(event_line("ERROR", &expired(last_rv, last_rv + 1).status())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = bookmarks.tick(), if query.bookmarks => event_line("BOOKMARK", &json!({
                    "kind": target.resource.kind(),
                    "apiVersion": target.resource.api_version(),
                    "metadata": {"resourceVersion": last_rv.to_string()},
                })),
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return,
                () = tx.closed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let target = |p: &str| match route(p) {
            Some(Route::Resource(t)) => Some((t.resource, t.namespace, t.name)),
            _ => None,
        };
        assert_eq!(target("/api/v1/nodes"), Some((Resource::Node, None, None)));
        assert_eq!(
            target("/api/v1/nodes/n1"),
            Some((Resource::Node, None, Some("n1".to_owned())))
        );
        assert_eq!(
            target("/api/v1/namespaces/a/services/s"),
            Some((
                Resource::Service,
                Some("a".to_owned()),
                Some("s".to_owned())
            ))
        );
        assert_eq!(
            target("/apis/discovery.k8s.io/v1/endpointslices"),
            Some((Resource::EndpointSlice, None, None))
        );
        assert_eq!(target("/api/v1/endpointslices"), None, "wrong group");
        assert_eq!(
            target("/api/v1/namespaces/a/nodes"),
            None,
            "nodes are cluster-scoped"
        );
        assert_eq!(
            target("/api/v1/services/s"),
            None,
            "a service needs its namespace"
        );
        assert!(matches!(route("/version"), Some(Route::Document(_))));
        assert!(route("/api/v1/pods").is_none());
    }

    #[test]
    fn queries_and_tokens() {
        let q = parse_query(Some(
            "watch=1&resourceVersion=12&labelSelector=%21service.kubernetes.io%2Fservice-proxy-name&allowWatchBookmarks=true&timeoutSeconds=290",
        ))
        .unwrap();
        assert!(q.watch && q.bookmarks);
        assert_eq!(q.resource_version.as_deref(), Some("12"));
        assert_eq!(q.timeout, Some(Duration::from_secs(290)));
        assert!(
            q.label_selector
                .matches(&json!({"metadata": {"labels": {}}}))
        );
        assert!(!q.label_selector.matches(
            &json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "x"}}})
        ));
        assert!(parse_query(Some("fieldSelector=spec.x%3Dy")).is_err());
        let token = encode_continue(7, "ns", "a/b");
        assert_eq!(
            decode_continue(&token),
            Some((7, "ns".to_owned(), "a/b".to_owned()))
        );
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
    }
}
