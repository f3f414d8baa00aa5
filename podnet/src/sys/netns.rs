//! Network namespaces: opening them, creating and deleting named ones the way `ip netns`
//! does (a bind mount of the namespace onto a file in a run directory, normally
//! `/run/netns`), and running code inside one.
//!
//! A network namespace switch (`setns`) is per *thread*. This module never switches the
//! namespace of a thread it did not create, except in [`Netns::enter`], which the binary
//! calls at start-up before any other thread exists. [`Netns::run`] runs code on a fresh
//! thread that ends afterwards, so a switch never leaks into other code (or into a tokio worker
//! thread); [`crate::sys::link::InNetns`] builds a netlink connection on such a thread.
//!
//! A leaf: the netlink layer uses namespaces, never the other way round (as containernetworking's
//! `pkg/ip` uses `pkg/ns`).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `f_type` of files on nsfs (`NSFS_MAGIC` in `linux/magic.h`).
const NSFS_MAGIC: u64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` from `linux/nsfs.h`.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;
/// The calling thread's network namespace.
const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";
/// Longest file name accepted for a named namespace (`NAME_MAX`).
const MAX_NAME_LEN: usize = 255;

/// Serialises [`Netns::create_named`] within this process, so two threads creating the same
/// name do not stack two mounts on one file.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist.
    #[error("network namespace {} not found", .path.display())]
    NotFound { path: PathBuf },
    /// The path exists but is not a network namespace (not on nsfs, or another kind).
    #[error("{} is not a network namespace", .path.display())]
    NotANetns { path: PathBuf },
    /// The name given to `create_named`/`delete_named` cannot be a file name.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A system call not tied to a path (unshare, thread spawn, runtime build) failed.
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open network namespace: an fd on its nsfs file, kept open so the namespace (and its
/// inode number) stays valid as long as this value lives.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    inode: u64,
}

impl Netns {
    /// Opens an existing namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`, ...) and
    /// checks that it is a network namespace.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    NetnsError::NotFound {
                        path: path.to_owned(),
                    }
                } else {
                    NetnsError::Io {
                        op: "open",
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
        let not_netns = || NetnsError::NotANetns {
            path: path.to_owned(),
        };

        // SAFETY: `statfs` is plain old data, for which all-zero bytes are a valid value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for the duration of the call (owned by `file`) and `st` is a
        // valid, writable `statfs` the kernel fills in.
        let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &raw mut st) };
        if rc != 0 {
            return Err(NetnsError::Io {
                op: "fstatfs",
                path: path.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        if u64::try_from(st.f_type).ok() != Some(NSFS_MAGIC) {
            return Err(not_netns());
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` keeps
        // open during the call.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(not_netns());
        }

        let inode = file
            .metadata()
            .map_err(|source| NetnsError::Io {
                op: "fstat",
                path: path.to_owned(),
                source,
            })?
            .ino();
        Ok(Netns {
            file,
            path: path.to_owned(),
            inode,
        })
    }

    /// Like `ip netns add NAME`: creates `run_dir/NAME` and bind-mounts a new network
    /// namespace onto it. `run_dir` (normally `/run/netns`) is created if missing and made a
    /// shared mount point, as iproute2 does, so namespaces made by us and by `ip netns`
    /// interoperate.
    ///
    /// Idempotent: if `run_dir/NAME` already is a network namespace it is just opened. An
    /// existing plain file (a placeholder left by a creator that crashed) gets a new
    /// namespace mounted onto it.
    pub fn create_named(run_dir: &Path, name: &str) -> Result<Netns, NetnsError> {
        validate_name(name)?;
        let path = run_dir.join(name);
        let _guard = CREATE_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);

        match Netns::open(&path) {
            Ok(ns) => return Ok(ns),
            Err(NetnsError::NotFound { .. } | NetnsError::NotANetns { .. }) => {}
            Err(e) => return Err(e),
        }

        std::fs::create_dir_all(run_dir).map_err(|source| NetnsError::Io {
            op: "create directory",
            path: run_dir.to_owned(),
            source,
        })?;
        make_shared_mount(run_dir)?;

        let created = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => {
                return Err(NetnsError::Io {
                    op: "create",
                    path,
                    source,
                });
            }
        };

        let mounted = std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("podnet-netns-add".to_owned())
                .spawn_scoped(s, || unshare_and_bind(&path))
                .map_err(|source| NetnsError::Sys {
                    op: "spawn namespace thread",
                    source,
                })?;
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        if let Err(e) = mounted {
            if created {
                // Best effort: the error above is the one worth reporting.
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
        Netns::open(&path)
    }

    /// Like `ip netns delete NAME`: lazily unmounts `run_dir/NAME` (every mount stacked on
    /// it) and removes the file. Returns `Ok(false)` if it did not exist.
    pub fn delete_named(run_dir: &Path, name: &str) -> Result<bool, NetnsError> {
        validate_name(name)?;
        let path = run_dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(NetnsError::Io {
                    op: "stat",
                    path,
                    source,
                });
            }
        }
        unmount_all(&path)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(NetnsError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<Netns, NetnsError> {
        Netns::open(Path::new(THREAD_SELF_NETNS))
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The inode number of the namespace file, which identifies the namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The fd on the namespace file.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Moves the *calling thread* into this namespace (other threads are unaffected). Meant
    /// for the binary at start-up, before any other thread exists, to put the whole process
    /// into a node's namespace; everything else should use [`Netns::run`].
    pub fn enter(&self) -> Result<(), NetnsError> {
        // SAFETY: the fd is a valid open nsfs fd (owned by `self.file`) for the duration of
        // the call; setns has no memory-safety preconditions.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(NetnsError::Io {
                op: "setns",
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            })
        }
    }

    /// Runs `f` on a new thread that first enters this namespace, and returns its result. A
    /// panic in `f` is propagated to the caller. The thread ends afterwards, so the switch
    /// never leaks to other code.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("podnet-netns".to_owned())
                .spawn_scoped(s, || {
                    self.enter()?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Sys {
                    op: "spawn namespace thread",
                    source,
                })?;
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Checks a namespace name is a single usable file name.
fn validate_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("not a file name")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn c_path(path: &Path) -> Result<CString, NetnsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| NetnsError::Io {
        op: "convert path",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })
}

/// Calls mount(2); `None` arguments are passed as NULL.
fn mount(
    source: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let ptr = |s: Option<&CString>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either NULL or points to a NUL-terminated string that outlives
    // the call; `data` is NULL, which mount(2) accepts for bind and propagation changes.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mount --make-rshared run_dir`, first turning `run_dir` into a mount point (a bind mount
/// onto itself) if it is not one, exactly like iproute2's `netns add`.
fn make_shared_mount(run_dir: &Path) -> Result<(), NetnsError> {
    let target = c_path(run_dir)?;
    let none = c"none".to_owned();
    let empty = c"".to_owned();
    let mut bound = false;
    loop {
        match mount(
            Some(&empty),
            &target,
            Some(&none),
            libc::MS_SHARED | libc::MS_REC,
        ) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !bound => {
                mount(
                    Some(&target),
                    &target,
                    Some(&none),
                    libc::MS_BIND | libc::MS_REC,
                )
                .map_err(|source| NetnsError::Io {
                    op: "bind-mount onto itself",
                    path: run_dir.to_owned(),
                    source,
                })?;
                bound = true;
            }
            Err(source) => {
                return Err(NetnsError::Io {
                    op: "make shared mount",
                    path: run_dir.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Runs on a dedicated thread: gives the thread a new network namespace and bind-mounts it
/// onto `target`.
fn unshare_and_bind(target: &Path) -> Result<(), NetnsError> {
    let target_c = c_path(target)?;
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET only affects the
    // calling thread, which is a dedicated thread that ends right after.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Sys {
            op: "unshare(CLONE_NEWNET)",
            source: io::Error::last_os_error(),
        });
    }
    let source = c_path(Path::new(THREAD_SELF_NETNS))?;
    mount(
        Some(&source),
        &target_c,
        Some(&c"none".to_owned()),
        libc::MS_BIND,
    )
    .map_err(|source| NetnsError::Io {
        op: "bind-mount network namespace onto",
        path: target.to_owned(),
        source,
    })
}

/// Lazily unmounts every mount stacked on `path`, until it is no mount point.
fn unmount_all(path: &Path) -> Result<(), NetnsError> {
    let target = c_path(path)?;
    // Bounded: each successful round removes one mount.
    for _ in 0..64 {
        // SAFETY: `target` is a NUL-terminated string that outlives the call.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let source = io::Error::last_os_error();
            return match source.raw_os_error() {
                // Not (or no longer) a mount point, or gone.
                Some(libc::EINVAL | libc::ENOENT) => Ok(()),
                _ => Err(NetnsError::Io {
                    op: "unmount",
                    path: path.to_owned(),
                    source,
                }),
            };
        }
    }
    Ok(())
}

/// Helpers for the tests of this crate that need real namespaces.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{Netns, unmount_all};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A number unique within this test process.
    pub(crate) fn unique() -> usize {
        COUNTER.fetch_add(1, Ordering::Relaxed)
    }

    /// True if running as root; otherwise prints the skip notice.
    pub(crate) fn need_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            // Same contract as the tests crate: under `cargo xtask test` (CI) a skip is a failure.
            assert!(
                std::env::var_os("PODNET_TESTS_REQUIRE_ROOT").is_none(),
                "privileged test would be skipped but PODNET_TESTS_REQUIRE_ROOT is set"
            );
            eprintln!("skipped: needs root");
        }
        root
    }

    /// A temporary netns run directory; on drop (also on panic) deletes every namespace
    /// created through it, unmounts the directory and removes it.
    pub(crate) struct TestRunDir {
        pub(crate) dir: PathBuf,
        names: Vec<String>,
    }

    impl TestRunDir {
        pub(crate) fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "pntest-netns-{}-{}",
                std::process::id(),
                unique()
            ));
            TestRunDir {
                dir,
                names: Vec::new(),
            }
        }

        /// Creates (and remembers, for clean-up) a namespace with a unique name.
        pub(crate) fn create(&mut self, tag: &str) -> Netns {
            let name = format!("pntest-{}-{}-{tag}", std::process::id(), unique());
            self.names.push(name.clone());
            Netns::create_named(&self.dir, &name).expect("create test netns")
        }

        pub(crate) fn path(&self) -> &Path {
            &self.dir
        }
    }

    impl Drop for TestRunDir {
        fn drop(&mut self) {
            for name in &self.names {
                if let Err(e) = Netns::delete_named(&self.dir, name) {
                    eprintln!("test clean-up: deleting netns {name}: {e}");
                }
            }
            if self.dir.exists() {
                if let Err(e) = unmount_all(&self.dir) {
                    eprintln!("test clean-up: unmounting {}: {e}", self.dir.display());
                }
                if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                    eprintln!("test clean-up: removing {}: {e}", self.dir.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{TestRunDir, need_root};
    use super::*;

    #[test]
    fn netns_invalid_names_are_rejected() {
        let dir = std::env::temp_dir().join("pntest-netns-never-created");
        let long = "n".repeat(256);
        for name in ["", ".", "..", "a/b", "/", long.as_str(), "a\0b"] {
            assert!(
                matches!(
                    Netns::create_named(&dir, name),
                    Err(NetnsError::InvalidName { .. })
                ),
                "create {name:?}"
            );
            assert!(
                matches!(
                    Netns::delete_named(&dir, name),
                    Err(NetnsError::InvalidName { .. })
                ),
                "delete {name:?}"
            );
        }
        assert!(!dir.exists());
    }

    #[test]
    fn netns_create_open_delete_idempotent() {
        if !need_root() {
            return;
        }
        let mut run = TestRunDir::new();
        let ns = run.create("idem");
        let name = ns
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let root = Netns::current().expect("current");
        assert_ne!(ns.inode(), root.inode(), "a new namespace");

        let again = Netns::create_named(run.path(), &name).expect("create again");
        assert_eq!(
            again.inode(),
            ns.inode(),
            "second create opens the same netns"
        );
        let opened = Netns::open(&run.path().join(&name)).expect("open");
        assert_eq!(opened.inode(), ns.inode());

        // A second name is a different namespace.
        let other = run.create("other");
        assert_ne!(other.inode(), ns.inode());

        // Opening via /proc works and identifies the same namespace.
        let via_proc = Netns::open(Path::new("/proc/self/ns/net")).expect("open /proc");
        assert_eq!(via_proc.inode(), root.inode());

        assert!(Netns::delete_named(run.path(), &name).expect("delete"));
        assert!(!Netns::delete_named(run.path(), &name).expect("delete again"));
        assert!(matches!(
            Netns::open(&run.path().join(&name)),
            Err(NetnsError::NotFound { .. })
        ));
        // The open fd still works after the name is gone.
        assert_eq!(
            ns.run(|| Netns::current().expect("current").inode())
                .expect("run"),
            ns.inode()
        );

        // A regular file is not a namespace; neither is another kind of namespace.
        let plain = run.path().join("plain-file");
        std::fs::write(&plain, b"").expect("write plain file");
        assert!(matches!(
            Netns::open(&plain),
            Err(NetnsError::NotANetns { .. })
        ));
        std::fs::remove_file(&plain).expect("remove plain file");
        assert!(matches!(
            Netns::open(Path::new("/proc/self/ns/mnt")),
            Err(NetnsError::NotANetns { .. })
        ));
    }

    #[test]
    fn netns_create_over_stale_placeholder() {
        if !need_root() {
            return;
        }
        let mut run = TestRunDir::new();
        let first = run.create("stale");
        let name = first
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        drop(first);
        // Simulate a creator that crashed after creating the placeholder file.
        assert!(Netns::delete_named(run.path(), &name).expect("delete"));
        std::fs::write(run.path().join(&name), b"").expect("placeholder");
        let ns = Netns::create_named(run.path(), &name).expect("create over placeholder");
        assert_ne!(ns.inode(), Netns::current().expect("current").inode());
    }

    #[test]
    fn netns_run_executes_inside() {
        if !need_root() {
            return;
        }
        let mut run = TestRunDir::new();
        let a = run.create("runa");
        let b = run.create("runb");
        let before = Netns::current().expect("current").inode();

        let inside = a
            .run(|| Netns::current().expect("current inside").inode())
            .expect("run");
        assert_eq!(inside, a.inode());
        assert_eq!(
            Netns::current().expect("current").inode(),
            before,
            "caller thread not switched"
        );

        // enter() switches only the calling thread (here: a run() thread).
        let (entered, proc_self) = a
            .run(|| {
                b.enter().expect("enter");
                (
                    Netns::current().expect("current").inode(),
                    // /proc/self/ns/net is the main thread's, which is not switched.
                    Netns::open(Path::new("/proc/self/ns/net"))
                        .expect("open /proc/self")
                        .inode(),
                )
            })
            .expect("run");
        assert_eq!(entered, b.inode());
        assert_ne!(proc_self, b.inode());

        // Panics propagate.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            a.run(|| panic!("boom")).expect("run");
        }));
        assert!(panicked.is_err());
    }
}
