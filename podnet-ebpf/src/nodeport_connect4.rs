//! `cgroup/connect4`: the node's own connections to `nodeIP:NodePort` (seed 000's `curl` from
//! the node, which iptables handles with a DNAT rule in OUTPUT) are sent straight to a backend
//! by rewriting the address `connect()` was given. Translating once per connection at the
//! socket costs nothing per packet, and the kernel then routes the connection to the pod like
//! any other; there is no reply to translate, because the socket itself talks to the backend.
//!
//! The program is attached to a cgroup (all of it, by default the root), so it checks the
//! socket's network namespace against the node's: several simulated nodes on one machine each
//! attach their own program, and each acts only on its own node's sockets.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use podnet_ebpf::abi::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    reason,
};

use crate::{
    maps::ready_config,
    services::{self, NodePort},
    stats,
};

/// Verdict that lets `connect()` proceed (with the possibly rewritten address).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn nodeport_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx);
    ALLOW
}

#[inline(always)]
fn translate(ctx: &SockAddrContext) {
    let Some(cfg) = ready_config() else {
        return;
    };
    // SAFETY: the context pointer is the program's own bpf_sock_addr.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.netns_cookie {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's own, valid bpf_sock_addr; these fields are readable in
    // connect4 programs.
    let (ip, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    if ip.to_ne_bytes() != cfg.node_ip {
        return;
    }
    let Ok(proto) = u8::try_from(protocol) else {
        return;
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    // The port sits in network order in the low 16 bits.
    let port = u16::from_be(port as u16);
    if let NodePort::Backend(backend) = services::pick(port, proto) {
        // SAFETY: as above; user_ip4 and user_port are writable in connect4 programs.
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes(backend.addr);
            (*sa).user_port = u32::from(backend.port.to_be());
        }
        stats::count(reason::SOCK_NODEPORT, 0);
    }
}
