//! OCI images written without Docker or a registry: a filesystem layer built from files in
//! memory, the image configuration, a manifest and an index, packed as one tarball in the OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) that `ctr image import` takes.
//!
//! Everything is deterministic (entries sorted, owner root, modification time 0), so the same
//! files give the same digests. Layers are uncompressed tar
//! (`application/vnd.oci.image.layer.v1.tar`), which containerd imports as it is.
//!
//! - [`Layer`]: files, symlinks and their parent directories.
//! - [`Image`]: layers plus entrypoint, command and environment; [`Image::layout_tar`].
//! - [`dynamic_libraries`]: the shared libraries a binary loads (through `ldd`), to put beside
//!   a binary that is not static.
//! - [`podnet`]: podnet's own image (what `cargo xtask image` writes and the image test runs).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Media types of the OCI image spec.
pub mod media_type {
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// The index annotation containerd reads an imported image's name from.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation of an image's reference in an index.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `PATH` in the configurations [`Image::new`] makes.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Mode of an executable file.
pub const EXECUTABLE: u32 = 0o755;
/// Mode of a plain file.
pub const REGULAR: u32 = 0o644;
/// Mode of the directories a [`Layer`] adds.
const DIRECTORY: u32 = 0o755;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Directory,
    File { bytes: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// One filesystem layer. Paths are absolute inside the image (`/usr/local/bin/podnet`); the
/// directories above each entry are added by themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

/// `/usr/local/bin/x` -> `usr/local/bin/x`; refuses `..`, empty and relative paths.
fn tar_path(path: &str) -> io::Result<String> {
    let relative = path.strip_prefix('/').ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image path {path:?} is not absolute"),
        )
    })?;
    let parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image path {path:?} names no file"),
        ));
    }
    Ok(parts.join("/"))
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, entry: Entry) -> io::Result<&mut Self> {
        let path = tar_path(path)?;
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.insert(parent.clone(), Entry::Directory);
        }
        self.entries.insert(path, entry);
        Ok(self)
    }

    /// A file with `bytes` and `mode` at `path`.
    pub fn file(&mut self, path: &str, bytes: Vec<u8>, mode: u32) -> io::Result<&mut Self> {
        self.insert(path, Entry::File { bytes, mode })
    }

    /// The file at `source` on this machine (following symlinks) at `path`, mode kept.
    pub fn copy(&mut self, path: &str, source: &Path) -> io::Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt as _;

        let bytes = std::fs::read(source)?;
        let mode = std::fs::metadata(source)?.permissions().mode() & 0o7777;
        self.file(path, bytes, mode)
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// A directory at `path` (empty unless something is put in it).
    pub fn dir(&mut self, path: &str) -> io::Result<&mut Self> {
        self.insert(path, Entry::Directory)
    }

    /// The paths in the layer, directories included (`usr/local/bin/podnet`).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The layer as an uncompressed tar.
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::Directory => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(DIRECTORY);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), io::empty())?;
                }
                Entry::File { bytes, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
                    builder.append_data(&mut header, path, bytes.as_slice())?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
            }
        }
        builder.into_inner()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A descriptor of a blob.
fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// An image for linux/amd64: layers (lowest first), entrypoint, command and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The name containerd gives it on import (`podnet.test/pause:1`).
    pub name: String,
    pub layers: Vec<Layer>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// `org.opencontainers.image.*` labels of the configuration.
    pub labels: BTreeMap<String, String>,
}

/// The blobs and the index of an image: what [`Image::layout_tar`] packs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `(digest, bytes)` of every blob: layers, configuration, manifest.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The manifest's digest (the image's id in containerd).
    pub manifest_digest: String,
    /// `index.json`.
    pub index: Value,
}

impl Image {
    /// An image named `name` with one empty layer, no entrypoint, and [`DEFAULT_PATH`].
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            layers: vec![Layer::new()],
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec![DEFAULT_PATH.to_owned()],
            working_dir: "/".to_owned(),
            labels: BTreeMap::new(),
        }
    }

    /// The top layer, to add files to.
    pub fn layer(&mut self) -> &mut Layer {
        if self.layers.is_empty() {
            self.layers.push(Layer::new());
        }
        let last = self.layers.len() - 1;
        &mut self.layers[last]
    }

    /// The blobs, the manifest and the index.
    pub fn layout(&self) -> io::Result<Layout> {
        let layer_tars = self
            .layers
            .iter()
            .map(Layer::tar)
            .collect::<io::Result<Vec<_>>>()?;
        // Uncompressed layers: the diff id is the layer digest.
        let diff_ids: Vec<String> = layer_tars.iter().map(|t| digest(t)).collect();
        let layer_descriptors: Vec<Value> = layer_tars
            .iter()
            .zip(&diff_ids)
            .map(|(t, d)| json!({"mediaType": media_type::LAYER_TAR, "digest": d, "size": t.len()}))
            .collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "WorkingDir": self.working_dir,
                "Labels": self.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| json!({"created_by": "podnet-image"})).collect::<Vec<_>>(),
        });
        let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::MANIFEST,
            "config": descriptor(media_type::CONFIG, &config),
            "layers": layer_descriptors,
        });
        let manifest = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let mut entry = descriptor(media_type::MANIFEST, &manifest);
        entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
        entry["annotations"] = json!({
            CONTAINERD_IMAGE_NAME: self.name,
            OCI_REF_NAME: self.name,
        });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::INDEX,
            "manifests": [entry],
        });
        let manifest_digest = digest(&manifest);
        let mut blobs: Vec<(String, Vec<u8>)> = diff_ids.into_iter().zip(layer_tars).collect();
        blobs.push((digest(&config), config));
        blobs.push((manifest_digest.clone(), manifest));
        blobs.sort();
        blobs.dedup_by(|a, b| a.0 == b.0);
        Ok(Layout {
            blobs,
            manifest_digest,
            index,
        })
    }

    /// The image as a tarball in the OCI image layout.
    pub fn layout_tar(&self) -> io::Result<Vec<u8>> {
        let layout = self.layout()?;
        let mut archive = Layer::new();
        archive.file(
            "/oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            REGULAR,
        )?;
        let index = serde_json::to_vec(&layout.index).map_err(io::Error::other)?;
        archive.file("/index.json", index, REGULAR)?;
        for (digest, bytes) in layout.blobs {
            let hex = digest.trim_start_matches("sha256:");
            archive.file(&format!("/blobs/sha256/{hex}"), bytes, REGULAR)?;
        }
        archive.tar()
    }

    /// Writes [`Image::layout_tar`] to `path`.
    pub fn write_layout_tar(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.layout_tar()?)
    }
}

/// The shared libraries `binary` loads and its program interpreter, as `ldd` resolves them on
/// this machine (symlinks as named, e.g. `/lib/x86_64-linux-gnu/libc.so.6`). Empty for a
/// static binary.
pub fn dynamic_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // `ldd` fails with "not a dynamic executable" on static binaries.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(io::Error::other(format!(
            "ldd {}: {}{err}",
            binary.display(),
            out.status
        )));
    }
    Ok(parse_ldd(&text))
}

/// The paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO and "statically linked" have none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Adds `binary` at `path` and, when it is not static, the libraries it loads at the paths
/// [`dynamic_libraries`] names, so it runs in an image with nothing else.
pub fn add_binary(layer: &mut Layer, path: &str, binary: &Path) -> io::Result<Vec<PathBuf>> {
    layer.copy(path, binary)?;
    let libraries = dynamic_libraries(binary)?;
    for library in &libraries {
        let at = library.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{library:?} is not UTF-8"),
            )
        })?;
        layer.copy(at, library)?;
    }
    Ok(libraries)
}

/// Where podnet lives in its image (the DaemonSet runs it by this path).
pub const PODNET_PATH: &str = "/usr/local/bin/podnet";

/// podnet's image around `binary`: the binary at [`PODNET_PATH`] (with the libraries it loads
/// when it is not static: `cargo xtask image` packs a static build, a test may pack a debug
/// one), an empty `/tmp`, entrypoint podnet, `--help` by default.
pub fn podnet(binary: &Path, name: &str) -> io::Result<Image> {
    let mut image = Image::new(name);
    add_binary(image.layer(), PODNET_PATH, binary)?;
    image.layer().dir("/tmp")?;
    image.entrypoint = vec![PODNET_PATH.to_owned()];
    image.cmd = vec!["--help".to_owned()];
    for (key, value) in [
        ("org.opencontainers.image.title", "podnet"),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        ),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
    ] {
        image.labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .expect("a tar")
            .map(|e| {
                let mut e = e.expect("an entry");
                let path = e.path().expect("a path").to_string_lossy().into_owned();
                let kind = e.header().entry_type();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).expect("readable");
                (path, kind, bytes)
            })
            .collect()
    }

    #[test]
    fn layers_hold_parents_and_are_deterministic() {
        let mut layer = Layer::new();
        layer
            .file("/usr/local/bin/x", b"#!".to_vec(), EXECUTABLE)
            .unwrap()
            .symlink("/bin/x", "/usr/local/bin/x")
            .unwrap();
        let tar_bytes = layer.tar().unwrap();
        assert_eq!(tar_bytes, layer.clone().tar().unwrap());
        let names: Vec<String> = entries(&tar_bytes).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "bin/",
                "bin/x",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/x"
            ]
        );
        assert!(layer.file("relative", Vec::new(), REGULAR).is_err());
        assert!(layer.file("/a/../b", Vec::new(), REGULAR).is_err());
        assert!(layer.file("/", Vec::new(), REGULAR).is_err());
    }

    #[test]
    fn layout_links_index_manifest_config_and_layers_by_digest() {
        let mut image = Image::new("podnet.test/x:1");
        image
            .layer()
            .file("/x", b"hello".to_vec(), EXECUTABLE)
            .unwrap();
        image.entrypoint = vec!["/x".to_owned()];
        let archive = image.layout_tar().unwrap();
        let files: BTreeMap<String, Vec<u8>> = entries(&archive)
            .into_iter()
            .filter(|e| e.1 == tar::EntryType::Regular)
            .map(|e| (e.0, e.2))
            .collect();
        let blob = |d: &str| -> &Vec<u8> {
            let bytes = &files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))];
            assert_eq!(digest(bytes), d, "blob content matches its name");
            bytes
        };
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
        assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
        let index = json(&files["index.json"]);
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"][CONTAINERD_IMAGE_NAME],
            "podnet.test/x:1"
        );
        let manifest_bytes = blob(entry["digest"].as_str().unwrap());
        assert_eq!(entry["size"], manifest_bytes.len());
        let manifest = json(manifest_bytes);
        let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));
        assert_eq!(config["config"]["Entrypoint"][0], "/x");
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], media_type::LAYER_TAR);
        assert_eq!(config["rootfs"]["diff_ids"][0], layer["digest"]);
        let layer_files = entries(blob(layer["digest"].as_str().unwrap()));
        assert_eq!(
            layer_files,
            [("x".to_owned(), tar::EntryType::Regular, b"hello".to_vec())]
        );
        assert_eq!(image.layout().unwrap().manifest_digest, entry["digest"]);
    }

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(parse_ldd("\tstatically linked\n"), Vec::<PathBuf>::new());
    }
}
