//! The contract between the eBPF programs and user space: map keys, map values,
//! the layout of the attach cookie and the stop-the-world reason numbering.
//!
//! Everything here is `#[repr(C)]`, plain old data and `no_std`, because the same
//! bytes are written by the kernel side and read by user space.
#![no_std]

/// Pause histograms are log-linear: each power of two of nanoseconds (an octave) is
/// cut into `STW_SUB` equal buckets, so a bucket is at most 1/8 of its lower bound
/// wide and a percentile read from it is within 6 % (power-of-two buckets, before,
/// were off by up to 2x).
pub const STW_SUB_BITS: u32 = 3;
pub const STW_SUB: usize = 1 << STW_SUB_BITS;
/// The first octave with its own buckets: 2^7 ns = 128 ns (bucket 0 holds shorter).
pub const STW_MIN_OCTAVE: u32 = 7;
/// Octaves covered: up to 2^37 ns, about 137 s (the last bucket holds longer).
pub const STW_OCTAVES: usize = 30;
/// Buckets in a pause histogram: below the first octave, then `STW_SUB` per octave.
pub const STW_BUCKETS: usize = 1 + STW_OCTAVES * STW_SUB;

/// Maximum distinct (process, probe, caller, argument, stack) tuples kept in the kernel.
pub const MAX_CALL_KEYS: u32 = 16_384;
/// Maximum distinct (process, probe) pairs counted without their call site, once
/// the call map is full (see [`UNSITED_CALLER`]).
pub const MAX_UNSITED_KEYS: u32 = 4_096;
/// The `caller` of a call counted without its call site, argument and stack because
/// the call map was full: such calls still add to their process's and function's
/// totals (no real return address is all ones).
pub const UNSITED_CALLER: u64 = u64::MAX;
/// Maximum distinct (process, stack) entries kept in the kernel.
pub const MAX_STACKS: u32 = 16_384;
/// Return addresses walked above the calling function, along Go's frame pointers:
/// with the call site itself, 25 frames of the calling stack. Enough to get past
/// net/http's dispatch and a few middlewares to the code that made the call; the
/// walk stops earlier at the goroutine's first frame.
pub const STACK_FRAMES: usize = 24;
/// Maximum distinct (process, reason) pause series kept in the kernel.
pub const MAX_STW_KEYS: u32 = 4_096;
/// Maximum processes with a pause in flight at once (one per process: STW is serialised).
pub const MAX_OPEN_PAUSES: u32 = 8_192;
/// Call probe ids whose counting is paused at once (the overhead budget's duty cycle
/// pauses a unit before its detach; see `detector::probes::budget`).
pub const MAX_PAUSED_PROBES: u32 = 4_096;
/// Hits per call probe id, in slot `id % HIT_SLOTS`: one counter the duty cycle can
/// read between evaluations to see a probe turn hot (two ids sharing a slot only
/// make it look sooner).
pub const HIT_SLOTS: u32 = 4_096;

/// The attach cookie is `probe id | (argument mode << 32)`.
///
/// The probe id indexes user space's table of attached probes (which function, which
/// binary); the kernel only copies it into the key.
pub const COOKIE_ARG_SHIFT: u32 = 32;

/// Which argument register a call probe records, if any (Go ABIInternal, amd64).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgMode {
    /// The call is only counted.
    None = 0,
    /// First integer argument (RAX), e.g. `GOMAXPROCS(n)`, `SetCPUProfileRate(hz)`.
    Rax = 1,
    /// Low byte of the fourth integer argument (DIL), e.g. the `all` flag of `runtime.Stack`.
    Dil = 2,
    /// `(RBX << 8) | DIL`: `runtime.saveblockevent(cycles, rate, skip, which)`, whose
    /// `rate` is the profile's setting and `which` says block (2) or mutex (3).
    RateAndWhich = 3,
    /// The code pointer of the closure in the second `any` argument (RCX type, RDI
    /// data -> funcval -> PC): the finalizer function passed to `runtime.SetFinalizer`.
    FinalizerFn = 4,
    /// Third integer argument (RCX): the length of the PC buffer passed to
    /// `runtime.callers(skip, pcbuf)`.
    Rcx = 5,
}

impl ArgMode {
    pub const fn from_u8(v: u8) -> ArgMode {
        match v {
            1 => ArgMode::Rax,
            2 => ArgMode::Dil,
            3 => ArgMode::RateAndWhich,
            4 => ArgMode::FinalizerFn,
            5 => ArgMode::Rcx,
            _ => ArgMode::None,
        }
    }
}

pub const fn cookie(probe_id: u32, mode: ArgMode) -> u64 {
    (probe_id as u64) | ((mode as u64) << COOKIE_ARG_SHIFT)
}

/// Cookie flag of the `runtime.GC` entry probe: the process enters a forced collection
/// (the matching `forced_gc_exit` probes sit on each RET of `runtime.GC`).
pub const COOKIE_FORCED_GC_ENTER: u64 = 1 << 40;

/// Cookie flag of a probe inside a function, on the first instruction of an inlined
/// runtime call (e.g. `runtime.NumGoroutine`): there is no return address at [RSP], so
/// the key's `caller` is the probed instruction + 1 (user space looks up `caller - 1`
/// for every call site, and so lands on the probed instruction itself).
pub const COOKIE_CALLER_IS_IP: u64 = 1 << 41;

/// Cookie flag of any entry probe (`count_call`, `stw_reason`, `stw_start`,
/// `stw_restart`) placed on the stack check's JBE rather than after it (where the
/// instruction after the check is one the kernel would single-step: Go 1.19). The
/// program sees the flags of the stack check's CMP: when the jump will be taken
/// ([`jbe_taken`]) the function goes to morestack and is re-entered from its start,
/// so that hit is not a call and is ignored. Other cookie bits never reach bit 60.
pub const COOKIE_ON_STACK_CHECK: u64 = 1 << 60;

/// x86 RFLAGS carry (CF) and zero (ZF) flags.
pub const FLAGS_CF: u64 = 1 << 0;
pub const FLAGS_ZF: u64 = 1 << 6;

/// Whether a JBE is taken with these flags (CF = 1 or ZF = 1).
pub const fn jbe_taken(flags: u64) -> bool {
    flags & (FLAGS_CF | FLAGS_ZF) != 0
}

/// Whether a hit of a probe with this cookie, in this RFLAGS, is the failed stack
/// check of a call that will be re-entered after morestack (not to be counted).
pub const fn morestack_bound(cookie: u64, flags: u64) -> bool {
    cookie & COOKIE_ON_STACK_CHECK != 0 && jbe_taken(flags)
}

/// Set in [`StwKey::reason`] when a GC pause happened while a goroutine of the process
/// was inside `runtime.GC` (directly or through `debug.FreeOSMemory`): a forced
/// collection, not one the pacer started.
pub const STW_FORCED_GC_FLAG: u64 = 1 << 62;
/// 1.21+ `stwReason` values of the collector's own pauses.
pub const STW_REASON_GC_MARK_TERM: u64 = 1;
pub const STW_REASON_GC_SWEEP_TERM: u64 = 2;

/// `which` values of `runtime.saveblockevent` (runtime/mprof.go `bucketType`, 1.19-1.27).
pub const BUCKET_BLOCK: u64 = 2;
pub const BUCKET_MUTEX: u64 = 3;

/// How a stop-the-world start probe finds the reason (the cookie's low byte).
pub const STW_REASON_FROM_AL: u64 = 0;
/// Go 1.19: the `stopTheWorld` probe left the reason string for the goroutine that
/// stops the world; none means the collector stopped it directly. The goroutine is
/// found from g0 (R14) through `g.m` and `m.curg`, whose offsets ride in the cookie.
pub const STW_REASON_FROM_PENDING: u64 = 1;
pub const STW_COOKIE_MODE_MASK: u64 = 0xff;
/// Bits 16..32 of the cookie: offset of `m.curg`; bits 32..48: offset of `g.m`.
pub const STW_COOKIE_CURG_SHIFT: u32 = 16;
pub const STW_COOKIE_GM_SHIFT: u32 = 32;

/// Cookie of a Go 1.19 `stw_start` probe.
pub const fn stw_pending_cookie(g_m_offset: u16, m_curg_offset: u16) -> u64 {
    STW_REASON_FROM_PENDING
        | ((m_curg_offset as u64) << STW_COOKIE_CURG_SHIFT)
        | ((g_m_offset as u64) << STW_COOKIE_GM_SHIFT)
}

/// Set in [`StwKey::reason`] when the value is the address of a Go 1.19 reason string
/// (in the target's address space) rather than a Go 1.21+ `stwReason` byte.
pub const STW_REASON_STRING_FLAG: u64 = 1 << 63;

/// Key of the per-CPU call counter map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallKey {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Probe id from the attach cookie.
    pub probe: u32,
    /// Return address at entry: where in the target the call came from.
    pub caller: u64,
    /// The recorded argument (see [`ArgMode`]), 0 when none.
    pub arg: u64,
    /// The frames above the calling function, by [`StackKey::hash`] (0: none read).
    pub stack: u64,
}

/// Key of the stack map: the return addresses above a call site, by their hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    pub _pad: u32,
    /// [`stack_hash`] of the frames.
    pub hash: u64,
}

/// Return addresses, innermost first, zero after the last one read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub frames: [u64; STACK_FRAMES],
}

/// Folds one return address into a stack hash (start from [`STACK_HASH_SEED`]).
/// 64 bits: two distinct stacks of one process colliding is not a practical concern,
/// and a collision only merges their counts.
#[inline(always)]
pub const fn stack_hash(h: u64, pc: u64) -> u64 {
    let x = (h ^ pc).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}
pub const STACK_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Key of the per-CPU pause statistics map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StwKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Go 1.21+: the `stwReason` byte. Go 1.19: [`STW_REASON_STRING_FLAG`] | string address,
    /// or the flag alone when the collector stopped the world without a reason.
    pub reason: u64,
}

/// Aggregated pauses for one (process, reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StwStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: [u64; STW_BUCKETS],
    /// The stopping part of the same pauses: from the request to stop until every
    /// goroutine reached a safe point (`/sched/pauses/stopping/*`), for the pauses
    /// where it was measured.
    pub stopping_count: u64,
    pub stopping_total_ns: u64,
    pub stopping_max_ns: u64,
    pub stopping_hist: [u64; STW_BUCKETS],
}

impl StwStats {
    pub const ZERO: StwStats = StwStats {
        count: 0,
        total_ns: 0,
        max_ns: 0,
        hist: [0; STW_BUCKETS],
        stopping_count: 0,
        stopping_total_ns: 0,
        stopping_max_ns: 0,
        stopping_hist: [0; STW_BUCKETS],
    };

    /// Adds `other` into `self` (per-CPU slots, or keys that share a reason).
    pub fn merge(&mut self, other: &StwStats) {
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        for (a, b) in self.hist.iter_mut().zip(other.hist.iter()) {
            *a += b;
        }
        self.stopping_count += other.stopping_count;
        self.stopping_total_ns += other.stopping_total_ns;
        self.stopping_max_ns = self.stopping_max_ns.max(other.stopping_max_ns);
        for (a, b) in self
            .stopping_hist
            .iter_mut()
            .zip(other.stopping_hist.iter())
        {
            *a += b;
        }
    }
}

/// A pause in flight: started, not yet ended. The kernel's own clock marks each
/// step; the runtime's timestamps (the same CLOCK_MONOTONIC) replace them where the
/// probes can read them, so that a pause spans what the runtime itself counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StwOpen {
    /// At `stopTheWorldWithSema`'s probe point.
    pub start_ns: u64,
    pub reason: u64,
    /// At a RET of `stopTheWorldWithSema`: every goroutine is stopped (0: not seen).
    pub stopped_ns: u64,
    /// At `startTheWorldWithSema`'s probe point (0: not seen).
    pub restart_ns: u64,
    /// The runtime's `worldStop.startedStopping` and `finishedStopping`, read at
    /// `startTheWorldWithSema`'s probe point (Go 1.22+ and 1.23+; 0 when unknown).
    pub rt_start_ns: u64,
    pub rt_stopped_ns: u64,
    /// Go 1.22: the stopping time the runtime recorded, read from its
    /// `timeHistogram.record` call in `stopTheWorldWithSema` (0 when unknown).
    pub rt_stopping_ns: u64,
    /// 1 when the pause ends at `restart_ns` rather than at the function's return
    /// value (see the `RESTART_*` cookies).
    pub end_at_restart: u64,
}

/// Cookie of the `stw_restart` probe: which of `startTheWorldWithSema`'s arguments
/// carry the runtime's timestamps (Go's register ABI: `now` in RAX, then the
/// `worldStop` fields `reason` in BL, `startedStopping` in RCX, `finishedStopping`
/// in RDI).
pub const RESTART_NO_ARGS: u64 = 0;
/// Go 1.22: `worldStop{reason, start}`: RCX is the start.
pub const RESTART_START_IN_RCX: u64 = 1;
/// Go 1.23+: RCX is `startedStopping`, RDI `finishedStopping`.
pub const RESTART_START_RCX_STOPPED_RDI: u64 = 2;
/// Go 1.21: no arguments. A mark termination pause (reason 1) ends at the entry:
/// `gcMarkTermination` took its own end timestamp just before; every other pause ends
/// at the function's return value (RAX), the runtime's end timestamp.
pub const RESTART_GO121: u64 = 3;
/// Go 1.19: AL is `emitTraceEvent`, true only from `gcMarkTermination` (and the rare
/// mark restart): a collector pause restarted with it set ends at the entry.
pub const RESTART_GO119: u64 = 4;

/// Indices into the per-CPU error counter array.
pub mod errors {
    /// A call's (process, probe, caller, argument, stack) key could not be stored
    /// (call map full): the call is counted by (process, probe) without its call site.
    pub const CALL_MAP_FULL: u32 = 0;
    /// A pause statistics update failed (map full).
    pub const STW_MAP_FULL: u32 = 1;
    /// A pause ended that had no recorded start (attached mid-pause).
    pub const STW_END_WITHOUT_START: u32 = 2;
    /// Reading the return address from the target's stack failed.
    pub const READ_CALLER_FAILED: u32 = 3;
    /// The forced-collection depth map was full.
    pub const FORCED_GC_MAP_FULL: u32 = 4;
    /// A new stack could not be stored (map full): its calls are counted without it.
    pub const STACK_MAP_FULL: u32 = 5;
    /// A stack was deeper than [`super::STACK_FRAMES`]: its outer frames are unknown.
    pub const STACK_TRUNCATED: u32 = 6;
    /// A call was not counted at all: the call map and its overflow were both full.
    pub const CALL_LOST: u32 = 7;
    /// A pause start could not be recorded (the in-flight pause map was full): that
    /// pause is not measured.
    pub const STW_OPEN_MAP_FULL: u32 = 8;
    pub const COUNT: u32 = 9;
    /// Each counter's name, by index (metric labels, report lines).
    pub const NAMES: [&str; COUNT as usize] = [
        "call_map_full",
        "stw_map_full",
        "stw_end_without_start",
        "read_caller_failed",
        "forced_gc_map_full",
        "stack_map_full",
        "stack_truncated",
        "call_lost",
        "stw_open_map_full",
    ];
    /// The counters that mean a kernel map was full (what was lost is said by each).
    pub const MAP_FULL: [u32; 6] = [
        CALL_MAP_FULL,
        CALL_LOST,
        STW_MAP_FULL,
        STW_OPEN_MAP_FULL,
        FORCED_GC_MAP_FULL,
        STACK_MAP_FULL,
    ];
}

/// Histogram bucket of a duration in nanoseconds (see [`STW_SUB`]).
#[inline(always)]
pub fn pause_bucket(ns: u64) -> usize {
    if ns < 1 << STW_MIN_OCTAVE {
        return 0;
    }
    let octave = 63 - ns.leading_zeros();
    if octave >= STW_MIN_OCTAVE + STW_OCTAVES as u32 {
        return STW_BUCKETS - 1;
    }
    let sub = ((ns >> (octave - STW_SUB_BITS)) as usize) & (STW_SUB - 1);
    1 + (octave - STW_MIN_OCTAVE) as usize * STW_SUB + sub
}

/// The bounds `[lo, hi)` in nanoseconds of bucket `b` (the first starts at 0, the
/// last is open: `hi` is `u64::MAX`).
pub fn pause_bucket_bounds(b: usize) -> (u64, u64) {
    if b == 0 {
        return (0, 1 << STW_MIN_OCTAVE);
    }
    let octave = STW_MIN_OCTAVE + ((b - 1) / STW_SUB) as u32;
    let sub = ((b - 1) % STW_SUB) as u64;
    let width = 1u64 << (octave - STW_SUB_BITS);
    let lo = (1u64 << octave) + sub * width;
    if b >= STW_BUCKETS - 1 {
        (lo, u64::MAX)
    } else {
        (lo, lo + width)
    }
}

/// A process event from the scheduler tracepoints, pushed to the `PROC_EVENTS` ring
/// buffer so that `watch` sees new processes at once instead of by scanning /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// The process (thread group) id.
    pub tgid: u32,
    /// [`PROC_EXEC`] or [`PROC_EXIT`].
    pub kind: u32,
    /// When it happened, `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ns: u64,
}
/// A process executed a new program (`sched_process_exec`).
pub const PROC_EXEC: u32 = 1;
/// A process's main thread exited (`sched_process_exit` of a thread group leader).
pub const PROC_EXIT: u32 = 2;
/// Size of the process event ring buffer: room for ~2,700 events (24 bytes each with
/// the header), far more than a host execs between two reads (every 10 ms at most).
pub const PROC_EVENTS_BYTES: u32 = 64 * 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C) plain data without padding holes that matter to the kernel.
    unsafe impl aya::Pod for CallKey {}
    unsafe impl aya::Pod for StwKey {}
    unsafe impl aya::Pod for StwStats {}
    unsafe impl aya::Pod for StwOpen {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for Stack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_falls_inside_its_bucket() {
        let mut ns = 1u64;
        while ns < 1 << 40 {
            for d in [ns - 1, ns, ns + ns / 3] {
                let b = pause_bucket(d);
                let (lo, hi) = pause_bucket_bounds(b);
                assert!(lo <= d && d < hi, "{d} ns in bucket {b} [{lo}, {hi})");
                if b > 0 && b < STW_BUCKETS - 1 {
                    // At most 1/8 of the lower bound wide.
                    assert!((hi - lo) * 8 <= lo, "bucket {b} [{lo}, {hi}) too wide");
                }
            }
            ns *= 2;
        }
        assert_eq!(pause_bucket(0), 0);
        assert_eq!(pause_bucket(u64::MAX), STW_BUCKETS - 1);
        // Buckets tile the line: each starts where the previous one ends.
        for b in 1..STW_BUCKETS {
            assert_eq!(
                pause_bucket_bounds(b - 1).1,
                pause_bucket_bounds(b).0,
                "{b}"
            );
        }
    }
}
