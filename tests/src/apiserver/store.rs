//! The API server's storage (what etcd and the watch cache are to the real one): objects by
//! resource, namespace and name; one resourceVersion counter for everything; a bounded
//! history of change events for watches to resume from; a broadcast of new events.
//!
//! Objects are checked and normalised through their k8s-openapi types on every write, so
//! what is stored and served is the real object JSON.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The resources this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Node,
    Service,
    EndpointSlice,
}

impl Resource {
    pub const ALL: [Self; 3] = [Self::Node, Self::Service, Self::EndpointSlice];

    /// The plural name in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Node => "nodes",
            Self::Service => "services",
            Self::EndpointSlice => "endpointslices",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::Node => "Node",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }

    /// `v1` or `group/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Node | Self::Service => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }

    pub fn from_plural(plural: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.plural() == plural)
    }

    /// Checks `object` against the resource's k8s-openapi type and returns it as that type
    /// serialises it (with `apiVersion` and `kind`).
    fn normalise(self, object: Value) -> Result<Value, String> {
        fn through<T: serde::de::DeserializeOwned + serde::Serialize>(
            object: Value,
        ) -> Result<Value, String> {
            let typed: T = serde_json::from_value(object).map_err(|e| e.to_string())?;
            serde_json::to_value(typed).map_err(|e| e.to_string())
        }
        match self {
            Self::Node => through::<Node>(object),
            Self::Service => through::<Service>(object),
            Self::EndpointSlice => through::<EndpointSlice>(object),
        }
    }
}

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub resource: Resource,
    pub kind: EventType,
    pub resource_version: u64,
    /// The object after the change (for DELETED: as it was, with the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The object before a MODIFIED, so a selector watch can tell an object entering or
    /// leaving its selection.
    pub old: Option<Value>,
}

/// A failed request, as a `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

type Key = (Resource, String, String);

/// Everything stored. See the module documentation.
#[derive(Debug)]
pub struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Watches from a resourceVersion older than this get 410 Gone: the events after it are
    /// all in `history`, older ones are not.
    oldest: u64,
    events: broadcast::Sender<Arc<Event>>,
    uid_counter: u64,
}

/// How many events a slow watch may fall behind before it is ended with 410 Gone.
const BROADCAST_CAPACITY: usize = 1 << 16;

/// A fresh resourceVersion history starts this far above the old one.
pub const NEW_HISTORY_JUMP: u64 = 1_000_000;

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Store {
    /// An empty store whose history keeps the last `history_limit` events.
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            resource_version: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            oldest: 1,
            events,
            uid_counter: 0,
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The oldest resourceVersion a watch can start from.
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    /// Sets how many events are kept (dropping the oldest now if there are more).
    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.compact();
    }

    fn compact(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(event) = self.history.pop_front() {
                self.oldest = event.resource_version;
            }
        }
    }

    /// Forgets every event: watches from any resourceVersion before now get 410.
    pub fn compact_all(&mut self) {
        self.history.clear();
        self.oldest = self.resource_version;
    }

    /// A new resourceVersion history, as after restoring etcd or replacing the API server:
    /// the counter jumps by [`NEW_HISTORY_JUMP`], every object is stamped anew, the history
    /// is emptied. Watches and lists from before get 410.
    pub fn new_history(&mut self) {
        self.resource_version += NEW_HISTORY_JUMP;
        let keys: Vec<Key> = self.objects.keys().cloned().collect();
        for key in keys {
            self.resource_version += 1;
            let rv = self.resource_version.to_string();
            if let Some(object) = self.objects.get_mut(&key) {
                object["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        self.compact_all();
    }

    /// A receiver of every event after now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The events after `resource_version`, or 410 Gone when they are no longer all kept.
    pub fn events_since(&self, resource_version: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        if resource_version < self.oldest {
            return Err(expired(resource_version, self.oldest));
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.resource_version > resource_version)
            .cloned()
            .collect())
    }

    /// The objects of `resource` (in `namespace`, if given), ordered by namespace and name.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The objects of `resource` after the key `(namespace, name)` (all when `None`), in
    /// key order, without copying them: what a list page walks.
    pub fn objects_after<'a>(
        &'a self,
        resource: Resource,
        after: Option<(&str, &str)>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some((namespace, name)) => {
                Bound::Excluded((resource, namespace.to_owned(), name.to_owned()))
            }
            None => Bound::Included((resource, String::new(), String::new())),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |((r, _, _), _)| *r == resource)
            .map(|(_, object)| object)
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn record(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(Arc::clone(&event));
        self.compact();
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(event);
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        let n = self.uid_counter;
        let seed = self.resource_version;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (seed.wrapping_mul(2_654_435_761) ^ n) & 0xffff_ffff,
            n & 0xffff,
            (seed >> 4) & 0xfff,
            n & 0xfff,
            n.wrapping_mul(0x9e37_79b9) & 0xffff_ffff_ffff
        )
    }

    /// Checks the object's name and namespace against the request's.
    fn key_of(
        resource: Resource,
        namespace: Option<&str>,
        object: &mut Value,
    ) -> Result<Key, ApiError> {
        let name = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?
            .to_owned();
        let namespace = if resource.namespaced() {
            let from_body = object["metadata"]["namespace"].as_str().map(str::to_owned);
            let namespace = match (namespace, from_body) {
                (Some(url), Some(body)) if url != body => {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        format!(
                            "the namespace of the provided object ({body}) does not match the namespace sent on the request ({url})"
                        ),
                    ));
                }
                (Some(url), _) => url.to_owned(),
                (None, Some(body)) => body,
                (None, None) => "default".to_owned(),
            };
            object["metadata"]["namespace"] = json!(namespace);
            namespace
        } else {
            String::new()
        };
        Ok((resource, namespace, name))
    }

    /// Creates `object` (POST): 409 if it exists. Returns the stored object.
    pub fn create(
        &mut self,
        resource: Resource,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        let mut object = resource
            .normalise(object)
            .map_err(|e| ApiError::new(400, "BadRequest", e))?;
        let key = Self::key_of(resource, namespace, &mut object)?;
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", resource.plural(), key.2),
            ));
        }
        self.resource_version += 1;
        let uid = self.next_uid();
        let metadata = &mut object["metadata"];
        metadata["uid"] = json!(uid);
        metadata["resourceVersion"] = json!(self.resource_version.to_string());
        metadata["creationTimestamp"] = json!(now_rfc3339());
        metadata["generation"] = json!(1);
        self.objects.insert(key, object.clone());
        self.record(Event {
            resource,
            kind: EventType::Added,
            resource_version: self.resource_version,
            object: object.clone(),
            old: None,
        });
        Ok(object)
    }

    /// Replaces `object` (PUT): 404 if it does not exist, 409 if its
    /// `metadata.resourceVersion` is set and not the stored one. uid, creationTimestamp and
    /// generation stay the server's.
    pub fn update(
        &mut self,
        resource: Resource,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        let mut object = resource
            .normalise(object)
            .map_err(|e| ApiError::new(400, "BadRequest", e))?;
        let key = Self::key_of(resource, namespace, &mut object)?;
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(not_found(resource, &key.2));
        };
        let stored_rv = &old["metadata"]["resourceVersion"];
        match object["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() && Some(rv) != stored_rv.as_str() => {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        resource.plural(),
                        key.2
                    ),
                ));
            }
            _ => {}
        }
        self.resource_version += 1;
        let spec_changed = old.get("spec") != object.get("spec")
            || (resource == Resource::EndpointSlice
                && (old.get("endpoints") != object.get("endpoints")
                    || old.get("ports") != object.get("ports")));
        let generation =
            old["metadata"]["generation"].as_u64().unwrap_or(1) + u64::from(spec_changed);
        let metadata = &mut object["metadata"];
        metadata["uid"] = old["metadata"]["uid"].clone();
        metadata["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        metadata["generation"] = json!(generation);
        metadata["resourceVersion"] = json!(self.resource_version.to_string());
        self.objects.insert(key, object.clone());
        self.record(Event {
            resource,
            kind: EventType::Modified,
            resource_version: self.resource_version,
            object: object.clone(),
            old: Some(old),
        });
        Ok(object)
    }

    /// Deletes an object (DELETE): 404 if it does not exist. Returns it as it was, with the
    /// deletion's resourceVersion.
    pub fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = (resource, namespace.to_owned(), name.to_owned());
        let Some(mut object) = self.objects.remove(&key) else {
            return Err(not_found(resource, name));
        };
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.record(Event {
            resource,
            kind: EventType::Deleted,
            resource_version: self.resource_version,
            object: object.clone(),
            old: None,
        });
        Ok(object)
    }
}

pub fn not_found(resource: Resource, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", resource.plural()),
    )
}

/// 410 Gone for a watch or continue from `requested`, older than `oldest`.
pub fn expired(requested: u64, oldest: u64) -> ApiError {
    ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {requested} ({oldest})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    }

    #[test]
    fn writes_bump_the_resource_version_and_keep_identity() {
        let mut store = Store::new(10);
        let created = store.create(Resource::Node, None, node("n1")).unwrap();
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(rv, store.resource_version().to_string());
        assert!(
            created["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.len() == 36)
        );
        assert!(
            created["metadata"]["creationTimestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert_eq!(
            store
                .create(Resource::Node, None, node("n1"))
                .unwrap_err()
                .code,
            409
        );
        let mut changed = created.clone();
        changed["spec"] = json!({"podCIDR": "10.244.1.0/24"});
        let updated = store.update(Resource::Node, None, changed.clone()).unwrap();
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        assert_ne!(
            updated["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        // A stale resourceVersion conflicts.
        assert_eq!(
            store
                .update(Resource::Node, None, changed)
                .unwrap_err()
                .code,
            409
        );
        let deleted = store.delete(Resource::Node, "", "n1").unwrap();
        assert_eq!(
            deleted["metadata"]["resourceVersion"],
            json!(store.resource_version().to_string())
        );
        assert_eq!(
            store.delete(Resource::Node, "", "n1").unwrap_err().code,
            404
        );
        let kinds: Vec<_> = store
            .events_since(1)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
    }

    #[test]
    fn bad_objects_are_refused() {
        let mut store = Store::new(10);
        let bad = json!({"metadata": {"name": "s"}, "spec": {"ports": "nope"}});
        assert_eq!(
            store.create(Resource::Service, None, bad).unwrap_err().code,
            400
        );
        let unnamed = json!({"metadata": {}});
        assert_eq!(
            store
                .create(Resource::Node, None, unnamed)
                .unwrap_err()
                .code,
            422
        );
        let svc = json!({"metadata": {"name": "s", "namespace": "a"}});
        assert_eq!(
            store
                .create(Resource::Service, Some("b"), svc)
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn history_is_bounded_and_new_history_expires_everything() {
        let mut store = Store::new(2);
        for i in 0..4 {
            store
                .create(Resource::Node, None, node(&format!("n{i}")))
                .unwrap();
        }
        let now = store.resource_version();
        assert_eq!(store.events_since(now - 2).unwrap().len(), 2);
        assert_eq!(store.events_since(now - 3).unwrap_err().code, 410);
        store.new_history();
        assert!(store.resource_version() > now + NEW_HISTORY_JUMP);
        assert_eq!(store.events_since(now).unwrap_err().code, 410);
        assert!(
            store
                .events_since(store.resource_version())
                .unwrap()
                .is_empty()
        );
        let rvs: Vec<u64> = store
            .list(Resource::Node, None)
            .iter()
            .map(|n| {
                n["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(rvs.iter().all(|rv| *rv > now + NEW_HISTORY_JUMP), "{rvs:?}");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
