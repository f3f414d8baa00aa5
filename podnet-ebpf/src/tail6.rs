//! The jump from the IPv4 classifiers into the IPv6 programs: `from_pod` and `from_uplink`
//! tail-call `from_pod6` and `from_uplink6` (slots of `IPV6_PROGS`) for IPv6 frames, so the
//! IPv6 datapath is verified, and uses its stack, on its own.

use aya_ebpf::{
    EbpfContext as _, bindings::TC_ACT_OK, helpers::generated::bpf_tail_call, programs::TcContext,
};
use podnet_ebpf::abi::reason;

use crate::maps::IPV6_PROGS;

/// Tail-calls the IPv6 program in `slot` (`hook`'s). It returns only when the call failed (an
/// empty slot: a program array emptied behind podnet's back, say): the frame then goes to the
/// kernel unchanged, counted as `pass_ipv6_no_prog`, never dropped. Must be called from the
/// classifier's own function: the verifier allows tail calls only in functions returning
/// `int`.
#[inline(always)]
pub fn enter(ctx: &TcContext, hook: u8, slot: u32) -> i32 {
    // The helper is called here, not through `ProgramArray::tail_call`: that one may stay an
    // outlined function returning nothing, and the verifier allows tail calls only in
    // functions returning `int`.
    let array = (&raw const IPV6_PROGS).cast_mut().cast();
    // SAFETY: a successful tail call never returns here; the IPv6 programs take the same
    // context and nothing of this program's state is needed after the call. `array` is the
    // program array's map (the loader relocates the static's address to it).
    unsafe { bpf_tail_call(ctx.as_ptr(), array, slot) };
    crate::stats::counted(ctx, hook, |_| (TC_ACT_OK, reason::PASS_IPV6_NO_PROG))
}
