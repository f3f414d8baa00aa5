//! Per-reason counters: every verdict a program returns is counted under exactly one reason.

use aya_ebpf::programs::TcContext;
use podnet_ebpf::abi::reason;

use crate::{maps::STATS, monitor};

/// Counts one packet of `len` bytes under `why`.
#[inline(always)]
pub fn count(why: u32, len: u32) {
    if let Some(counter) = STATS.get_ptr_mut(why) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it points at
        // this CPU's slot, which nothing else writes while this program runs on this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(len);
        }
    }
}

/// Runs a classifier's decision and counts the packet under the reason it returns; a drop or
/// refusal is also reported to `podnet monitor` (as seen by program `hook`, a
/// `monitor::hook::*`).
#[inline(always)]
pub fn counted(ctx: &TcContext, hook: u8, decide: impl FnOnce(&TcContext) -> (i32, u32)) -> i32 {
    crate::build_stamp::mark();
    let len = ctx.len();
    let (verdict, why) = decide(ctx);
    count(why, len);
    if monitor::wanted(verdict, why) {
        monitor::report(ctx, hook, verdict, why, ctx.len());
    }
    verdict
}

/// Reasons are compile-time constants below `STATS_SLOTS`; this keeps that true.
const _: () = assert!(reason::COUNT <= podnet_ebpf::abi::STATS_SLOTS);
