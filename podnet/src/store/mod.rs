//! Every file under a node's state directory, each owned by one module here; no netlink and no
//! maps. The operations layer asks these owners to read, write and clear their files (`node
//! reset` clears each one), so no other code knows a file name.
//!
//! ```text
//! <state_dir>/node.json, lock              node       the node's settings; the node lock
//! <state_dir>/pods/<pod>.json              pods       pods podnet made
//! <state_dir>/cni/<cni-pod>.json           attachments  CNI attachments; cni-init.lock
//! <state_dir>/nodeports.json, .lock        nodeports  NodePorts and CNI host ports
//! <state_dir>/peers.json, .lock            peers      the other nodes
//! <state_dir>/services.json, .lock         services   the service table
//! <state_dir>/collector.pid, .lock         collector  the conntrack collector's process
//! <state_dir>/conntrack-gc.lock            conntrack  serialises collection passes
//! <ipam_dir>/<ip>, last_reserved_ip, lock  ipam       addresses (default <state_dir>/ipam)
//! ```
//!
//! All of them use [`file`]'s primitives: atomic writes, root-only modes, and one lock type.

pub mod attachments;
pub mod collector;
pub mod conntrack;
pub mod file;
pub mod ipam;
pub mod node;
pub mod nodeports;
pub mod peers;
pub mod pods;
pub mod services;

/// Removes `dir` if it is empty; anything else in it is not ours to remove.
fn remove_dir_if_empty(dir: &std::path::Path) {
    // Best effort by design: a non-empty or missing directory stays as it is.
    let _ = std::fs::remove_dir(dir);
}
