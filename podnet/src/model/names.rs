//! Naming rules, in one place: which interface and pod names are valid, and the names podnet
//! derives from others (a pod's host veth, a CNI attachment's pod, the IPAM owner of a pod's
//! address, the namespace `pod add` creates). Whatever makes a name here also parses it here.

use std::path::Path;

use podnet_ebpf::abi::proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest pod name: it becomes a file name and part of a namespace name.
pub const MAX_POD_NAME: usize = 63;
/// Name of the pod's interface inside its namespace (standalone `pod add`).
pub const POD_IFNAME: &str = "eth0";

/// A name podnet cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The interface name would be refused by the kernel.
    #[error("invalid interface name {name:?}: {reason}")]
    Ifname { name: String, reason: &'static str },
    #[error(
        "invalid pod name {name:?}: use 1-{MAX_POD_NAME} characters from [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    Pod { name: String },
}

/// Checks an interface name the way the kernel's `dev_valid_name` does: 1 to 15 bytes, not
/// "." or "..", no '/', ':', whitespace (or NUL).
pub fn validate_ifname(name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a valid name")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains(':') {
        Some("contains ':'")
    } else if name.bytes().any(|b| b.is_ascii_whitespace() || b == 0x0b) {
        Some("contains whitespace")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NameError::Ifname {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a pod name: 1-63 characters from `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_pod_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POD_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NameError::Pod {
            name: name.to_owned(),
        })
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Prefix of every host veth name podnet makes.
const HOST_IF_PREFIX: &str = "pn";

/// The host-side veth's name: `pn` and a hash of the pod name (always within IFNAMSIZ).
pub fn host_ifname(pod: &str) -> String {
    format!("{HOST_IF_PREFIX}{:08x}", fnv1a(pod.as_bytes()))
}

/// Whether `name` has the form of [`host_ifname`]'s names (`pn` and 8 hex digits).
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix(HOST_IF_PREFIX)
        .is_some_and(|hash| hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A temporary name for the pod end while it is created (renamed inside the pod).
pub fn peer_tmp_ifname(pod: &str) -> String {
    format!("pp{:08x}", fnv1a(pod.as_bytes()))
}

/// Prefix of the IPAM owner of a pod's address (`pod:NAME`).
const POD_OWNER_PREFIX: &str = "pod:";

/// The IPAM owner of pod `name`'s address.
pub fn pod_owner(name: &str) -> String {
    format!("{POD_OWNER_PREFIX}{name}")
}

/// The pod an IPAM owner names, if it is a pod's.
pub fn pod_of_owner(owner: &str) -> Option<&str> {
    owner.strip_prefix(POD_OWNER_PREFIX)
}

/// The namespace name `pod add` creates when none is given: unique per node (named after the
/// node's state directory).
pub fn default_netns_name(state_dir: &Path, pod: &str) -> String {
    let node = state_dir
        .file_name()
        .map_or_else(|| "node".into(), |n| n.to_string_lossy().into_owned());
    format!("podnet-{node}-{pod}")
}

/// `containerID/ifname`: a CNI attachment's identity, and the owner of its host ports.
pub fn attachment_owner(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// The start of every name [`cni_pod_name`] makes.
const CNI_POD_PREFIX: &str = "cni-";

/// The pod name a standalone CNI attachment gets: container IDs are up to 64+ characters and
/// interface names are free-form, so a hash of both keeps every derived name short and safe.
pub fn cni_pod_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{CNI_POD_PREFIX}{:016x}",
        fnv64(attachment_owner(container_id, ifname).as_bytes())
    )
}

/// Whether `name` has the form of [`cni_pod_name`]'s names (`cni-` and 16 hex digits).
pub fn is_cni_pod_name(name: &str) -> bool {
    name.strip_prefix(CNI_POD_PREFIX)
        .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An IP protocol number as people write it: `tcp`, `udp`, `icmp`, or the number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        IPPROTO_ICMP => "icmp".to_owned(),
        IPPROTO_ICMPV6 => "ipv6-icmp".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        for good in ["eth0", "a", "pnbr0", "x23456789012345", "br-1.2_x"] {
            assert!(validate_ifname(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "x234567890123456",
        ] {
            assert!(
                matches!(validate_ifname(bad), Err(NameError::Ifname { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pod_names() {
        for good in ["web", "a", "web-1.x_y", &"a".repeat(MAX_POD_NAME)] {
            assert!(validate_pod_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-web",
            ".x",
            "a/b",
            "a b",
            &"a".repeat(MAX_POD_NAME + 1),
            "é",
        ] {
            assert!(validate_pod_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ifnames_fit_differ_and_parse() {
        let a = host_ifname("web");
        let b = host_ifname("db");
        assert!(a.len() <= MAX_IFNAME_LEN && b.len() <= MAX_IFNAME_LEN);
        assert_ne!(a, b);
        assert_eq!(a, host_ifname("web"), "stable across runs");
        assert!(is_host_ifname(&a));
        for other in ["pn", "pnbr0", "pn0123456g", "pn012345678", "eth0"] {
            assert!(!is_host_ifname(other), "{other}");
        }
    }

    #[test]
    fn cni_pod_names_are_short_distinct_and_parse() {
        let a = cni_pod_name(&"a".repeat(64), "eth0");
        let b = cni_pod_name(&"a".repeat(64), "eth1");
        assert_ne!(a, b);
        validate_pod_name(&a).unwrap();
        assert!(is_cni_pod_name(&a));
        for other in [
            "web",
            "cni-web",
            "cni-0123456789abcdeg",
            "cni-0123456789abcdef0",
        ] {
            assert!(!is_cni_pod_name(other), "{other}");
        }
    }

    #[test]
    fn owners_round_trip() {
        assert_eq!(pod_of_owner(&pod_owner("web")), Some("web"));
        assert_eq!(pod_of_owner("cni:x"), None);
    }
}
