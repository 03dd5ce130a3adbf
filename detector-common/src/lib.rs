//! The contract between the eBPF programs and user space: map keys, map values,
//! the layout of the attach cookie and the stop-the-world reason numbering.
//!
//! Everything here is `#[repr(C)]`, plain old data and `no_std`, because the same
//! bytes are written by the kernel side and read by user space.
#![no_std]

/// Number of log2 buckets in a pause histogram: bucket `i` counts pauses of
/// `[2^i, 2^(i+1))` nanoseconds, so 40 buckets reach about 18 minutes.
pub const STW_BUCKETS: usize = 40;

/// Maximum distinct (process, probe, caller, argument) tuples kept in the kernel.
pub const MAX_CALL_KEYS: u32 = 16_384;
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
}

impl ArgMode {
    pub const fn from_u8(v: u8) -> ArgMode {
        match v {
            1 => ArgMode::Rax,
            2 => ArgMode::Dil,
            3 => ArgMode::RateAndWhich,
            4 => ArgMode::FinalizerFn,
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
}

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
}

impl StwStats {
    pub const ZERO: StwStats = StwStats {
        count: 0,
        total_ns: 0,
        max_ns: 0,
        hist: [0; STW_BUCKETS],
    };

    /// Adds `other` into `self` (per-CPU slots, or keys that share a reason).
    pub fn merge(&mut self, other: &StwStats) {
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        for (a, b) in self.hist.iter_mut().zip(other.hist.iter()) {
            *a += b;
        }
    }
}

/// A pause in flight: started, not yet ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StwOpen {
    pub start_ns: u64,
    pub reason: u64,
}

/// Indices into the per-CPU error counter array.
pub mod errors {
    /// A call counter update failed (map full).
    pub const CALL_MAP_FULL: u32 = 0;
    /// A pause statistics update failed (map full).
    pub const STW_MAP_FULL: u32 = 1;
    /// A pause ended that had no recorded start (attached mid-pause).
    pub const STW_END_WITHOUT_START: u32 = 2;
    /// Reading the return address from the target's stack failed.
    pub const READ_CALLER_FAILED: u32 = 3;
    /// The forced-collection depth map was full.
    pub const FORCED_GC_MAP_FULL: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Log2 bucket of a duration in nanoseconds.
#[inline(always)]
pub fn log2_bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let b = 63 - ns.leading_zeros() as usize;
    if b >= STW_BUCKETS {
        STW_BUCKETS - 1
    } else {
        b
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C) plain data without padding holes that matter to the kernel.
    unsafe impl aya::Pod for CallKey {}
    unsafe impl aya::Pod for StwKey {}
    unsafe impl aya::Pod for StwStats {}
    unsafe impl aya::Pod for StwOpen {}
}
