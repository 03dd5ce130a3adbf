//! Calling stacks: who to blame for a call, and which calls no rule should count.
//!
//! A call is judged by its cost, whoever made it: a rule counts every call of its API
//! but those excluded here by what they are (each with its reason, shown in the
//! report). The culprit is the code a user can change: the first frame, from the API
//! outwards, owned by the main module or a dependency. When the whole stack is the
//! runtime and standard library (expvar's handler served by net/http, say), the
//! culprit is the standard library's entry point, named with what drives it.
use serde::{Deserialize, Serialize};

use crate::{
    apis::{Api, Probe},
    gobin::owner::Owner,
    target::Frame,
};

/// The code to change for a call, and the way from it down to the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub owner: Owner,
    /// Its module, when the build info names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Set when no frame of the stack is program code: the package whose code
    /// called `function`, the standard library's entry point (e.g. "net/http"
    /// serving a request to expvar's handler). Something drives that package: a
    /// client polling an endpoint, a timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driven_by: Option<String>,
    /// With `driven_by`: the program function the request went through before the
    /// standard library dispatched it to `function` (a middleware wrapping a mux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    /// Functions from the culprit down to the API, the culprit first.
    pub path: Vec<String>,
    /// The stack was deeper than the kernel walks: outer frames are unknown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Why some calls of an API count for no rule, whatever their rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "api")]
pub enum Exclusion {
    /// Made by the runtime itself: the memory profiler sampling an allocation's
    /// stack (`runtime.callers` from `mProf_Malloc`), its own tracebacks.
    Runtime,
    /// Made inside another probed API, whose own count covers the call:
    /// `runtime.Caller` runs `runtime.callers`, `debug.FreeOSMemory` runs
    /// `runtime.GC`, `trace.Start` runs `runtime.StartTrace`.
    WithinApi(Api),
    /// A finalizer the standard library sets, with its own function, on an object it
    /// owns, or clears on Close: `os` and `net` on each file descriptor (closed if
    /// the program forgets to), `os/exec` on process handles. One per open file or connection, and the
    /// program's fix is to close them, which the finalizer rule does not see.
    StdFinalizer,
}

impl Exclusion {
    /// One line for the report.
    pub fn reason(self) -> String {
        match self {
            Exclusion::Runtime => "the runtime's own use".into(),
            Exclusion::WithinApi(api) => format!("counted as {}", api.name()),
            Exclusion::StdFinalizer => {
                "the standard library's own finalizer on an object it owns".into()
            }
        }
    }
}

/// Whether `f` is the API's own code: the probed function, or the exported function
/// a program calls (`runtime.Callers` around the probed `runtime.callers`,
/// `runtime/debug.FreeOSMemory` around `runtime/debug.freeOSMemory`).
pub(super) fn is_api_frame(api: Api, symbol: &str, f: &Frame) -> bool {
    let name = api.name();
    f.function == symbol
        || f.function == name
        || f.function
            .strip_suffix(name)
            .is_some_and(|pkg_dir| pkg_dir.ends_with('/'))
}

/// Whether `f` is the API's own code, or that of an API seen through this one
/// (runtime.Caller, whose calls are seen at its runtime.(*Frames).Next call).
fn is_own_frame(api: Api, symbol: &str, f: &Frame) -> bool {
    is_api_frame(api, symbol, f)
        || Api::ALL.iter().any(|&other| {
            other.probe() == Probe::ObservedThrough(api) && is_api_frame(other, "", f)
        })
}

/// The culprit and exclusion of one calling stack of `api` (probed at `symbol`),
/// `frames` innermost first, starting at the call site. `probed` are the symbols of
/// every probed API with the API each stands for.
pub fn judge_path(
    api: Api,
    symbol: &str,
    frames: &[&Frame],
    truncated: bool,
    probed: &[(&str, Api)],
) -> (Option<Culprit>, Option<Exclusion>) {
    // The API's own frames are not callers: an exported wrapper inlined at the call
    // site, or, for a probe on an inlined body, the API and what was inlined into it
    // (Go 1.26 inlines runtime.gcount into NumGoroutine): everything up to the
    // outermost API frame.
    let own_at = frames.iter().rposition(|f| is_own_frame(api, symbol, f));
    // The path ends in what the program called: runtime.Caller rather than the
    // Frames.Next it is seen through.
    let called = own_at
        .and_then(|i| {
            Api::ALL.iter().copied().find(|&other| {
                other.probe() == Probe::ObservedThrough(api) && is_api_frame(other, "", frames[i])
            })
        })
        .unwrap_or(api);
    let own = own_at.map_or(0, |i| i + 1);
    let frames = &frames[own..];
    let Some(first) = frames.first() else {
        return (None, None);
    };
    let culprit_at = frames.iter().position(|f| f.owner.is_program());
    let below = &frames[..culprit_at.unwrap_or(frames.len())];
    let excluded = if let Some(other) = below.iter().find_map(|f| {
        probed
            .iter()
            .find(|(s, a)| *a != api && f.function == *s)
            .map(|(_, a)| *a)
    }) {
        Some(Exclusion::WithinApi(other))
    } else if first.owner == Owner::Runtime {
        Some(Exclusion::Runtime)
    } else {
        None
    };
    let path = |upto: usize| -> Vec<String> {
        let mut p: Vec<String> = frames[..=upto]
            .iter()
            .rev()
            .map(|f| f.function.clone())
            .collect();
        p.dedup();
        p.push(called.name().to_string());
        p
    };
    let culprit_of = |i: usize, driven_by: Option<String>, within: Option<String>| {
        let f = frames[i];
        Culprit {
            function: f.function.clone(),
            file: f.file.clone(),
            line: f.line,
            owner: f.owner,
            module: f.module.clone(),
            driven_by,
            within,
            path: path(i),
            truncated,
        }
    };
    let culprit = match culprit_at {
        // The program handed a request back to the package that serves it (a
        // middleware calling net/http's mux, which dispatched to expvar's or pprof's
        // handler): the cost is that handler's, reached by whoever sends the request.
        Some(i) if !truncated && i > 0 && redispatched(frames, i) => std_entry(&frames[..i])
            .map(|(j, d)| culprit_of(j, d, Some(frames[i].function.clone())))
            .or_else(|| Some(culprit_of(i, None, None))),
        Some(i) => Some(culprit_of(i, None, None)),
        None => std_entry(frames).map(|(i, driven_by)| culprit_of(i, driven_by, None)),
    };
    (culprit, excluded)
}

/// Whether the standard-library frames right below the program frame `i` belong to
/// the package at the root of the goroutine (net/http's connection goroutine): the
/// program called back into the package that serves it, which then dispatched.
fn redispatched(frames: &[&Frame], i: usize) -> bool {
    let pkg = |f: &Frame| crate::gobin::owner::package_of(&f.function).map(str::to_owned);
    let below = frames[i - 1];
    let root = frames.iter().rev().find(|f| f.owner != Owner::Runtime);
    below.owner == Owner::Std && root.is_some_and(|r| r.owner == Owner::Std && pkg(r) == pkg(below))
}

/// In a stack of runtime and standard-library frames only: the entry point, the
/// first frame (from the outermost) of another package than the one that drives it,
/// and that driving package. From the outermost frame, the runtime's are skipped
/// (`runtime.goexit`); the next frame's package drives (net/http's connection
/// goroutine), and the first frame of another package is its entry point (expvar's
/// handler). Without one, the innermost non-runtime frame, undriven.
fn std_entry(frames: &[&Frame]) -> Option<(usize, Option<String>)> {
    let pkg = |f: &Frame| crate::gobin::owner::package_of(&f.function).map(str::to_owned);
    let mut inward = frames
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, f)| f.owner != Owner::Runtime);
    let (_, outer) = inward.next()?;
    let driver = pkg(outer);
    for (i, f) in inward {
        // A compiler-generated wrapper (a pointer method around a value one) is not
        // an entry point: the method it wraps, next inward, is.
        if pkg(f) != driver && f.file != "<autogenerated>" {
            return Some((i, driver));
        }
    }
    let innermost = frames.iter().position(|f| f.owner != Owner::Runtime)?;
    Some((innermost, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, owner: Owner) -> Frame {
        Frame {
            function: function.into(),
            file: format!("{function}.go"),
            line: 7,
            owner,
            module: None,
        }
    }

    fn judge(api: Api, symbol: &str, frames: &[Frame]) -> (Option<Culprit>, Option<Exclusion>) {
        let refs: Vec<&Frame> = frames.iter().collect();
        let probed = [
            ("runtime.Caller", Api::Caller),
            ("runtime.callers", Api::Callers),
            ("runtime/debug.freeOSMemory", Api::FreeOsMemory),
            ("runtime.GC", Api::Gc),
        ];
        judge_path(api, symbol, &refs, false, &probed)
    }

    #[test]
    fn culprit_is_the_first_program_frame() {
        use Owner::*;
        let (c, ex) = judge(
            Api::Caller,
            "runtime.Caller",
            &[
                frame("log.(*Logger).output", Std),
                frame("log.Printf", Std),
                frame("main.handler", Main),
                frame("net/http.HandlerFunc.ServeHTTP", Std),
                frame("runtime.goexit", Runtime),
            ],
        );
        let c = c.unwrap();
        assert_eq!(c.function, "main.handler");
        assert_eq!(
            c.path,
            [
                "main.handler",
                "log.Printf",
                "log.(*Logger).output",
                "runtime.Caller"
            ]
        );
        assert_eq!(c.driven_by, None);
        assert_eq!(ex, None);
    }

    #[test]
    fn a_standard_library_stack_names_its_entry_point_and_driver() {
        use Owner::*;
        let (c, ex) = judge(
            Api::ReadMemStats,
            "runtime.ReadMemStats",
            &[
                frame("expvar.memstats", Std),
                frame("expvar.Func.Value", Std),
                frame("expvar.expvarHandler", Std),
                frame("net/http.HandlerFunc.ServeHTTP", Std),
                frame("net/http.(*ServeMux).ServeHTTP", Std),
                frame("net/http.(*conn).serve", Std),
                frame("runtime.goexit", Runtime),
            ],
        );
        let c = c.unwrap();
        assert_eq!(c.function, "expvar.expvarHandler");
        assert_eq!(c.driven_by.as_deref(), Some("net/http"));
        assert_eq!(ex, None, "judged by cost: counted");
    }

    #[test]
    fn a_handler_behind_program_middleware_is_the_culprit() {
        use Owner::*;
        let (c, _) = judge(
            Api::Stack,
            "runtime.Stack",
            &[
                frame("runtime/pprof.writeGoroutineStacks", Std),
                frame("net/http/pprof.handler.ServeHTTP", Std),
                frame("net/http/pprof.Index", Std),
                frame("net/http.HandlerFunc.ServeHTTP", Std),
                frame("net/http.(*ServeMux).ServeHTTP", Std),
                frame(
                    "github.com/prometheus/exporter-toolkit/web.(*webHandler).ServeHTTP",
                    Dependency,
                ),
                frame("net/http.serverHandler.ServeHTTP", Std),
                frame("net/http.(*conn).serve", Std),
                frame("runtime.goexit", Runtime),
            ],
        );
        let c = c.unwrap();
        assert_eq!(c.function, "net/http/pprof.Index");
        assert_eq!(c.driven_by.as_deref(), Some("net/http"));
        assert_eq!(
            c.within.as_deref(),
            Some("github.com/prometheus/exporter-toolkit/web.(*webHandler).ServeHTTP")
        );
        // Program code that calls a library (fmt, log) is the culprit itself.
        let (c, _) = judge(
            Api::ReadMemStats,
            "runtime.ReadMemStats",
            &[
                frame("expvar.memstats", Std),
                frame("fmt.Fprintf", Std),
                frame(
                    "go.etcd.io/etcd/etcdserver/api/etcdhttp.serveVars.func1",
                    Main,
                ),
                frame("expvar.Do", Std),
                frame("go.etcd.io/etcd/etcdserver/api/etcdhttp.serveVars", Main),
                frame("net/http.HandlerFunc.ServeHTTP", Std),
                frame("net/http.(*conn).serve", Std),
            ],
        );
        assert_eq!(
            c.unwrap().function,
            "go.etcd.io/etcd/etcdserver/api/etcdhttp.serveVars.func1"
        );
    }

    #[test]
    fn calls_inside_another_probed_api_or_the_runtime_are_excluded() {
        use Owner::*;
        let (c, ex) = judge(
            Api::Callers,
            "runtime.callers",
            &[
                frame("runtime.Caller", Runtime),
                frame("main.logLine", Main),
            ],
        );
        assert_eq!(ex, Some(Exclusion::WithinApi(Api::Caller)));
        assert_eq!(c.unwrap().function, "main.logLine");
        // runtime.Callers is the API itself (inlined at the site), not a caller.
        let (c, ex) = judge(
            Api::Callers,
            "runtime.callers",
            &[
                frame("runtime.Callers", Runtime),
                frame("main.logLine", Main),
            ],
        );
        assert_eq!((c.unwrap().function.as_str(), ex), ("main.logLine", None));
        let (_, ex) = judge(
            Api::Gc,
            "runtime.GC",
            &[
                frame("runtime/debug.freeOSMemory", Std),
                frame("runtime/debug.FreeOSMemory", Std),
                frame("main.tick", Main),
            ],
        );
        assert_eq!(ex, Some(Exclusion::WithinApi(Api::FreeOsMemory)));
        let (_, ex) = judge(
            Api::Callers,
            "runtime.callers",
            &[
                frame("runtime.mProf_Malloc", Runtime),
                frame("runtime.mallocgc", Runtime),
                frame("main.alloc", Main),
            ],
        );
        assert_eq!(ex, Some(Exclusion::Runtime));
        // A probe on an inlined body sits inside the API and what it inlines.
        let (c, ex) = judge(
            Api::NumGoroutine,
            "",
            &[
                frame("runtime.gcount", Runtime),
                frame("runtime.NumGoroutine", Runtime),
                frame("main.dispatch", Main),
            ],
        );
        let c = c.unwrap();
        assert_eq!((c.function.as_str(), ex), ("main.dispatch", None));
        assert_eq!(c.path, ["main.dispatch", "runtime.NumGoroutine"]);
        // runtime.Caller is seen at its Frames.Next call: Caller is the API's own.
        let (c, ex) = judge(
            Api::CallersFrames,
            "runtime.(*Frames).Next",
            &[
                frame("runtime.Caller", Runtime),
                frame("main.logLine", Main),
            ],
        );
        let c = c.unwrap();
        assert_eq!((c.function.as_str(), ex), ("main.logLine", None));
        assert_eq!(c.path, ["main.logLine", "runtime.Caller"]);
    }
}
