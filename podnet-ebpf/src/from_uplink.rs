//! Ingress of the node's uplink: replies to SNATed pod traffic are translated back and
//! delivered to the pod; new connections to a NodePort on the node IP, or to a LoadBalancer IP
//! or externalIP routed to this node, are DNATed to a backend (or refused at once when there
//! is none); replies to pods' service flows from backends on other nodes are translated back;
//! ICMP errors about translated flows are translated back; packets from other nodes' pods for
//! a local pod go straight to it. Everything else, above all the node's own traffic, goes to
//! the kernel unchanged (out of the tunnel, marked as addressed to this host). IPv6 goes to
//! its own program, `from_uplink6`, by tail call.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use podnet_ebpf::abi::reason;

use crate::{
    conntrack, forward,
    maps::debug_enabled,
    mtu,
    parse::{self, L4, in_prefix},
    stats, translate,
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    let hook = podnet_ebpf::abi::monitor::hook::FROM_UPLINK;
    if crate::ipv6::is_ipv6(&ctx) {
        // In the program's own function, as the verifier requires of a tail call.
        return crate::tail6::enter(&ctx, hook, podnet_ebpf::abi::ipv6_prog::FROM_UPLINK6);
    }
    stats::counted(&ctx, hook, decide)
}

#[inline(always)]
fn decide(ctx: &TcContext) -> (i32, u32) {
    let (cfg, frame) = match parse::ready_ipv4(ctx) {
        Ok(ready) => ready,
        Err(pass) => return pass,
    };
    // SAFETY: the parser bounds-checked the IPv4 header and nothing has changed the packet.
    let daddr = unsafe { (*frame.ip).daddr };
    let pkt = parse::ipv4_packet(ctx, &frame);
    let now = conntrack::now();
    if daddr != cfg.node_ip {
        // A reply to a pod's service flow whose backend is on another node, or a packet of a
        // flow to a LoadBalancer IP or externalIP.
        if pkt.l4.has_tuple()
            && let Some(done) = translate::tracked(ctx, cfg, &pkt, now, false)
        {
            return done;
        }
        // Another node's pod talking to one of ours (native routing): straight to the pod.
        if in_prefix(daddr, cfg.pod_cidr, cfg.pod_prefix_len)
            && let Some(ep) = forward::endpoint(daddr)
        {
            // From outside the cluster (a host that routes pod CIDRs): recorded, so the
            // pod's replies go back as they are.
            if !in_prefix(pkt.key.saddr, cfg.cluster_cidr, cfg.cluster_prefix_len) {
                return translate::routed_to_pod(ctx, cfg, &pkt, now, &ep);
            }
            return mtu::to_pod(ctx, cfg, &pkt, &ep, reason::FORWARD_UPLINK_TO_POD);
        }
        // A new connection to a LoadBalancer IP or externalIP.
        return translate::service(ctx, cfg, &pkt, now, false)
            .unwrap_or((TC_ACT_OK, reason::PASS_NOT_LOCAL));
    }
    let done = match pkt.l4 {
        // A later fragment whose first fragment has not been seen: perhaps the node's own.
        L4::OrphanFragment => Some((TC_ACT_OK, reason::PASS_FRAGMENT)),
        L4::Fragment => translate::tracked(ctx, cfg, &pkt, now, false),
        L4::Opaque => None,
        L4::IcmpError => translate::icmp_error(ctx, cfg, &pkt, now, false),
        L4::Tcp { .. } | L4::Udp | L4::IcmpEcho { .. } => {
            translate::tracked(ctx, cfg, &pkt, now, false)
                .or_else(|| translate::nodeport(ctx, cfg, &pkt, now, false))
        }
    };
    let done = done.unwrap_or_else(|| {
        // The node's own: a reply to its traffic to another node's pod may come through the
        // tunnel.
        crate::tunnel::for_this_host(ctx, cfg);
        (TC_ACT_OK, reason::PASS_NOT_NAT)
    });
    if debug_enabled() {
        debug!(
            ctx,
            "from_uplink: {:i}:{} -> {:i}:{} proto {}: reason {}",
            u32::from_be_bytes(pkt.key.saddr),
            pkt.key.sport,
            u32::from_be_bytes(pkt.key.daddr),
            pkt.key.dport,
            pkt.key.proto,
            done.1
        );
    }
    done
}
