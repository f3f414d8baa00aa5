//! podnet's TC programs. One module per attach point, one per concern:
//!
//! - [`from_pod`]: ingress of every pod's host-side veth (what the pod sends);
//! - [`parse`]: bounds-checked header access;
//! - [`forward`]: delivery to a local pod;
//! - [`stats`]: per-reason counters;
//! - [`maps`]: the map definitions (types in `podnet_ebpf::abi`).
//!
//! On the host this binary is empty: the programs exist only for `bpfel-unknown-none`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod from_pod;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
