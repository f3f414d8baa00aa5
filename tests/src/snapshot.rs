//! Snapshots of everything a podnet node owns, to show that a refused command changed nothing
//! ("no partial state"): take one before, one after, and compare.
//!
//! A [`Snapshot`] records, as comparable text keyed by what it is:
//! - every file under the watched directories (state, IPAM and pin directories): regular files
//!   by content; pinned maps by inode and by their entries (`bpftool map dump pinned`), pinned
//!   programs and other bpffs objects by inode (re-pinning makes a new one);
//! - the node namespace's links (index, MTU, MAC, controller, administratively up), IPv4
//!   addresses and IPv4 routes of every table (via `ip -j` inside it);
//! - its qdiscs and the ingress and egress tc filters of every link;
//! - the network namespaces under a netns directory whose names start with a prefix (the
//!   namespaces podnet names after the node).
//!
//! What moves by itself is left out on purpose: link operational state, counters, route flags
//! such as `linkdown`, and the contents of the files named in [`Watch::volatile`] (e.g. the
//! `STATS` map, which counts the IPv6 neighbour discovery of idle pods).

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{InNetns, describe, run_bounded};

/// `f_type` of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;
/// Bound on each command a snapshot runs.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Separates the sections of the one shell command run inside the node's namespace.
const SECTION: &str = "@@podnet-snapshot@@";

/// What to snapshot.
pub struct Watch<'a> {
    /// Directories whose files are recorded (missing ones record as absent).
    pub dirs: Vec<PathBuf>,
    /// The node's network namespace.
    pub node: &'a dyn InNetns,
    /// Where namespaces named after the node are created, and the prefix of their names.
    pub netns_dir: PathBuf,
    pub netns_prefix: String,
    /// File names whose contents are not compared (their presence and inode still are).
    pub volatile: Vec<String>,
}

/// Everything [`Watch`] names, as `key -> text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub parts: BTreeMap<String, String>,
}

impl Snapshot {
    /// Records the current state.
    pub fn take(watch: &Watch<'_>) -> Self {
        let mut parts = BTreeMap::new();
        for dir in &watch.dirs {
            files(dir, &watch.volatile, &mut parts);
        }
        node_netns(watch.node, &mut parts);
        if let Ok(entries) = std::fs::read_dir(&watch.netns_dir) {
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&watch.netns_prefix) {
                    let ino = entry.metadata().map(|m| m.ino()).unwrap_or(0);
                    parts.insert(format!("netns {name}"), format!("inode {ino}"));
                }
            }
        }
        Self { parts }
    }

    /// What differs from `before`, one line per key (empty when nothing does).
    pub fn diff(&self, before: &Self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, old) in &before.parts {
            match self.parts.get(key) {
                None => out.push(format!("removed {key}: {}", short(old))),
                Some(new) if new != old => {
                    out.push(format!("changed {key}: {} -> {}", short(old), short(new)));
                }
                Some(_) => {}
            }
        }
        for (key, new) in &self.parts {
            if !before.parts.contains_key(key) {
                out.push(format!("added {key}: {}", short(new)));
            }
        }
        out
    }

    /// Whether a key starting with `prefix` is recorded (to check a snapshot sees something).
    pub fn has(&self, prefix: &str) -> bool {
        self.parts.keys().any(|k| k.starts_with(prefix))
    }
}

fn short(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

fn on_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-parameter for statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `st` is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type == BPF_FS_MAGIC
}

/// Every file under `dir`, recursively (bounded depth: podnet's directories are shallow).
fn files(dir: &Path, volatile: &[String], parts: &mut BTreeMap<String, String>) {
    const MAX_DEPTH: usize = 8;
    let bpffs = on_bpffs(dir);
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((at, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let key = format!("file {}", path.display());
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.is_dir() {
                parts.insert(key, "directory".to_owned());
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if bpffs {
                let dump = if volatile.contains(&name) {
                    String::new()
                } else {
                    map_dump(&path).unwrap_or_default()
                };
                parts.insert(key, format!("inode {} {dump}", meta.ino()));
            } else if volatile.contains(&name) {
                parts.insert(key, "(contents not compared)".to_owned());
            } else {
                let text = std::fs::read(&path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| format!("<unreadable: {e}>"));
                parts.insert(key, text);
            }
        }
    }
}

/// The entries of a pinned map, or `None` if `path` is not one (a program pin).
fn map_dump(path: &Path) -> Option<String> {
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "map", "dump", "pinned"]).arg(path);
    let out = run_bounded(cmd, TIMEOUT);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Links, addresses, routes, qdiscs and filters of the node's namespace, from one shell run
/// inside it.
fn node_netns(node: &dyn InNetns, parts: &mut BTreeMap<String, String>) {
    let script = format!(
        "ip -j link show; echo {SECTION}; ip -j -4 addr show; echo {SECTION}; \
         ip -j -4 route show table all; echo {SECTION}; tc -j qdisc show; echo {SECTION}; \
         for dev in $(ip -o link show | awk -F': ' '{{print $2}}' | cut -d@ -f1); do \
           for dir in ingress egress; do \
             printf '%s %s\\t' \"$dev\" \"$dir\"; tc -j filter show dev \"$dev\" $dir | tr -d '\\n'; echo; \
           done; \
         done"
    );
    let out = node.sh(&script);
    assert!(
        out.status.success(),
        "snapshot of netns {}: {}",
        node.name(),
        describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let sections: Vec<&str> = text.split(SECTION).collect();
    assert_eq!(
        sections.len(),
        5,
        "snapshot of netns {}: {text}",
        node.name()
    );
    let json = |s: &str| -> Vec<Value> {
        serde_json::from_str::<Value>(s.trim())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let field = |v: &Value, k: &str| v.get(k).map_or_else(String::new, ToString::to_string);
    for link in json(sections[0]) {
        let up = link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"));
        parts.insert(
            format!("link {}", link["ifname"].as_str().unwrap_or("?")),
            format!(
                "index {} mtu {} mac {} master {} up {up}",
                field(&link, "ifindex"),
                field(&link, "mtu"),
                field(&link, "address"),
                field(&link, "master"),
            ),
        );
    }
    for link in json(sections[1]) {
        let mut addrs: Vec<String> = link["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| format!("{}/{}", field(i, "local"), field(i, "prefixlen")))
                    .collect()
            })
            .unwrap_or_default();
        addrs.sort();
        if !addrs.is_empty() {
            parts.insert(
                format!("addr {}", link["ifname"].as_str().unwrap_or("?")),
                addrs.join(" "),
            );
        }
    }
    for route in json(sections[2]) {
        let key = ["type", "dst", "table", "dev", "gateway", "prefsrc", "scope"]
            .iter()
            .map(|k| format!("{k}={}", field(&route, k)))
            .collect::<Vec<_>>()
            .join(" ");
        parts.insert(format!("route {key}"), field(&route, "protocol"));
    }
    for qdisc in json(sections[3]) {
        parts.insert(
            format!("qdisc {} {}", field(&qdisc, "dev"), field(&qdisc, "handle")),
            field(&qdisc, "kind"),
        );
    }
    for line in sections[4].lines().filter(|l| !l.trim().is_empty()) {
        let (what, filters) = line.split_once('\t').unwrap_or((line, ""));
        let filters = filters.trim();
        if !filters.is_empty() && filters != "[]" {
            parts.insert(format!("tc filter {what}"), filters.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pairs: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            parts: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn diff_names_what_was_added_removed_and_changed() {
        let before = snap(&[("file a", "1"), ("link x", "up"), ("route r", "kernel")]);
        let after = snap(&[
            ("file a", "2"),
            ("route r", "kernel"),
            ("netns n", "inode 5"),
        ]);
        assert_eq!(
            after.diff(&before),
            vec![
                "changed file a: 1 -> 2".to_owned(),
                "removed link x: up".to_owned(),
                "added netns n: inode 5".to_owned(),
            ]
        );
        assert!(before.diff(&before).is_empty());
        assert!(after.has("netns "));
        assert!(!after.has("link "));
    }

    #[test]
    fn long_values_are_shortened_on_a_char_boundary() {
        let long = "é".repeat(400);
        let s = short(&long);
        assert!(s.ends_with("(800 bytes)"), "{s}");
        assert!(s.len() < 400);
    }
}
