//! Which of podnet's socket programs are attached to a cgroup, and which node each belongs to.
//!
//! Several nodes on one machine attach their socket programs (`program_name::SOCK`: the four
//! IPv4 ones and their IPv6 twins) side by side to the same cgroup (`BPF_F_ALLOW_MULTI`), each
//! acting only on sockets of its own network namespace. A node whose namespace was deleted
//! without `node reset` leaves its eight programs attached: they run on every `connect()` and `sendmsg()`
//! of the machine, with nobody to detach them. This module finds them: `BPF_PROG_QUERY` lists
//! the programs attached to each hook; a program counts as podnet's when its type is
//! `cgroup_sock_addr` and its name, as the kernel keeps it (cut to 15 bytes), is that of the
//! program for the hook it is attached to (`sock_getpeername4` and `sock_getpeername6` read
//! the same when cut: the hook tells them apart); its node is found through the program's own maps (`bpf_prog_info`'s map ids): the
//! `CONFIG` array of this build's layout, whose entry carries the netns cookie of the node
//! that wrote it. Deciding which node is dead is the caller's job.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{ProgramFd, ProgramInfo, loaded_programs},
};
use podnet_ebpf::abi::{NodeConfig, config_flag, map_name, program_name};

use super::{
    DatapathError,
    cgroup::{self, bpf, fd_u32, io, open_cgroup},
};

const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` from `enum bpf_prog_type`.
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// Longest program name the kernel keeps (`BPF_OBJ_NAME_LEN` less the NUL).
const KERNEL_NAME_LEN: usize = 15;
/// Most programs one cgroup hook holds (`BPF_CGROUP_MAX_PROGS`).
const CGROUP_MAX_PROGS: usize = 64;

/// The `BPF_PROG_QUERY` part of `union bpf_attr` (up to `prog_cnt`; the kernel zero-extends
/// the rest).
#[repr(C)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// One of podnet's socket programs attached to the cgroup.
pub struct AttachedSockProgram {
    pub id: u32,
    /// Its name in `program_name::SOCK`.
    pub name: &'static str,
    pub attach_type: u32,
    /// The netns cookie in its node's `CONFIG`, when that map has this build's layout and the
    /// node finished writing it (`READY`); `None` when the owner cannot be told.
    pub netns_cookie: Option<u64>,
    fd: ProgramFd,
}

impl AttachedSockProgram {
    /// Detaches the program from `cgroup`; `Ok(false)` if it was no longer attached.
    pub fn detach(&self, cgroup: &Path) -> Result<bool, DatapathError> {
        cgroup::detach_fd(cgroup, self.attach_type, self.fd.as_fd())
    }
}

/// Ids of the programs attached to `cgroup`'s hook `attach_type`.
fn query(
    cgroup_fd: BorrowedFd<'_>,
    cgroup: &Path,
    attach_type: u32,
) -> Result<Vec<u32>, DatapathError> {
    let mut ids = vec![0u32; CGROUP_MAX_PROGS];
    let mut attr = QueryAttr {
        target_fd: fd_u32(cgroup_fd),
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: u32::try_from(ids.len()).expect("64 fits"),
        _pad: 0,
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(io("querying the programs of cgroup", cgroup))?;
    ids.truncate(
        usize::try_from(attr.prog_cnt)
            .unwrap_or(0)
            .min(CGROUP_MAX_PROGS),
    );
    Ok(ids)
}

/// The `program_name::SOCK` name of a loaded program attached to hook `attach_type`, if it
/// is podnet's program for that hook.
fn sock_name(info: &ProgramInfo, attach_type: u32) -> Option<&'static str> {
    if info.program_type() as u32 != BPF_PROG_TYPE_CGROUP_SOCK_ADDR {
        return None;
    }
    program_name::SOCK.into_iter().find(|name| {
        let kept = &name.as_bytes()[..name.len().min(KERNEL_NAME_LEN)];
        info.name() == kept && cgroup::attach_type(name) == attach_type
    })
}

/// The netns cookie in the `CONFIG` map among `info`'s maps (see [`AttachedSockProgram`]).
fn owner_cookie(info: &ProgramInfo) -> Option<u64> {
    let config_size = u32::try_from(size_of::<NodeConfig>()).ok()?;
    for id in info.map_ids().ok()??.into_iter() {
        let Ok(data) = MapData::from_id(id) else {
            continue;
        };
        let Ok(map_info) = data.info() else {
            continue;
        };
        if map_info.name_as_str() != Some(map_name::CONFIG)
            || map_info.value_size() != config_size
            || map_info.max_entries() != 1
        {
            continue;
        }
        let config: Array<MapData, NodeConfig> = Map::from_map_data(data).ok()?.try_into().ok()?;
        let config = config.get(&0, 0).ok()?;
        return (config.flags & config_flag::READY != 0 && config.netns_cookie != 0)
            .then_some(config.netns_cookie);
    }
    None
}

/// podnet's socket programs attached to `cgroup`, every node's, with the netns cookie each
/// node recorded.
pub fn attached_sock_programs(cgroup: &Path) -> Result<Vec<AttachedSockProgram>, DatapathError> {
    let cg = open_cgroup(cgroup)?;
    let mut attached = Vec::new();
    for name in program_name::SOCK {
        let attach_type = cgroup::attach_type(name);
        for id in query(cg.as_fd(), cgroup, attach_type)? {
            attached.push((id, attach_type));
        }
    }
    let ids: BTreeSet<u32> = attached.iter().map(|(id, _)| *id).collect();
    let mut found = Vec::new();
    for info in loaded_programs().filter_map(Result::ok) {
        if !ids.contains(&info.id()) {
            continue;
        }
        let mut fd_cookie = None;
        // The same program on its own hook only (a program is attached where its type says).
        for (id, attach_type) in &attached {
            if *id != info.id() {
                continue;
            }
            let Some(name) = sock_name(&info, *attach_type) else {
                continue;
            };
            if fd_cookie.is_none() {
                let prog_err = |source| DatapathError::Program {
                    name: name.to_owned(),
                    source,
                };
                fd_cookie = Some((info.fd().map_err(prog_err)?, owner_cookie(&info)));
            }
            if let Some((fd, netns_cookie)) = &fd_cookie {
                let netns_cookie = *netns_cookie;
                found.push(AttachedSockProgram {
                    id: *id,
                    name,
                    attach_type: *attach_type,
                    netns_cookie,
                    fd: fd
                        .try_clone()
                        .map_err(|e| io("duplicating a program fd", cgroup)(e))?,
                });
            }
        }
    }
    Ok(found)
}
