//! Attaching programs to interfaces from their pins, persistently. Each attachment is a
//! direct-action `cls_bpf` filter on the interface's `clsact` qdisc at a fixed priority and
//! handle owned by podnet, so it outlives the `podnet` process that made it, disappears with the
//! interface, and is replaced in place (atomically) when the program is upgraded. No program is
//! loaded or verified here: attaching costs one `BPF_OBJ_GET` and one netlink request.
//!
//! (A pinned TCX link would be the newer mechanism, but pinning a TCX link fails with `EPERM`
//! on the kernels these nodes run, so podnet uses the netlink filter, which every kernel since
//! 4.5 supports and `tc filter show` displays.)

use std::path::Path;

use aya::programs::{
    SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};

use super::{DatapathError, pins};

/// The filter priority podnet's programs use (lower runs first; leaves 2+ to others).
pub const FILTER_PRIORITY: u16 = 1;
/// The filter handle at that priority.
pub const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

fn prog_err(program: &str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError + '_ {
    move |source| DatapathError::Program {
        name: program.to_owned(),
        source,
    }
}

fn link_at(ifname: &str) -> std::io::Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        FILTER_PRIORITY,
        FILTER_HANDLE,
        None,
    )
}

/// Attaches the pinned `program` to `ifname`'s ingress (in the calling thread's namespace),
/// replacing podnet's filter there if one exists, so re-running never doubles it.
pub fn attach_ingress(pin_dir: &Path, program: &str, ifname: &str) -> Result<(), DatapathError> {
    let prog_path = pins::program_pin(pin_dir, program);
    if !prog_path.exists() {
        return Err(DatapathError::NotInitialised {
            path: pin_dir.to_path_buf(),
        });
    }
    let mut prog = SchedClassifier::from_pin(&prog_path).map_err(prog_err(program))?;
    attach_loaded(&mut prog, program, ifname)
}

/// Attaches an already loaded program (`node init` passes the freshly loaded one).
pub(super) fn attach_loaded(
    prog: &mut SchedClassifier,
    program: &str,
    ifname: &str,
) -> Result<(), DatapathError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        Err(tc::TcError::IoError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => {
            return Err(DatapathError::Program {
                name: program.to_owned(),
                source: source.into(),
            });
        }
    }
    // Replace in place when our filter is there; create it otherwise.
    let existing = link_at(ifname).map_err(|source| DatapathError::Io {
        op: "resolving interface",
        path: ifname.into(),
        source,
    })?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: FILTER_PRIORITY,
                    handle: FILTER_HANDLE,
                    ..NlOptions::default()
                }),
            )
            .map_err(prog_err(program))?,
    };
    // The filter must stay after this process exits: take the link out of aya's management and
    // forget it, so neither the program's drop nor the link's drop detaches it.
    let link = prog.take_link(id).map_err(prog_err(program))?;
    std::mem::forget(link);
    Ok(())
}

/// Removes podnet's filter from `ifname`. `Ok(false)` if the interface or filter is gone.
pub fn detach_ingress(ifname: &str) -> Result<bool, DatapathError> {
    let Ok(link) = link_at(ifname) else {
        return Ok(false);
    };
    use aya::programs::links::Link as _;
    match link.detach() {
        Ok(()) => Ok(true),
        Err(_) => Ok(false),
    }
}
