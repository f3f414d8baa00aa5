//! The build stamp: a compile-time marker that tells two builds of the same source apart.
//!
//! Normal builds leave `PODNET_EBPF_BUILD_STAMP` unset, and then [`mark`] emits no instruction
//! at all. The test suite builds a second, stamped object (`cargo xtask test` does, into
//! `target/bpf-upgrade`) and loads it with `podnet node init --ebpf-object`, to exercise a real
//! program upgrade: with a stamp every classifier carries one extra stack store of the stamp's
//! length, so its instructions (and its kernel tag) differ from the unstamped build's while its
//! behaviour and its maps stay the same.

/// The stamp given at build time, if any.
const STAMP: Option<&str> = option_env!("PODNET_EBPF_BUILD_STAMP");

/// Marks the program as this build's: nothing without a stamp, one stack store with one.
#[inline(always)]
pub fn mark() {
    if let Some(stamp) = STAMP {
        core::hint::black_box(stamp.len());
    }
}
