//! Host-local IP address management for pods: this module owns the per-node pools of pod
//! addresses (one subnet with a gateway per address family: IPv4, and IPv6 on a dual-stack
//! node) and their on-disk state.
//!
//! The layout follows the CNI `host-local` plugin, so it is easy to inspect by hand. Both
//! families share one directory and one lock; each has its own round-robin position:
//!
//! ```text
//! <dir>/lock                empty; every operation holds an exclusive flock(2) on it
//! <dir>/last_reserved_ip    the IPv4 address handed out last, so allocation round-robins
//! <dir>/last_reserved_ip6   the same for IPv6
//! <dir>/10.244.0.5          one record per allocated address: the owner, then "\n"
//! <dir>/fd00:10:244::5      (IPv6 records are named by the address's canonical text)
//! ```
//!
//! A pool only reads the records of its own family (an IPv4 pool never parses an IPv6 name as
//! one of its addresses), so the two pools of a node never see each other's records. The
//! network address and the last address of a subnet are never handed out in either family
//! (IPv4's network and broadcast; IPv6's subnet-router anycast address and, like `host-local`,
//! the last one), nor is the gateway.
//!
//! The directory is created with mode 0700 and every file with mode 0600 (root only).
//!
//! Every operation, reading ones included, opens its own descriptor of `<dir>/lock` and holds an
//! exclusive `flock` on it for its whole duration. `flock` locks belong to the open file
//! description, so this serialises threads of one process as well as separate processes (several
//! CNI invocations run at once).
//!
//! Crash safety: records are written to a temporary file in the same directory
//! (`.tmp.<name>.<pid>`), fsynced, renamed into place, and then the directory is fsynced. Readers
//! ignore temporary files (allocation deletes them: as all writers hold the lock, any temporary
//! file seen under the lock is a leftover of a crash) and files whose names are not usable
//! addresses of the subnet. A record file whose content is not a valid owner — in practice an
//! empty or zero-filled file left by a crash mid-write on a filesystem that does not order the
//! data before the rename — is a torn write of an allocation that never completed: it is
//! treated as free (not listed, no owner) and removed by the next allocation. It is deliberately
//! not kept as allocated to some placeholder owner, because no caller could ever release it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{Debug, Display},
    fs::{self, DirBuilder, Permissions},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::file::{self, FileLock, StateError, TMP_PREFIX};

/// Longest owner string accepted, in bytes.
pub const MAX_OWNER_LEN: usize = 255;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";
const LAST_RESERVED_FILE6: &str = "last_reserved_ip6";
const DIR_MODE: u32 = 0o700;
/// Longest IPv6 prefix a pool takes: /126 leaves the network, the gateway, the last address
/// and one pod (the IPv4 rule, /30, for 128-bit addresses).
pub const MAX_PREFIX_V6: u8 = crate::config::MAX_POD_PREFIX_V6;
/// Longest IPv4 prefix a pool takes: network, gateway, broadcast and one pod.
pub const MAX_PREFIX_V4: u8 = 30;

/// An address family a pool can hand out: IPv4 or IPv6 addresses, as integers for the
/// round-robin arithmetic.
pub trait PoolAddr:
    Copy + Ord + Display + Debug + FromStr + Into<IpAddr> + Send + Sync + 'static
{
    /// The family's networks (`Ipv4Network`, `Ipv6Network`).
    type Net: Copy + Display + Debug + Into<IpNetwork>;
    /// Address width in bits.
    const BITS: u8;
    /// Longest prefix a pool of this family takes.
    const MAX_PREFIX: u8;
    /// The file holding the address handed out last.
    const LAST_RESERVED: &'static str;
    fn to_bits(self) -> u128;
    /// `bits` always fits the family (callers stay inside one subnet).
    fn from_bits(bits: u128) -> Self;
    /// `(network address, prefix)` of `net`, host bits dropped.
    fn split(net: Self::Net) -> (Self, u8);
    /// The network `addr/prefix`; `prefix` is at most `BITS`.
    fn join(addr: Self, prefix: u8) -> Self::Net;
}

impl PoolAddr for Ipv4Addr {
    type Net = Ipv4Network;
    const BITS: u8 = 32;
    const MAX_PREFIX: u8 = MAX_PREFIX_V4;
    const LAST_RESERVED: &'static str = LAST_RESERVED_FILE;
    fn to_bits(self) -> u128 {
        u128::from(u32::from(self))
    }
    fn from_bits(bits: u128) -> Self {
        Ipv4Addr::from(u32::try_from(bits).expect("an IPv4 address fits 32 bits"))
    }
    fn split(net: Ipv4Network) -> (Self, u8) {
        (net.network(), net.prefix())
    }
    fn join(addr: Self, prefix: u8) -> Ipv4Network {
        Ipv4Network::new(addr, prefix).expect("the prefix of a valid network stays valid")
    }
}

impl PoolAddr for Ipv6Addr {
    type Net = Ipv6Network;
    const BITS: u8 = 128;
    const MAX_PREFIX: u8 = MAX_PREFIX_V6;
    const LAST_RESERVED: &'static str = LAST_RESERVED_FILE6;
    fn to_bits(self) -> u128 {
        u128::from(self)
    }
    fn from_bits(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
    fn split(net: Ipv6Network) -> (Self, u8) {
        (net.network(), net.prefix())
    }
    fn join(addr: Self, prefix: u8) -> Ipv6Network {
        Ipv6Network::new(addr, prefix).expect("the prefix of a valid network stays valid")
    }
}

/// Errors of the IPAM store.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A filesystem operation on the IPAM directory failed.
    #[error("IPAM: cannot {op} {}", path.display())]
    Io {
        /// What was being done, e.g. "lock" or "read record".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing or locking a record failed.
    #[error("IPAM: {0}")]
    File(#[from] StateError),
    /// Every usable address of the subnet is allocated.
    #[error("no free address left in {subnet} (all {usable} usable addresses are allocated)")]
    Exhausted {
        /// The (normalised) pod subnet.
        subnet: IpNetwork,
        /// How many addresses of it can be handed out at all.
        usable: u128,
    },
    /// The subnet has no address left once network, gateway and last address are excluded.
    #[error(
        "pod subnet {subnet} is too small: a prefix longer than /{max_prefix} has no usable \
         address once the network, gateway and last (broadcast) addresses are excluded"
    )]
    SubnetTooSmall {
        /// The rejected subnet.
        subnet: IpNetwork,
        /// The longest prefix of its family that works.
        max_prefix: u8,
    },
    /// The gateway is not an address of the subnet.
    #[error("gateway {gateway} is not inside the pod subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The rejected gateway.
        gateway: IpAddr,
        /// The pod subnet.
        subnet: IpNetwork,
    },
    /// The gateway is the network or last (broadcast) address of the subnet.
    #[error("gateway {gateway} is the network or broadcast address of the pod subnet {subnet}")]
    GatewayNotHost {
        /// The rejected gateway.
        gateway: IpAddr,
        /// The pod subnet.
        subnet: IpNetwork,
    },
    /// The owner string cannot be stored in a record.
    #[error("invalid IPAM owner {owner:?}: {reason}")]
    InvalidOwner {
        /// The rejected owner.
        owner: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// One allocated address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Allocation<A: PoolAddr = Ipv4Addr> {
    /// The allocated pod address.
    pub ip: A,
    /// Opaque owner id, e.g. `pod:web` or a CNI `containerID/ifname`.
    pub owner: String,
}

/// A host-local address pool persisted in one directory. Cheap to create; holds no descriptors
/// between operations, so any number of instances (in any number of processes) may share a
/// directory.
#[derive(Debug, Clone)]
pub struct Ipam<A: PoolAddr = Ipv4Addr> {
    dir: PathBuf,
    /// The subnet's network address.
    network: A,
    prefix: u8,
    gateway: A,
}

/// The node's IPv6 pool (dual-stack nodes).
pub type Ipam6 = Ipam<Ipv6Addr>;

/// Checks that `owner` can be stored as a record: non-empty, at most [`MAX_OWNER_LEN`] bytes, no
/// newline and no NUL. `/` is allowed (CNI owners look like `containerID/ifname`): the owner is
/// file content, never part of a path.
pub fn validate_owner(owner: &str) -> Result<(), IpamError> {
    let reason = if owner.is_empty() {
        "is empty"
    } else if owner.len() > MAX_OWNER_LEN {
        "is longer than 255 bytes"
    } else if owner.contains('\n') {
        "contains a newline"
    } else if owner.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(IpamError::InvalidOwner {
        owner: owner.to_owned(),
        reason,
    })
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IpamError {
    move |source| IpamError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a record file says.
enum Record {
    Owned(String),
    /// Empty or unparsable content: a torn write, counted as free.
    Torn,
}

fn parse_record(content: &[u8]) -> Record {
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    match std::str::from_utf8(content) {
        Ok(owner) if validate_owner(owner).is_ok() => Record::Owned(owner.to_owned()),
        _ => Record::Torn,
    }
}

/// The directory's contents, read under the lock.
struct Snapshot<A> {
    records: BTreeMap<A, String>,
    torn: Vec<PathBuf>,
    leftover_tmp: Vec<PathBuf>,
    /// Addresses whose name is taken by something other than a regular file (not ours to
    /// clobber, so never handed out).
    blocked: BTreeSet<A>,
}

impl<A> Default for Snapshot<A> {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            torn: Vec::new(),
            leftover_tmp: Vec::new(),
            blocked: BTreeSet::new(),
        }
    }
}

impl<A: PoolAddr> Ipam<A> {
    /// Opens (creating it with mode 0700 if missing) the pool in `dir`, which is per node (e.g.
    /// `/var/lib/podnet/<node>/ipam`). `subnet` may carry host bits (`10.244.0.7/24` means
    /// `10.244.0.0/24`). Fails if the subnet has no usable address or the gateway is not a host
    /// address of it. A directory that already exists is tightened to 0700.
    pub fn new(dir: impl Into<PathBuf>, subnet: A::Net, gateway: A) -> Result<Self, IpamError> {
        let dir = dir.into();
        let (network, prefix) = A::split(subnet);
        let normalised: IpNetwork = A::join(network, prefix).into();
        // An IPv6 /0 would have 2^128 addresses, one more than the arithmetic holds.
        if prefix > A::MAX_PREFIX || (prefix == 0 && A::BITS == 128) {
            return Err(IpamError::SubnetTooSmall {
                subnet: normalised,
                max_prefix: A::MAX_PREFIX,
            });
        }
        let pool = Self {
            dir,
            network,
            prefix,
            gateway,
        };
        if !pool.contains(gateway) {
            return Err(IpamError::GatewayOutsideSubnet {
                gateway: gateway.into(),
                subnet: normalised,
            });
        }
        if gateway == network || gateway == pool.last() {
            return Err(IpamError::GatewayNotHost {
                gateway: gateway.into(),
                subnet: normalised,
            });
        }
        let dir = pool.dir.clone();

        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(io_err("create directory", &dir))?;
        // The umask may have cleared bits, and an existing directory may be looser.
        let meta = fs::metadata(&dir).map_err(io_err("stat directory", &dir))?;
        if meta.permissions().mode() & 0o7777 != DIR_MODE {
            fs::set_permissions(&dir, Permissions::from_mode(DIR_MODE))
                .map_err(io_err("set permissions of", &dir))?;
        }
        Ok(pool)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod subnet, normalised to its network address.
    pub fn subnet(&self) -> A::Net {
        A::join(self.network, self.prefix)
    }

    /// The gateway, which is never handed out.
    pub fn gateway(&self) -> A {
        self.gateway
    }

    /// How many addresses can be handed out: the subnet minus network, gateway and last
    /// (broadcast) address.
    pub fn usable(&self) -> u128 {
        // `new` guarantees at least one host besides the gateway.
        self.host_count() - 1
    }

    /// Allocates the next free address for `owner`, round-robin after the address handed out
    /// last. If `owner` already holds an address, returns that same address (a retried CNI ADD
    /// gets the same IP); if it somehow holds several, the lowest.
    pub fn allocate(&self, owner: &str) -> Result<A, IpamError> {
        validate_owner(owner)?;
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        if let Some((ip, _)) = snapshot.records.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(*ip);
        }

        Self::remove_leftovers_of(&snapshot)?;

        let hosts = self.host_count();
        // Index i in 0..hosts is the address network + 1 + i. Without a (valid) last reserved
        // address, start at the first host. The loop ends at the first address that is free:
        // after at most (records + blocked + gateway + 1) steps, however large the subnet.
        let last = self
            .read_last_reserved(&lock)?
            .map_or(hosts - 1, |ip| self.host_index(ip));
        for step in 1..=hosts {
            let ip = self.host_at((last + step) % hosts);
            if ip == self.gateway
                || snapshot.records.contains_key(&ip)
                || snapshot.blocked.contains(&ip)
            {
                continue;
            }
            let name = ip.to_string();
            self.write_atomic(&name, format!("{owner}\n").as_bytes())?;
            self.write_atomic(A::LAST_RESERVED, format!("{ip}\n").as_bytes())?;
            log::debug!("IPAM: allocated {ip} to {owner}");
            return Ok(ip);
        }
        Err(IpamError::Exhausted {
            subnet: self.subnet().into(),
            usable: self.usable(),
        })
    }

    /// Removes what crashed writers left (temporary files and torn records, see the module
    /// documentation) and returns how many files that was. Allocation does this too; `podnet gc`
    /// calls it so that nothing is left after a crash even when no allocation follows.
    pub fn remove_leftovers(&self) -> Result<usize, IpamError> {
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        Self::remove_leftovers_of(&snapshot)
    }

    /// Under the lock no write is in progress: temp files are crash leftovers, and torn records
    /// are allocations that never completed.
    fn remove_leftovers_of(snapshot: &Snapshot<A>) -> Result<usize, IpamError> {
        let mut removed = 0;
        for path in snapshot.leftover_tmp.iter().chain(&snapshot.torn) {
            log::warn!("IPAM: removing leftover {}", path.display());
            remove_if_exists(path)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Releases every address `owner` holds and returns them, sorted (empty if none: releasing
    /// twice is fine).
    pub fn release_owner(&self, owner: &str) -> Result<Vec<A>, IpamError> {
        validate_owner(owner)?;
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        let released: Vec<A> = snapshot
            .records
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &released {
            remove_if_exists(&self.dir.join(ip.to_string()))?;
            log::debug!("IPAM: released {ip} from {owner}");
        }
        if !released.is_empty() {
            file::sync_dir(&self.dir)?;
        }
        Ok(released)
    }

    /// Releases `ip` if, and only if, `owner` holds it. Returns whether it was released.
    pub fn release(&self, ip: A, owner: &str) -> Result<bool, IpamError> {
        validate_owner(owner)?;
        if !self.is_usable(ip) {
            return Ok(false);
        }
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        match self.read_record(&lock, ip)? {
            Some(Record::Owned(holder)) if holder == owner => {}
            _ => return Ok(false),
        }
        remove_if_exists(&self.dir.join(ip.to_string()))?;
        file::sync_dir(&self.dir)?;
        log::debug!("IPAM: released {ip} from {owner}");
        Ok(true)
    }

    /// Every allocation, sorted by address.
    pub fn list(&self) -> Result<Vec<Allocation<A>>, IpamError> {
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        Ok(snapshot
            .records
            .into_iter()
            .map(|(ip, owner)| Allocation { ip, owner })
            .collect())
    }

    /// Who holds `ip`, if anyone.
    pub fn owner_of(&self, ip: A) -> Result<Option<String>, IpamError> {
        if !self.is_usable(ip) {
            return Ok(None);
        }
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        Ok(match self.read_record(&lock, ip)? {
            Some(Record::Owned(owner)) => Some(owner),
            Some(Record::Torn) | None => None,
        })
    }

    /// Number of addresses in the subnet minus one: `new` keeps the prefix at least 1 for IPv6,
    /// so this fits.
    fn size_minus_one(&self) -> u128 {
        u128::MAX >> (128 - u32::from(A::BITS) + u32::from(self.prefix))
    }

    /// Number of host addresses (network and last excluded, gateway included).
    fn host_count(&self) -> u128 {
        self.size_minus_one() - 1
    }

    /// The last address of the subnet (IPv4's broadcast).
    fn last(&self) -> A {
        A::from_bits(self.network.to_bits() + self.size_minus_one())
    }

    fn contains(&self, ip: A) -> bool {
        let (net, ip) = (self.network.to_bits(), ip.to_bits());
        ip >= net && ip - net <= self.size_minus_one()
    }

    fn host_at(&self, index: u128) -> A {
        A::from_bits(self.network.to_bits() + index + 1)
    }

    /// Index of a host address of the subnet (see `host_at`).
    fn host_index(&self, ip: A) -> u128 {
        ip.to_bits() - self.network.to_bits() - 1
    }

    /// Whether `ip` may be handed out at all.
    fn is_usable(&self, ip: A) -> bool {
        self.contains(ip) && ip != self.network && ip != self.last() && ip != self.gateway
    }

    /// Reads the directory. `_lock` proves the caller holds the lock.
    fn scan(&self, _lock: &FileLock) -> Result<Snapshot<A>, IpamError> {
        let mut snapshot = Snapshot::default();
        let entries = fs::read_dir(&self.dir).map_err(io_err("read directory", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with(TMP_PREFIX) {
                snapshot.leftover_tmp.push(entry.path());
                continue;
            }
            // Only canonical dotted names of usable addresses are records.
            let Ok(ip) = name.parse::<A>() else {
                continue;
            };
            if !self.is_usable(ip) || ip.to_string() != name {
                continue;
            }
            let path = entry.path();
            let file_type = entry.file_type().map_err(io_err("stat record", &path))?;
            if !file_type.is_file() {
                log::warn!(
                    "IPAM: {} is not a regular file; not using it",
                    path.display()
                );
                snapshot.blocked.insert(ip);
                continue;
            }
            match read_optional(&path)?.map(|content| parse_record(&content)) {
                Some(Record::Owned(owner)) => {
                    snapshot.records.insert(ip, owner);
                }
                Some(Record::Torn) => snapshot.torn.push(path),
                None => {}
            }
        }
        Ok(snapshot)
    }

    /// Reads the record of one usable address; `None` if there is none.
    fn read_record(&self, _lock: &FileLock, ip: A) -> Result<Option<Record>, IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_err("stat record", &path)(err)),
        }
        Ok(read_optional(&path)?.map(|content| parse_record(&content)))
    }

    /// The last handed-out host address, if the file exists and names one of this subnet.
    fn read_last_reserved(&self, _lock: &FileLock) -> Result<Option<A>, IpamError> {
        let path = self.dir.join(A::LAST_RESERVED);
        let Some(content) = read_optional(&path)? else {
            return Ok(None);
        };
        let ip = std::str::from_utf8(&content)
            .ok()
            .and_then(|s| s.trim().parse::<A>().ok());
        Ok(ip.filter(|ip| self.contains(*ip) && *ip != self.network && *ip != self.last()))
    }

    /// Replaces `<dir>/<name>` atomically (see [`file::write_atomic`]). The caller holds the
    /// lock.
    fn write_atomic(&self, name: &str, content: &[u8]) -> Result<(), IpamError> {
        Ok(file::write_atomic(&self.dir.join(name), content)?)
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, IpamError> {
    match fs::read(path) {
        Ok(content) => Ok(Some(content)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_err("read", path)(err)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_err("remove", path)(err)),
    }
}

/// Removes the pool's own files (the round-robin position and the lock) and the directory if
/// no address is held any more (`node reset`, after every pod went). Held addresses stay.
pub fn clear(dir: &Path) -> Result<(), IpamError> {
    for name in [LAST_RESERVED_FILE, LAST_RESERVED_FILE6, LOCK_FILE] {
        file::remove_file(&dir.join(name))?;
    }
    super::remove_dir_if_empty(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "podnet-ipam-test-{}-{name}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        /// The IPAM directory: a not-yet-existing child, so `Ipam::new` creates it.
        fn ipam_dir(&self) -> PathBuf {
            self.0.join("ipam")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// 10.0.0.0/29 with gateway .1: usable .2 to .6.
    fn small(tmp: &TempDir) -> Ipam {
        Ipam::new(
            tmp.ipam_dir(),
            "10.0.0.0/29".parse().unwrap(),
            ip("10.0.0.1"),
        )
        .unwrap()
    }

    #[test]
    fn sequential_then_exhausted() {
        let tmp = TempDir::new("seq");
        let ipam = small(&tmp);
        assert_eq!(ipam.usable(), 5);
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("pod:{i}")).unwrap())
            .collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|d| Ipv4Addr::new(10, 0, 0, d)).collect();
        assert_eq!(got, want);

        let err = ipam.allocate("pod:late").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { usable: 5, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("10.0.0.0/29"), "{msg}");
        assert!(msg.contains('5'), "{msg}");
        // Exhaustion changed nothing.
        assert_eq!(ipam.list().unwrap().len(), 5);
    }

    #[test]
    fn exhausted_message_for_a_24() {
        let tmp = TempDir::new("msg");
        let subnet: Ipv4Network = "10.244.0.0/24".parse().unwrap();
        let ipam = Ipam::new(tmp.ipam_dir(), subnet, ip("10.244.0.1")).unwrap();
        let err = IpamError::Exhausted {
            subnet: ipam.subnet().into(),
            usable: ipam.usable(),
        };
        assert_eq!(
            err.to_string(),
            "no free address left in 10.244.0.0/24 (all 253 usable addresses are allocated)"
        );
    }

    #[test]
    fn gateway_in_the_middle_is_skipped() {
        let tmp = TempDir::new("gw");
        let ipam = Ipam::new(
            tmp.ipam_dir(),
            "10.0.0.0/30".parse().unwrap(),
            ip("10.0.0.2"),
        )
        .unwrap();
        assert_eq!(ipam.usable(), 1);
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.0.0.1"));
        assert!(matches!(
            ipam.allocate("b"),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn rejects_bad_configuration() {
        let tmp = TempDir::new("cfg");
        for net in ["10.0.0.0/31", "10.0.0.0/32"] {
            let err = Ipam::new(tmp.ipam_dir(), net.parse().unwrap(), ip("10.0.0.0")).unwrap_err();
            assert!(matches!(err, IpamError::SubnetTooSmall { .. }), "{err:?}");
        }
        let net: Ipv4Network = "10.0.0.0/24".parse().unwrap();
        let err = Ipam::new(tmp.ipam_dir(), net, ip("10.0.1.1")).unwrap_err();
        assert!(
            matches!(err, IpamError::GatewayOutsideSubnet { .. }),
            "{err:?}"
        );
        for gw in ["10.0.0.0", "10.0.0.255"] {
            let err = Ipam::new(tmp.ipam_dir(), net, ip(gw)).unwrap_err();
            assert!(matches!(err, IpamError::GatewayNotHost { .. }), "{err:?}");
        }
        // Host bits in the subnet are dropped.
        let ipam = Ipam::new(
            tmp.ipam_dir(),
            "10.0.0.9/24".parse().unwrap(),
            ip("10.0.0.1"),
        )
        .unwrap();
        assert_eq!(ipam.subnet().to_string(), "10.0.0.0/24");
    }

    #[test]
    fn owner_validation() {
        let tmp = TempDir::new("owner");
        let ipam = small(&tmp);
        let long = "x".repeat(MAX_OWNER_LEN + 1);
        for bad in ["", "a\nb", "a\0b", long.as_str()] {
            let err = ipam.allocate(bad).unwrap_err();
            assert!(matches!(err, IpamError::InvalidOwner { .. }), "{err:?}");
        }
        // '/' is fine: CNI owners are containerID/ifname.
        let owner = "0123abcd/eth0";
        let got = ipam.allocate(owner).unwrap();
        assert_eq!(ipam.owner_of(got).unwrap().as_deref(), Some(owner));
        assert!(ipam.allocate(&"x".repeat(MAX_OWNER_LEN)).is_ok());
    }

    #[test]
    fn same_owner_gets_same_ip() {
        let tmp = TempDir::new("idem");
        let ipam = small(&tmp);
        let a = ipam.allocate("pod:web").unwrap();
        let b = ipam.allocate("pod:db").unwrap();
        assert_ne!(a, b);
        assert_eq!(ipam.allocate("pod:web").unwrap(), a);
        assert_eq!(ipam.list().unwrap().len(), 2);
    }

    #[test]
    fn round_robin_after_release() {
        let tmp = TempDir::new("rr");
        let ipam = small(&tmp);
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.0.0.2"));
        assert_eq!(ipam.allocate("b").unwrap(), ip("10.0.0.3"));
        assert_eq!(ipam.allocate("c").unwrap(), ip("10.0.0.4"));
        assert!(ipam.release(ip("10.0.0.2"), "a").unwrap());
        // Not the just-released .2: higher free addresses come first.
        assert_eq!(ipam.allocate("d").unwrap(), ip("10.0.0.5"));
        assert_eq!(ipam.allocate("e").unwrap(), ip("10.0.0.6"));
        // Wraps around, skipping network and gateway.
        assert_eq!(ipam.allocate("f").unwrap(), ip("10.0.0.2"));
        assert!(matches!(
            ipam.allocate("g"),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn release_checks_owner() {
        let tmp = TempDir::new("rel");
        let ipam = small(&tmp);
        let a = ipam.allocate("a").unwrap();
        assert!(!ipam.release(a, "b").unwrap());
        assert_eq!(ipam.owner_of(a).unwrap().as_deref(), Some("a"));
        assert!(!ipam.release(ip("10.0.0.6"), "a").unwrap());
        assert!(!ipam.release(ip("192.168.0.1"), "a").unwrap());
        assert!(ipam.release(a, "a").unwrap());
        assert!(!ipam.release(a, "a").unwrap());
        assert_eq!(ipam.owner_of(a).unwrap(), None);
    }

    #[test]
    fn release_owner_is_idempotent() {
        let tmp = TempDir::new("relown");
        let ipam = small(&tmp);
        let a = ipam.allocate("pod:a").unwrap();
        let b = ipam.allocate("pod:b").unwrap();
        assert_eq!(ipam.release_owner("pod:a").unwrap(), vec![a]);
        assert_eq!(ipam.release_owner("pod:a").unwrap(), Vec::<Ipv4Addr>::new());
        assert_eq!(
            ipam.release_owner("pod:never").unwrap(),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(
            ipam.list().unwrap(),
            vec![Allocation {
                ip: b,
                owner: "pod:b".into()
            }]
        );
    }

    #[test]
    fn state_is_persisted() {
        let tmp = TempDir::new("persist");
        let a = small(&tmp).allocate("pod:a").unwrap();
        let b = small(&tmp).allocate("pod:b").unwrap();
        assert_eq!((a, b), (ip("10.0.0.2"), ip("10.0.0.3")));
        small(&tmp).release(a, "pod:a").unwrap();

        let ipam = small(&tmp);
        assert_eq!(
            ipam.list().unwrap(),
            vec![Allocation {
                ip: b,
                owner: "pod:b".into()
            }]
        );
        assert_eq!(ipam.allocate("pod:b").unwrap(), b);
        // The round-robin position survived too.
        assert_eq!(ipam.allocate("pod:c").unwrap(), ip("10.0.0.4"));
        let record = fs::read_to_string(tmp.ipam_dir().join("10.0.0.4")).unwrap();
        assert_eq!(record, "pod:c\n");
    }

    #[test]
    fn leftovers_are_tolerated() {
        let tmp = TempDir::new("leftover");
        let ipam = small(&tmp);
        let dir = tmp.ipam_dir();
        let tmp_file = dir.join(".tmp.10.0.0.3.99999");
        fs::write(&tmp_file, "pod:half\n").unwrap();
        fs::write(dir.join("garbage"), "pod:x\n").unwrap();
        fs::write(dir.join("10.0.1.5"), "pod:outside\n").unwrap(); // not in the subnet
        fs::write(dir.join("10.0.0.0"), "pod:net\n").unwrap(); // network address
        fs::write(dir.join("10.0.0.1"), "pod:gw\n").unwrap(); // gateway
        fs::write(dir.join("10.0.0.7"), "pod:bcast\n").unwrap(); // broadcast
        fs::write(dir.join("10.0.0.02"), "pod:noncanonical\n").unwrap();
        fs::create_dir(dir.join("10.0.0.4")).unwrap(); // not a file
        fs::write(dir.join("10.0.0.2"), "").unwrap(); // torn: empty
        fs::write(dir.join("10.0.0.3"), "\0\0\0\0").unwrap(); // torn: zero-filled
        fs::write(dir.join(LAST_RESERVED_FILE), "not an ip").unwrap();

        assert_eq!(ipam.list().unwrap(), vec![]);
        assert_eq!(ipam.owner_of(ip("10.0.0.2")).unwrap(), None);
        assert_eq!(ipam.owner_of(ip("10.0.0.1")).unwrap(), None);

        // Empty record counts as free: the first allocation gets .2 and cleans up.
        assert_eq!(ipam.allocate("pod:a").unwrap(), ip("10.0.0.2"));
        assert!(!tmp_file.exists());
        assert!(!dir.join("10.0.0.3").exists());
        assert!(dir.join("garbage").exists());
        assert_eq!(ipam.allocate("pod:b").unwrap(), ip("10.0.0.3"));
        // .4 is a directory: not listed, but not handed out either.
        assert_eq!(ipam.allocate("pod:c").unwrap(), ip("10.0.0.5"));
        assert!(dir.join("10.0.0.4").is_dir());
        assert_eq!(
            ipam.list().unwrap(),
            vec![
                Allocation {
                    ip: ip("10.0.0.2"),
                    owner: "pod:a".into()
                },
                Allocation {
                    ip: ip("10.0.0.3"),
                    owner: "pod:b".into()
                },
                Allocation {
                    ip: ip("10.0.0.5"),
                    owner: "pod:c".into()
                },
            ]
        );
        let names: HashSet<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(TMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn modes_are_root_only() {
        let tmp = TempDir::new("modes");
        let ipam = small(&tmp);
        let a = ipam.allocate("pod:a").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(ipam.dir()), 0o700);
        assert_eq!(mode(&ipam.dir().join(a.to_string())), 0o600);
        assert_eq!(mode(&ipam.dir().join(LAST_RESERVED_FILE)), 0o600);
        assert_eq!(mode(&ipam.dir().join(LOCK_FILE)), 0o600);

        // An existing, looser directory is tightened.
        fs::set_permissions(ipam.dir(), Permissions::from_mode(0o755)).unwrap();
        let ipam = small(&tmp);
        assert_eq!(mode(ipam.dir()), 0o700);
    }

    #[test]
    fn concurrent_threads_get_unique_addresses() {
        let tmp = TempDir::new("threads");
        let subnet: Ipv4Network = "10.244.0.0/24".parse().unwrap();
        let dir = tmp.ipam_dir();
        Ipam::new(&dir, subnet, ip("10.244.0.1")).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    // Each thread has its own instance, like separate CNI invocations.
                    let ipam = Ipam::new(dir, subnet, ip("10.244.0.1")).unwrap();
                    (0..10)
                        .map(|i| {
                            let owner = format!("pod:{t}-{i}");
                            (ipam.allocate(&owner).unwrap(), owner)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut got = Vec::new();
        for handle in handles {
            got.extend(handle.join().unwrap());
        }
        let unique: HashSet<Ipv4Addr> = got.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(unique.len(), 80);
        let ipam = Ipam::new(&dir, subnet, ip("10.244.0.1")).unwrap();
        let listed = ipam.list().unwrap();
        assert_eq!(listed.len(), 80);
        for (addr, owner) in got {
            assert_eq!(ipam.owner_of(addr).unwrap(), Some(owner));
        }
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// fd00::/125 with gateway ::1: usable ::2 to ::6 (::7, the last, is not handed out).
    fn small6(tmp: &TempDir) -> Ipam6 {
        Ipam6::new(
            tmp.ipam_dir(),
            "fd00::/125".parse().unwrap(),
            ip6("fd00::1"),
        )
        .unwrap()
    }

    #[test]
    fn ipv6_sequential_round_robin_then_exhausted() {
        let tmp = TempDir::new("v6seq");
        let ipam = small6(&tmp);
        assert_eq!(ipam.usable(), 5);
        let got: Vec<Ipv6Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("pod:{i}")).unwrap())
            .collect();
        let want: Vec<Ipv6Addr> = (2..=6).map(|d| ip6(&format!("fd00::{d}"))).collect();
        assert_eq!(got, want);
        let err = ipam.allocate("pod:late").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { usable: 5, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("fd00::/125"), "{err}");
        // Round robin after a release, as for IPv4; the record is named canonically.
        assert!(ipam.release(ip6("fd00::3"), "pod:1").unwrap());
        assert_eq!(ipam.allocate("pod:again").unwrap(), ip6("fd00::3"));
        let record = fs::read_to_string(tmp.ipam_dir().join("fd00::3")).unwrap();
        assert_eq!(record, "pod:again\n");
        assert_eq!(
            fs::read_to_string(tmp.ipam_dir().join(LAST_RESERVED_FILE6)).unwrap(),
            "fd00::3\n"
        );
    }

    #[test]
    fn ipv6_rejects_bad_configuration() {
        let tmp = TempDir::new("v6cfg");
        for net in ["fd00::/127", "fd00::/128", "::/0"] {
            let err = Ipam6::new(tmp.ipam_dir(), net.parse().unwrap(), ip6("fd00::1")).unwrap_err();
            assert!(
                matches!(err, IpamError::SubnetTooSmall { .. }),
                "{net}: {err:?}"
            );
        }
        let msg = Ipam6::new(
            tmp.ipam_dir(),
            "fd00::/127".parse().unwrap(),
            ip6("fd00::1"),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("/126"), "{msg}");
        let net: Ipv6Network = "fd00:1::/64".parse().unwrap();
        let err = Ipam6::new(tmp.ipam_dir(), net, ip6("fd00:2::1")).unwrap_err();
        assert!(
            matches!(err, IpamError::GatewayOutsideSubnet { .. }),
            "{err:?}"
        );
        for gw in ["fd00:1::", "fd00:1::ffff:ffff:ffff:ffff"] {
            let err = Ipam6::new(tmp.ipam_dir(), net, ip6(gw)).unwrap_err();
            assert!(
                matches!(err, IpamError::GatewayNotHost { .. }),
                "{gw}: {err:?}"
            );
        }
        // A /64 is the usual node prefix: 2^64 - 3 addresses to hand out.
        let ipam = Ipam6::new(tmp.ipam_dir(), net, ip6("fd00:1::1")).unwrap();
        assert_eq!(ipam.usable(), (1u128 << 64) - 3);
        assert_eq!(ipam.allocate("pod:a").unwrap(), ip6("fd00:1::2"));
    }

    #[test]
    fn families_share_the_directory_but_not_records() {
        let tmp = TempDir::new("dual");
        let v4 = small(&tmp);
        let v6 = small6(&tmp);
        let a4 = v4.allocate("pod:web").unwrap();
        let a6 = v6.allocate("pod:web").unwrap();
        assert_eq!((a4, a6), (ip("10.0.0.2"), ip6("fd00::2")));
        // Each pool lists only its own family; a repeated allocation is idempotent per family.
        assert_eq!(v4.list().unwrap().len(), 1);
        assert_eq!(v6.list().unwrap().len(), 1);
        assert_eq!(v6.allocate("pod:web").unwrap(), a6);
        // Leftovers of a crashed write are cleaned by either pool, under the one lock.
        fs::write(tmp.ipam_dir().join(".tmp.fd00::4.99999"), "pod:half\n").unwrap();
        fs::write(tmp.ipam_dir().join("fd00::5"), "").unwrap(); // torn
        assert_eq!(v6.remove_leftovers().unwrap(), 2);
        // Releasing one family leaves the other.
        assert_eq!(v6.release_owner("pod:web").unwrap(), vec![a6]);
        assert_eq!(v4.owner_of(a4).unwrap().as_deref(), Some("pod:web"));
        assert_eq!(v4.release_owner("pod:web").unwrap(), vec![a4]);
        // Nothing of either family is left; clear removes the pool's own files and the directory.
        clear(&tmp.ipam_dir()).unwrap();
        assert!(!tmp.ipam_dir().exists());
    }

    #[test]
    fn ipv6_concurrent_threads_get_unique_addresses() {
        let tmp = TempDir::new("v6threads");
        let subnet: Ipv6Network = "fd00:10:244:1::/64".parse().unwrap();
        let gateway = ip6("fd00:10:244:1::1");
        let dir = tmp.ipam_dir();
        Ipam6::new(&dir, subnet, gateway).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let ipam = Ipam6::new(dir, subnet, gateway).unwrap();
                    (0..10)
                        .map(|i| ipam.allocate(&format!("pod:{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let got: Vec<Ipv6Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<Ipv6Addr> = got.iter().copied().collect();
        assert_eq!(unique.len(), 40);
        assert_eq!(
            Ipam6::new(&dir, subnet, gateway)
                .unwrap()
                .list()
                .unwrap()
                .len(),
            40
        );
    }

    const CHILD_DIR_ENV: &str = "PODNET_IPAM_TEST_CHILD_DIR";
    const CHILD_ID_ENV: &str = "PODNET_IPAM_TEST_CHILD_ID";

    /// Body of `concurrent_processes_get_unique_addresses`'s children; a no-op otherwise.
    #[test]
    fn concurrent_processes_child() {
        let (Ok(dir), Ok(id)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_ID_ENV)) else {
            return;
        };
        let ipam = Ipam::new(dir, "10.244.0.0/24".parse().unwrap(), ip("10.244.0.1")).unwrap();
        for i in 0..10 {
            ipam.allocate(&format!("proc:{id}-{i}")).unwrap();
        }
    }

    #[test]
    fn concurrent_processes_get_unique_addresses() {
        let tmp = TempDir::new("procs");
        let dir = tmp.ipam_dir();
        let exe = std::env::current_exe().unwrap();
        // The test's name as the harness knows it: the module path without the crate name.
        let module = module_path!().split_once("::").unwrap().1;
        let test_name = format!("{module}::concurrent_processes_child");
        let children: Vec<_> = (0..8)
            .map(|id| {
                std::process::Command::new(&exe)
                    .args([test_name.as_str(), "--exact", "--test-threads=1", "-q"])
                    .env(CHILD_DIR_ENV, &dir)
                    .env(CHILD_ID_ENV, id.to_string())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        let ipam = Ipam::new(&dir, "10.244.0.0/24".parse().unwrap(), ip("10.244.0.1")).unwrap();
        let listed = ipam.list().unwrap();
        assert_eq!(listed.len(), 80, "{listed:?}");
        let unique: HashSet<Ipv4Addr> = listed.iter().map(|a| a.ip).collect();
        assert_eq!(unique.len(), 80);
        let owners: HashSet<&str> = listed.iter().map(|a| a.owner.as_str()).collect();
        for id in 0..8 {
            for i in 0..10 {
                assert!(owners.contains(format!("proc:{id}-{i}").as_str()));
            }
        }
    }
}
