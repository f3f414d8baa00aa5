//! Typed access to the service maps (`SERVICES`, `BACKENDS`, `REV_NAT`) and to `POD_NETNS`:
//! write or replace one frontend with its ordered backends, delete one, read one, list them,
//! clear them all, and register a pod's network namespace for socket-level balancing.
//!
//! Layout (types in `podnet_ebpf::abi`): a frontend `address:port/proto` (a NodePort under
//! `NODEPORT_ADDR`) has a master entry in `SERVICES` (slot 0: service id, backend count, local
//! count, flags, affinity timeout) and slots `1..=count` holding backend ids; `BACKENDS` maps a
//! backend id to its address, port and conditions; `REV_NAT` maps the service id back to the
//! frontend. Every ClusterIP address also has an address entry (`ANY_PORT`, `ANY_PROTO`) while
//! any of its frontends exists, so the datapath refuses the ports it does not serve.
//!
//! Concurrent packets never see a half-written frontend: a write puts the new backends under
//! ids of the other generation (see `abi::backend_id`), then fills the slots, then raises the
//! count in the master entry, and only then removes slots past the new count and the old
//! generation's backends. A delete removes the master entry first. A packet that picked a slot
//! just before a replace can at worst find its backend gone and is refused once.
//!
//! The frontends are read once from `REV_NAT` when the maps are opened (about 50 ms for 30,000
//! frontends), so service ids are allocated without a scan per write; keep one
//! [`ServicesMap`] open across a batch of writes (one writer at a time: callers hold the
//! node's service lock).

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use podnet_ebpf::abi::{
    ANY_PORT, ANY_PROTO, MAX_BACKENDS, MAX_SERVICE_ID, NODEPORT_ADDR, PodNetns, REV_NAT_MAX,
    RevNat, ServiceBackend, ServiceKey, ServiceValue, backend_id, map_name,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    svc_flag,
};

use super::{
    DatapathError,
    maps::{PinnedMaps, is_not_found},
};

/// A service frontend: `addr:port/proto` (a NodePort has the unspecified address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
}

impl Frontend {
    /// The NodePort `port/proto` on the node's address.
    pub fn nodeport(port: u16, proto: u8) -> Self {
        Self {
            addr: Ipv4Addr::from(NODEPORT_ADDR),
            port,
            proto,
        }
    }

    fn key(&self, slot: u16) -> ServiceKey {
        ServiceKey {
            addr: self.addr.octets(),
            port: self.port,
            slot,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "?",
        };
        if self.addr.octets() == NODEPORT_ADDR {
            write!(f, "nodeport {}/{proto}", self.port)
        } else {
            write!(f, "{}:{}/{proto}", self.addr, self.port)
        }
    }
}

/// One backend of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Bit set of `abi::backend_flag::*`.
    pub flags: u8,
}

/// A frontend and what the datapath does with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub frontend: Frontend,
    /// In slot order; local backends first when `local_count` is used.
    pub backends: Vec<Backend>,
    /// Bit set of `abi::svc_flag::*` (not `ADDRESS`, which is the maps' own).
    pub flags: u16,
    /// How many of the first backends are on this node.
    pub local_count: u16,
    /// Session affinity timeout in seconds (0: none).
    pub affinity_timeout: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesMapError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{frontend}: {count} backends; a frontend has at most {MAX_BACKENDS}")]
    TooManyBackends { frontend: Frontend, count: usize },
    #[error("{frontend}: local count {local_count} is more than its {count} backends")]
    BadLocalCount {
        frontend: Frontend,
        local_count: u16,
        count: usize,
    },
    #[error("{frontend}: port 0, protocol other than tcp/udp, or the reserved ADDRESS flag")]
    BadFrontend { frontend: Frontend },
    #[error("no free service id: {in_use} frontends exist, the maps hold {REV_NAT_MAX}")]
    Full { in_use: usize },
}

/// What the index knows about a frontend.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: u32,
    flags: u16,
}

/// The node's service maps, opened from their pins, with an index of the frontends.
pub struct ServicesMap {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, ServiceBackend>,
    rev_nat: HashMap<MapData, u32, RevNat>,
    frontends: StdHashMap<Frontend, Known>,
    ids: std::collections::HashSet<u32>,
    /// ClusterIP address -> how many ClusterIP frontends use it.
    cluster_ips: StdHashMap<Ipv4Addr, usize>,
    next_id: u32,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    PinnedMaps::map_err(name)
}

fn open_map(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(DatapathError::NotInitialised {
            path: pin_dir.to_path_buf(),
        });
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    T::try_from(open_map(pin_dir, name)?).map_err(map_err(name))
}

/// Removes `key` from `map`; a key already gone is not an error.
fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<bool, DatapathError> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(map_err(name)(e)),
    }
}

fn get<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<Option<V>, DatapathError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

fn slot(index: usize) -> u16 {
    u16::try_from(index + 1).expect("backend counts are capped at MAX_BACKENDS")
}

impl ServicesMap {
    /// Opens the node's service maps and reads every frontend from `REV_NAT`.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::from_maps(
            open_map(pin_dir, map_name::SERVICES)?,
            open_map(pin_dir, map_name::BACKENDS)?,
            open_map(pin_dir, map_name::REV_NAT)?,
        )
    }

    /// The same over maps at hand (e.g. taken from a loaded, unpinned object in tests).
    pub fn from_maps(services: Map, backends: Map, rev_nat: Map) -> Result<Self, DatapathError> {
        let mut this = Self {
            services: services.try_into().map_err(map_err(map_name::SERVICES))?,
            backends: backends.try_into().map_err(map_err(map_name::BACKENDS))?,
            rev_nat: rev_nat.try_into().map_err(map_err(map_name::REV_NAT))?,
            frontends: StdHashMap::new(),
            ids: std::collections::HashSet::new(),
            cluster_ips: StdHashMap::new(),
            next_id: 1,
        };
        let mut entries = Vec::new();
        for item in this.rev_nat.iter() {
            match item {
                Ok(pair) => entries.push(pair),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_name::REV_NAT)(e)),
            }
        }
        for (id, rev) in entries {
            let frontend = Frontend {
                addr: Ipv4Addr::from(rev.addr),
                port: rev.port,
                proto: rev.proto,
            };
            let flags =
                get(&this.services, &frontend.key(0), map_name::SERVICES)?.map_or(0, |m| m.flags);
            this.index(frontend, Known { id, flags });
        }
        Ok(this)
    }

    fn index(&mut self, frontend: Frontend, known: Known) {
        if known.flags & svc_flag::CLUSTER_IP != 0 {
            *self.cluster_ips.entry(frontend.addr).or_default() += 1;
        }
        self.ids.insert(known.id);
        self.frontends.insert(frontend, known);
    }

    fn unindex(&mut self, frontend: &Frontend) -> Option<Known> {
        let known = self.frontends.remove(frontend)?;
        self.ids.remove(&known.id);
        if known.flags & svc_flag::CLUSTER_IP != 0
            && let Some(n) = self.cluster_ips.get_mut(&frontend.addr)
        {
            *n -= 1;
            if *n == 0 {
                self.cluster_ips.remove(&frontend.addr);
            }
        }
        Some(known)
    }

    /// How many frontends exist.
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    fn allocate_id(&mut self) -> Result<u32, ServicesMapError> {
        let in_use = self.frontends.len();
        if in_use >= REV_NAT_MAX as usize {
            return Err(ServicesMapError::Full { in_use });
        }
        for _ in 0..=in_use {
            let id = self.next_id;
            self.next_id = if id >= MAX_SERVICE_ID { 1 } else { id + 1 };
            if !self.ids.contains(&id) {
                return Ok(id);
            }
        }
        Err(ServicesMapError::Full { in_use })
    }

    fn address_key(addr: Ipv4Addr) -> ServiceKey {
        ServiceKey {
            addr: addr.octets(),
            port: ANY_PORT,
            slot: 0,
            proto: ANY_PROTO,
            _pad: [0; 3],
        }
    }

    /// The backend ids of slots `1..=count` of `frontend`, as the map holds them.
    fn slot_ids(&self, frontend: &Frontend, count: u16) -> Result<Vec<u32>, DatapathError> {
        let mut ids = Vec::with_capacity(usize::from(count));
        for s in 1..=count {
            if let Some(v) = get(&self.services, &frontend.key(s), map_name::SERVICES)? {
                ids.push(v.id);
            }
        }
        Ok(ids)
    }

    /// Writes `svc` (a new frontend, or a replacement of an existing one), ordered so that
    /// packets in flight only ever see the old or the new backends.
    pub fn write(&mut self, svc: &Service) -> Result<(), ServicesMapError> {
        let fe = svc.frontend;
        let count = svc.backends.len();
        if count > usize::from(MAX_BACKENDS) {
            return Err(ServicesMapError::TooManyBackends {
                frontend: fe,
                count,
            });
        }
        if usize::from(svc.local_count) > count {
            return Err(ServicesMapError::BadLocalCount {
                frontend: fe,
                local_count: svc.local_count,
                count,
            });
        }
        if fe.port == ANY_PORT
            || !matches!(fe.proto, IPPROTO_TCP | IPPROTO_UDP)
            || svc.flags & svc_flag::ADDRESS != 0
        {
            return Err(ServicesMapError::BadFrontend { frontend: fe });
        }
        let old = self.frontends.get(&fe).copied();
        let id = match old {
            Some(k) => k.id,
            None => self.allocate_id()?,
        };
        let old_master = match old {
            Some(_) => get(&self.services, &fe.key(0), map_name::SERVICES)?,
            None => None,
        };
        let old_count = old_master.map_or(0, |m| m.count);
        let old_ids = self.slot_ids(&fe, old_count)?;
        // The generation the old backends use; the new ones take the other.
        let old_generation = old_ids
            .first()
            .map_or(1, |&first| (first / u32::from(MAX_BACKENDS)) & 1);
        let generation = 1 - old_generation;
        let count16 = u16::try_from(count).expect("checked against MAX_BACKENDS");

        // 1. The new backends, under ids nothing uses yet.
        for (i, b) in svc.backends.iter().enumerate() {
            let bid = backend_id(id, generation, slot(i));
            let value = ServiceBackend {
                addr: b.addr.octets(),
                port: b.port,
                flags: b.flags,
                _pad: 0,
            };
            if let Err(e) = self.backends.insert(bid, value, 0) {
                for j in 0..i {
                    remove(
                        &mut self.backends,
                        &backend_id(id, generation, slot(j)),
                        map_name::BACKENDS,
                    )?;
                }
                return Err(map_err(map_name::BACKENDS)(e).into());
            }
        }
        // 2. The reverse translation and the ClusterIP's address entry.
        let rev = RevNat {
            addr: fe.addr.octets(),
            port: fe.port,
            proto: fe.proto,
            _pad: 0,
        };
        self.rev_nat
            .insert(id, rev, 0)
            .map_err(map_err(map_name::REV_NAT))?;
        if svc.flags & svc_flag::CLUSTER_IP != 0 && !self.cluster_ips.contains_key(&fe.addr) {
            let entry = ServiceValue {
                flags: svc_flag::ADDRESS,
                ..ServiceValue::default()
            };
            self.services
                .insert(Self::address_key(fe.addr), entry, 0)
                .map_err(map_err(map_name::SERVICES))?;
        }
        // 3. The slots, then the master entry that exposes them.
        for i in 0..count {
            let value = ServiceValue {
                id: backend_id(id, generation, slot(i)),
                ..ServiceValue::default()
            };
            self.services
                .insert(fe.key(slot(i)), value, 0)
                .map_err(map_err(map_name::SERVICES))?;
        }
        let master = ServiceValue {
            id,
            count: count16,
            local_count: svc.local_count,
            flags: svc.flags,
            _pad: 0,
            affinity_timeout: svc.affinity_timeout,
        };
        self.services
            .insert(fe.key(0), master, 0)
            .map_err(map_err(map_name::SERVICES))?;
        // 4. What the new count no longer covers, and the old generation's backends.
        for s in count16 + 1..=old_count {
            remove(&mut self.services, &fe.key(s), map_name::SERVICES)?;
        }
        for bid in old_ids {
            if (bid / u32::from(MAX_BACKENDS)) & 1 == old_generation {
                remove(&mut self.backends, &bid, map_name::BACKENDS)?;
            }
        }
        self.unindex(&fe);
        self.index(
            fe,
            Known {
                id,
                flags: svc.flags,
            },
        );
        if let Some(k) = old
            && k.flags & svc_flag::CLUSTER_IP != 0
            && !self.cluster_ips.contains_key(&fe.addr)
        {
            remove(
                &mut self.services,
                &Self::address_key(fe.addr),
                map_name::SERVICES,
            )?;
        }
        Ok(())
    }

    /// Deletes `frontend`: its master entry first (new connections stop at once), then its
    /// slots, backends, reverse translation and, with the last frontend on a ClusterIP, the
    /// address entry. `Ok(false)` if it did not exist.
    pub fn delete(&mut self, frontend: &Frontend) -> Result<bool, DatapathError> {
        let Some(known) = self.frontends.get(frontend).copied() else {
            return Ok(false);
        };
        let count =
            get(&self.services, &frontend.key(0), map_name::SERVICES)?.map_or(0, |m| m.count);
        let ids = self.slot_ids(frontend, count)?;
        remove(&mut self.services, &frontend.key(0), map_name::SERVICES)?;
        for s in 1..=count {
            remove(&mut self.services, &frontend.key(s), map_name::SERVICES)?;
        }
        for bid in ids {
            remove(&mut self.backends, &bid, map_name::BACKENDS)?;
        }
        remove(&mut self.rev_nat, &known.id, map_name::REV_NAT)?;
        self.unindex(frontend);
        if known.flags & svc_flag::CLUSTER_IP != 0 && !self.cluster_ips.contains_key(&frontend.addr)
        {
            remove(
                &mut self.services,
                &Self::address_key(frontend.addr),
                map_name::SERVICES,
            )?;
        }
        Ok(true)
    }

    /// The frontend as the maps hold it.
    pub fn get(&self, frontend: &Frontend) -> Result<Option<Service>, DatapathError> {
        if !self.frontends.contains_key(frontend) {
            return Ok(None);
        }
        let Some(master) = get(&self.services, &frontend.key(0), map_name::SERVICES)? else {
            return Ok(None);
        };
        let mut backends = Vec::with_capacity(usize::from(master.count));
        for bid in self.slot_ids(frontend, master.count)? {
            if let Some(b) = get(&self.backends, &bid, map_name::BACKENDS)? {
                backends.push(Backend {
                    addr: Ipv4Addr::from(b.addr),
                    port: b.port,
                    flags: b.flags,
                });
            }
        }
        Ok(Some(Service {
            frontend: *frontend,
            backends,
            flags: master.flags,
            local_count: master.local_count,
            affinity_timeout: master.affinity_timeout,
        }))
    }

    /// The service id of `frontend`, if it exists.
    pub fn id(&self, frontend: &Frontend) -> Option<u32> {
        self.frontends.get(frontend).map(|k| k.id)
    }

    /// Every frontend, sorted.
    pub fn list(&self) -> Result<Vec<Service>, DatapathError> {
        let mut frontends: Vec<Frontend> = self.frontends.keys().copied().collect();
        frontends.sort();
        let mut out = Vec::with_capacity(frontends.len());
        for fe in frontends {
            if let Some(svc) = self.get(&fe)? {
                out.push(svc);
            }
        }
        Ok(out)
    }

    /// Deletes every frontend (each safely, as [`Self::delete`]), then anything left in the
    /// three maps (leftovers of an interrupted writer). Returns how many frontends went.
    pub fn clear(&mut self) -> Result<usize, DatapathError> {
        let frontends: Vec<Frontend> = self.frontends.keys().copied().collect();
        for fe in &frontends {
            self.delete(fe)?;
        }
        let keys: Vec<ServiceKey> = self.services.keys().filter_map(Result::ok).collect();
        for k in keys {
            remove(&mut self.services, &k, map_name::SERVICES)?;
        }
        let ids: Vec<u32> = self.backends.keys().filter_map(Result::ok).collect();
        for id in ids {
            remove(&mut self.backends, &id, map_name::BACKENDS)?;
        }
        let ids: Vec<u32> = self.rev_nat.keys().filter_map(Result::ok).collect();
        for id in ids {
            remove(&mut self.rev_nat, &id, map_name::REV_NAT)?;
        }
        Ok(frontends.len())
    }
}

/// Registers the network namespace `netns` of the pod with address `pod_ip` (its cookie) in
/// `POD_NETNS`, so the socket programs balance its sockets (with `config_flag::SOCKET_LB`).
/// Entries of an earlier pod with the same address, and of pods whose endpoint is gone, are
/// dropped on the way (a netns cookie is never reused, so a stale entry matches nothing, but
/// it takes room).
pub fn register_pod_netns(
    pin_dir: &Path,
    netns: &crate::netns::Netns,
    pod_ip: Ipv4Addr,
) -> Result<(), DatapathError> {
    let cookie = netns
        .run(super::cgroup::current_netns_cookie)
        .map_err(|e| DatapathError::Io {
            op: "reading the cookie of the pod's namespace",
            path: netns.path().to_path_buf(),
            source: std::io::Error::other(e),
        })??;
    let maps = PinnedMaps::open(pin_dir)?;
    let mut pods: HashMap<MapData, u64, PodNetns> = typed(pin_dir, map_name::POD_NETNS)?;
    let stale: Vec<u64> = pods
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, p)| {
            let addr = Ipv4Addr::from(p.addr);
            addr == pod_ip || maps.endpoint(addr).ok().flatten().is_none()
        })
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        remove(&mut pods, &k, map_name::POD_NETNS)?;
    }
    let value = PodNetns {
        addr: pod_ip.octets(),
        _pad: [0; 4],
    };
    pods.insert(cookie, value, 0)
        .map_err(map_err(map_name::POD_NETNS))
}

/// Removes the `POD_NETNS` entries of the pod with address `pod_ip`. Returns how many went.
pub fn forget_pod_netns(pin_dir: &Path, pod_ip: Ipv4Addr) -> Result<usize, DatapathError> {
    let mut pods: HashMap<MapData, u64, PodNetns> = typed(pin_dir, map_name::POD_NETNS)?;
    let gone: Vec<u64> = pods
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, p)| Ipv4Addr::from(p.addr) == pod_ip)
        .map(|(k, _)| k)
        .collect();
    for k in &gone {
        remove(&mut pods, k, map_name::POD_NETNS)?;
    }
    Ok(gone.len())
}
