//! podnet's eBPF programs. One module per attach point, one per concern:
//!
//! - [`from_pod`]: ingress of every pod's host-side veth (what the pod sends);
//! - [`from_uplink`]: ingress of the node's uplink (what reaches the node IP);
//! - [`from_pod6`] and [`from_uplink6`]: the IPv6 halves of those two, separate programs
//!   reached by tail call ([`tail6`]), so IPv6 does not add to the IPv4 programs' verifier
//!   budget and stack;
//! - [`sock`]: `cgroup/connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`: socket-level
//!   service balancing for the node's and its pods' sockets;
//! - [`translate`]: the NAT decisions both classifiers share;
//! - [`conntrack`]: flow state, lifetimes and admission, for both families ([`family`]);
//! - [`nat`]: packet rewriting and checksums;
//! - [`nat6`]: IPv6 masquerade (SNAT to the node's IPv6 address) and its reverse, ICMPv6
//!   errors and fragments included; [`fib6`]: IPv6 out by the routing table; [`ptb6`]: ICMPv6
//!   Packet Too Big for masqueraded replies too big for their pod;
//! - [`dnat6`]: IPv6 service traffic from outside (NodePorts on the node's IPv6 address,
//!   LoadBalancer IPs, externalIPs) DNATed to a local backend at tc;
//! - [`frag`]: IPv4 fragments (later fragments follow their first fragment's flow);
//! - [`masquerade`]: masquerade exclusions (destinations that keep the pod's address);
//! - [`services`]: service frontends and backend choice;
//! - [`reject`]: refusing a connection to a service with no backend (TCP RST, ICMP port
//!   unreachable), and ICMP time exceeded;
//! - [`ttl`]: the TTL of packets podnet routes;
//! - [`ipv6`]: IPv6 from a pod (anti-spoofing, the Neighbor Discovery guard, delivery to a
//!   local pod);
//! - [`forward`] and [`fib`]: delivery to a local pod, or out by the routing table;
//! - [`tunnel`]: the VXLAN overlay (tunnel key and redirect to the node's VXLAN device);
//! - [`forward6`], [`fib6`] and [`tunnel6`]: IPv6 between nodes (from a pod to another
//!   node's pod, natively routed or over VXLAN with an IPv4 or IPv6 underlay; from another
//!   node to a local pod);
//! - [`parse`]: bounds-checked header access;
//! - [`stats`]: per-reason counters;
//! - [`monitor`]: drop and refusal events for `podnet monitor` (rate-limited);
//! - [`build_stamp`]: an optional compile-time marker telling two builds apart (upgrade tests);
//! - [`maps`]: the map definitions (types in `podnet_ebpf::abi`).
//!
//! On the host this binary is empty: the programs exist only for `bpfel-unknown-none`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// `asm!` for BPF (atomic add in `conntrack`) is still an experimental architecture; the eBPF
// build runs with RUSTC_BOOTSTRAP=1 (see ../shared/toolchain.md).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod build_stamp;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod dnat6;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod fib6;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod forward6;
#[cfg(target_arch = "bpf")]
mod frag;
#[cfg(target_arch = "bpf")]
mod from_pod;
#[cfg(target_arch = "bpf")]
mod from_pod6;
#[cfg(target_arch = "bpf")]
mod from_uplink;
#[cfg(target_arch = "bpf")]
mod from_uplink6;
#[cfg(target_arch = "bpf")]
mod ipv6;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod masquerade;
#[cfg(target_arch = "bpf")]
mod monitor;
#[cfg(target_arch = "bpf")]
mod mtu;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod nat6;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod ptb6;
#[cfg(target_arch = "bpf")]
mod reject;
#[cfg(target_arch = "bpf")]
mod services;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tail6;
#[cfg(target_arch = "bpf")]
mod translate;
#[cfg(target_arch = "bpf")]
mod ttl;
#[cfg(target_arch = "bpf")]
mod tunnel;
#[cfg(target_arch = "bpf")]
mod tunnel6;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
