//! The probed APIs: one typed table, the only place that says which runtime function
//! stands for which user-facing API on which Go version, what argument its probe
//! records, and whether (and with which pause reason) it stops the world.
//!
//! This is `go-runtime-facts.md`'s table made executable. The probe plan, the overhead
//! budget, pause attribution, the rules, `inspect` and the tests all read it, and name
//! an API by [`Api`], never by a string: a misspelt API does not compile.
use std::fmt;

use detector_common::ArgMode;

use crate::gobin::GoVersion;

/// Go's `stwReason` values detector names (runtime/proc.go, 1.21 to 1.27; Go 1.19's
/// reason strings are mapped onto the same numbers).
pub mod reason {
    pub const GC_MARK_TERMINATION: u8 = 1;
    pub const GC_SWEEP_TERMINATION: u8 = 2;
    pub const GOROUTINE_PROFILE: u8 = 4;
    pub const GOROUTINE_PROFILE_CLEANUP: u8 = 5;
    pub const STACK_TRACE: u8 = 6;
    pub const READ_MEM_STATS: u8 = 7;
    pub const GOMAXPROCS: u8 = 9;
    pub const START_TRACE: u8 = 10;
    pub const STOP_TRACE: u8 = 11;
}

macro_rules! apis {
    ($($(#[$doc:meta])* $variant:ident = $id:literal,)*) => {
        /// An API detector probes: a function a Go program calls, or runtime activity
        /// that reveals a setting (`sigprof` runs only while the CPU profiler is on).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Api {
            $($(#[$doc])* $variant,)*
        }

        impl Api {
            /// Every API, in the order `inspect` lists them and call probes get ids.
            pub const ALL: &'static [Api] = &[$(Api::$variant,)*];

            /// Stable short id, used in JSON, metrics and the golden test data.
            pub const fn id(self) -> &'static str {
                match self {
                    $(Api::$variant => $id,)*
                }
            }
        }
    };
}

apis! {
    ReadMemStats = "readmemstats",
    Gc = "gc",
    Gomaxprocs = "gomaxprocs",
    FreeOsMemory = "freeosmemory",
    SetCpuProfileRate = "setcpuprofilerate",
    StartCpuProfile = "startcpuprofile",
    StopCpuProfile = "stopcpuprofile",
    Stack = "stack",
    SetBlockProfileRate = "setblockprofilerate",
    SetMutexProfileFraction = "setmutexprofilefraction",
    SetFinalizer = "setfinalizer",
    LockOsThread = "lockosthread",
    StartTrace = "starttrace",
    Caller = "caller",
    Callers = "callers",
    FuncForPc = "funcforpc",
    /// Symbolizing PCs, `runtime.CallersFrames(pcs).Next()`: what slog's AddSource
    /// pays per record (it captures one PC always, and symbolizes it only then).
    CallersFrames = "callersframes",
    NumGoroutine = "numgoroutine",
    SetGcPercent = "setgcpercent",
    SetMemoryLimit = "setmemorylimit",
    /// `stopTheWorldWithSema`: a pause starts.
    StwStart = "stw_start",
    /// `startTheWorldWithSema`: a pause ends (probed on each RET).
    StwEnd = "stw_end",
    /// `stopTheWorld`: Go 1.19/1.20 pass the pause reason here, as a string.
    StwRequest = "stw_request",
    /// The CPU profiler's signal handler: runs only while profiling is on.
    Sigprof = "sigprof",
    /// A recorded block or mutex profile event, with the profile's rate.
    SaveBlockEvent = "saveblockevent",
    /// A goroutine locked to its thread handed the thread back to the scheduler.
    StartLockedM = "startlockedm",
    /// The execution tracer's reader: runs only while a trace is being taken.
    TraceReader = "tracereader",
    TraceStart = "tracestart",
    TraceStop = "tracestop",
    GoroutineProfile = "goroutineprofile",
}

/// Where an API's code is found in a binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// A real function with this symbol exists in every binary that uses the API.
    Symbol(&'static str),
    /// The compiler always inlines the API: no function to probe. `callee` is the
    /// function's name in the pclntab's inline tree.
    Inlined { callee: &'static str },
}

impl Presence {
    /// The function's symbol, when it has one.
    pub const fn symbol(self) -> Option<&'static str> {
        match self {
            Presence::Symbol(s) => Some(s),
            Presence::Inlined { .. } => None,
        }
    }
}

/// How an API is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `count_call` at the function's probe point, recording this argument.
    Call(ArgMode),
    /// Always inlined: `count_call` at each place it was inlined into user code.
    InlinedSites,
    /// Always inlined and not probed: its setting is read from this API's activity.
    ObservedThrough(Api),
    /// The stop-the-world machinery (pause start, end and Go 1.19's reason).
    Pause,
}

/// Whether a call stops the world, and under which reason its pauses are recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stops {
    Never,
    /// Every call stops the world: its probe costs the target far less than the call
    /// and is never duty-cycled.
    Always(PauseKind),
    /// Some calls do, depending on the argument (`Stack(buf, true)`, `GOMAXPROCS(n>0)`).
    Sometimes(PauseKind),
}

/// The pauses an API's calls cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseKind {
    /// Pauses recorded under these `stwReason` values.
    Reasons(&'static [u8]),
    /// A collection forced from inside `runtime.GC`: the collector's own pauses,
    /// marked forced by the `runtime.GC` entry and RET probes.
    ForcedGc,
}

impl Api {
    /// The API as a Go programmer writes it (runtime activity in parentheses).
    pub const fn name(self) -> &'static str {
        match self {
            Api::ReadMemStats => "runtime.ReadMemStats",
            Api::Gc => "runtime.GC",
            Api::Gomaxprocs => "runtime.GOMAXPROCS",
            Api::FreeOsMemory => "debug.FreeOSMemory",
            Api::SetCpuProfileRate => "runtime.SetCPUProfileRate",
            Api::StartCpuProfile => "pprof.StartCPUProfile",
            Api::StopCpuProfile => "pprof.StopCPUProfile",
            Api::Stack => "runtime.Stack",
            Api::SetBlockProfileRate => "runtime.SetBlockProfileRate",
            Api::SetMutexProfileFraction => "runtime.SetMutexProfileFraction",
            Api::SetFinalizer => "runtime.SetFinalizer",
            Api::LockOsThread => "runtime.LockOSThread",
            Api::StartTrace => "runtime.StartTrace",
            Api::Caller => "runtime.Caller",
            Api::Callers => "runtime.Callers",
            Api::FuncForPc => "runtime.FuncForPC",
            Api::CallersFrames => "runtime.CallersFrames",
            Api::NumGoroutine => "runtime.NumGoroutine",
            Api::SetGcPercent => "debug.SetGCPercent",
            Api::SetMemoryLimit => "debug.SetMemoryLimit",
            Api::StwStart => "(stop the world)",
            Api::StwEnd => "(start the world)",
            Api::StwRequest => "(stop the world, with reason)",
            Api::Sigprof => "(CPU profiler signal handler)",
            Api::SaveBlockEvent => "(block or mutex profile event)",
            Api::StartLockedM => "(hand-off to a locked OS thread)",
            Api::TraceReader => "(execution tracer reader)",
            Api::TraceStart => "trace.Start",
            Api::TraceStop => "trace.Stop",
            Api::GoroutineProfile => "pprof goroutine profile",
        }
    }

    /// Where its code is in a binary built by Go `v`.
    pub fn presence(self, v: GoVersion) -> Presence {
        use Presence::{Inlined, Symbol};
        match self {
            Api::ReadMemStats => Symbol("runtime.ReadMemStats"),
            Api::Gc => Symbol("runtime.GC"),
            Api::Gomaxprocs => Symbol("runtime.GOMAXPROCS"),
            // The exported wrapper is tiny and sometimes inlined; the linknamed
            // runtime half never is.
            Api::FreeOsMemory => Symbol("runtime/debug.freeOSMemory"),
            Api::SetCpuProfileRate => Symbol("runtime.SetCPUProfileRate"),
            Api::StartCpuProfile => Symbol("runtime/pprof.StartCPUProfile"),
            Api::StopCpuProfile => Symbol("runtime/pprof.StopCPUProfile"),
            Api::Stack => Symbol("runtime.Stack"),
            Api::SetBlockProfileRate => Symbol("runtime.SetBlockProfileRate"),
            Api::SetMutexProfileFraction => Inlined {
                callee: "runtime.SetMutexProfileFraction",
            },
            Api::SetFinalizer => Symbol("runtime.SetFinalizer"),
            Api::LockOsThread => Symbol("runtime.LockOSThread"),
            Api::StartTrace => Symbol("runtime.StartTrace"),
            Api::Caller => Symbol("runtime.Caller"),
            Api::Callers => Symbol("runtime.callers"),
            Api::FuncForPc => Symbol("runtime.FuncForPC"),
            Api::CallersFrames => Symbol("runtime.(*Frames).Next"),
            Api::NumGoroutine => Inlined {
                callee: "runtime.NumGoroutine",
            },
            Api::SetGcPercent => Symbol("runtime/debug.setGCPercent"),
            Api::SetMemoryLimit => Symbol("runtime/debug.setMemoryLimit"),
            Api::StwStart => Symbol("runtime.stopTheWorldWithSema"),
            Api::StwEnd => Symbol("runtime.startTheWorldWithSema"),
            Api::StwRequest => Symbol("runtime.stopTheWorld"),
            Api::Sigprof => Symbol("runtime.sigprof"),
            Api::SaveBlockEvent => Symbol("runtime.saveblockevent"),
            Api::StartLockedM => Symbol("runtime.startlockedm"),
            // `readTrace0` from 1.21 (ReadTrace loops on it, and 1.25+ inlines
            // ReadTrace into runtime/trace), ReadTrace itself before.
            Api::TraceReader if v.at_least(1, 21) => Symbol("runtime.readTrace0"),
            Api::TraceReader => Symbol("runtime.ReadTrace"),
            // 1.25 made runtime/trace a multiplexer (for the flight recorder).
            Api::TraceStart if v.at_least(1, 25) => {
                Symbol("runtime/trace.(*traceMultiplexer).subscribeTraceStartWriter")
            }
            Api::TraceStart => Symbol("runtime/trace.Start"),
            Api::TraceStop if v.at_least(1, 25) => {
                Symbol("runtime/trace.(*traceMultiplexer).unsubscribeTraceStartWriter")
            }
            Api::TraceStop => Symbol("runtime/trace.Stop"),
            Api::GoroutineProfile if v.at_least(1, 23) => {
                Symbol("runtime.pprof_goroutineProfileWithLabels")
            }
            Api::GoroutineProfile => Symbol("runtime/pprof.runtime_goroutineProfileWithLabels"),
        }
    }

    /// How it is probed, and what its probe records.
    pub const fn probe(self) -> Probe {
        use ArgMode::*;
        match self {
            Api::Gomaxprocs
            | Api::SetCpuProfileRate
            | Api::SetBlockProfileRate
            | Api::SetGcPercent
            | Api::SetMemoryLimit => Probe::Call(Rax),
            Api::Stack => Probe::Call(Dil),
            Api::Callers => Probe::Call(Rcx),
            Api::SetFinalizer => Probe::Call(FinalizerFn),
            Api::SaveBlockEvent => Probe::Call(RateAndWhich),
            Api::NumGoroutine => Probe::InlinedSites,
            Api::SetMutexProfileFraction => Probe::ObservedThrough(Api::SaveBlockEvent),
            // Caller symbolises its one PC with CallersFrames(rpc).Next() (1.19 to
            // 1.27, runtime/extern.go): that probe sees every call, with runtime.Caller
            // on its path, so a probe on Caller itself would only add a third hit.
            Api::Caller => Probe::ObservedThrough(Api::CallersFrames),
            Api::StwStart | Api::StwEnd | Api::StwRequest => Probe::Pause,
            _ => Probe::Call(None),
        }
    }

    /// Marked `//go:nosplit`: no stack-check prologue, the probe sits on the entry.
    pub const fn nosplit(self) -> bool {
        matches!(self, Api::LockOsThread)
    }

    /// Whether its calls stop the world.
    pub const fn stops(self) -> Stops {
        use reason::*;
        match self {
            Api::ReadMemStats => Stops::Always(PauseKind::Reasons(&[READ_MEM_STATS])),
            // FreeOSMemory runs runtime.GC itself: both force a collection.
            Api::Gc | Api::FreeOsMemory => Stops::Always(PauseKind::ForcedGc),
            Api::GoroutineProfile => Stops::Always(PauseKind::Reasons(&[
                GOROUTINE_PROFILE,
                GOROUTINE_PROFILE_CLEANUP,
            ])),
            Api::TraceStart | Api::StartTrace => Stops::Always(PauseKind::Reasons(&[START_TRACE])),
            Api::TraceStop => Stops::Always(PauseKind::Reasons(&[STOP_TRACE])),
            Api::Stack => Stops::Sometimes(PauseKind::Reasons(&[STACK_TRACE])),
            Api::Gomaxprocs => Stops::Sometimes(PauseKind::Reasons(&[GOMAXPROCS])),
            _ => Stops::Never,
        }
    }

    /// Whether every call stops the world (its probe is never duty-cycled).
    pub const fn always_stops_the_world(self) -> bool {
        matches!(self.stops(), Stops::Always(_))
    }

    /// The kinds of pause its calls cause, if any.
    pub const fn pauses(self) -> Option<PauseKind> {
        match self.stops() {
            Stops::Never => None,
            Stops::Always(k) | Stops::Sometimes(k) => Some(k),
        }
    }

    /// The recorded argument's name in the Go signature ("" when none is recorded).
    pub const fn arg_name(self) -> &'static str {
        match self {
            Api::Gomaxprocs => "n",
            Api::SetCpuProfileRate => "hz",
            Api::SetBlockProfileRate => "rate",
            Api::SetGcPercent => "percent",
            Api::SetMemoryLimit => "limit",
            Api::Stack => "all",
            Api::Callers => "len(pc)",
            Api::SetFinalizer => "finalizer",
            Api::SaveBlockEvent => "rate and profile",
            _ => "",
        }
    }

    /// The API with this id.
    pub fn from_id(id: &str) -> Option<Api> {
        Api::ALL.iter().copied().find(|a| a.id() == id)
    }

    /// The APIs whose pauses are recorded under `stwReason` `code`, or that force
    /// collections (`forced`), in table order.
    pub fn causing(code: Option<u8>, forced: bool) -> impl Iterator<Item = Api> {
        Api::ALL.iter().copied().filter(move |a| match a.pauses() {
            Some(PauseKind::ForcedGc) => forced,
            Some(PauseKind::Reasons(codes)) => !forced && code.is_some_and(|c| codes.contains(&c)),
            None => false,
        })
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl serde::Serialize for Api {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> serde::Deserialize<'de> for Api {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Api, D::Error> {
        let id = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Api::from_id(&id).ok_or_else(|| serde::de::Error::custom(format!("unknown API id `{id}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let mut ids: Vec<_> = Api::ALL.iter().map(|a| a.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Api::ALL.len());
        for a in Api::ALL {
            assert_eq!(Api::from_id(a.id()), Some(*a));
            let json = serde_json::to_string(a).unwrap();
            assert_eq!(serde_json::from_str::<Api>(&json).unwrap(), *a);
        }
        assert!(serde_json::from_str::<Api>("\"readmemstat\"").is_err());
    }

    #[test]
    fn inlined_apis_are_not_probed_at_a_function() {
        let v = GoVersion::parse("go1.27.3").unwrap();
        for a in Api::ALL {
            // An always-inlined API has no function to probe: it is probed where it
            // was inlined, or seen through another API.
            if matches!(a.presence(v), Presence::Inlined { .. }) {
                assert!(
                    matches!(a.probe(), Probe::InlinedSites | Probe::ObservedThrough(_)),
                    "{a}"
                );
            }
        }
    }

    #[test]
    fn every_pause_reason_has_its_cause() {
        assert_eq!(
            Api::causing(Some(reason::READ_MEM_STATS), false).collect::<Vec<_>>(),
            [Api::ReadMemStats]
        );
        assert_eq!(
            Api::causing(None, true).collect::<Vec<_>>(),
            [Api::Gc, Api::FreeOsMemory]
        );
        assert_eq!(
            Api::causing(Some(reason::GC_MARK_TERMINATION), false).count(),
            0
        );
    }
}
