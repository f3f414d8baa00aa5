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
//! IPv6 frontends live in the IPv6 twins of the three maps (`SERVICES6`, `BACKENDS6`,
//! `REV_NAT6`), with the same layout and the same write order; [`Frontend`] and [`Backend`]
//! carry either family, and a frontend's backends must be of its family. Service ids are one
//! space over both families (`MAGLEV` is keyed by them), so one index covers both.
//!
//! Concurrent packets never see a half-written frontend: a write puts the new backends under
//! ids of the other generation (see `abi::backend_id`), then fills the slots, then raises the
//! count in the master entry, and only then removes slots past the new count and the old
//! generation's backends. A delete removes the master entry first. A packet that picked a slot
//! just before a replace can at worst find its backend gone and is refused once.
//!
//! The frontends are read once from `REV_NAT` when the maps are opened (one batched lookup), so
//! service ids are allocated without a scan per write; keep one [`ServicesMap`] open across
//! writes (one writer at a time: callers hold the node's service lock). [`ServicesMap::write_many`]
//! writes a whole table in a few `BPF_MAP_UPDATE_BATCH` calls per phase (backends, reverse
//! translations, slots, master entries, then removals), keeping the same order as one write.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::maps::{HashMap, Map, MapData};
use podnet_ebpf::abi::{
    ANY_PORT, ANY_PROTO, MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICE_ID, NODEPORT_ADDR,
    NODEPORT_ADDR6, PodNetns, REV_NAT_MAX, RevNat, RevNat6, ServiceBackend, ServiceBackend6,
    ServiceKey, ServiceKey6, ServiceValue, backend_id, map_name,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    svc_flag,
};

use super::{
    DatapathError,
    batch::{delete_batch, delete_elem, lookup_all, lookup_elem, own_fd, update_batch},
    maps::{PinnedMaps, is_not_found},
    selection::Selection,
};
use crate::model::maglev;

/// A service frontend: `addr:port/proto` (a NodePort has the unspecified address of its
/// family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
}

impl Frontend {
    /// The NodePort `port/proto` on the node's IPv4 address.
    pub fn nodeport(port: u16, proto: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::from(NODEPORT_ADDR)),
            port,
            proto,
        }
    }

    /// The NodePort `port/proto` on the node's IPv6 address.
    pub fn nodeport6(port: u16, proto: u8) -> Self {
        Self {
            addr: IpAddr::V6(Ipv6Addr::from(NODEPORT_ADDR6)),
            port,
            proto,
        }
    }

    /// Whether this is a NodePort (the unspecified address of its family).
    pub fn is_nodeport(&self) -> bool {
        self.addr.is_unspecified()
    }
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "?",
        };
        match self.addr {
            IpAddr::V4(_) if self.is_nodeport() => write!(f, "nodeport {}/{proto}", self.port),
            IpAddr::V6(_) if self.is_nodeport() => {
                write!(f, "nodeport6 {}/{proto}", self.port)
            }
            IpAddr::V4(addr) => write!(f, "{addr}:{}/{proto}", self.port),
            IpAddr::V6(addr) => write!(f, "[{addr}]:{}/{proto}", self.port),
        }
    }
}

/// One backend of a frontend (of the frontend's family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub addr: IpAddr,
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
    #[error("{frontend} is given twice")]
    Repeated { frontend: Frontend },
    #[error("{frontend}: backend {backend} is not of the frontend's address family")]
    FamilyMismatch { frontend: Frontend, backend: IpAddr },
}

/// What the index knows about a frontend.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: u32,
    flags: u16,
}

/// What a frontend holds before a write round, and the id and backend generation it gets.
struct Plan {
    id: u32,
    generation: u32,
    old_count: u16,
    old_ids: Vec<u32>,
    old_flags: Option<u16>,
    /// With affinity before: the backends it had (address, port) and its timeout.
    old_affine: Option<(Vec<(IpAddr, u16)>, u32)>,
}

/// The node's service maps, opened from their pins, with an index of the frontends.
pub struct ServicesMap {
    /// The IPv4 maps' descriptors (`SERVICES`, `BACKENDS`, `REV_NAT`).
    fds: BatchFds,
    /// The IPv6 maps' descriptors (`SERVICES6`, `BACKENDS6`, `REV_NAT6`).
    fds6: BatchFds,
    /// Maglev tables and affinity entries.
    selection: Selection,
    frontends: StdHashMap<Frontend, Known>,
    ids: std::collections::HashSet<u32>,
    /// ClusterIP address -> how many ClusterIP frontends use it.
    cluster_ips: StdHashMap<IpAddr, usize>,
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

fn slot(index: usize) -> u16 {
    u16::try_from(index + 1).expect("backend counts are capped at MAX_BACKENDS")
}

impl ServicesMap {
    /// Opens the node's service maps and reads every frontend from `REV_NAT` and `REV_NAT6`.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let selection = Selection::from_maps(
            &open_map(pin_dir, map_name::AFFINITY)?,
            &open_map(pin_dir, map_name::AFFINITY6)?,
            &open_map(pin_dir, map_name::MAGLEV)?,
        )?;
        Self::from_maps(|name| open_map(pin_dir, name), selection)
    }

    /// The same over maps at hand (e.g. taken from a loaded, unpinned object in tests):
    /// `map(name)` gives each of the six service maps by name.
    pub fn from_maps(
        mut map: impl FnMut(&'static str) -> Result<Map, DatapathError>,
        selection: Selection,
    ) -> Result<Self, DatapathError> {
        let mut fds_of = |services, backends, rev_nat| -> Result<BatchFds, DatapathError> {
            Ok(BatchFds {
                services: own_fd(&map(services)?, services)?,
                backends: own_fd(&map(backends)?, backends)?,
                rev_nat: own_fd(&map(rev_nat)?, rev_nat)?,
            })
        };
        let fds = fds_of(map_name::SERVICES, map_name::BACKENDS, map_name::REV_NAT)?;
        let fds6 = fds_of(map_name::SERVICES6, map_name::BACKENDS6, map_name::REV_NAT6)?;
        let mut this = Self {
            fds,
            fds6,
            selection,
            frontends: StdHashMap::new(),
            ids: std::collections::HashSet::new(),
            cluster_ips: StdHashMap::new(),
            next_id: 1,
        };
        let entries: Vec<(u32, RevNat)> = lookup_all(this.fds.rev_nat.as_fd(), map_name::REV_NAT)?;
        for (id, rev) in entries {
            let (frontend, flags) = V4::from_rev(&rev);
            this.index(frontend, Known { id, flags });
        }
        let entries: Vec<(u32, RevNat6)> =
            lookup_all(this.fds6.rev_nat.as_fd(), map_name::REV_NAT6)?;
        for (id, rev) in entries {
            let (frontend, flags) = V6::from_rev(&rev);
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

    /// The master entry or slot `slot` of `frontend`.
    fn entry(&self, frontend: &Frontend, slot: u16) -> Result<Option<ServiceValue>, DatapathError> {
        match frontend.addr {
            IpAddr::V4(_) => lookup_elem(
                self.fds.services.as_fd(),
                map_name::SERVICES,
                &V4::key(frontend, slot),
            ),
            IpAddr::V6(_) => lookup_elem(
                self.fds6.services.as_fd(),
                map_name::SERVICES6,
                &V6::key(frontend, slot),
            ),
        }
    }

    /// Removes the master entry or slot `slot` of `frontend` (or, with `ANY_PORT`, a
    /// ClusterIP's address entry).
    fn remove_entry(&self, frontend: &Frontend, slot: u16) -> Result<bool, DatapathError> {
        match frontend.addr {
            IpAddr::V4(_) => delete_elem(
                self.fds.services.as_fd(),
                map_name::SERVICES,
                &V4::key(frontend, slot),
            ),
            IpAddr::V6(_) => delete_elem(
                self.fds6.services.as_fd(),
                map_name::SERVICES6,
                &V6::key(frontend, slot),
            ),
        }
    }

    /// The backend with id `bid` in `family`'s backends map.
    fn backend(&self, family: &IpAddr, bid: u32) -> Result<Option<Backend>, DatapathError> {
        Ok(match family {
            IpAddr::V4(_) => lookup_elem::<u32, ServiceBackend>(
                self.fds.backends.as_fd(),
                map_name::BACKENDS,
                &bid,
            )?
            .map(|b| V4::from_backend(&b)),
            IpAddr::V6(_) => lookup_elem::<u32, ServiceBackend6>(
                self.fds6.backends.as_fd(),
                map_name::BACKENDS6,
                &bid,
            )?
            .map(|b| V6::from_backend(&b)),
        })
    }

    fn remove_backend(&self, family: &IpAddr, bid: u32) -> Result<bool, DatapathError> {
        match family {
            IpAddr::V4(_) => delete_elem(self.fds.backends.as_fd(), map_name::BACKENDS, &bid),
            IpAddr::V6(_) => delete_elem(self.fds6.backends.as_fd(), map_name::BACKENDS6, &bid),
        }
    }

    fn remove_rev_nat(&self, family: &IpAddr, id: u32) -> Result<bool, DatapathError> {
        match family {
            IpAddr::V4(_) => delete_elem(self.fds.rev_nat.as_fd(), map_name::REV_NAT, &id),
            IpAddr::V6(_) => delete_elem(self.fds6.rev_nat.as_fd(), map_name::REV_NAT6, &id),
        }
    }

    /// The address entry (`ANY_PORT`, `ANY_PROTO`) of ClusterIP `addr`, as a frontend.
    fn address_frontend(addr: IpAddr) -> Frontend {
        Frontend {
            addr,
            port: ANY_PORT,
            proto: ANY_PROTO,
        }
    }

    /// The backend ids of slots `1..=count` of `frontend`, as the map holds them.
    fn slot_ids(&self, frontend: &Frontend, count: u16) -> Result<Vec<u32>, DatapathError> {
        let mut ids = Vec::with_capacity(usize::from(count));
        for s in 1..=count {
            if let Some(v) = self.entry(frontend, s)? {
                ids.push(v.id);
            }
        }
        Ok(ids)
    }

    /// Writes `svc` (a new frontend, or a replacement of an existing one), ordered so that
    /// packets in flight only ever see the old or the new backends.
    pub fn write(&mut self, svc: &Service) -> Result<(), ServicesMapError> {
        self.write_many(std::slice::from_ref(svc))
    }

    fn check(svc: &Service) -> Result<(), ServicesMapError> {
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
        if let Some(b) = svc
            .backends
            .iter()
            .find(|b| b.addr.is_ipv4() != fe.addr.is_ipv4())
        {
            return Err(ServicesMapError::FamilyMismatch {
                frontend: fe,
                backend: b.addr,
            });
        }
        Ok(())
    }

    /// Writes every service of `services` (new frontends or replacements), in phases, each one
    /// batched over all of them: the new backends (under ids of the generation the frontend's
    /// current backends do not use), the reverse translations and ClusterIP address entries,
    /// the slots, the master entries that expose them, and only then the slots past each new
    /// count and the old generation's backends. Everything is checked first: a bad entry
    /// changes nothing.
    pub fn write_many(&mut self, services: &[Service]) -> Result<(), ServicesMapError> {
        let mut seen = HashSet::with_capacity(services.len());
        for svc in services {
            Self::check(svc)?;
            if !seen.insert(svc.frontend) {
                return Err(ServicesMapError::Repeated {
                    frontend: svc.frontend,
                });
            }
        }
        let new = services
            .iter()
            .filter(|s| !self.frontends.contains_key(&s.frontend))
            .count();
        if self.frontends.len() + new > REV_NAT_MAX as usize {
            return Err(ServicesMapError::Full {
                in_use: self.frontends.len(),
            });
        }
        // Each family in its own maps: IPv4 first, then IPv6 (a frontend of one family never
        // refers to the other's entries, so the order between them does not matter).
        let (v4, v6): (Vec<Service>, Vec<Service>) = services
            .iter()
            .cloned()
            .partition(|s| s.frontend.addr.is_ipv4());
        self.write_family::<V4>(&v4)?;
        self.write_family::<V6>(&v6)
    }

    /// [`Self::write_many`] for services of family `F`.
    fn write_family<F: Layout>(&mut self, services: &[Service]) -> Result<(), ServicesMapError> {
        // In rounds of about `ROUND_BACKENDS` backends: a replaced frontend's old and new
        // backends coexist until its round ends, so the backends map needs only that much room
        // beyond the table, not twice the table.
        let mut start = 0;
        while start < services.len() {
            let mut end = start;
            let mut backends = 0;
            while end < services.len() && (end == start || backends < ROUND_BACKENDS) {
                backends += services[end].backends.len();
                end += 1;
            }
            self.write_round::<F>(&services[start..end])?;
            start = end;
        }
        Ok(())
    }

    /// One round of [`Self::write_many`], on checked services: the new backends, reverse
    /// translations and slots, then the master entries that expose them, then what they no
    /// longer cover (the order one write keeps too).
    fn write_round<F: Layout>(&mut self, services: &[Service]) -> Result<(), ServicesMapError> {
        let plans = self.plan_round(services)?;
        self.write_backends::<F>(services, &plans)?;
        self.write_maglev(services, &plans)?;
        self.write_rev_nat_and_slots::<F>(services, &plans)?;
        self.write_masters::<F>(services, &plans)?;
        self.remove_stale::<F>(services, &plans)?;
        self.forget_stale_selection(services, &plans)?;
        self.reindex(services, &plans)
    }

    /// The Maglev tables of the round's Maglev frontends, over their new backends (written
    /// before any slot or master entry refers to them).
    fn write_maglev(
        &mut self,
        services: &[Service],
        plans: &[Plan],
    ) -> Result<(), ServicesMapError> {
        for (svc, plan) in services.iter().zip(plans) {
            if svc.flags & svc_flag::MAGLEV == 0 || svc.backends.is_empty() {
                continue;
            }
            let addrs: Vec<(IpAddr, u16)> = svc.backends.iter().map(|b| (b.addr, b.port)).collect();
            let table: Vec<u32> = maglev::table(&addrs, MAGLEV_TABLE_SIZE)
                .into_iter()
                .map(|i| {
                    let i = usize::try_from(i).expect("an index into the backends");
                    backend_id(plan.id, plan.generation, slot(i))
                })
                .collect();
            if let Err(e) = self.selection.install_maglev(plan.id, &table) {
                self.release_new_ids(plans);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Maglev tables of frontends that no longer use Maglev (or have no backends left), and
    /// the affinity entries this round made stale: of backends that left their frontend, and
    /// all of a frontend whose affinity ended or changed its timeout.
    fn forget_stale_selection(
        &mut self,
        services: &[Service],
        plans: &[Plan],
    ) -> Result<(), ServicesMapError> {
        let mut whole = HashSet::new();
        let mut departed = HashSet::new();
        for (svc, plan) in services.iter().zip(plans) {
            let was_maglev = plan.old_flags.is_some_and(|f| f & svc_flag::MAGLEV != 0);
            if was_maglev && (svc.flags & svc_flag::MAGLEV == 0 || svc.backends.is_empty()) {
                self.selection.remove_maglev(plan.id)?;
            }
            let affine = svc.flags & svc_flag::AFFINITY != 0;
            match &plan.old_affine {
                Some((_, timeout)) if !affine || *timeout != svc.affinity_timeout => {
                    whole.insert(plan.id);
                }
                Some((old, _)) => {
                    let now: HashSet<(IpAddr, u16)> =
                        svc.backends.iter().map(|b| (b.addr, b.port)).collect();
                    departed.extend(
                        old.iter()
                            .filter(|b| !now.contains(b))
                            .map(|&(addr, port)| (plan.id, addr, port)),
                    );
                }
                // A new frontend (its id may be a deleted one's) starts with no entries.
                None if affine && plan.old_flags.is_none() => {
                    whole.insert(plan.id);
                }
                None => {}
            }
        }
        self.selection.forget_affinities(&whole, &departed)?;
        Ok(())
    }

    /// What each frontend holds now, and its id (new frontends get one).
    fn plan_round(&mut self, services: &[Service]) -> Result<Vec<Plan>, ServicesMapError> {
        let mut plans = Vec::with_capacity(services.len());
        for svc in services {
            let fe = svc.frontend;
            let plan = match self.frontends.get(&fe).copied() {
                Some(k) => {
                    let master = self.entry(&fe, 0)?;
                    let old_count = master.map_or(0, |m| m.count);
                    let old_ids = self.slot_ids(&fe, old_count)?;
                    let old_generation = old_ids
                        .first()
                        .map_or(1, |&first| (first / u32::from(MAX_BACKENDS)) & 1);
                    let old_affine = if k.flags & svc_flag::AFFINITY == 0 {
                        None
                    } else {
                        let mut old = Vec::with_capacity(old_ids.len());
                        for bid in &old_ids {
                            if let Some(b) = self.backend(&fe.addr, *bid)? {
                                old.push((b.addr, b.port));
                            }
                        }
                        Some((old, master.map_or(0, |m| m.affinity_timeout)))
                    };
                    Plan {
                        id: k.id,
                        generation: 1 - old_generation,
                        old_count,
                        old_ids,
                        old_flags: Some(k.flags),
                        old_affine,
                    }
                }
                None => {
                    let id = self.allocate_id()?;
                    self.ids.insert(id);
                    Plan {
                        id,
                        generation: 0,
                        old_count: 0,
                        old_ids: Vec::new(),
                        old_flags: None,
                        old_affine: None,
                    }
                }
            };
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Gives back the ids a failed round allocated for new frontends.
    fn release_new_ids(&mut self, plans: &[Plan]) {
        for p in plans.iter().filter(|p| p.old_flags.is_none()) {
            self.ids.remove(&p.id);
        }
    }

    fn write_backends<F: Layout>(
        &mut self,
        services: &[Service],
        plans: &[Plan],
    ) -> Result<(), ServicesMapError> {
        // 1. The new backends.
        let mut backend_keys = Vec::new();
        let mut backend_values = Vec::new();
        for (svc, plan) in services.iter().zip(plans) {
            for (i, b) in svc.backends.iter().enumerate() {
                backend_keys.push(backend_id(plan.id, plan.generation, slot(i)));
                backend_values.push(F::backend(b));
            }
        }
        let fds = F::fds(self);
        if let Err(e) = update_batch(
            fds.backends.as_fd(),
            F::BACKENDS,
            &backend_keys,
            &backend_values,
        ) {
            // Nothing refers to them yet: take back what went in.
            let _ = delete_batch(fds.backends.as_fd(), F::BACKENDS, &backend_keys);
            self.release_new_ids(plans);
            return Err(e.into());
        }
        Ok(())
    }

    fn write_rev_nat_and_slots<F: Layout>(
        &mut self,
        services: &[Service],
        plans: &[Plan],
    ) -> Result<(), ServicesMapError> {
        // 2. Reverse translations and the address entries of new ClusterIPs.
        let rev_keys: Vec<u32> = plans.iter().map(|p| p.id).collect();
        let rev_values: Vec<F::Rev> = services
            .iter()
            .map(|svc| F::rev(&svc.frontend, svc.flags))
            .collect();
        let fds = F::fds(self);
        update_batch(fds.rev_nat.as_fd(), F::REV_NAT, &rev_keys, &rev_values)?;
        let mut slot_keys = Vec::new();
        let mut slot_values = Vec::new();
        let mut new_addresses = HashSet::new();
        for svc in services {
            let addr = svc.frontend.addr;
            if svc.flags & svc_flag::CLUSTER_IP != 0
                && !self.cluster_ips.contains_key(&addr)
                && new_addresses.insert(addr)
            {
                slot_keys.push(F::key(&Self::address_frontend(addr), 0));
                slot_values.push(ServiceValue {
                    flags: svc_flag::ADDRESS,
                    ..ServiceValue::default()
                });
            }
        }
        // 3. The slots.
        for (svc, plan) in services.iter().zip(plans) {
            for i in 0..svc.backends.len() {
                slot_keys.push(F::key(&svc.frontend, slot(i)));
                slot_values.push(ServiceValue {
                    id: backend_id(plan.id, plan.generation, slot(i)),
                    ..ServiceValue::default()
                });
            }
        }
        update_batch(fds.services.as_fd(), F::SERVICES, &slot_keys, &slot_values)?;
        Ok(())
    }

    fn write_masters<F: Layout>(
        &mut self,
        services: &[Service],
        plans: &[Plan],
    ) -> Result<(), ServicesMapError> {
        // 4. The master entries that expose them.
        let master_keys: Vec<F::Key> = services.iter().map(|s| F::key(&s.frontend, 0)).collect();
        let master_values: Vec<ServiceValue> = services
            .iter()
            .zip(plans)
            .map(|(svc, plan)| ServiceValue {
                id: plan.id,
                count: u16::try_from(svc.backends.len()).expect("checked against MAX_BACKENDS"),
                local_count: svc.local_count,
                flags: svc.flags,
                _pad: 0,
                affinity_timeout: svc.affinity_timeout,
            })
            .collect();
        update_batch(
            F::fds(self).services.as_fd(),
            F::SERVICES,
            &master_keys,
            &master_values,
        )?;
        Ok(())
    }

    /// What the new counts no longer cover, and the old generations' backends.
    fn remove_stale<F: Layout>(
        &mut self,
        services: &[Service],
        plans: &[Plan],
    ) -> Result<(), ServicesMapError> {
        // 5. What the new counts no longer cover, and the old generations' backends.
        let mut stale_slots = Vec::new();
        let mut stale_backends: Vec<u32> = Vec::new();
        for (svc, plan) in services.iter().zip(plans) {
            let count = u16::try_from(svc.backends.len()).expect("checked");
            for s in count + 1..=plan.old_count {
                stale_slots.push(F::key(&svc.frontend, s));
            }
            stale_backends.extend(
                plan.old_ids
                    .iter()
                    .filter(|&&bid| (bid / u32::from(MAX_BACKENDS)) & 1 != plan.generation),
            );
        }
        let fds = F::fds(self);
        delete_batch(fds.services.as_fd(), F::SERVICES, &stale_slots)?;
        delete_batch(fds.backends.as_fd(), F::BACKENDS, &stale_backends)?;
        Ok(())
    }

    /// The index, and the address entries of ClusterIPs no frontend uses any more.
    fn reindex(&mut self, services: &[Service], plans: &[Plan]) -> Result<(), ServicesMapError> {
        // 6. The index, and the address entries of ClusterIPs no frontend uses any more.
        let mut maybe_unused = Vec::new();
        for (svc, plan) in services.iter().zip(plans) {
            let fe = svc.frontend;
            if plan.old_flags.is_some() {
                self.unindex(&fe);
            }
            self.index(
                fe,
                Known {
                    id: plan.id,
                    flags: svc.flags,
                },
            );
            if plan
                .old_flags
                .is_some_and(|f| f & svc_flag::CLUSTER_IP != 0)
            {
                maybe_unused.push(fe.addr);
            }
        }
        for addr in maybe_unused {
            if !self.cluster_ips.contains_key(&addr) {
                self.remove_entry(&Self::address_frontend(addr), 0)?;
            }
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
        let count = self.entry(frontend, 0)?.map_or(0, |m| m.count);
        let ids = self.slot_ids(frontend, count)?;
        self.remove_entry(frontend, 0)?;
        for s in 1..=count {
            self.remove_entry(frontend, s)?;
        }
        for bid in ids {
            self.remove_backend(&frontend.addr, bid)?;
        }
        self.remove_rev_nat(&frontend.addr, known.id)?;
        if known.flags & svc_flag::MAGLEV != 0 {
            self.selection.remove_maglev(known.id)?;
        }
        if known.flags & svc_flag::AFFINITY != 0 {
            self.selection
                .forget_affinities(&HashSet::from([known.id]), &HashSet::new())?;
        }
        self.unindex(frontend);
        if known.flags & svc_flag::CLUSTER_IP != 0 && !self.cluster_ips.contains_key(&frontend.addr)
        {
            self.remove_entry(&Self::address_frontend(frontend.addr), 0)?;
        }
        Ok(true)
    }

    /// The frontend as the maps hold it.
    pub fn get(&self, frontend: &Frontend) -> Result<Option<Service>, DatapathError> {
        if !self.frontends.contains_key(frontend) {
            return Ok(None);
        }
        let Some(master) = self.entry(frontend, 0)? else {
            return Ok(None);
        };
        let mut backends = Vec::with_capacity(usize::from(master.count));
        for bid in self.slot_ids(frontend, master.count)? {
            if let Some(b) = self.backend(&frontend.addr, bid)? {
                backends.push(b);
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

    /// Every frontend, sorted (three batched reads per family, however many services there
    /// are).
    pub fn list(&self) -> Result<Vec<Service>, DatapathError> {
        let mut out = self.list_family::<V4>()?;
        out.extend(self.list_family::<V6>()?);
        out.sort_by_key(|s| s.frontend);
        Ok(out)
    }

    fn list_family<F: Layout>(&self) -> Result<Vec<Service>, DatapathError> {
        let fds = F::fds(self);
        let entries: StdHashMap<F::Key, ServiceValue> =
            lookup_all(fds.services.as_fd(), F::SERVICES)?
                .into_iter()
                .collect();
        let backends: StdHashMap<u32, F::Backend> = lookup_all(fds.backends.as_fd(), F::BACKENDS)?
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for fe in self.frontends.keys().filter(|fe| F::is(&fe.addr)) {
            let Some(master) = entries.get(&F::key(fe, 0)) else {
                continue;
            };
            let slots = (1..=master.count)
                .filter_map(|s| entries.get(&F::key(fe, s)))
                .filter_map(|slot| backends.get(&slot.id))
                .map(F::from_backend)
                .collect();
            out.push(Service {
                frontend: *fe,
                backends: slots,
                flags: master.flags,
                local_count: master.local_count,
                affinity_timeout: master.affinity_timeout,
            });
        }
        Ok(out)
    }

    /// Deletes everything in the three maps, master entries first (so no packet finds a slot
    /// without its backend), then slots and address entries, backends and reverse
    /// translations, leftovers of an interrupted writer included. Returns how many frontends
    /// there were.
    pub fn clear(&mut self) -> Result<usize, DatapathError> {
        let count = self.frontends.len();
        self.clear_family::<V4>()?;
        self.clear_family::<V6>()?;
        self.selection.clear()?;
        self.frontends.clear();
        self.ids.clear();
        self.cluster_ips.clear();
        Ok(count)
    }

    fn clear_family<F: Layout>(&self) -> Result<(), DatapathError> {
        let fds = F::fds(self);
        let keys: Vec<F::Key> =
            lookup_all::<F::Key, ServiceValue>(fds.services.as_fd(), F::SERVICES)?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
        let (masters, rest): (Vec<F::Key>, Vec<F::Key>) = keys.into_iter().partition(|k| {
            let (port, slot) = F::port_slot(k);
            slot == 0 && port != ANY_PORT
        });
        delete_batch(fds.services.as_fd(), F::SERVICES, &masters)?;
        delete_batch(fds.services.as_fd(), F::SERVICES, &rest)?;
        let ids: Vec<u32> = lookup_all::<u32, F::Backend>(fds.backends.as_fd(), F::BACKENDS)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        delete_batch(fds.backends.as_fd(), F::BACKENDS, &ids)?;
        let ids: Vec<u32> = lookup_all::<u32, F::Rev>(fds.rev_nat.as_fd(), F::REV_NAT)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        delete_batch(fds.rev_nat.as_fd(), F::REV_NAT, &ids)?;
        Ok(())
    }
}

/// A family's service maps: their names and the layout of their keys and values.
trait Layout {
    type Key: aya::Pod + Eq + std::hash::Hash;
    type Backend: aya::Pod;
    type Rev: aya::Pod;
    const SERVICES: &'static str;
    const BACKENDS: &'static str;
    const REV_NAT: &'static str;
    /// Whether `addr` is of this family.
    fn is(addr: &IpAddr) -> bool;
    fn fds(maps: &ServicesMap) -> &BatchFds;
    /// The `SERVICES` key of `frontend`'s slot `slot` (`frontend` is of this family).
    fn key(frontend: &Frontend, slot: u16) -> Self::Key;
    /// A key's port and slot.
    fn port_slot(key: &Self::Key) -> (u16, u16);
    fn backend(b: &Backend) -> Self::Backend;
    fn from_backend(b: &Self::Backend) -> Backend;
    fn rev(frontend: &Frontend, flags: u16) -> Self::Rev;
}

/// IPv4: `SERVICES`, `BACKENDS`, `REV_NAT`.
struct V4;
/// IPv6: `SERVICES6`, `BACKENDS6`, `REV_NAT6`.
struct V6;

fn v4(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("an IPv4 frontend's addresses are IPv4 (checked)"),
    }
}

fn v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!("an IPv6 frontend's addresses are IPv6 (checked)"),
    }
}

impl V4 {
    fn from_rev(rev: &RevNat) -> (Frontend, u16) {
        let frontend = Frontend {
            addr: IpAddr::V4(Ipv4Addr::from(rev.addr)),
            port: rev.port,
            proto: rev.proto,
        };
        (frontend, rev.flags)
    }
}

impl V6 {
    fn from_rev(rev: &RevNat6) -> (Frontend, u16) {
        let frontend = Frontend {
            addr: IpAddr::V6(Ipv6Addr::from(rev.addr)),
            port: rev.port,
            proto: rev.proto,
        };
        (frontend, rev.flags)
    }
}

impl Layout for V4 {
    type Key = ServiceKey;
    type Backend = ServiceBackend;
    type Rev = RevNat;
    const SERVICES: &'static str = map_name::SERVICES;
    const BACKENDS: &'static str = map_name::BACKENDS;
    const REV_NAT: &'static str = map_name::REV_NAT;

    fn is(addr: &IpAddr) -> bool {
        addr.is_ipv4()
    }

    fn fds(maps: &ServicesMap) -> &BatchFds {
        &maps.fds
    }

    fn key(frontend: &Frontend, slot: u16) -> ServiceKey {
        ServiceKey {
            addr: v4(frontend.addr).octets(),
            port: frontend.port,
            slot,
            proto: frontend.proto,
            _pad: [0; 3],
        }
    }

    fn port_slot(key: &ServiceKey) -> (u16, u16) {
        (key.port, key.slot)
    }

    fn backend(b: &Backend) -> ServiceBackend {
        ServiceBackend {
            addr: v4(b.addr).octets(),
            port: b.port,
            flags: b.flags,
            _pad: 0,
        }
    }

    fn from_backend(b: &ServiceBackend) -> Backend {
        Backend {
            addr: IpAddr::V4(Ipv4Addr::from(b.addr)),
            port: b.port,
            flags: b.flags,
        }
    }

    fn rev(frontend: &Frontend, flags: u16) -> RevNat {
        RevNat {
            addr: v4(frontend.addr).octets(),
            port: frontend.port,
            proto: frontend.proto,
            _pad: 0,
            flags,
            _pad2: [0; 2],
        }
    }
}

impl Layout for V6 {
    type Key = ServiceKey6;
    type Backend = ServiceBackend6;
    type Rev = RevNat6;
    const SERVICES: &'static str = map_name::SERVICES6;
    const BACKENDS: &'static str = map_name::BACKENDS6;
    const REV_NAT: &'static str = map_name::REV_NAT6;

    fn is(addr: &IpAddr) -> bool {
        addr.is_ipv6()
    }

    fn fds(maps: &ServicesMap) -> &BatchFds {
        &maps.fds6
    }

    fn key(frontend: &Frontend, slot: u16) -> ServiceKey6 {
        ServiceKey6 {
            addr: v6(frontend.addr).octets(),
            port: frontend.port,
            slot,
            proto: frontend.proto,
            _pad: [0; 3],
        }
    }

    fn port_slot(key: &ServiceKey6) -> (u16, u16) {
        (key.port, key.slot)
    }

    fn backend(b: &Backend) -> ServiceBackend6 {
        ServiceBackend6 {
            addr: v6(b.addr).octets(),
            port: b.port,
            flags: b.flags,
            _pad: 0,
        }
    }

    fn from_backend(b: &ServiceBackend6) -> Backend {
        Backend {
            addr: IpAddr::V6(Ipv6Addr::from(b.addr)),
            port: b.port,
            flags: b.flags,
        }
    }

    fn rev(frontend: &Frontend, flags: u16) -> RevNat6 {
        RevNat6 {
            addr: v6(frontend.addr).octets(),
            port: frontend.port,
            proto: frontend.proto,
            _pad: 0,
            flags,
            _pad2: [0; 2],
        }
    }
}

/// Descriptors of the three service maps.
struct BatchFds {
    services: OwnedFd,
    backends: OwnedFd,
    rev_nat: OwnedFd,
}

/// Backends written per round of [`ServicesMap::write_many`] (at most one frontend's
/// `MAX_BACKENDS` more): the room a replace needs in the backends map beyond the table.
const ROUND_BACKENDS: usize = 16_384;

/// Registers the network namespace `netns` of the pod with address `pod_ip` (and `pod_ip6` on
/// a dual-stack node: its IPv6 sockets' client address) (its cookie) in
/// `POD_NETNS`, so the socket programs balance its sockets (with `config_flag::SOCKET_LB`). One
/// insert: entries of pods that are gone are removed when they are unplugged, or by
/// [`prune_pod_netns`] (gc) for a pod whose removal was cut short.
pub fn register_pod_netns(
    pin_dir: &Path,
    netns: &crate::sys::netns::Netns,
    pod_ip: Ipv4Addr,
    pod_ip6: Option<std::net::Ipv6Addr>,
) -> Result<(), DatapathError> {
    let cookie = netns
        .run(super::cgroup::current_netns_cookie)
        .map_err(|e| DatapathError::Io {
            op: "reading the cookie of the pod's namespace",
            path: netns.path().to_path_buf(),
            source: std::io::Error::other(e),
        })??;
    let mut pods: HashMap<MapData, u64, PodNetns> = typed(pin_dir, map_name::POD_NETNS)?;
    let value = PodNetns {
        addr: pod_ip.octets(),
        _pad: [0; 4],
        addr6: pod_ip6.map_or([0; 16], |ip| ip.octets()),
    };
    pods.insert(cookie, value, 0)
        .map_err(map_err(map_name::POD_NETNS))
}

/// Removes every `POD_NETNS` entry whose pod address `live` does not accept; returns how many.
pub fn prune_pod_netns(
    pin_dir: &Path,
    live: impl Fn(Ipv4Addr) -> bool,
) -> Result<usize, DatapathError> {
    let mut pods: HashMap<MapData, u64, PodNetns> = typed(pin_dir, map_name::POD_NETNS)?;
    let gone: Vec<u64> = pods
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, p)| !live(Ipv4Addr::from(p.addr)))
        .map(|(k, _)| k)
        .collect();
    for k in &gone {
        remove(&mut pods, k, map_name::POD_NETNS)?;
    }
    Ok(gone.len())
}

/// Removes the `POD_NETNS` entries of the pod with address `pod_ip`. Returns how many went.
pub fn forget_pod_netns(pin_dir: &Path, pod_ip: Ipv4Addr) -> Result<usize, DatapathError> {
    prune_pod_netns(pin_dir, |addr| addr != pod_ip)
}
