//! Host-local IP address management for pods: this module owns the per-node pool of pod
//! addresses (one IPv4 subnet with a gateway) and its on-disk state.
//!
//! The layout follows the CNI `host-local` plugin, so it is easy to inspect by hand:
//!
//! ```text
//! <dir>/lock               empty; every operation holds an exclusive flock(2) on it
//! <dir>/last_reserved_ip   the address handed out last, so allocation round-robins
//! <dir>/10.244.0.5         one record per allocated address: the owner, then "\n"
//! ```
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
    fs::{self, DirBuilder, Permissions},
    io,
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;

use super::file::{self, FileLock, StateError, TMP_PREFIX};

/// Longest owner string accepted, in bytes.
pub const MAX_OWNER_LEN: usize = 255;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";
const DIR_MODE: u32 = 0o700;

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
        subnet: Ipv4Network,
        /// How many addresses of it can be handed out at all.
        usable: u32,
    },
    /// The subnet has no address left once network, gateway and broadcast are excluded.
    #[error(
        "pod subnet {subnet} is too small: a /31 or /32 has no usable address once the network, \
         gateway and broadcast addresses are excluded"
    )]
    SubnetTooSmall {
        /// The rejected subnet.
        subnet: Ipv4Network,
    },
    /// The gateway is not an address of the subnet.
    #[error("gateway {gateway} is not inside the pod subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The rejected gateway.
        gateway: Ipv4Addr,
        /// The pod subnet.
        subnet: Ipv4Network,
    },
    /// The gateway is the network or broadcast address of the subnet.
    #[error("gateway {gateway} is the network or broadcast address of the pod subnet {subnet}")]
    GatewayNotHost {
        /// The rejected gateway.
        gateway: Ipv4Addr,
        /// The pod subnet.
        subnet: Ipv4Network,
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
pub struct Allocation {
    /// The allocated pod address.
    pub ip: Ipv4Addr,
    /// Opaque owner id, e.g. `pod:web` or a CNI `containerID/ifname`.
    pub owner: String,
}

/// A host-local address pool persisted in one directory. Cheap to create; holds no descriptors
/// between operations, so any number of instances (in any number of processes) may share a
/// directory.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Network,
    gateway: Ipv4Addr,
}

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
#[derive(Default)]
struct Snapshot {
    records: BTreeMap<Ipv4Addr, String>,
    torn: Vec<PathBuf>,
    leftover_tmp: Vec<PathBuf>,
    /// Addresses whose name is taken by something other than a regular file (not ours to
    /// clobber, so never handed out).
    blocked: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    /// Opens (creating it with mode 0700 if missing) the pool in `dir`, which is per node (e.g.
    /// `/var/lib/podnet/<node>/ipam`). `subnet` may carry host bits (`10.244.0.7/24` means
    /// `10.244.0.0/24`). Fails if the subnet has no usable address or the gateway is not a host
    /// address of it. A directory that already exists is tightened to 0700.
    pub fn new(
        dir: impl Into<PathBuf>,
        subnet: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> Result<Self, IpamError> {
        let dir = dir.into();
        let prefix = subnet.prefix();
        let subnet = Ipv4Network::new(subnet.network(), prefix)
            .expect("the prefix of a valid network stays valid");
        if prefix > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        if !subnet.contains(gateway) {
            return Err(IpamError::GatewayOutsideSubnet { gateway, subnet });
        }
        if gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(IpamError::GatewayNotHost { gateway, subnet });
        }

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
        Ok(Self {
            dir,
            subnet,
            gateway,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod subnet, normalised to its network address.
    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    /// The gateway, which is never handed out.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// How many addresses can be handed out: the subnet minus network, gateway and broadcast.
    pub fn usable(&self) -> u32 {
        // `new` guarantees prefix <= 30, so this is 1..=2^32-3.
        u32::try_from(self.host_count() - 1).expect("at most 2^32 - 3 usable addresses")
    }

    /// Allocates the next free address for `owner`, round-robin after the address handed out
    /// last. If `owner` already holds an address, returns that same address (a retried CNI ADD
    /// gets the same IP); if it somehow holds several, the lowest.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        validate_owner(owner)?;
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        if let Some((ip, _)) = snapshot.records.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(*ip);
        }

        Self::remove_leftovers_of(&snapshot)?;

        let hosts = self.host_count();
        // Index i in 0..hosts is the address network + 1 + i. Without a (valid) last reserved
        // address, start at the first host.
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
            self.write_atomic(LAST_RESERVED_FILE, format!("{ip}\n").as_bytes())?;
            log::debug!("IPAM: allocated {ip} to {owner}");
            return Ok(ip);
        }
        Err(IpamError::Exhausted {
            subnet: self.subnet,
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
    fn remove_leftovers_of(snapshot: &Snapshot) -> Result<usize, IpamError> {
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
    pub fn release_owner(&self, owner: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_owner(owner)?;
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        let released: Vec<Ipv4Addr> = snapshot
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
    pub fn release(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
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
    pub fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        let snapshot = self.scan(&lock)?;
        Ok(snapshot
            .records
            .into_iter()
            .map(|(ip, owner)| Allocation { ip, owner })
            .collect())
    }

    /// Who holds `ip`, if anyone.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<String>, IpamError> {
        if !self.is_usable(ip) {
            return Ok(None);
        }
        let lock = FileLock::exclusive(&self.dir.join(LOCK_FILE))?;
        Ok(match self.read_record(&lock, ip)? {
            Some(Record::Owned(owner)) => Some(owner),
            Some(Record::Torn) | None => None,
        })
    }

    /// Number of host addresses (network and broadcast excluded, gateway included).
    fn host_count(&self) -> u64 {
        (1u64 << (32 - u32::from(self.subnet.prefix()))) - 2
    }

    fn host_at(&self, index: u64) -> Ipv4Addr {
        let offset = u32::try_from(index + 1).expect("host index is within the subnet");
        Ipv4Addr::from(u32::from(self.subnet.network()) + offset)
    }

    /// Index of a host address of the subnet (see `host_at`).
    fn host_index(&self, ip: Ipv4Addr) -> u64 {
        u64::from(u32::from(ip) - u32::from(self.subnet.network())) - 1
    }

    /// Whether `ip` may be handed out at all.
    fn is_usable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.gateway
    }

    /// Reads the directory. `_lock` proves the caller holds the lock.
    fn scan(&self, _lock: &FileLock) -> Result<Snapshot, IpamError> {
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
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
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
    fn read_record(&self, _lock: &FileLock, ip: Ipv4Addr) -> Result<Option<Record>, IpamError> {
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
    fn read_last_reserved(&self, _lock: &FileLock) -> Result<Option<Ipv4Addr>, IpamError> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        let Some(content) = read_optional(&path)? else {
            return Ok(None);
        };
        let ip = std::str::from_utf8(&content)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        Ok(ip.filter(|ip| {
            self.subnet.contains(*ip)
                && *ip != self.subnet.network()
                && *ip != self.subnet.broadcast()
        }))
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
    for name in [LAST_RESERVED_FILE, LOCK_FILE] {
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
            subnet: ipam.subnet(),
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
