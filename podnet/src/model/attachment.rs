//! The record of one CNI attachment (`containerID` + `ifname`), kept by
//! [`crate::store::attachments`].

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::names::attachment_owner;

/// What podnet recorded for one attachment (`containerID` + `ifname`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub chained: bool,
    pub netns: Option<PathBuf>,
    /// Inode of the namespace at ADD: `podnet gc` tells a live container from a dead one whose
    /// `/proc/<pid>/ns/net` path now names another process's namespace.
    #[serde(default)]
    pub netns_ino: Option<u64>,
    pub host_if: String,
    pub ip: Ipv4Addr,
    /// The container's IPv6 address on a dual-stack node (routed by the kernel; no endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// Standalone: the pod podnet made (its records, IPAM owner and veth names derive from it).
    pub pod: Option<String>,
    /// Standalone: the ADD result, for DEL and GC without `prevResult`.
    pub result: Option<Value>,
}

impl Attachment {
    /// `containerID/ifname`: the owner of the attachment's host ports.
    pub fn owner(&self) -> String {
        attachment_owner(&self.container_id, &self.ifname)
    }
}
