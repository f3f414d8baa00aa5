//! Socket programs of dead nodes: `podnet gc` detaches the `sock_*` programs that a node whose
//! network namespace is gone left attached to the cgroup (a test node deleted without
//! `node reset`, a node namespace removed by hand), which would otherwise run on every
//! `connect()` and `sendmsg()` of the machine for ever.
//!
//! The rule, so a live node's programs are never touched: a program attached to the node's
//! cgroup is detached only when
//! 1. it is podnet's: a `cgroup_sock_addr` program named `sock_connect4`, `sock_sendmsg4`,
//!    `sock_recvmsg4` or `sock_getpeername4`;
//! 2. its owner can be told: among its own maps is a `CONFIG` of this build's layout whose
//!    entry is complete (`READY`) with a netns cookie (every node writes the cookie of its
//!    namespace there at `node init`); a program whose owner cannot be told is left alone;
//! 3. that owner is dead: the cookie matches no network namespace alive on the machine
//!    ([`crate::sys::live_netns`]: held by a thread, an open descriptor or a bind mount). Cookies
//!    are never reused, so a node is never mistaken for a newer one.
//!
//! The cookies are read before the live namespaces are listed, so a node initialised during the
//! scan either wrote its cookie in a namespace the listing then finds, or is not seen at all.
//! A node whose pins were removed but whose namespace lives is not collected: the pins may sit
//! in a bpffs instance this process cannot see, and a node being initialised has its programs
//! attached a moment before it pins them.

use std::path::Path;

use super::error::Result;
use crate::{datapath::cgroup_owners, sys::live_netns};

/// Detaches the socket programs of dead nodes from `cgroup`; returns them as
/// `NAME (id ID, netns cookie COOKIE)`.
pub fn detach_dead(cgroup: &Path) -> Result<Vec<String>> {
    let attached = cgroup_owners::attached_sock_programs(cgroup)?;
    // podnet runs in its node's namespace: that node is alive, and when it is the only owner
    // there is nothing to scan for.
    let own = live_netns::current_cookie().ok();
    if attached
        .iter()
        .all(|p| p.netns_cookie.is_none() || p.netns_cookie == own)
    {
        return Ok(Vec::new());
    }
    let live = live_netns::live_cookies()?;
    let mut detached = Vec::new();
    for prog in attached {
        let Some(cookie) = prog.netns_cookie else {
            continue;
        };
        if !live.contains(&cookie) && prog.detach(cgroup)? {
            detached.push(format!(
                "{} (id {}, netns cookie {cookie})",
                prog.name, prog.id
            ));
        }
    }
    Ok(detached)
}
