//! The `bpf(2)` commands aya does not wrap, on raw map descriptors: batched update, delete and
//! lookup (the service maps are written tens of thousands of entries at a time), and the
//! creation of a plain array map and a single update (the inner maps of a hash of maps, whose
//! value is a map descriptor).

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use aya::maps::Map;

use super::DatapathError;

/// A descriptor of `map`'s own (a hash map, LRU hash map or hash of maps), for the commands
/// here, which take raw descriptors.
pub(super) fn own_fd(map: &Map, name: &'static str) -> Result<OwnedFd, DatapathError> {
    let (Map::HashMap(data) | Map::LruHashMap(data) | Map::HashOfMaps(data)) = map else {
        return Err(DatapathError::Map {
            name: name.to_owned(),
            source: aya::maps::MapError::InvalidName {
                name: name.to_owned(),
            },
        });
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DatapathError::Io {
            op: "duplicating a map descriptor",
            path: name.into(),
            source,
        })
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Elements per batch call: bounded, so one call's kernel work (and the lookup buffers) stay
/// small.
const BATCH: usize = 8_192;

/// The `BPF_MAP_*_BATCH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, initialised BatchAttr, the prefix of `union bpf_attr` for the
    // batch commands, with its exact size; every pointer in it points at live buffers of
    // `count` keys/values of the map's sizes (checked by the callers' types).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn batch_err(name: &'static str, op: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |source| DatapathError::Io {
        op,
        path: name.into(),
        source,
    }
}

/// Inserts or replaces `keys[i] -> values[i]`, in order.
pub(super) fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<(), DatapathError> {
    assert_eq!(keys.len(), values.len(), "a value per key");
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: u32::try_from(k.len()).expect("BATCH fits"),
            map_fd: fd_u32(fd),
            ..BatchAttr::default()
        };
        bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr)
            .map_err(batch_err(name, "updating a map (batch)"))?;
    }
    Ok(())
}

/// Deletes `keys`, in order; keys already gone are skipped.
pub(super) fn delete_batch<K: aya::Pod>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    keys: &[K],
) -> Result<(), DatapathError> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: u32::try_from(chunk.len()).expect("BATCH fits"),
            map_fd: fd_u32(fd),
            ..BatchAttr::default()
        };
        match bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => rest = &rest[chunk.len()..],
            // The kernel stops at a missing key and says how many went before it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let done = usize::try_from(attr.count).unwrap_or(0).min(chunk.len());
                rest = &rest[(done + 1).min(rest.len())..];
            }
            Err(e) => return Err(batch_err(name, "deleting from a map (batch)")(e)),
        }
    }
    Ok(())
}

/// Whether a batch command failed because the kernel (or this map type) has none: the caller
/// then falls back to the one-element commands.
pub(super) fn unsupported(e: &std::io::Error) -> bool {
    /// `ENOTSUPP` (kernel-internal, returned by `bpf(2)` for map types without batch support).
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Every entry of the hash map `fd`.
pub(super) fn lookup_all<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DatapathError> {
    let mut out = Vec::new();
    let mut keys: Vec<K> = Vec::with_capacity(BATCH);
    let mut values: Vec<V> = Vec::with_capacity(BATCH);
    // The position between calls: a bucket index for hash maps (a u32), in a u64 slot.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&token_in) as u64
            },
            out_batch: std::ptr::from_mut(&mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(BATCH).expect("fits"),
            map_fd: fd_u32(fd),
            ..BatchAttr::default()
        };
        let rc = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = usize::try_from(attr.count).unwrap_or(0).min(BATCH);
        let done = match rc {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(batch_err(name, "reading a map (batch)")(e)),
        };
        // SAFETY: the kernel wrote `n` keys and values (at most the capacity it was given) into
        // the buffers, and every bit pattern is a valid `aya::Pod`.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// The `BPF_MAP_CREATE` part of `union bpf_attr` (up to the name).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Creates an array map of `entries` `u32` values, named `name` (at most 15 bytes).
pub(super) fn create_u32_array(name: &str, entries: u32) -> Result<OwnedFd, DatapathError> {
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        ..CreateAttr::default()
    };
    let len = name.len().min(attr.map_name.len() - 1);
    attr.map_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` for BPF_MAP_CREATE,
    // passed with its exact size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            std::ptr::from_mut(&mut attr).cast::<libc::c_void>(),
            size_of::<CreateAttr>(),
        )
    };
    if rc < 0 {
        return Err(batch_err("inner array", "creating a map")(
            std::io::Error::last_os_error(),
        ));
    }
    let fd = i32::try_from(rc).expect("descriptors fit an i32");
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Inserts or replaces one `key -> value` in the map `fd`.
pub(super) fn update_elem<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    key: &K,
    value: &V,
) -> Result<(), DatapathError> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(fd),
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for BPF_MAP_UPDATE_ELEM with its
    // exact size; key and value point at live values of the map's sizes (the callers' types).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            std::ptr::from_mut(&mut attr).cast::<libc::c_void>(),
            size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        return Err(batch_err(name, "updating a map")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A map descriptor as the `u32` the kernel takes in attributes and map-of-maps values.
pub(super) fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("open descriptors are non-negative")
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Deletes `key` from the map `fd`; `Ok(false)` if it was not there.
pub(super) fn delete_elem<K: aya::Pod>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    key: &K,
) -> Result<bool, DatapathError> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(fd),
        key: std::ptr::from_ref(key) as u64,
        ..ElemAttr::default()
    };
    // SAFETY: as in `update_elem`, without a value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            std::ptr::from_mut(&mut attr).cast::<libc::c_void>(),
            size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(false);
        }
        return Err(batch_err(name, "deleting from a map")(e));
    }
    Ok(true)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The value of `key` in the map `fd`; `Ok(None)` if it is not there.
pub(super) fn lookup_elem<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    key: &K,
) -> Result<Option<V>, DatapathError> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = ElemAttr {
        map_fd: fd_u32(fd),
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: as in `update_elem`; the value buffer has the map's value size (the caller's
    // type), and the kernel writes all of it on success.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            std::ptr::from_mut(&mut attr).cast::<libc::c_void>(),
            size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(batch_err(name, "looking up a map")(e));
    }
    // SAFETY: zeroed, then filled by the kernel; `V` is `Pod`, so any bytes are a valid value.
    Ok(Some(unsafe { value.assume_init() }))
}
