//! Drop and refusal events: each packet a program drops, or counts under a `drop_*` or
//! `reject_*` reason, is reported to the `MONITOR_EVENTS` ring buffer with its first bytes, so
//! `podnet monitor` shows who sent what and why it went nowhere. A per-CPU budget
//! (`abi::monitor::EVENTS_PER_WINDOW` a second) bounds what a flood costs; what it holds back is
//! counted, and the next event says how many were held back before it.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use podnet_ebpf::abi::monitor::{
    CAPTURE_LEN, EVENTS_PER_WINDOW, HELD_BACK_PER_CLOCK_READ, MonitorBudget, WINDOW_NS,
};

use crate::maps::{MONITOR_BUDGET, MONITOR_EVENTS};

/// Set at build time only to measure what reporting costs (`PODNET_EBPF_NO_MONITOR=1`, see the
/// README's `podnet monitor` section): the programs then never report.
const COMPILED_OUT: bool = option_env!("PODNET_EBPF_NO_MONITOR").is_some();

/// Whether a packet with this verdict and reason is reported. Written with `|` so the packet
/// path pays one branch.
#[inline(always)]
pub fn wanted(verdict: i32, why: u32) -> bool {
    !COMPILED_OUT
        && ((verdict == TC_ACT_SHOT as i32) | podnet_ebpf::abi::monitor::reason_reported(why))
}

/// Starts a new window if the current one is over; whether it did. The coarse clock (one
/// tick of resolution, and cheaper than the precise one) is enough for one-second windows.
#[inline(always)]
fn new_window(budget: &mut MonitorBudget) -> bool {
    // SAFETY: no arguments; reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(budget.window_start_ns) < WINDOW_NS {
        return false;
    }
    budget.window_start_ns = now;
    budget.sent = 0;
    true
}

/// Reports the packet in `ctx`, counted under `why` with `verdict` by program `hook`, unless
/// this CPU's budget for the current window is spent.
#[inline(always)]
pub fn report(ctx: &TcContext, hook: u8, verdict: i32, why: u32, len: u32) {
    let Some(budget) = MONITOR_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it points at
    // this CPU's slot, which nothing else writes while this program runs on this CPU.
    let budget = unsafe { &mut *budget };
    if budget.sent >= EVENTS_PER_WINDOW {
        // Over budget: the clock (the dearest part of this path) is read only for every
        // `HELD_BACK_PER_CLOCK_READ`-th packet held back, to see whether a new window began.
        let held = budget.pending.wrapping_add(1);
        if held % HELD_BACK_PER_CLOCK_READ != 0 || !new_window(budget) {
            budget.pending = held;
            budget.suppressed += 1;
            return;
        }
    } else {
        new_window(budget);
    }
    // Every try counts against the budget, so a full ring (nobody reading) costs no more
    // than the rate limit: at most `EVENTS_PER_WINDOW` reservations a second per CPU.
    budget.sent += 1;
    let Some(mut entry) = MONITOR_EVENTS.reserve(0) else {
        budget.pending = budget.pending.wrapping_add(1);
        budget.lost += 1;
        return;
    };
    let event = entry.as_mut_ptr();
    let wanted_bytes = if len < CAPTURE_LEN as u32 {
        len
    } else {
        CAPTURE_LEN as u32
    };
    // SAFETY: `event` points at a reserved, writable record the size of a `DropEvent`; the
    // load writes at most `CAPTURE_LEN` bytes (its size) into `data`, from the program's own skb.
    let captured = unsafe {
        let loaded = wanted_bytes > 0
            && bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                0,
                (&raw mut (*event).data).cast(),
                wanted_bytes,
            ) == 0;
        if loaded { wanted_bytes as u16 } else { 0 }
    };
    // SAFETY: as above; every field but `data` (whose valid length is `captured`) is written.
    unsafe {
        (*event).ktime_ns = bpf_ktime_get_ns();
        (*event).reason = why;
        (*event).ifindex = (*ctx.skb.skb).ifindex;
        (*event).packet_len = len;
        (*event).suppressed_before = budget.pending;
        (*event).captured = captured;
        (*event).hook = hook;
        (*event).dropped = u8::from(verdict == TC_ACT_SHOT as i32);
        (*event)._pad = 0;
    }
    entry.submit(0);
    budget.pending = 0;
}
