//! Where a node's programs and maps are pinned, and the key and value size every map must have:
//! the layout the loader, the object check and the attach code share.
//!
//! ```text
//! <pin_dir>/<MAP>             maps (bpftool map dump pinned <pin_dir>/<MAP>)
//! <pin_dir>/progs/<program>   programs, e.g. progs/from_pod
//! ```

use std::path::{Path, PathBuf};

use podnet_ebpf::abi::{
    AffinityKey, AffinityValue, Counter, CtEntry, CtEntry6, CtKey, CtKey6, CtUsage, Endpoint,
    EndpointKey, EndpointKey6, FragKey, FragKey6, FragPorts, NodeConfig, Peer, PodNetns, RevNat,
    ServiceBackend, ServiceKey, ServiceValue, SockRevNat, SockRevNatKey, map_name,
    monitor::MonitorBudget,
};
use podnet_ebpf::abi::{
    AffinityKey6, AffinityValue6, RevNat6, ServiceBackend6, ServiceKey6, SockRevNat6,
    SockRevNatKey6,
};

/// Path of a program's pin.
pub fn program_pin(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join("progs").join(program)
}

/// The directory of the program pins.
pub fn programs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("progs")
}

/// Paths of every map pin under `pin_dir`.
pub fn map_pins(pin_dir: &Path) -> Vec<PathBuf> {
    map_name::ALL
        .iter()
        .map(|name| pin_dir.join(name))
        .collect()
}

/// The key and value size of map `name` in this build's ABI.
/// The key and value sizes of each map in this build's ABI.
pub fn key_value_sizes(name: &str) -> (u32, u32) {
    let size = |n: usize| u32::try_from(n).expect("ABI types are small");
    match name {
        map_name::CONFIG => (4, size(size_of::<NodeConfig>())),
        map_name::ENDPOINTS => (size(size_of::<EndpointKey>()), size(size_of::<Endpoint>())),
        map_name::STATS => (4, size(size_of::<Counter>())),
        map_name::CONNTRACK => (size(size_of::<CtKey>()), size(size_of::<CtEntry>())),
        map_name::CT_USAGE => (4, size(size_of::<CtUsage>())),
        map_name::SERVICES => (
            size(size_of::<ServiceKey>()),
            size(size_of::<ServiceValue>()),
        ),
        map_name::BACKENDS => (4, size(size_of::<ServiceBackend>())),
        map_name::REV_NAT => (4, size(size_of::<RevNat>())),
        map_name::SOCK_REV_NAT => (
            size(size_of::<SockRevNatKey>()),
            size(size_of::<SockRevNat>()),
        ),
        map_name::POD_NETNS => (8, size(size_of::<PodNetns>())),
        // LPM key: a u32 prefix length, then the address.
        map_name::PEERS => (8, size(size_of::<Peer>())),
        map_name::AFFINITY => (
            size(size_of::<AffinityKey>()),
            size(size_of::<AffinityValue>()),
        ),
        // A hash of maps: the service id, and an inner map's id (a u32).
        map_name::MAGLEV => (4, 4),
        // LPM key as above; the value says the prefix is present.
        map_name::NON_MASQUERADE => (8, 4),
        // A ring buffer has neither key nor value: the kernel reports 0/0 (its size is
        // `max_entries`, in bytes).
        map_name::MONITOR_EVENTS => (0, 0),
        map_name::MONITOR_BUDGET => (4, size(size_of::<MonitorBudget>())),
        map_name::FRAGMENTS => (size(size_of::<FragKey>()), size(size_of::<FragPorts>())),
        map_name::ENDPOINTS6 => (size(size_of::<EndpointKey6>()), size(size_of::<Endpoint>())),
        // A program array: slot -> program fd.
        map_name::IPV6_PROGS => (4, 4),
        map_name::CONNTRACK6 => (size(size_of::<CtKey6>()), size(size_of::<CtEntry6>())),
        // LPM key: a u32 prefix length, then the 16-byte address.
        map_name::NON_MASQUERADE6 => (20, 4),
        map_name::FRAGMENTS6 => (size(size_of::<FragKey6>()), size(size_of::<FragPorts>())),
        map_name::SERVICES6 => (
            size(size_of::<ServiceKey6>()),
            size(size_of::<ServiceValue>()),
        ),
        map_name::BACKENDS6 => (4, size(size_of::<ServiceBackend6>())),
        map_name::REV_NAT6 => (4, size(size_of::<RevNat6>())),
        map_name::SOCK_REV_NAT6 => (
            size(size_of::<SockRevNatKey6>()),
            size(size_of::<SockRevNat6>()),
        ),
        map_name::AFFINITY6 => (
            size(size_of::<AffinityKey6>()),
            size(size_of::<AffinityValue6>()),
        ),
        _ => unreachable!("every map in map_name::ALL has a layout"),
    }
}
