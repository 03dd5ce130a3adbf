//! Which runtime function stands for which user-facing API, per Go version.
//!
//! This is the table of `go-runtime-facts.md` made executable: `inspect` reports on
//! every row, the analysis tests check every row against `go tool nm`, and the probe
//! plan picks its rows from here.
use crate::gobin::GoVersion;

/// How the symbol for an API relates to a Go version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// A real function with this symbol exists in every binary that uses the API.
    Symbol(&'static str),
    /// The compiler always inlines the API: no function to probe.
    Inlined,
}

/// One row: an API a user calls, and the runtime function to probe for it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RuntimeFunc {
    /// Stable short id, used in JSON and metrics (`readmemstats`, `stw_start`, ...).
    pub id: &'static str,
    /// The API as a Go programmer writes it.
    pub api: &'static str,
    pub presence: Presence,
    /// Marked `//go:nosplit`: no stack-check prologue, probe the entry itself.
    pub nosplit: bool,
}

const fn sym(id: &'static str, api: &'static str, symbol: &'static str) -> RuntimeFunc {
    RuntimeFunc {
        id,
        api,
        presence: Presence::Symbol(symbol),
        nosplit: false,
    }
}

const fn inlined(id: &'static str, api: &'static str) -> RuntimeFunc {
    RuntimeFunc {
        id,
        api,
        presence: Presence::Inlined,
        nosplit: false,
    }
}

/// Every runtime function detector knows, for Go version `v`.
pub fn runtime_functions(v: GoVersion) -> Vec<RuntimeFunc> {
    let mut rows = vec![
        sym(
            "readmemstats",
            "runtime.ReadMemStats",
            "runtime.ReadMemStats",
        ),
        sym("gc", "runtime.GC", "runtime.GC"),
        sym("gomaxprocs", "runtime.GOMAXPROCS", "runtime.GOMAXPROCS"),
        sym(
            "freeosmemory",
            "debug.FreeOSMemory",
            "runtime/debug.freeOSMemory",
        ),
        sym(
            "setcpuprofilerate",
            "runtime.SetCPUProfileRate",
            "runtime.SetCPUProfileRate",
        ),
        sym(
            "startcpuprofile",
            "pprof.StartCPUProfile",
            "runtime/pprof.StartCPUProfile",
        ),
        sym(
            "stopcpuprofile",
            "pprof.StopCPUProfile",
            "runtime/pprof.StopCPUProfile",
        ),
        sym("stack", "runtime.Stack", "runtime.Stack"),
        sym(
            "setblockprofilerate",
            "runtime.SetBlockProfileRate",
            "runtime.SetBlockProfileRate",
        ),
        inlined("setmutexprofilefraction", "runtime.SetMutexProfileFraction"),
        sym(
            "setfinalizer",
            "runtime.SetFinalizer",
            "runtime.SetFinalizer",
        ),
        RuntimeFunc {
            nosplit: true,
            ..sym(
                "lockosthread",
                "runtime.LockOSThread",
                "runtime.LockOSThread",
            )
        },
        sym("starttrace", "runtime.StartTrace", "runtime.StartTrace"),
        sym("caller", "runtime.Caller", "runtime.Caller"),
        sym("callers", "runtime.Callers", "runtime.callers"),
        sym("funcforpc", "runtime.FuncForPC", "runtime.FuncForPC"),
        inlined("numgoroutine", "runtime.NumGoroutine"),
        sym(
            "setgcpercent",
            "debug.SetGCPercent",
            "runtime/debug.setGCPercent",
        ),
        sym(
            "setmemorylimit",
            "debug.SetMemoryLimit",
            "runtime/debug.setMemoryLimit",
        ),
        sym(
            "stw_start",
            "(stop the world)",
            "runtime.stopTheWorldWithSema",
        ),
        sym(
            "stw_end",
            "(start the world)",
            "runtime.startTheWorldWithSema",
        ),
        sym(
            "stw_request",
            "(stop the world, with reason)",
            "runtime.stopTheWorld",
        ),
    ];
    // Live activity that reveals settings made before detector attached.
    rows.push(sym(
        "sigprof",
        "(CPU profiler signal handler)",
        "runtime.sigprof",
    ));
    rows.push(sym(
        "saveblockevent",
        "(block or mutex profile event)",
        "runtime.saveblockevent",
    ));
    rows.push(sym(
        "startlockedm",
        "(hand-off to a locked OS thread)",
        "runtime.startlockedm",
    ));
    // The tracer's reader: `readTrace0` from 1.21 (ReadTrace loops on it, and 1.25+
    // inlines ReadTrace into runtime/trace), ReadTrace itself before.
    rows.push(sym(
        "tracereader",
        "(execution tracer reader)",
        if v.at_least(1, 21) {
            "runtime.readTrace0"
        } else {
            "runtime.ReadTrace"
        },
    ));
    if v.at_least(1, 25) {
        rows.push(sym(
            "tracestart",
            "trace.Start",
            "runtime/trace.(*traceMultiplexer).subscribeTraceStartWriter",
        ));
        rows.push(sym(
            "tracestop",
            "trace.Stop",
            "runtime/trace.(*traceMultiplexer).unsubscribeTraceStartWriter",
        ));
    } else {
        rows.push(sym("tracestart", "trace.Start", "runtime/trace.Start"));
        rows.push(sym("tracestop", "trace.Stop", "runtime/trace.Stop"));
    }
    if v.at_least(1, 23) {
        rows.push(sym(
            "goroutineprofile",
            "pprof goroutine profile",
            "runtime.pprof_goroutineProfileWithLabels",
        ));
    } else {
        rows.push(sym(
            "goroutineprofile",
            "pprof goroutine profile",
            "runtime/pprof.runtime_goroutineProfileWithLabels",
        ));
    }
    rows
}

/// The row with this id, for version `v`.
pub fn by_id(v: GoVersion, id: &str) -> Option<RuntimeFunc> {
    runtime_functions(v).into_iter().find(|f| f.id == id)
}
