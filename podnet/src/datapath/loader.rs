//! Loads the eBPF object (normally the embedded one, see [`super::object`]) once per node and pins what it made. Maps are pinned by name,
//! so a second load finds and reuses them (state survives `podnet node init` re-runs and
//! upgrades); programs are re-pinned, and every existing TCX link is switched to the new program
//! atomically, so attached pods never see a gap.

use std::{
    fs::{self, DirBuilder, Permissions},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{CgroupSockAddr, SchedClassifier},
};
use podnet_ebpf::abi::{
    AFFINITY_MAX, CT_USAGE_SLOTS, DEFAULT_PEERS_MAX, FRAGMENTS_MAX, MAGLEV_MAX, NON_MASQUERADE_MAX,
    POD_NETNS_MAX, REV_NAT_MAX, SOCK_REV_NAT_MAX, STATS_SLOTS, backends_map_entries,
    endpoints6_map_entries, map_name, program_name,
};
use podnet_ebpf::abi::{
    AFFINITY6_MAX, REV_NAT6_MAX, SOCK_REV_NAT6_MAX, backends6_map_entries, services6_map_entries,
};

use super::{DatapathError, attach, cgroup, object::EbpfObject, pins};

/// Mode of the pin directories: root only. The pins in them are 0600 already (the kernel gives
/// a pin `0600 & ~umask`), but the directories would otherwise follow the umask (0777 under
/// umask 000) and let anyone list the node's maps and programs.
const PIN_DIR_MODE: u32 = 0o700;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;

/// What a load does with the node's configuration.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub pin_dir: PathBuf,
    /// Entries in the endpoints map; fixed when the map is first created.
    pub endpoints_max: u32,
    /// Entries in the conntrack LRU (the admission limit plus headroom); fixed likewise.
    pub conntrack_entries: u32,
    /// Entries in the services map; fixed likewise.
    pub services_max: u32,
    /// The uplink, which gets `from_uplink`.
    pub uplink: String,
    /// The overlay's VXLAN device, which gets `from_uplink` too (overlay mode).
    pub tunnel: Option<String>,
    /// The cgroup whose sockets get the socket programs (`program_name::SOCK`).
    pub cgroup: PathBuf,
    /// Compile per-packet debug logging in (read-only global; dead code when off).
    pub debug: bool,
    /// Interfaces whose attachment is switched to the newly loaded program (the pods' veths).
    pub relink: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// The object loaded: `embedded`, or the file given to `node init --ebpf-object`.
    pub object: String,
    pub programs: Vec<&'static str>,
    pub maps_reused: Vec<&'static str>,
    pub maps_created: Vec<&'static str>,
    pub links_updated: usize,
    pub load_time_ms: u128,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError {
    let path = path.to_path_buf();
    move |source| DatapathError::Io { op, path, source }
}

/// Fails unless `dir` is on a bpffs (pinning anywhere else fails with a confusing error).
pub fn check_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let probe = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).map_err(|_| {
        DatapathError::NoBpffs {
            path: dir.to_path_buf(),
        }
    })?;
    // SAFETY: an all-zero statfs is a valid out-parameter for statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `st` is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 || st.f_type != BPF_FS_MAGIC {
        return Err(DatapathError::NoBpffs {
            path: dir.to_path_buf(),
        });
    }
    if is_mount_root(dir) {
        // podnet makes its pin directory root-only (0700) and removes what it pinned there on
        // reset: the root of a bpffs is everybody's, so it is never a node's pin directory.
        return Err(DatapathError::PinDirIsBpffsRoot {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether `dir` exists and is the root of a mount (its device differs from its parent's, or
/// it is `/`).
fn is_mount_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let Ok(canonical) = dir.canonicalize() else {
        return false;
    };
    match canonical.parent() {
        Some(parent) => std::fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev()),
        None => true,
    }
}

/// The layout each map must have, for checking maps pinned by an earlier load.
fn expected_layout(name: &str, conntrack_entries: u32) -> (u32, u32, Option<u32>) {
    let (key, value) = pins::key_value_sizes(name);
    let entries = match name {
        map_name::CONFIG => Some(1),
        map_name::STATS => Some(STATS_SLOTS),
        map_name::CONNTRACK => Some(conntrack_entries),
        map_name::CT_USAGE => Some(CT_USAGE_SLOTS),
        map_name::PEERS => Some(DEFAULT_PEERS_MAX),
        map_name::NON_MASQUERADE => Some(NON_MASQUERADE_MAX),
        map_name::FRAGMENTS => Some(FRAGMENTS_MAX),
        map_name::REV_NAT => Some(REV_NAT_MAX),
        map_name::SOCK_REV_NAT => Some(SOCK_REV_NAT_MAX),
        map_name::POD_NETNS => Some(POD_NETNS_MAX),
        map_name::AFFINITY => Some(AFFINITY_MAX),
        map_name::MAGLEV => Some(MAGLEV_MAX),
        map_name::REV_NAT6 => Some(REV_NAT6_MAX),
        map_name::SOCK_REV_NAT6 => Some(SOCK_REV_NAT6_MAX),
        map_name::AFFINITY6 => Some(AFFINITY6_MAX),
        map_name::MONITOR_EVENTS => Some(podnet_ebpf::abi::monitor::RING_BYTES),
        map_name::MONITOR_BUDGET => Some(1),
        map_name::IPV6_PROGS => Some(podnet_ebpf::abi::ipv6_prog::SLOTS),
        map_name::CONNTRACK6 => Some(conntrack6_entries()),
        map_name::NON_MASQUERADE6 => Some(podnet_ebpf::abi::NON_MASQUERADE6_MAX),
        map_name::FRAGMENTS6 => Some(podnet_ebpf::abi::FRAGMENTS6_MAX),
        _ => None,
    };
    (key, value, entries)
}

/// Refuses to reuse a pinned map whose key or value layout differs from this build's ABI.
fn check_pinned_map(
    path: &Path,
    name: &str,
    conntrack_entries: u32,
) -> Result<bool, DatapathError> {
    if !path.exists() {
        return Ok(false);
    }
    let map_err = |source| DatapathError::Map {
        name: name.to_owned(),
        source,
    };
    let info = MapData::from_pin(path)
        .map_err(map_err)?
        .info()
        .map_err(map_err)?;
    let (key, value, entries) = expected_layout(name, conntrack_entries);
    let mismatch = if info.key_size() != key || info.value_size() != value {
        Some(format!(
            "key/value sizes {}/{} where this build uses {key}/{value}",
            info.key_size(),
            info.value_size()
        ))
    } else {
        entries
            .filter(|&n| n != info.max_entries())
            .map(|n| format!("{} entries where this build uses {n}", info.max_entries()))
    };
    match mismatch {
        Some(what) => Err(DatapathError::IncompatibleMap {
            path: path.to_path_buf(),
            what,
        }),
        None => Ok(true),
    }
}

/// Creates a pin directory (and missing parents) root-only, whatever the umask, and tightens
/// one that exists with looser permissions (made by an older podnet or by hand).
fn ensure_pin_dir(dir: &Path) -> Result<(), DatapathError> {
    DirBuilder::new()
        .recursive(true)
        .mode(PIN_DIR_MODE)
        .create(dir)
        .map_err(io("creating", dir))?;
    let mode = fs::metadata(dir)
        .map_err(io("inspecting", dir))?
        .permissions()
        .mode();
    if mode & 0o7777 != PIN_DIR_MODE {
        fs::set_permissions(dir, Permissions::from_mode(PIN_DIR_MODE))
            .map_err(io("restricting to root", dir))?;
    }
    Ok(())
}

/// Checks, changing nothing, that `pin_dir` is on bpffs and that every map already pinned there
/// has this build's layout (and a conntrack table of `conntrack_entries`), so a load would not
/// refuse them half-way through `node init`.
pub fn check_pins(pin_dir: &Path, conntrack_entries: u32) -> Result<(), DatapathError> {
    check_bpffs(pin_dir)?;
    for name in map_name::ALL {
        check_pinned_map(&pin_dir.join(name), name, conntrack_entries)?;
    }
    Ok(())
}

/// Possible CPUs, which size the conntrack map's headroom.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

/// Entries the conntrack map needs for an admission limit of `conntrack_max` on this machine.
pub fn conntrack_entries(conntrack_max: u32) -> u32 {
    podnet_ebpf::abi::ct_map_entries(conntrack_max, possible_cpus())
}

/// Entries of the IPv6 conntrack map on this machine: the admission limit
/// `DEFAULT_CT6_LIMIT` plus the same headroom as the IPv4 table.
pub fn conntrack6_entries() -> u32 {
    podnet_ebpf::abi::ct_map_entries(podnet_ebpf::abi::DEFAULT_CT6_LIMIT, possible_cpus())
}

/// Loads and verifies `object`'s programs, creates or reuses the pinned maps, pins the programs,
/// and moves existing links onto the new programs.
pub fn load_and_pin(opts: &LoadOptions, object: &EbpfObject) -> Result<LoadReport, DatapathError> {
    let started = Instant::now();
    check_bpffs(&opts.pin_dir)?;
    for dir in [opts.pin_dir.clone(), opts.pin_dir.join("progs")] {
        ensure_pin_dir(&dir)?;
    }
    let mut maps_reused = Vec::new();
    let mut maps_created = Vec::new();
    let debug = u8::from(opts.debug);
    let mut loader = EbpfLoader::new();
    for name in map_name::ALL {
        let path = opts.pin_dir.join(name);
        if check_pinned_map(&path, name, opts.conntrack_entries)? {
            maps_reused.push(name);
        } else {
            maps_created.push(name);
        }
        loader.map_pin_path(name, path);
    }
    loader
        .map_max_entries(map_name::ENDPOINTS, opts.endpoints_max)
        .map_max_entries(
            map_name::ENDPOINTS6,
            endpoints6_map_entries(opts.endpoints_max),
        )
        .map_max_entries(map_name::CONNTRACK, opts.conntrack_entries)
        .map_max_entries(map_name::CONNTRACK6, conntrack6_entries())
        .map_max_entries(map_name::SERVICES, opts.services_max)
        .map_max_entries(map_name::BACKENDS, backends_map_entries(opts.services_max))
        .map_max_entries(
            map_name::SERVICES6,
            services6_map_entries(opts.services_max),
        )
        .map_max_entries(
            map_name::BACKENDS6,
            backends6_map_entries(opts.services_max),
        )
        .override_global("DEBUG", &debug, true);
    let mut ebpf = loader.load(object.bytes())?;
    verify_all(&mut ebpf)?;
    // The IPv6 programs go into their (pinned) program array before the new classifiers that
    // tail-call them are attached.
    fill_ipv6_progs(&mut ebpf)?;
    for (name, _) in program_name::TAIL_CALLED {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("the object defines every program in program_name::ALL")
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: name.to_owned(),
                source,
            })?;
        repin(prog, &pins::program_pin(&opts.pin_dir, name))?;
    }

    let mut links_updated = 0;
    for name in program_name::CLASSIFIERS {
        let prog_err = |source| DatapathError::Program {
            name: name.to_owned(),
            source,
        };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("the object defines every program in program_name::ALL")
            .try_into()
            .map_err(prog_err)?;
        let pin = pins::program_pin(&opts.pin_dir, name);
        match fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("replacing program pin", &pin)(e)),
        }
        prog.pin(&pin).map_err(|source| DatapathError::Pin {
            path: pin.clone(),
            source,
        })?;
        if name == program_name::FROM_UPLINK {
            attach::attach_loaded(prog, name, &opts.uplink)?;
            if let Some(tunnel) = &opts.tunnel {
                attach::attach_loaded(prog, name, tunnel)?;
            }
            continue;
        }
        for ifname in &opts.relink {
            // A pod whose veth vanished (deleted behind podnet's back) has nothing to switch;
            // `pod del` cleans up its record.
            if crate::sys::link::ifindex(ifname).is_some() {
                attach::attach_loaded(prog, name, ifname)?;
                links_updated += 1;
            }
        }
    }
    for name in program_name::SOCK {
        load_sock_program(&mut ebpf, opts, name)?;
    }
    Ok(LoadReport {
        object: object.to_string(),
        programs: program_name::ALL.to_vec(),
        maps_reused,
        maps_created,
        links_updated,
        load_time_ms: started.elapsed().as_millis(),
    })
}

/// Puts the loaded IPv6 programs (`program_name::TAIL_CALLED`) into `IPV6_PROGS`, replacing
/// what an earlier load put there. A tail call then reaches the new program at once.
pub fn fill_ipv6_progs(ebpf: &mut aya::Ebpf) -> Result<(), DatapathError> {
    let map_err = |source| DatapathError::Map {
        name: map_name::IPV6_PROGS.to_owned(),
        source,
    };
    let mut fds = Vec::new();
    for (name, slot) in program_name::TAIL_CALLED {
        let prog: &SchedClassifier = ebpf
            .program(name)
            .expect("the object defines every program in program_name::ALL")
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: name.to_owned(),
                source,
            })?;
        let fd = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| DatapathError::Program {
                name: name.to_owned(),
                source,
            })?;
        fds.push((slot, fd));
    }
    let mut array: ProgramArray<_> = ebpf
        .map_mut(map_name::IPV6_PROGS)
        .expect("the object defines every map in map_name::ALL")
        .try_into()
        .map_err(map_err)?;
    for (slot, fd) in &fds {
        array.set(*slot, fd, 0).map_err(map_err)?;
    }
    Ok(())
}

/// Pins `prog` at `pin`, replacing an earlier load's pin.
fn repin(prog: &mut SchedClassifier, pin: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("replacing program pin", pin)(e)),
    }
    prog.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source,
    })
}

/// Loads (the kernel verifies) every program of `program_name::ALL`, each on its own thread:
/// verification is nearly all of a load's time, one program's is independent of another's, so
/// the programs' verifications overlap instead of adding up (the two classifiers, the big ones,
/// take about as long as each other).
fn verify_all(ebpf: &mut aya::Ebpf) -> Result<(), DatapathError> {
    let programs: Vec<(&str, &mut aya::programs::Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| program_name::ALL.contains(name))
        .collect();
    std::thread::scope(|s| {
        let loads: Vec<_> = programs
            .into_iter()
            .map(|(name, prog)| {
                let load = std::thread::Builder::new()
                    .name("podnet-verify".to_owned())
                    .spawn_scoped(s, move || match prog {
                        aya::programs::Program::SchedClassifier(p) => p.load(),
                        aya::programs::Program::CgroupSockAddr(p) => p.load(),
                        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
                    });
                (name, load)
            })
            .collect();
        for (name, load) in loads {
            let prog_err = |source| DatapathError::Program {
                name: name.to_owned(),
                source,
            };
            let loaded = load
                .map_err(|source| DatapathError::Io {
                    op: "spawning a verification thread",
                    path: PathBuf::from(name),
                    source,
                })?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            loaded.map_err(prog_err)?;
        }
        Ok(())
    })
}

/// Attaches the (loaded) socket program `name` to the node's cgroup in place of the node's
/// previous version, and pins it.
fn load_sock_program(
    ebpf: &mut aya::Ebpf,
    opts: &LoadOptions,
    name: &'static str,
) -> Result<(), DatapathError> {
    let prog_err = |source| DatapathError::Program {
        name: name.to_owned(),
        source,
    };
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .expect("the object defines every program in program_name::ALL")
        .try_into()
        .map_err(prog_err)?;
    let pin = pins::program_pin(&opts.pin_dir, name);
    let old = if pin.exists() {
        Some(cgroup::pinned_program(&pin)?)
    } else {
        None
    };
    {
        use std::os::fd::AsFd;
        let fd = prog.fd().map_err(prog_err)?;
        cgroup::attach_sock(
            &opts.cgroup,
            cgroup::attach_type(name),
            fd.as_fd(),
            old.as_ref().map(AsFd::as_fd),
        )?;
    }
    match fs::remove_file(&pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("replacing program pin", &pin)(e)),
    }
    prog.pin(&pin)
        .map_err(|source| DatapathError::Pin { path: pin, source })
}

/// One line saying what a load did.
pub fn describe(report: &LoadReport) -> String {
    let LoadReport {
        object,
        programs,
        maps_reused,
        maps_created,
        links_updated,
        load_time_ms,
    } = report;
    format!(
        "loaded {} ({object} object) in {load_time_ms} ms: maps reused [{}], created [{}]; {links_updated} pod attachment(s) switched to the new programs",
        programs.join(", "),
        maps_reused.join(", "),
        maps_created.join(", "),
    )
}
