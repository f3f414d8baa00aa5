//! The maps, BTF-defined so `bpftool map dump` prints field names. The sizes here are the
//! compiled-in defaults; `podnet node init` sets the real ones at load time from the node's
//! configuration (see `podnet_ebpf::abi` for why each is sized as it is).

use aya_ebpf::{
    Global,
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
};
use podnet_ebpf::abi::{
    Counter, DEFAULT_ENDPOINTS_MAX, Endpoint, EndpointKey, NodeConfig, STATS_SLOTS,
};

/// Node configuration: a single entry.
#[btf_map]
pub static CONFIG: Array<NodeConfig, 1> = Array::new();

/// Local pods by IPv4 address.
#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { DEFAULT_ENDPOINTS_MAX as usize }> =
    HashMap::new();

/// Per-CPU packet and byte counters, indexed by `abi::reason`.
#[btf_map]
pub static STATS: PerCpuArray<Counter, { STATS_SLOTS as usize }> = PerCpuArray::new();

/// Non-zero turns on per-packet debug logging. Set at load time (`podnet node init --debug`);
/// it lives in read-only data, so with 0 the verifier removes the logging code entirely.
#[unsafe(no_mangle)]
pub static DEBUG: Global<u8> = Global::new(0);

#[inline(always)]
pub fn debug_enabled() -> bool {
    DEBUG.load() != 0
}
