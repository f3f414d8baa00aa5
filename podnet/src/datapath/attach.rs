//! Attaching programs to interfaces from their pins. Each attachment is a TCX link pinned at
//! `<pin_dir>/links/<program>.<ifname>`, so it outlives the `podnet` process that made it and is
//! removed by deleting the pin. No program is loaded or verified here: attaching a pod costs one
//! `BPF_OBJ_GET` and one `BPF_LINK_CREATE`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions,
};

use super::{DatapathError, loader};

/// Path of the pin that keeps `program` attached to `ifname`.
pub fn link_pin(pin_dir: &Path, program: &str, ifname: &str) -> PathBuf {
    pin_dir.join("links").join(format!("{program}.{ifname}"))
}

/// Attaches the pinned `program` to `ifname`'s ingress (in the calling thread's namespace).
/// An existing attachment of the same program is replaced, never doubled.
pub fn attach_ingress(pin_dir: &Path, program: &str, ifname: &str) -> Result<PathBuf, DatapathError> {
    let pin = link_pin(pin_dir, program, ifname);
    let prog_err = |source| DatapathError::Program {
        name: program.to_owned(),
        source,
    };
    let prog_path = loader::program_pin(pin_dir, program);
    if !prog_path.exists() {
        return Err(DatapathError::NotInitialised {
            path: pin_dir.to_path_buf(),
        });
    }
    let mut prog = SchedClassifier::from_pin(&prog_path).map_err(prog_err)?;
    if pin.exists() {
        loader::relink(&pin, &mut prog)?;
        return Ok(pin);
    }
    let id = prog
        .attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(prog_err)?;
    let link = prog.take_link(id).map_err(prog_err)?;
    let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
        path: pin.clone(),
        source,
    })?;
    fd_link.pin(&pin).map_err(|source| DatapathError::Pin {
        path: pin.clone(),
        source,
    })?;
    Ok(pin)
}

/// Detaches by removing the link's pin. `Ok(false)` if it was not attached.
pub fn detach(pin_dir: &Path, program: &str, ifname: &str) -> Result<bool, DatapathError> {
    let pin = link_pin(pin_dir, program, ifname);
    match fs::remove_file(&pin) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DatapathError::Io {
            op: "removing link pin",
            path: pin,
            source,
        }),
    }
}

/// Whether a pinned link exists for `program` on `ifname`.
pub fn is_attached(pin_dir: &Path, program: &str, ifname: &str) -> bool {
    link_pin(pin_dir, program, ifname).exists()
}

/// Every pinned link of `program`: the interface names it is attached to.
pub fn attached_interfaces(pin_dir: &Path, program: &str) -> Vec<String> {
    let prefix = format!("{program}.");
    let Ok(entries) = fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Moves every pinned link of `program` onto `prog` (a freshly loaded version).
pub(super) fn relink_all(
    pin_dir: &Path,
    program: &str,
    prog: &mut SchedClassifier,
) -> Result<usize, DatapathError> {
    let ifnames = attached_interfaces(pin_dir, program);
    for ifname in &ifnames {
        loader::relink(&link_pin(pin_dir, program, ifname), prog)?;
    }
    Ok(ifnames.len())
}
