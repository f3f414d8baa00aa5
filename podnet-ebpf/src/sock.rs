//! Socket-level service balancing (`cgroup/connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`,
//! and their IPv6 twins `connect6`, `sendmsg6`, `recvmsg6`, `getpeername6`):
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
//! socket balancing (hairpin there is seen from the node IP). IPv6 has no per-packet service
//! path yet, so a pod's IPv6 socket to `[nodeIP6]:NodePort` is balanced here like the node's.
//!
//! One body serves both families ([`SockFamily`]: where the address sits in the context, the
//! node's address, the reverse map): IPv6 sockets use `SERVICES6`, `BACKENDS6` and
//! `SOCK_REV_NAT6`, and their affinity client is the pod's (or node's) IPv6 address. An IPv6
//! socket given an IPv4-mapped address (`::ffff:10.96.0.10`, as dual-stack applications
//! write IPv4 addresses) talks IPv4 and never reaches the IPv4 programs: [`Mapped`] serves it
//! from the IPv4 maps, reading and writing the address in its mapped form.
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
    NodeConfig, PodNetns, ServiceBackend, ServiceBackend6, ServiceValue, SockRevNat, SockRevNat6,
    SockRevNatKey, SockRevNatKey6, addr6_from_bytes, addr6_to_bytes, config_flag,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    reason,
};

use crate::{
    conntrack,
    maps::{POD_NETNS, SOCK_REV_NAT, SOCK_REV_NAT6, ready_config},
    services::{self, Family, Frontend, V4, V6},
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
    forward::<V4>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward::<V4>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    if is_v4_mapped(&ctx) {
        forward::<Mapped>(&ctx)
    } else {
        forward::<V6>(&ctx)
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    if is_v4_mapped(&ctx) {
        forward::<Mapped>(&ctx)
    } else {
        forward::<V6>(&ctx)
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    if is_v4_mapped(&ctx) {
        reverse::<Mapped>(&ctx);
    } else {
        reverse::<V6>(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    if is_v4_mapped(&ctx) {
        reverse::<Mapped>(&ctx);
    } else {
        reverse::<V6>(&ctx);
    }
    ALLOW
}

/// What the socket programs need of a family beyond its service maps.
trait SockFamily: Family {
    /// The socket's address (`user_ip4` or `user_ip6`).
    fn user_ip(ctx: &SockAddrContext) -> Self::Addr;
    fn set_user_ip(ctx: &SockAddrContext, ip: Self::Addr);
    /// The node's address in this family, if it has one.
    fn node_ip(cfg: &NodeConfig) -> Option<Self::Addr>;
    /// A pod's address in this family (all zero if it has none).
    fn pod_ip(pod: &PodNetns) -> Self::Addr;
    fn is_node_ip(cfg: &NodeConfig, ip: Self::Addr) -> bool;
    /// Whether a pod's socket to `nodeIP:NodePort` is balanced here (else the per-packet path
    /// at the pod's veth takes it).
    const POD_NODEPORT_AT_SOCKET: bool;
    fn backend_addr(b: &Self::Backend) -> (Self::Addr, u16);
    /// Records in the family's `SOCK_REV_NAT` that `cookie`'s traffic to `backend` is the
    /// frontend's.
    fn remember_socket(cookie: u64, backend: (Self::Addr, u16), front: (Self::Addr, u16), id: u32);
    /// The frontend `cookie`'s traffic to `backend` stands for.
    fn recall(cookie: u64, backend: (Self::Addr, u16)) -> Option<(Self::Addr, u16)>;
}

impl SockFamily for V4 {
    const POD_NODEPORT_AT_SOCKET: bool = false;

    #[inline(always)]
    fn user_ip(ctx: &SockAddrContext) -> [u8; 4] {
        // SAFETY: `sock_addr` is the program's own, valid bpf_sock_addr; user_ip4 is readable
        // in every IPv4 sock_addr program.
        unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes()
    }

    #[inline(always)]
    fn set_user_ip(ctx: &SockAddrContext, ip: [u8; 4]) {
        // SAFETY: as above; user_ip4 is writable in these programs.
        unsafe { (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(ip) };
    }

    #[inline(always)]
    fn node_ip(cfg: &NodeConfig) -> Option<[u8; 4]> {
        Some(cfg.node_ip)
    }

    #[inline(always)]
    fn pod_ip(pod: &PodNetns) -> [u8; 4] {
        pod.addr
    }

    #[inline(always)]
    fn is_node_ip(cfg: &NodeConfig, ip: [u8; 4]) -> bool {
        ip == cfg.node_ip
    }

    #[inline(always)]
    fn backend_addr(b: &ServiceBackend) -> ([u8; 4], u16) {
        (b.addr, b.port)
    }

    #[inline(always)]
    fn remember_socket(cookie: u64, backend: ([u8; 4], u16), front: ([u8; 4], u16), id: u32) {
        let key = SockRevNatKey {
            cookie,
            addr: backend.0,
            port: backend.1,
            _pad: [0; 2],
        };
        let value = SockRevNat {
            addr: front.0,
            port: front.1,
            _pad: [0; 2],
            id,
        };
        // A full LRU evicts its least recently used entry; a failed update only means replies
        // to this socket show the backend's address, so it is not an error worth failing the
        // call.
        let _ = SOCK_REV_NAT.insert(&key, &value, 0);
    }

    #[inline(always)]
    fn recall(cookie: u64, backend: ([u8; 4], u16)) -> Option<([u8; 4], u16)> {
        let key = SockRevNatKey {
            cookie,
            addr: backend.0,
            port: backend.1,
            _pad: [0; 2],
        };
        // SAFETY: the value is copied out immediately.
        unsafe { SOCK_REV_NAT.get(&key) }.map(|f| (f.addr, f.port))
    }
}

/// Words of an IPv6 address in `bpf_sock_addr` (`user_ip6`: four `u32`s in network order).
const IP6_WORDS: usize = 4;

impl SockFamily for V6 {
    const POD_NODEPORT_AT_SOCKET: bool = true;

    #[inline(always)]
    fn user_ip(ctx: &SockAddrContext) -> [u8; 16] {
        let sa = ctx.sock_addr;
        let mut ip = [0u8; 16];
        let mut i = 0;
        while i < IP6_WORDS {
            // SAFETY: `sa` is the program's own, valid bpf_sock_addr; the kernel allows user_ip6
            // to be read one 32-bit word at a time (a volatile read keeps it one word).
            let word = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
            ip[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            i += 1;
        }
        ip
    }

    #[inline(always)]
    fn set_user_ip(ctx: &SockAddrContext, ip: [u8; 16]) {
        let sa = ctx.sock_addr;
        let mut i = 0;
        while i < IP6_WORDS {
            let word = u32::from_ne_bytes([ip[i * 4], ip[i * 4 + 1], ip[i * 4 + 2], ip[i * 4 + 3]]);
            // SAFETY: as above; user_ip6 is writable one 32-bit word at a time.
            unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], word) };
            i += 1;
        }
    }

    #[inline(always)]
    fn node_ip(cfg: &NodeConfig) -> Option<[u8; 16]> {
        (cfg.node_ip6 != [0; 4]).then_some(addr6_to_bytes(cfg.node_ip6))
    }

    #[inline(always)]
    fn pod_ip(pod: &PodNetns) -> [u8; 16] {
        pod.addr6
    }

    #[inline(always)]
    fn is_node_ip(cfg: &NodeConfig, ip: [u8; 16]) -> bool {
        cfg.node_ip6 != [0; 4] && addr6_from_bytes(ip) == cfg.node_ip6
    }

    #[inline(always)]
    fn backend_addr(b: &ServiceBackend6) -> ([u8; 16], u16) {
        (b.addr, b.port)
    }

    #[inline(always)]
    fn remember_socket(cookie: u64, backend: ([u8; 16], u16), front: ([u8; 16], u16), id: u32) {
        let key = SockRevNatKey6 {
            cookie,
            addr: backend.0,
            port: backend.1,
            _pad: [0; 6],
        };
        let value = SockRevNat6 {
            addr: front.0,
            port: front.1,
            _pad: [0; 2],
            id,
        };
        // As for IPv4: a failed update only costs the reverse translation.
        let _ = SOCK_REV_NAT6.insert(&key, &value, 0);
    }

    #[inline(always)]
    fn recall(cookie: u64, backend: ([u8; 16], u16)) -> Option<([u8; 16], u16)> {
        let key = SockRevNatKey6 {
            cookie,
            addr: backend.0,
            port: backend.1,
            _pad: [0; 6],
        };
        // SAFETY: the value is copied out immediately.
        unsafe { SOCK_REV_NAT6.get(&key) }.map(|f| (f.addr, f.port))
    }
}

/// The first 12 bytes of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Whether the IPv6 socket's address is IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
fn is_v4_mapped(ctx: &SockAddrContext) -> bool {
    let ip = V6::user_ip(ctx);
    ip[..12] == V4_MAPPED_PREFIX
}

/// IPv4 through an IPv6 socket: the IPv4 service maps, the address read from and written to
/// `user_ip6` in its mapped form (checked by [`is_v4_mapped`] first).
struct Mapped;

impl Family for Mapped {
    type Addr = [u8; 4];
    type Backend = ServiceBackend;
    const NODEPORT: [u8; 4] = V4::NODEPORT;

    #[inline(always)]
    fn entry(addr: [u8; 4], port: u16, proto: u8, slot: u16) -> Option<ServiceValue> {
        V4::entry(addr, port, proto, slot)
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<ServiceBackend> {
        V4::backend(id)
    }

    #[inline(always)]
    fn affine(id: u32, client: [u8; 4], now: u64, timeout_ns: u64) -> Option<ServiceBackend> {
        V4::affine(id, client, now, timeout_ns)
    }

    #[inline(always)]
    fn remember(id: u32, client: [u8; 4], backend: ServiceBackend, now: u64) {
        V4::remember(id, client, backend, now);
    }
}

impl SockFamily for Mapped {
    const POD_NODEPORT_AT_SOCKET: bool = V4::POD_NODEPORT_AT_SOCKET;

    #[inline(always)]
    fn user_ip(ctx: &SockAddrContext) -> [u8; 4] {
        let ip = V6::user_ip(ctx);
        [ip[12], ip[13], ip[14], ip[15]]
    }

    #[inline(always)]
    fn set_user_ip(ctx: &SockAddrContext, ip: [u8; 4]) {
        let mut mapped = [0u8; 16];
        mapped[..12].copy_from_slice(&V4_MAPPED_PREFIX);
        mapped[12..].copy_from_slice(&ip);
        V6::set_user_ip(ctx, mapped);
    }

    #[inline(always)]
    fn node_ip(cfg: &NodeConfig) -> Option<[u8; 4]> {
        V4::node_ip(cfg)
    }

    #[inline(always)]
    fn pod_ip(pod: &PodNetns) -> [u8; 4] {
        V4::pod_ip(pod)
    }

    #[inline(always)]
    fn is_node_ip(cfg: &NodeConfig, ip: [u8; 4]) -> bool {
        V4::is_node_ip(cfg, ip)
    }

    #[inline(always)]
    fn backend_addr(b: &ServiceBackend) -> ([u8; 4], u16) {
        V4::backend_addr(b)
    }

    #[inline(always)]
    fn remember_socket(cookie: u64, backend: ([u8; 4], u16), front: ([u8; 4], u16), id: u32) {
        V4::remember_socket(cookie, backend, front, id);
    }

    #[inline(always)]
    fn recall(cookie: u64, backend: ([u8; 4], u16)) -> Option<([u8; 4], u16)> {
        V4::recall(cookie, backend)
    }
}

/// Whose socket it is.
#[derive(Clone, Copy)]
enum Owner {
    /// The node's own namespace.
    Node,
    /// One of the node's pods (socket balancing for pods on).
    Pod(&'static PodNetns),
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
    // SAFETY: the value lives in the map; it is only read, field by field, right away.
    unsafe { POD_NETNS.get(netns) }.map(|pod| (cfg, Owner::Pod(pod)))
}

/// The socket's port (host order) and protocol.
#[inline(always)]
fn user_port_proto(ctx: &SockAddrContext) -> (u16, u32) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's own, valid bpf_sock_addr; these fields are readable in
    // every sock_addr program.
    let (port, protocol) = unsafe { ((*sa).user_port, (*sa).protocol) };
    // The port sits in network order in the low 16 bits.
    (u16::from_be(port as u16), protocol)
}

#[inline(always)]
fn set_user_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: as above; user_port is writable in these programs.
    unsafe { (*ctx.sock_addr).user_port = u32::from(port.to_be()) };
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain integer argument; sock_addr programs may set their call's return value.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    stats::count(reason::SOCK_REJECT, 0);
    REJECT
}

/// `connect4`/`sendmsg4` (and `6`): a frontend's address becomes a backend's.
#[inline(always)]
fn forward<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    let Some((cfg, owner)) = our_socket(ctx) else {
        return ALLOW;
    };
    let ip = F::user_ip(ctx);
    let (port, protocol) = user_port_proto(ctx);
    let Ok(proto) = u8::try_from(protocol) else {
        return ALLOW;
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let (lookup_addr, svc, why): (F::Addr, ServiceValue, u32) = if F::is_node_ip(cfg, ip) {
        if matches!(owner, Owner::Pod(_)) && !F::POD_NODEPORT_AT_SOCKET {
            // A pod's NodePort traffic takes the per-packet path (`from_pod`), which also
            // handles a pod reaching itself (hairpin, seen from the node IP).
            return ALLOW;
        }
        match services::nodeport_in::<F>(port, proto) {
            Some(svc) => (F::NODEPORT, svc, reason::SOCK_NODEPORT),
            None => return ALLOW,
        }
    } else {
        match services::frontend_in::<F>(ip, port, proto) {
            Frontend::None => return ALLOW,
            Frontend::UnknownPort => return refuse(),
            Frontend::Service(svc) => (ip, svc, reason::SOCK_SERVICE),
        }
    };
    // Affinity is per client address: the pod's (as its packets would carry it), or the
    // node's. No flow hash: a socket has no source port before it connects, so Maglev
    // frontends are balanced at random here (the flows Maglev is for, from outside, take the
    // per-packet path).
    let client = match owner {
        Owner::Node => F::node_ip(cfg),
        Owner::Pod(pod) => Some(F::pod_ip(pod)),
    };
    let Some(client) = client else {
        return ALLOW;
    };
    let Some(backend) = services::pick_in::<F>(
        lookup_addr,
        port,
        proto,
        &svc,
        client,
        None,
        conntrack::now(),
    ) else {
        return refuse();
    };
    let backend = F::backend_addr(&backend);
    F::set_user_ip(ctx, backend.0);
    set_user_port(ctx, backend.1);
    // SAFETY: the context pointer is the program's own bpf_sock_addr.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    F::remember_socket(cookie, backend, (ip, port), svc.id);
    stats::count(why, 0);
    ALLOW
}

/// `recvmsg4`/`getpeername4` (and `6`): a backend's address becomes the frontend the socket
/// asked for.
#[inline(always)]
fn reverse<F: SockFamily>(ctx: &SockAddrContext) {
    if our_socket(ctx).is_none() {
        return;
    }
    let ip = F::user_ip(ctx);
    let (port, _) = user_port_proto(ctx);
    // SAFETY: the context pointer is the program's own bpf_sock_addr.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(front) = F::recall(cookie, (ip, port)) else {
        return;
    };
    F::set_user_ip(ctx, front.0);
    set_user_port(ctx, front.1);
    stats::count(reason::SOCK_REV_NAT, 0);
}
