//! Which eBPF object `node init` loads: the one embedded in this binary (the normal case), or
//! one read from a file (`node init --ebpf-object PATH`: a rebuilt or hot-fixed program version
//! loaded into a running node, which is how an upgrade is tested).
//!
//! A file is read and checked completely before anything is changed: it must be an eBPF ELF
//! object defining every program podnet attaches and every map with this build's key and value
//! layout, since the maps already pinned on the node are reused as they are.

use std::{
    borrow::Cow,
    fmt,
    path::{Path, PathBuf},
};

use podnet_ebpf::abi::{map_name, program_name};

use super::{DatapathError, OBJECT, pins};

/// An eBPF object to load, and where it came from.
pub struct EbpfObject {
    bytes: Cow<'static, [u8]>,
    file: Option<PathBuf>,
}

impl EbpfObject {
    /// The object embedded in this binary at build time.
    pub fn embedded() -> Self {
        Self {
            bytes: Cow::Borrowed(OBJECT),
            file: None,
        }
    }

    /// Reads `path` and checks that it is a podnet object this binary can load (see the module
    /// documentation).
    pub fn from_file(path: &Path) -> Result<Self, DatapathError> {
        let bytes = std::fs::read(path).map_err(|source| DatapathError::Io {
            op: "reading the eBPF object",
            path: path.to_path_buf(),
            source,
        })?;
        check(&bytes).map_err(|what| DatapathError::BadObject {
            path: path.to_path_buf(),
            what,
        })?;
        Ok(Self {
            bytes: Cow::Owned(bytes),
            file: Some(path.to_path_buf()),
        })
    }

    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file it was read from; `None` for the embedded object.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

impl fmt::Display for EbpfObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("embedded"),
        }
    }
}

impl fmt::Debug for EbpfObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EbpfObject")
            .field("source", &self.to_string())
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// What is wrong with `bytes` as a podnet object, if anything.
fn check(bytes: &[u8]) -> Result<(), String> {
    let object = aya_obj::Object::parse(bytes).map_err(|e| format!("not an eBPF object: {e}"))?;
    if let Some(missing) = program_name::ALL
        .iter()
        .find(|p| !object.programs.contains_key(**p))
    {
        return Err(format!("it has no program {missing}"));
    }
    for name in map_name::ALL {
        let map = object
            .maps
            .get(name)
            .ok_or_else(|| format!("it has no map {name}"))?;
        let (key, value) = pins::key_value_sizes(name);
        if (map.key_size(), map.value_size()) != (key, value) {
            return Err(format!(
                "its map {name} has key/value sizes {}/{} where this podnet uses {key}/{value}",
                map.key_size(),
                map.value_size()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_passes_the_check() {
        check(OBJECT).unwrap();
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        let err = check(b"not an ELF file").unwrap_err();
        assert!(err.contains("not an eBPF object"), "{err}");
    }
}
