//! Attaching the socket programs (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4` and
//! their IPv6 twins) to a cgroup, persistently. `BPF_PROG_ATTACH` with
//! `BPF_F_ALLOW_MULTI` keeps the attachment in the cgroup until it is detached or the cgroup
//! goes, with no file descriptor or pin to keep alive (a `bpf_link` would need a pin, and link
//! pins are refused on the kernels these nodes run; see `attach.rs`). Several nodes on one
//! machine each attach their own program side by side; `BPF_F_REPLACE` swaps a node's program
//! for a new version in place.

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use super::DatapathError;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
/// `BPF_CGROUP_INET4_CONNECT` from `enum bpf_attach_type`.
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `BPF_CGROUP_UDP4_SENDMSG`.
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
/// `BPF_CGROUP_UDP4_RECVMSG`.
const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
/// `BPF_CGROUP_INET4_GETPEERNAME`.
const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
/// `BPF_CGROUP_INET6_CONNECT`.
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
/// `BPF_CGROUP_UDP6_SENDMSG`.
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
/// `BPF_CGROUP_UDP6_RECVMSG`.
const BPF_CGROUP_UDP6_RECVMSG: u32 = 20;
/// `BPF_CGROUP_INET6_GETPEERNAME`.
const BPF_CGROUP_INET6_GETPEERNAME: u32 = 30;

/// The cgroup attach type of each socket program (`program_name::SOCK`).
pub fn attach_type(program: &str) -> u32 {
    use podnet_ebpf::abi::program_name;
    match program {
        program_name::SOCK_SENDMSG4 => BPF_CGROUP_UDP4_SENDMSG,
        program_name::SOCK_RECVMSG4 => BPF_CGROUP_UDP4_RECVMSG,
        program_name::SOCK_GETPEERNAME4 => BPF_CGROUP_INET4_GETPEERNAME,
        program_name::SOCK_CONNECT6 => BPF_CGROUP_INET6_CONNECT,
        program_name::SOCK_SENDMSG6 => BPF_CGROUP_UDP6_SENDMSG,
        program_name::SOCK_RECVMSG6 => BPF_CGROUP_UDP6_RECVMSG,
        program_name::SOCK_GETPEERNAME6 => BPF_CGROUP_INET6_GETPEERNAME,
        _ => BPF_CGROUP_INET4_CONNECT,
    }
}
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
const BPF_F_REPLACE: u32 = 1 << 2;

/// The `BPF_PROG_ATTACH`/`BPF_PROG_DETACH` part of `union bpf_attr`.
#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_OBJ_GET` part of `union bpf_attr`.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` for `cmd`, and the size
    // passed is its exact size; the kernel zero-extends the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError {
    let path = path.to_path_buf();
    move |source| DatapathError::Io { op, path, source }
}

/// Opens the program pinned at `pin`.
pub fn pinned_program(pin: &Path) -> Result<OwnedFd, DatapathError> {
    let c_path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| io("opening pinned program", pin)(std::io::Error::other(e)))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(io("opening pinned program", pin))?;
    let fd = i32::try_from(fd).expect("file descriptors fit in an int");
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: libc::__fsword_t = 0x6367_7270;

fn is_cgroup2(dir: &Path) -> bool {
    let Ok(c_path) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-parameter for statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `st` is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type == CGROUP2_SUPER_MAGIC
}

/// The root of the cgroup2 hierarchy: `/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|dir| is_cgroup2(dir))
}

pub(super) fn open_cgroup(cgroup: &Path) -> Result<std::fs::File, DatapathError> {
    std::fs::File::open(cgroup).map_err(io("opening cgroup", cgroup))
}

pub(super) fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("open descriptors are non-negative")
}

/// Attaches `prog` to `cgroup`'s hook `attach_type`, replacing `old` (the node's previous
/// program) when it is attached there.
pub fn attach_sock(
    cgroup: &Path,
    attach_type: u32,
    prog: BorrowedFd<'_>,
    old: Option<BorrowedFd<'_>>,
) -> Result<(), DatapathError> {
    let cg = open_cgroup(cgroup)?;
    let mut attr = AttachAttr {
        target_fd: fd_u32(cg.as_fd()),
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    if let Some(old) = old {
        let mut replace = AttachAttr {
            attach_flags: BPF_F_ALLOW_MULTI | BPF_F_REPLACE,
            replace_bpf_fd: fd_u32(old),
            ..attr
        };
        if bpf(BPF_PROG_ATTACH, &mut replace).is_ok() {
            return Ok(());
        }
    }
    match bpf(BPF_PROG_ATTACH, &mut attr) {
        Ok(_) => Ok(()),
        // Already attached (a re-run with the same program).
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(io("attaching a socket program to cgroup", cgroup)(e)),
    }
}

/// Detaches the program pinned at `pin` from `cgroup`'s hook `attach_type`. `Ok(false)` if it
/// was not attached.
pub fn detach_sock(cgroup: &Path, attach_type: u32, pin: &Path) -> Result<bool, DatapathError> {
    if !pin.exists() || !cgroup.exists() {
        return Ok(false);
    }
    let prog = pinned_program(pin)?;
    detach_fd(cgroup, attach_type, prog.as_fd())
}

/// Detaches the program `prog` from `cgroup`'s hook `attach_type`. `Ok(false)` if it was not
/// attached.
pub fn detach_fd(
    cgroup: &Path,
    attach_type: u32,
    prog: BorrowedFd<'_>,
) -> Result<bool, DatapathError> {
    let cg = open_cgroup(cgroup)?;
    let mut attr = AttachAttr {
        target_fd: fd_u32(cg.as_fd()),
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    match bpf(BPF_PROG_DETACH, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
        Err(e) => Err(io("detaching a socket program from cgroup", cgroup)(e)),
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), which the
/// socket programs compare against to act only on the node's (and its pods') sockets.
pub fn current_netns_cookie() -> Result<u64, DatapathError> {
    crate::sys::live_netns::current_cookie().map_err(io("reading SO_NETNS_COOKIE", Path::new("/")))
}
