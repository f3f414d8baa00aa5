//! The jump from the IPv4 classifiers into the IPv6 programs: `from_pod` and `from_uplink`
//! tail-call `from_pod6` and `from_uplink6` (slots of `IPV6_PROGS`) for IPv6 frames, so the
//! IPv6 datapath is verified, and uses its stack, on its own.

use aya_ebpf::{
    EbpfContext as _, bindings::TC_ACT_OK, helpers::generated::bpf_tail_call, programs::TcContext,
};
use podnet_ebpf::abi::{ipv6_prog, reason};

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

/// Runs one IPv6 program's decision `body`: counts the packet under its reason (as
/// [`crate::stats::counted`]), or, when `body` hands the packet on (`ipv6_prog::handoff`),
/// tail-calls that program, which counts it. The IPv6 datapath is split over several programs
/// this way because each program has its own 512-byte stack: the IPv6 tuples, the conntrack
/// entries and the port search do not fit one. Must be called from the classifier's own
/// function.
#[inline(always)]
pub fn stage(ctx: &TcContext, hook: u8, body: impl FnOnce(&TcContext) -> (i32, u32)) -> i32 {
    crate::build_stamp::mark();
    let len = ctx.len();
    let (verdict, why) = body(ctx);
    if why & ipv6_prog::HANDOFF != 0 {
        return enter(ctx, hook, why & !ipv6_prog::HANDOFF);
    }
    crate::stats::count(why, len);
    if crate::monitor::wanted(verdict, why) {
        crate::monitor::report(ctx, hook, verdict, why, ctx.len());
    }
    verdict
}
