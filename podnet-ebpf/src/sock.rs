//! Socket-level service balancing (`cgroup/connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`):
//! a socket that connects or sends to a service frontend (a ClusterIP, LoadBalancer IP or
//! externalIP, or `nodeIP:NodePort`) is given a backend's address instead, once per
//! `connect()` (TCP, connected UDP) or per `sendmsg()` (unconnected UDP). The kernel then
//! routes the traffic to the backend like any other, so no packet of it needs NAT. What the
//! socket sees stays the frontend: replies to unconnected UDP carry it as their source
//! (`recvmsg4`, e.g. DNS) and `getpeername()` returns it, through a per-socket reverse map
//! (`SOCK_REV_NAT`: socket cookie + backend -> frontend). A frontend with no backends (or a
//! ClusterIP port no service has) fails the call with ECONNREFUSED at once, as a REJECT would.
//!
//! A pod's traffic to `nodeIP:NodePort` is left to the per-packet path at its veth, as before
//! socket balancing (hairpin there is seen from the node IP).
//!
//! The programs are attached to a cgroup (all of it, by default the root), and several
//! simulated nodes on one machine each attach their own, so each acts only on its own node's
//! sockets: those in the node's network namespace (`NodeConfig::netns_cookie`) and, with
//! `config_flag::SOCKET_LB`, those in its pods' namespaces (`POD_NETNS`, filled by pod add).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use podnet_ebpf::abi::{
    NODEPORT_ADDR, NodeConfig, ServiceValue, SockRevNat, SockRevNatKey, config_flag,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    reason,
};

use crate::{
    conntrack,
    maps::{POD_NETNS, SOCK_REV_NAT, ready_config},
    services::{self, Frontend},
    stats,
};

/// Verdict that lets the call proceed (with the possibly rewritten address).
const ALLOW: i32 = 1;
/// Verdict that fails the call (with the error set by `bpf_set_retval`).
const REJECT: i32 = 0;
/// The error a refused `connect()`/`sendmsg()` returns, as a REJECT's RST would cause.
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// Whose socket it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The node's own namespace.
    Node,
    /// One of the node's pods (socket balancing for pods on), with its address.
    Pod([u8; 4]),
}

/// The node's configuration and who owns the socket, if it belongs to this node (its own
/// namespace, or with socket balancing for pods one of its pods' namespaces).
#[inline(always)]
fn our_socket(ctx: &SockAddrContext) -> Option<(&'static NodeConfig, Owner)> {
    let cfg = ready_config()?;
    // SAFETY: the context pointer is the program's own bpf_sock_addr.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if netns == cfg.netns_cookie {
        return Some((cfg, Owner::Node));
    }
    if cfg.flags & config_flag::SOCKET_LB == 0 {
        return None;
    }
    // SAFETY: the value is copied out immediately.
    unsafe { POD_NETNS.get(netns) }.map(|pod| (cfg, Owner::Pod(pod.addr)))
}

/// The socket's address as `(ip, port host order, protocol)`.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> ([u8; 4], u16, u32) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's own, valid bpf_sock_addr; these fields are readable in
    // every sock_addr program.
    let (ip, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    // The port sits in network order in the low 16 bits.
    (ip.to_ne_bytes(), u16::from_be(port as u16), protocol)
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, ip: [u8; 4], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as above; user_ip4 and user_port are writable in these programs.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(ip);
        (*sa).user_port = u32::from(port.to_be());
    }
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain integer argument; sock_addr programs may set their call's return value.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    stats::count(reason::SOCK_REJECT, 0);
    REJECT
}

/// `connect4`/`sendmsg4`: a frontend's address becomes a backend's.
#[inline(always)]
fn forward(ctx: &SockAddrContext) -> i32 {
    let Some((cfg, owner)) = our_socket(ctx) else {
        return ALLOW;
    };
    let (ip, port, protocol) = user_addr(ctx);
    let Ok(proto) = u8::try_from(protocol) else {
        return ALLOW;
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let (lookup_addr, svc, why): ([u8; 4], ServiceValue, u32) = if ip == cfg.node_ip {
        if matches!(owner, Owner::Pod(_)) {
            // A pod's NodePort traffic takes the per-packet path (`from_pod`), which also
            // handles a pod reaching itself (hairpin, seen from the node IP).
            return ALLOW;
        }
        match services::nodeport(port, proto) {
            Some(svc) => (NODEPORT_ADDR, svc, reason::SOCK_NODEPORT),
            None => return ALLOW,
        }
    } else {
        match services::frontend(ip, port, proto) {
            Frontend::None => return ALLOW,
            Frontend::UnknownPort => return refuse(),
            Frontend::Service(svc) => (ip, svc, reason::SOCK_SERVICE),
        }
    };
    // Affinity is per client address: the pod's (as its packets would carry it), or the
    // node's. No flow hash: a socket has no source port before it connects, so Maglev
    // frontends are balanced at random here (the flows Maglev is for, from outside, take the
    // per-packet path).
    let client = services::Client {
        addr: match owner {
            Owner::Node => cfg.node_ip,
            Owner::Pod(addr) => addr,
        },
        flow: None,
    };
    let Some(backend) = services::pick(lookup_addr, port, proto, &svc, &client, conntrack::now())
    else {
        return refuse();
    };
    set_user_addr(ctx, backend.addr, backend.port);
    let key = SockRevNatKey {
        // SAFETY: the context pointer is the program's own bpf_sock_addr.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: backend.addr,
        port: backend.port,
        _pad: [0; 2],
    };
    let value = SockRevNat {
        addr: ip,
        port,
        _pad: [0; 2],
        id: svc.id,
    };
    // A full LRU evicts its least recently used entry; a failed update only means replies to
    // this socket show the backend's address, so it is not an error worth failing the call.
    let _ = SOCK_REV_NAT.insert(&key, &value, 0);
    stats::count(why, 0);
    ALLOW
}

/// `recvmsg4`/`getpeername4`: a backend's address becomes the frontend the socket asked for.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    if our_socket(ctx).is_none() {
        return;
    }
    let (ip, port, _) = user_addr(ctx);
    let key = SockRevNatKey {
        // SAFETY: the context pointer is the program's own bpf_sock_addr.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: ip,
        port,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out immediately.
    let Some(front) = (unsafe { SOCK_REV_NAT.get(&key) }).copied() else {
        return;
    };
    set_user_addr(ctx, front.addr, front.port);
    stats::count(reason::SOCK_REV_NAT, 0);
}
