//! Which network namespaces are alive on the machine, by cookie (`SO_NETNS_COOKIE`, the same
//! number `bpf_get_netns_cookie` gives the programs), and the calling thread's own cookie.
//!
//! A network namespace lives while something holds it: a thread inside it, an open file
//! descriptor on it, or a bind mount of it (`ip netns add`) in some mount namespace. So the
//! live ones are found where those holders show in `/proc`: `/proc/PID/task/TID/ns/net`,
//! `/proc/PID/fd/*`, and the `nsfs` mounts of each mount namespace's `/proc/PID/mountinfo`
//! (opened through `/proc/PID/root`). Each namespace found is entered, on a thread of ours that
//! ends afterwards, to read its cookie. Cookies are never reused, so a cookie missing from the
//! result belongs to a namespace that is gone for good.
//!
//! What this cannot see: holders in another PID namespace than ours (run it in the host's), and
//! kernel-internal references (a namespace some socket in flight in a unix socket keeps alive).

use std::{
    collections::{BTreeMap, HashSet},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use super::netns::{Netns, NetnsError};

/// `SO_NETNS_COOKIE` from `asm-generic/socket.h`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("8 fits");
    // SAFETY: `cookie` and `len` are valid, writable and sized for SO_NETNS_COOKIE's u64.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The inode in a `net:[INODE]` link target or mount root.
fn net_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn link_inode(path: &Path) -> Option<u64> {
    net_inode(std::fs::read_link(path).ok()?.to_str()?)
}

fn entries(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `nsfs` mounts of network namespaces in one mountinfo: (inode, mount point).
fn nsfs_mounts(mountinfo: &str) -> Vec<(u64, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next() != Some("nsfs") {
                return None;
            }
            let mut fields = fields.split_whitespace();
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some((net_inode(root)?, unescape(mount_point)))
        })
        .collect()
}

/// Every live network namespace's inode, with the paths it can be opened by.
fn holders() -> BTreeMap<u64, Vec<PathBuf>> {
    let mut found: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut add = |inode: u64, path: PathBuf| found.entry(inode).or_default().push(path);
    let mut mount_namespaces = HashSet::new();
    for proc_dir in entries(Path::new("/proc")) {
        let is_pid = proc_dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        for task in entries(&proc_dir.join("task")) {
            let ns = task.join("ns/net");
            if let Some(inode) = link_inode(&ns) {
                add(inode, ns);
            }
        }
        for fd in entries(&proc_dir.join("fd")) {
            if let Some(inode) = link_inode(&fd) {
                add(inode, fd);
            }
        }
        let mnt = std::fs::read_link(proc_dir.join("ns/mnt")).ok();
        if mnt.is_some_and(|m| mount_namespaces.insert(m))
            && let Ok(info) = std::fs::read_to_string(proc_dir.join("mountinfo"))
        {
            let root = proc_dir.join("root");
            for (inode, mount_point) in nsfs_mounts(&info) {
                add(inode, root.join(mount_point.trim_start_matches('/')));
            }
        }
    }
    found
}

/// Opens the namespace `inode` by the first of `paths` that still leads to it.
fn open_namespace(inode: u64, paths: &[PathBuf]) -> Option<Netns> {
    paths
        .iter()
        .filter_map(|p| Netns::open(p).ok())
        .find(|ns| ns.inode() == inode)
}

/// The cookies of every network namespace alive on the machine (see the module doc for what
/// counts as alive). A namespace whose every holder vanished during the scan is left out: it
/// is most likely gone too.
pub fn live_cookies() -> Result<HashSet<u64>, NetnsError> {
    let holders = holders();
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("podnet-netns-scan".to_owned())
            .spawn_scoped(s, || {
                let mut cookies = HashSet::new();
                // One namespace open at a time: a machine may have thousands.
                for (inode, paths) in &holders {
                    let Some(ns) = open_namespace(*inode, paths) else {
                        continue;
                    };
                    // This thread is ours and ends below, so its namespace never matters after.
                    ns.enter()?;
                    let cookie = current_cookie().map_err(|source| NetnsError::Io {
                        op: "reading SO_NETNS_COOKIE in",
                        path: ns.path().to_path_buf(),
                        source,
                    })?;
                    cookies.insert(cookie);
                }
                Ok(cookies)
            })
            .map_err(|source| NetnsError::Sys {
                op: "spawn namespace scan thread",
                source,
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsfs_mounts_are_read_from_mountinfo() {
        let info = "\
36 25 0:4 net:[4026532281] /run/netns/a\\040b rw shared:5 - nsfs nsfs rw
37 25 0:4 mnt:[4026532282] /run/x rw - nsfs nsfs rw
24 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
";
        assert_eq!(
            nsfs_mounts(info),
            vec![(4_026_532_281, "/run/netns/a b".to_owned())]
        );
        assert_eq!(net_inode("net:[12]"), Some(12));
        assert_eq!(net_inode("mnt:[12]"), None);
    }

    #[test]
    fn our_own_namespace_is_alive() {
        let own = current_cookie().expect("own cookie");
        if let Ok(live) = live_cookies() {
            assert!(live.contains(&own));
        }
    }
}
