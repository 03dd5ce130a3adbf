//! Kernel side of detector: small uprobe programs that count and time, nothing more.
//!
//! - `count_call`: one per probed runtime function, after its stack-check prologue or,
//!   where the instruction there would be single-stepped (Go 1.19), on the check's
//!   JBE, ignoring the hits that go to morestack: a re-entered call counts once. Counts by (process, probe, caller,
//!   argument, calling stack) in a per-CPU hash: no event stream, no per-call copy to
//!   user space. The stack is walked along Go's frame pointers and stored once, by
//!   hash, in `STACKS`.
//! - `stw_reason`: Go 1.19 only, on `runtime.stopTheWorld(reason string)`: remembers the
//!   reason string's address for the thread that is about to stop the world.
//! - `stw_start`: on `runtime.stopTheWorldWithSema`: opens a pause for the process.
//! - `stw_end`: on every RET of `runtime.startTheWorldWithSema`: closes it and adds its
//!   duration to the per-(process, reason) statistics and log2 histogram.
//! - `forced_gc_exit`: on every RET of `runtime.GC`. With the flagged `count_call` at its
//!   entry it keeps a per-process depth of forced collections, so GC pauses inside
//!   `runtime.GC` (or `debug.FreeOSMemory`) are told apart from the pacer's own.
//!
//! Every entry probe whose cookie has `COOKIE_ON_STACK_CHECK` returns at once when the
//! JBE it sits on will be taken (`morestack_bound`): the function runs again from its
//! start after morestack, and that later hit is the call's.
//!
//! Decisions (what is misuse, what is noise) are user space's job.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_buf,
    },
    macros::{map, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use detector_common::{
    errors, morestack_bound, pause_bucket, stack_hash, ArgMode, CallKey, Stack, StackKey, StwKey,
    StwOpen, StwStats, COOKIE_ARG_SHIFT, COOKIE_CALLER_IS_IP, COOKIE_FORCED_GC_ENTER,
    COOKIE_ON_STACK_CHECK, HIT_SLOTS, MAX_CALL_KEYS, MAX_OPEN_PAUSES, MAX_PAUSED_PROBES,
    MAX_STACKS, MAX_STW_KEYS, MAX_UNSITED_KEYS, RESTART_GO119, RESTART_GO121, RESTART_START_IN_RCX,
    RESTART_START_RCX_STOPPED_RDI, STACK_FRAMES, STACK_HASH_SEED, STW_BUCKETS,
    STW_COOKIE_CURG_SHIFT, STW_COOKIE_GM_SHIFT, STW_COOKIE_MODE_MASK, STW_FORCED_GC_FLAG,
    STW_REASON_FROM_PENDING, STW_REASON_GC_MARK_TERM, STW_REASON_GC_SWEEP_TERM,
    STW_REASON_STRING_FLAG, UNSITED_CALLER,
};

#[map]
static CALLS: PerCpuHashMap<CallKey, u64> = PerCpuHashMap::with_max_entries(MAX_CALL_KEYS, 0);

/// Calls by (process, probe) alone, their `caller` [`UNSITED_CALLER`]: where a call
/// goes when `CALLS` is full, so that totals stay right (its call site is lost).
#[map]
static CALLS_UNSITED: PerCpuHashMap<CallKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_UNSITED_KEYS, 0);

/// Calling stacks by hash, written once per distinct stack (most hits find theirs
/// already there). Entries are allocated on first use, not preallocated.
#[map]
static STACKS: HashMap<StackKey, Stack> =
    HashMap::with_max_entries(MAX_STACKS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Shared, not per-CPU: a process's pauses are serialised (worldsema), so only one CPU
/// at a time updates a key, and a per-CPU copy of the histograms would cost
/// ~350 bytes × keys × CPUs of kernel memory for nothing.
#[map]
static STW: HashMap<StwKey, StwStats> =
    HashMap::with_max_entries(MAX_STW_KEYS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// One zeroed value: a new pause series is inserted from it (a `StwStats` is far
/// larger than the 512-byte eBPF stack).
#[map]
static STW_ZERO: PerCpuArray<StwStats> = PerCpuArray::with_max_entries(1, 0);

/// One pause in flight per process: stop-the-world is serialised by worldsema.
#[map]
static STW_OPEN: HashMap<u32, StwOpen> = HashMap::with_max_entries(MAX_OPEN_PAUSES, 0);

/// Go 1.19: goroutine (g pointer) -> address of the reason string passed to stopTheWorld.
/// Keyed by goroutine, not thread: stopTheWorld may park on worldsema and resume on
/// another thread before it reaches stopTheWorldWithSema.
#[map]
static STW_PENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_OPEN_PAUSES, 0);

/// Process -> number of its goroutines inside `runtime.GC` right now.
#[map]
static FORCED_GC: HashMap<u32, u64> = HashMap::with_max_entries(MAX_OPEN_PAUSES, 0);

/// Call probe ids (cookie's low 32 bits) not to count for now: the duty cycle pauses a
/// probe here, an exact moment, before it unlinks and removes it, which can take the
/// kernel tens of milliseconds during which the probe still fires.
#[map]
static PAUSED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PAUSED_PROBES, 0);
/// How many entries `PAUSED` holds (written by user space after each change): when
/// none, a hit skips the hash lookup (an array read is a few ns, a hash lookup ~25).
#[map]
static PAUSED_COUNT: Array<u32> = Array::with_max_entries(1, 0);
/// Hits per call probe id (slot `id % HIT_SLOTS`), for the duty cycle's quick look.
#[map]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIT_SLOTS, 0);
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(errors::COUNT, 0);

#[inline(always)]
fn count_error(index: u32) {
    if let Some(p) = ERRORS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn tgid_tid() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[uprobe]
pub fn count_call(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let regs = unsafe { &*ctx.regs };
    if morestack_bound(cookie, regs.eflags) {
        return 0;
    }
    if PAUSED_COUNT.get(0).is_some_and(|n| *n > 0)
        && unsafe { PAUSED.get(&(cookie as u32)) }.is_some()
    {
        return 0;
    }
    if let Some(n) = HITS.get_ptr_mut(cookie as u32 % HIT_SLOTS) {
        unsafe { *n += 1 };
    }
    let arg = match ArgMode::from_u8((cookie >> COOKIE_ARG_SHIFT) as u8) {
        ArgMode::None => 0,
        ArgMode::Rax => regs.rax,
        ArgMode::Dil => regs.rdi & 0xff,
        ArgMode::Rcx => regs.rcx,
        ArgMode::RateAndWhich => (regs.rbx << 8) | (regs.rdi & 0xff),
        // A funcval starts with its code pointer; 0 when unreadable.
        ArgMode::FinalizerFn => unsafe { bpf_probe_read_user(regs.rdi as *const u64) }.unwrap_or(0),
    };
    if cookie & COOKIE_FORCED_GC_ENTER != 0 {
        forced_gc_add(tgid_tid().0, 1);
    }
    let Some(chunk) = WALK.get_ptr_mut(0) else {
        return 0;
    };
    let mut w = Walk {
        chunk: unsafe { &mut *chunk },
        base: 0,
        have: false,
        chunks_ok: true,
    };
    // The probe sits before the frame is set up, so [RSP] is the return address;
    // inside a function (an inlined call) the probed instruction is the call site.
    // The chunk read at RSP usually holds the calling function's frame as well.
    let caller = if cookie & COOKIE_CALLER_IS_IP != 0 {
        regs.rip + 1
    } else {
        match w.word_at(regs.rsp) {
            Some(ret) => ret,
            None => {
                count_error(errors::READ_CALLER_FAILED);
                0
            }
        }
    };
    let tgid = tgid_tid().0;
    // At the probe, RBP is the calling function's frame pointer (the probe sits before
    // the callee's own `push rbp`; an inlined site's probe is inside the caller, after
    // its prologue): [RBP+8] is where the caller returns to, and so on outwards.
    let (hash, read) = walk_stack(regs.rbp, &mut w);
    let key = CallKey {
        tgid,
        probe: cookie as u32,
        caller,
        arg,
        stack: hash,
    };
    if let Some(n) = CALLS.get_ptr_mut(&key) {
        unsafe { *n += 1 };
        return 0;
    }
    store_stack(tgid, hash, read, &mut w.chunk.stack);
    if CALLS.insert(&key, &1, BPF_NOEXIST as u64).is_err() {
        // Lost a race with another insert on this CPU's slot, or the map is full.
        match CALLS.get_ptr_mut(&key) {
            Some(n) => unsafe { *n += 1 },
            None => count_unsited(tgid, cookie as u32),
        }
    }
    0
}

/// Counts a call `CALLS` had no room for by (process, probe) alone.
#[inline(always)]
fn count_unsited(tgid: u32, probe: u32) {
    count_error(errors::CALL_MAP_FULL);
    let key = CallKey {
        tgid,
        probe,
        caller: UNSITED_CALLER,
        arg: 0,
        stack: 0,
    };
    if let Some(n) = CALLS_UNSITED.get_ptr_mut(&key) {
        unsafe { *n += 1 };
        return;
    }
    if CALLS_UNSITED.insert(&key, &1, BPF_NOEXIST as u64).is_err() {
        match CALLS_UNSITED.get_ptr_mut(&key) {
            Some(n) => unsafe { *n += 1 },
            None => count_error(errors::CALL_LOST),
        }
    }
}

/// Bytes of the target's stack copied at once: one read (a helper call, about 25 ns
/// whatever its size up to here) usually holds several Go frames, which are small.
const CHUNK_WORDS: usize = 64;
const CHUNK_BYTES: u64 = (CHUNK_WORDS * 8) as u64;

#[repr(C)]
pub struct Chunk {
    words: [u64; CHUNK_WORDS],
    /// The frames walked, valid up to the walk's count (zeroed past it only when
    /// stored: most hits never store theirs).
    stack: Stack,
}

/// Per-CPU scratch for the stack walk (too large for the 512-byte eBPF stack).
#[map]
static WALK: PerCpuArray<Chunk> = PerCpuArray::with_max_entries(1, 0);

/// Reads of the target's stack through one copied chunk.
struct Walk<'a> {
    chunk: &'a mut Chunk,
    /// Target address of `chunk.words[0]`, when `have`.
    base: u64,
    have: bool,
    /// A chunk read failed (the end of a mapping, or a page not present): from then
    /// on read words one frame at a time.
    chunks_ok: bool,
}

impl Walk<'_> {
    /// The word at `addr` and the next one.
    #[inline(always)]
    fn pair_at(&mut self, addr: u64) -> Option<(u64, u64)> {
        let off = addr.wrapping_sub(self.base);
        if !(self.have && off <= CHUNK_BYTES - 16 && off & 7 == 0) {
            self.have = false;
            if self.chunks_ok {
                let bytes = unsafe {
                    core::slice::from_raw_parts_mut(
                        self.chunk.words.as_mut_ptr() as *mut u8,
                        CHUNK_BYTES as usize,
                    )
                };
                if unsafe { bpf_probe_read_user_buf(addr as *const u8, bytes) }.is_ok() {
                    self.base = addr;
                    self.have = true;
                } else {
                    self.chunks_ok = false;
                }
            }
            if !self.have {
                let f = unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.ok()?;
                return Some((f[0], f[1]));
            }
        }
        let i = (addr.wrapping_sub(self.base) >> 3) as usize;
        Some((*self.chunk.words.get(i)?, *self.chunk.words.get(i + 1)?))
    }

    #[inline(always)]
    fn word_at(&mut self, addr: u64) -> Option<u64> {
        self.pair_at(addr).map(|(w, _)| w)
    }
}

/// Walks the frame-pointer chain from `fp` (at most [`STACK_FRAMES`] frames) into
/// `stack` and returns the frames' hash (0 when no frame could be read). Each frame
/// is {saved RBP, return address}; the walk stops at a zero return address, an
/// unreadable frame, or a saved RBP that does not point further up the stack (the
/// goroutine's first frame has none; this also stops loops in a corrupt chain).
#[inline(always)]
fn walk_stack(mut fp: u64, w: &mut Walk) -> (u64, usize) {
    let mut hash = STACK_HASH_SEED;
    let mut read = 0;
    let mut ended = false;
    for i in 0..STACK_FRAMES {
        if fp == 0 {
            ended = true;
            break;
        }
        let Some((next, ret)) = w.pair_at(fp) else {
            ended = true;
            break;
        };
        if ret == 0 {
            ended = true;
            break;
        }
        if let Some(slot) = w.chunk.stack.frames.get_mut(i) {
            *slot = ret;
        }
        hash = stack_hash(hash, ret);
        read = i + 1;
        if next <= fp {
            ended = true;
            break;
        }
        fp = next;
    }
    if read == 0 {
        return (0, 0);
    }
    if !ended {
        count_error(errors::STACK_TRUNCATED);
    }
    (hash, read)
}

/// Stores a stack (its first `read` frames) the first time a call key names it (a
/// known key's stack is already there, so the hot path never touches this map).
#[inline(always)]
fn store_stack(tgid: u32, hash: u64, read: usize, stack: &mut Stack) {
    if hash == 0 {
        return;
    }
    for i in 0..STACK_FRAMES {
        if i >= read {
            if let Some(slot) = stack.frames.get_mut(i) {
                *slot = 0;
            }
        }
    }
    let key = StackKey {
        tgid,
        _pad: 0,
        hash,
    };
    // NOEXIST: the kernel checks for the entry before allocating one.
    if let Err(e) = STACKS.insert(&key, stack, BPF_NOEXIST as u64) {
        if e != -17 {
            // not EEXIST (another key with this stack stored it): the map is full
            count_error(errors::STACK_MAP_FULL);
        }
    }
}

/// Adds `delta` (+1 or -1) to the process's forced-collection depth, never below 0.
#[inline(always)]
fn forced_gc_add(tgid: u32, delta: i64) {
    if let Some(d) = FORCED_GC.get_ptr_mut(&tgid) {
        unsafe {
            *d = if delta < 0 {
                (*d).saturating_sub(1)
            } else {
                *d + 1
            }
        };
    } else if delta > 0 && FORCED_GC.insert(&tgid, &1, 0).is_err() {
        count_error(errors::FORCED_GC_MAP_FULL);
    }
}

#[uprobe]
pub fn forced_gc_exit(_ctx: ProbeContext) -> u32 {
    forced_gc_add(tgid_tid().0, -1);
    0
}

#[inline(always)]
fn in_forced_gc(tgid: u32) -> bool {
    matches!(unsafe { FORCED_GC.get(&tgid) }, Some(d) if *d > 0)
}

#[uprobe]
pub fn stw_reason(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if morestack_bound(cookie, unsafe { (*ctx.regs).eflags }) {
        return 0;
    }
    // R14 holds the current goroutine (ABIInternal); RAX the reason string's pointer.
    // Copy out of the context first: map helpers take stack pointers, not ctx pointers.
    let (g, reason_ptr) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    let _ = STW_PENDING.insert(&g, &reason_ptr, 0);
    0
}

/// The user goroutine on whose behalf g0 (in R14) runs: g0.m.curg.
#[inline(always)]
fn current_user_g(g0: u64, g_m_offset: u64, m_curg_offset: u64) -> Option<u64> {
    let m: u64 = unsafe { bpf_probe_read_user((g0 + g_m_offset) as *const u64) }.ok()?;
    unsafe { bpf_probe_read_user((m + m_curg_offset) as *const u64) }.ok()
}

#[uprobe]
pub fn stw_start(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if morestack_bound(cookie, unsafe { (*ctx.regs).eflags }) {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let (tgid, _) = tgid_tid();
    let reason = if cookie & STW_COOKIE_MODE_MASK == STW_REASON_FROM_PENDING {
        let g_m = (cookie >> STW_COOKIE_GM_SHIFT) & 0xffff;
        let m_curg = (cookie >> STW_COOKIE_CURG_SHIFT) & 0xffff;
        let g0 = unsafe { (*ctx.regs).r14 };
        // No pending reason: the collector called stopTheWorldWithSema directly.
        let mut ptr = 0;
        if let Some(g) = current_user_g(g0, g_m, m_curg) {
            if let Some(p) = unsafe { STW_PENDING.get(&g) } {
                ptr = *p;
            }
            let _ = STW_PENDING.remove(&g);
        }
        // Without a reason string it is one of the collector's pauses.
        let forced = if ptr == 0 && in_forced_gc(tgid) {
            STW_FORCED_GC_FLAG
        } else {
            0
        };
        STW_REASON_STRING_FLAG | ptr | forced
    } else {
        // Go 1.21+: stwReason is a uint8 in AL.
        let r = unsafe { (*ctx.regs).rax & 0xff };
        if (r == STW_REASON_GC_MARK_TERM || r == STW_REASON_GC_SWEEP_TERM) && in_forced_gc(tgid) {
            r | STW_FORCED_GC_FLAG
        } else {
            r
        }
    };
    let open = StwOpen {
        start_ns: now,
        reason,
        stopped_ns: 0,
        restart_ns: 0,
        rt_start_ns: 0,
        rt_stopped_ns: 0,
        rt_stopping_ns: 0,
        end_at_restart: 0,
    };
    if STW_OPEN.insert(&tgid, &open, 0).is_err() {
        count_error(errors::STW_OPEN_MAP_FULL);
    }
    0
}

/// At each RET of `stopTheWorldWithSema`: every goroutine has stopped.
#[uprobe]
pub fn stw_stopped(_ctx: ProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let (tgid, _) = tgid_tid();
    if let Some(open) = STW_OPEN.get_ptr_mut(&tgid) {
        unsafe { (*open).stopped_ns = now };
    }
    0
}

/// Go 1.22, at `stopTheWorldWithSema`'s calls of `(*timeHistogram).record` (the
/// stopping-time histograms): the duration being recorded, the second argument (RBX).
#[uprobe]
pub fn stw_stopping(ctx: ProbeContext) -> u32 {
    let (tgid, _) = tgid_tid();
    let d = unsafe { (*ctx.regs).rbx };
    if let Some(open) = STW_OPEN.get_ptr_mut(&tgid) {
        unsafe { (*open).rt_stopping_ns = d };
    }
    0
}

/// At `startTheWorldWithSema`'s probe point (after its stack check, before anything
/// spills the arguments): the runtime's own start and stopping timestamps, where the
/// Go version passes them (see the `RESTART_*` cookies).
#[uprobe]
pub fn stw_restart(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let regs = unsafe { &*ctx.regs };
    if morestack_bound(cookie, regs.eflags) {
        return 0;
    }
    let cookie = cookie & !COOKIE_ON_STACK_CHECK;
    let now = unsafe { bpf_ktime_get_ns() };
    let (tgid, _) = tgid_tid();
    if let Some(open) = STW_OPEN.get_ptr_mut(&tgid) {
        unsafe {
            (*open).restart_ns = now;
            if cookie == RESTART_START_IN_RCX || cookie == RESTART_START_RCX_STOPPED_RDI {
                (*open).rt_start_ns = regs.rcx;
            }
            if cookie == RESTART_START_RCX_STOPPED_RDI {
                (*open).rt_stopped_ns = regs.rdi;
            }
            let reason = (*open).reason;
            let mark_term = cookie == RESTART_GO121 && reason == STW_REASON_GC_MARK_TERM;
            // Go 1.19: a collector pause (no reason string) restarted by
            // gcMarkTermination, which alone passes emitTraceEvent = true.
            let collector = reason & !(STW_REASON_STRING_FLAG | STW_FORCED_GC_FLAG) == 0;
            let go119_mark_term = cookie == RESTART_GO119
                && reason & STW_REASON_STRING_FLAG != 0
                && collector
                && regs.rax & 0xff == 1;
            if mark_term || go119_mark_term {
                (*open).end_at_restart = 1;
            }
        }
    }
    0
}

/// A runtime timestamp `t` when it is plausible for a pause seen from `lo` to `hi` by
/// the kernel's clock (within 10 ms of it: the two are the same clock), else `or`.
#[inline(always)]
fn plausible(t: u64, lo: u64, hi: u64, or: u64) -> u64 {
    if t != 0 && t <= hi && t.saturating_add(10_000_000) >= lo {
        t
    } else {
        or
    }
}

#[inline(always)]
fn record(count: &mut u64, total: &mut u64, max: &mut u64, hist: &mut [u64; STW_BUCKETS], d: u64) {
    *count += 1;
    *total += d;
    if d > *max {
        *max = d;
    }
    // The verifier cannot follow the bucket arithmetic (the compiler proves the index
    // in range and drops the check): read it back opaquely so the check stays.
    let b = pause_bucket(d);
    let b = unsafe { core::ptr::read_volatile(&b) };
    if let Some(slot) = hist.get_mut(b) {
        *slot += 1;
    }
}

/// At each RET of `startTheWorldWithSema`: the pause ends. Its end is the function's
/// return value (RAX: the runtime's `now` on 1.22+, its fresh `startTime` before),
/// not this moment: the thread that restarted the world is often preempted by the
/// goroutines it just woke, for milliseconds the runtime does not count.
#[uprobe]
pub fn stw_end(ctx: ProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let (tgid, _) = tgid_tid();
    let open = match unsafe { STW_OPEN.get(&tgid) } {
        Some(o) => *o,
        None => {
            count_error(errors::STW_END_WITHOUT_START);
            return 0;
        }
    };
    let _ = STW_OPEN.remove(&tgid);
    let rax = unsafe { (*ctx.regs).rax };
    let end = if open.end_at_restart != 0 && open.restart_ns != 0 {
        open.restart_ns
    } else {
        plausible(rax, open.start_ns, now, now)
    };
    let start = plausible(open.rt_start_ns, open.start_ns, end, open.start_ns);
    let dur = end.saturating_sub(start);
    let stopping = if open.rt_stopped_ns != 0 && open.rt_start_ns == start {
        Some(open.rt_stopped_ns.saturating_sub(start))
    } else if open.rt_stopping_ns != 0 && open.rt_stopping_ns <= dur {
        Some(open.rt_stopping_ns)
    } else if open.stopped_ns > start {
        Some(open.stopped_ns - start)
    } else {
        None
    };
    let key = StwKey {
        tgid,
        _pad: 0,
        reason: open.reason,
    };
    let mut stats = STW.get_ptr_mut(&key);
    if stats.is_none() {
        if let Some(zero) = STW_ZERO.get_ptr(0) {
            let _ = STW.insert(&key, unsafe { &*zero }, BPF_NOEXIST as u64);
        }
        stats = STW.get_ptr_mut(&key);
    }
    match stats {
        Some(s) => unsafe {
            let s = &mut *s;
            record(
                &mut s.count,
                &mut s.total_ns,
                &mut s.max_ns,
                &mut s.hist,
                dur,
            );
            if let Some(st) = stopping {
                record(
                    &mut s.stopping_count,
                    &mut s.stopping_total_ns,
                    &mut s.stopping_max_ns,
                    &mut s.stopping_hist,
                    st,
                );
            }
        },
        None => count_error(errors::STW_MAP_FULL),
    }
    0
}

// Process discovery for `watch`: exec and exit events, so that a new Go process is
// attached at once and an exited one dropped, without scanning /proc.
use aya_ebpf::{macros::raw_tracepoint, maps::RingBuf, programs::RawTracePointContext};
use detector_common::{ProcEvent, PROC_EVENTS_BYTES, PROC_EXEC, PROC_EXIT};

#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(PROC_EVENTS_BYTES, 0);

/// Events the ring buffer had no room for (user space then rescans /proc).
#[map]
static PROC_EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn proc_event(kind: u32) {
    let (tgid, _) = tgid_tid();
    let ev = ProcEvent {
        tgid,
        kind,
        ns: unsafe { bpf_ktime_get_ns() },
    };
    if PROC_EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
        if let Some(p) = PROC_EVENTS_LOST.get_ptr_mut(0) {
            unsafe { *p += 1 };
        }
    }
}

// Raw tracepoints: attached by name, without tracefs (often not mounted in a
// container).

/// `sched_process_exec`: runs in the process after its new program is loaded.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec(_ctx: RawTracePointContext) -> i32 {
    proc_event(PROC_EXEC);
    0
}

/// `sched_process_exit`: every thread's exit; only the main thread's is sent.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> i32 {
    let (tgid, tid) = tgid_tid();
    if tgid == tid {
        proc_event(PROC_EXIT);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
