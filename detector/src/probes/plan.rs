//! The probe plan for one binary: for each runtime function, which eBPF program,
//! at which file offset, with which cookie. Pure: computed from the binary alone.
use detector_common::{
    cookie, stw_pending_cookie, ArgMode, COOKIE_CALLER_IS_IP, COOKIE_FORCED_GC_ENTER,
    COOKIE_ON_STACK_CHECK, RESTART_GO119, RESTART_GO121, RESTART_START_IN_RCX,
    RESTART_START_RCX_STOPPED_RDI, STW_REASON_FROM_AL,
};
use serde::Serialize;

use crate::{
    apis::{Api, Presence, Probe},
    gobin::{GoBinary, GoVersion},
};

/// The eBPF program a probe runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    CountCall,
    StwReason,
    StwStart,
    StwStopped,
    StwStopping,
    StwRestart,
    StwEnd,
    ForcedGcExit,
}

impl Program {
    /// The program's name in the eBPF object.
    pub fn name(self) -> &'static str {
        match self {
            Program::CountCall => "count_call",
            Program::StwReason => "stw_reason",
            Program::StwStart => "stw_start",
            Program::StwStopped => "stw_stopped",
            Program::StwStopping => "stw_stopping",
            Program::StwRestart => "stw_restart",
            Program::StwEnd => "stw_end",
            Program::ForcedGcExit => "forced_gc_exit",
        }
    }
}

/// A bound on inline-site probes per API (each is one uprobe in the kernel).
const MAX_INLINED_SITES: usize = 64;

/// `g.m` offset (amd64, every supported release) and `m.curg` offset in Go 1.19/1.20,
/// the only releases that need them (go-runtime-facts.md; checked by the e2e tests,
/// which count every Go 1.19 "read mem stats" pause under its reason).
const G_M_OFFSET: u16 = 48;
const M_CURG_OFFSET_GO119: u16 = 192;

/// One uprobe to attach.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedProbe {
    /// The API it observes (`runtime.GC`'s RET probes: [`Api::Gc`]).
    pub api: Api,
    pub symbol: &'static str,
    pub program: Program,
    /// Virtual address of the probed instruction (in the file's layout).
    pub vaddr: u64,
    pub file_offset: u64,
    pub cookie: u64,
    /// The kernel cannot emulate the probed instruction and single-steps it: each hit
    /// costs a second trap (see `probes::budget`).
    pub single_step: bool,
}

/// A call probe's identity, indexed by the probe id in the cookie.
#[derive(Clone, Debug, Serialize)]
pub struct CallProbe {
    pub api: Api,
    pub symbol: &'static str,
    /// How the kernel records its argument.
    #[serde(skip)]
    pub mode: ArgMode,
}

/// A catalog function that will not be probed, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub func: Api,
    pub symbol: Option<&'static str>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub probes: Vec<PlannedProbe>,
    /// Index = probe id carried in the cookie of `count_call` probes.
    pub call_probes: Vec<CallProbe>,
    pub skipped: Vec<Skipped>,
    /// False when stop-the-world cannot be measured (a symbol is missing).
    pub stw: bool,
}

/// Plans every probe for `bin` (Go version `v`).
pub fn plan(bin: &GoBinary, v: GoVersion) -> Plan {
    let mut plan = Plan::default();

    // Counted calls: call probe ids follow the table's order.
    for &api in Api::ALL {
        match api.probe() {
            Probe::Call(mode) => plan_call(bin, v, api, mode, &mut plan),
            Probe::InlinedSites => plan_inlined_sites(bin, v, api, &mut plan),
            Probe::ObservedThrough(_) | Probe::Pause => {}
        }
    }

    // Stop-the-world: a pause opens at stopTheWorldWithSema and closes at each RET of
    // startTheWorldWithSema. Go 1.19/1.20 pass the reason as a string to stopTheWorld.
    let string_reasons = !v.at_least(1, 21);
    let mut stw = Vec::new();
    let start = locate(bin, v, Api::StwStart, &mut plan.skipped);
    let end = locate(bin, v, Api::StwEnd, &mut plan.skipped);
    if let (Some((start_sym, start_pt)), Some((end_sym, end_pt))) = (start, end) {
        if !end_pt.rets.is_empty() {
            stw.push(PlannedProbe {
                api: Api::StwStart,
                symbol: start_sym,
                program: Program::StwStart,
                vaddr: start_pt.probe_vaddr,
                file_offset: start_pt.probe_file_offset,
                cookie: entry_cookie(
                    &start_pt,
                    if string_reasons {
                        stw_pending_cookie(G_M_OFFSET, M_CURG_OFFSET_GO119)
                    } else {
                        STW_REASON_FROM_AL
                    },
                ),
                single_step: false,
            });
            // Every goroutine stopped: the end of the stopping part.
            for (vaddr, off) in start_pt.rets.iter().zip(&start_pt.ret_file_offsets) {
                stw.push(PlannedProbe {
                    api: Api::StwStart,
                    symbol: start_sym,
                    program: Program::StwStopped,
                    vaddr: *vaddr,
                    file_offset: *off,
                    cookie: 0,
                    single_step: false,
                });
            }
            // Go 1.22 passes no stopping timestamp: its duration is read where
            // stopTheWorldWithSema records it.
            if v.at_least(1, 22) && !v.at_least(1, 23) {
                for (vaddr, off) in stopping_records(bin, start_pt.entry) {
                    stw.push(PlannedProbe {
                        api: Api::StwStart,
                        symbol: start_sym,
                        program: Program::StwStopping,
                        vaddr,
                        file_offset: off,
                        cookie: 0,
                        single_step: false,
                    });
                }
            }
            // The runtime's own timestamps, in startTheWorldWithSema's arguments.
            stw.push(PlannedProbe {
                api: Api::StwEnd,
                symbol: end_sym,
                program: Program::StwRestart,
                vaddr: end_pt.probe_vaddr,
                file_offset: end_pt.probe_file_offset,
                cookie: entry_cookie(
                    &end_pt,
                    if v.at_least(1, 23) {
                        RESTART_START_RCX_STOPPED_RDI
                    } else if v.at_least(1, 22) {
                        RESTART_START_IN_RCX
                    } else if v.at_least(1, 21) {
                        RESTART_GO121
                    } else {
                        RESTART_GO119
                    },
                ),
                single_step: false,
            });
            for (vaddr, off) in end_pt.rets.iter().zip(&end_pt.ret_file_offsets) {
                stw.push(PlannedProbe {
                    api: Api::StwEnd,
                    symbol: end_sym,
                    program: Program::StwEnd,
                    vaddr: *vaddr,
                    file_offset: *off,
                    cookie: 0,
                    single_step: false,
                });
            }
        }
    }
    if string_reasons && !stw.is_empty() {
        // Without it pauses are still measured, all "without a reason".
        if let Some((sym, pt)) = locate(bin, v, Api::StwRequest, &mut plan.skipped) {
            stw.push(PlannedProbe {
                api: Api::StwRequest,
                symbol: sym,
                program: Program::StwReason,
                vaddr: pt.probe_vaddr,
                file_offset: pt.probe_file_offset,
                cookie: entry_cookie(&pt, 0),
                single_step: false,
            });
        }
    }
    plan.stw = !stw.is_empty();
    plan.probes.extend(stw);
    for p in &mut plan.probes {
        p.single_step = !bin
            .read_bytes_at(p.vaddr, 15)
            .is_some_and(crate::gobin::prologue::kernel_emulates);
    }
    plan
}

/// An entry probe's cookie: flagged when the probe sits on the stack check's JBE, so
/// that its program ignores the hits bound for morestack (the call's re-entry is hit
/// again).
fn entry_cookie(point: &crate::gobin::ProbePoint, cookie: u64) -> u64 {
    if point.on_stack_check_jump {
        cookie | COOKIE_ON_STACK_CHECK
    } else {
        cookie
    }
}

/// The calls of `(*timeHistogram).record` in the Go 1.22 `stopTheWorldWithSema` at
/// `entry` (one for GC pauses, one for the others): (address, file offset).
fn stopping_records(bin: &GoBinary, entry: u64) -> Vec<(u64, u64)> {
    let (Some(f), Some(record)) = (
        bin.func_at(entry),
        bin.func_by_name("runtime.(*timeHistogram).record"),
    ) else {
        return vec![];
    };
    bin.call_sites(&f, record.entry)
        .into_iter()
        .take(2)
        .filter_map(|site| Some((site, bin.file_offset(site)?)))
        .collect()
}

/// A counted function: one probe at its probe point; `runtime.GC` also gets one on
/// each RET, so that collector pauses inside it are marked forced.
fn plan_call(bin: &GoBinary, v: GoVersion, api: Api, mode: ArgMode, plan: &mut Plan) {
    let Some((symbol, point)) = locate(bin, v, api, &mut plan.skipped) else {
        return;
    };
    let probe_id = plan.call_probes.len() as u32;
    plan.call_probes.push(CallProbe { api, symbol, mode });
    let forced = api == Api::Gc && !point.rets.is_empty();
    plan.probes.push(PlannedProbe {
        api,
        symbol,
        program: Program::CountCall,
        vaddr: point.probe_vaddr,
        file_offset: point.probe_file_offset,
        cookie: entry_cookie(
            &point,
            cookie(probe_id, mode) | if forced { COOKIE_FORCED_GC_ENTER } else { 0 },
        ),
        single_step: false,
    });
    if forced {
        for (vaddr, off) in point.rets.iter().zip(&point.ret_file_offsets) {
            plan.probes.push(PlannedProbe {
                api,
                symbol,
                program: Program::ForcedGcExit,
                vaddr: *vaddr,
                file_offset: *off,
                cookie: 0,
                single_step: false,
            });
        }
    }
}

/// An always-inlined API: a probe on the first instruction of each inlined body in
/// user code (found through the pclntab inline tree); the probe address is the site.
fn plan_inlined_sites(bin: &GoBinary, v: GoVersion, api: Api, plan: &mut Plan) {
    let Presence::Inlined { callee } = api.presence(v) else {
        return;
    };
    let sites: Vec<_> = inlined_sites(bin, callee)
        .into_iter()
        .take(MAX_INLINED_SITES)
        .collect();
    if sites.is_empty() {
        plan.skipped.push(Skipped {
            func: api,
            symbol: None,
            reason: "always inlined, and not inlined into any user function of this binary".into(),
        });
        return;
    }
    let probe_id = plan.call_probes.len() as u32;
    plan.call_probes.push(CallProbe {
        api,
        symbol: callee,
        mode: ArgMode::None,
    });
    for s in sites {
        plan.probes.push(PlannedProbe {
            api,
            symbol: callee,
            program: Program::CountCall,
            vaddr: s.probe_vaddr,
            file_offset: s.probe_file_offset,
            cookie: cookie(probe_id, ArgMode::None) | COOKIE_CALLER_IS_IP,
            single_step: false,
        });
    }
}

/// Where `callee` was inlined outside the runtime (the runtime's own uses are not
/// probed; the standard library's are, as its calls are judged by their cost too).
pub fn inlined_sites(bin: &GoBinary, callee: &str) -> Vec<crate::gobin::InlinedCall> {
    bin.inlined_calls(callee)
        .into_iter()
        .filter(|s| bin.owner_of(&s.caller).owner != crate::gobin::owner::Owner::Runtime)
        .collect()
}

/// Finds an API's probe point, or records why it is skipped.
fn locate(
    bin: &GoBinary,
    v: GoVersion,
    api: Api,
    skipped: &mut Vec<Skipped>,
) -> Option<(&'static str, crate::gobin::ProbePoint)> {
    let symbol = match api.presence(v) {
        Presence::Symbol(s) => s,
        Presence::Inlined { .. } => {
            skipped.push(Skipped {
                func: api,
                symbol: None,
                reason: "always inlined by the compiler".into(),
            });
            return None;
        }
    };
    let Some(f) = bin.func_by_name(symbol) else {
        skipped.push(Skipped {
            func: api,
            symbol: Some(symbol),
            reason: "not in this binary (the program does not use it)".into(),
        });
        return None;
    };
    match bin.probe_point(&f) {
        Ok(p) => Some((symbol, p)),
        Err(e) => {
            skipped.push(Skipped {
                func: api,
                symbol: Some(symbol),
                reason: e.to_string(),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::gobin::{fuzzing, version::NEWEST_TESTED, GoBinary};

    /// The committed fuzz corpus (`fuzz/corpus`) replays through the parser and the
    /// plan, as the fuzz targets run them (their hook is `fuzz/src/lib.rs`). The `elf`
    /// seeds are real Go binaries: each must plan probes.
    #[test]
    fn fuzz_corpus_replays_through_the_plan() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let planned = std::cell::Cell::new(0usize);
        let hook = |bin: &GoBinary| {
            let info = bin.info();
            let _ = serde_json::to_string(info);
            let plan = super::plan(bin, info.go_version.unwrap_or(NEWEST_TESTED));
            planned.set(planned.get() + usize::from(!plan.probes.is_empty()));
        };
        type Target<'a> = fn(&[u8], fuzzing::Hook<'a>);
        let targets: [(&str, Target); 3] = [
            ("pclntab", fuzzing::pclntab),
            ("symtab", fuzzing::symtab),
            ("elf", fuzzing::elf),
        ];
        for (target, run) in targets {
            let dir = root.join(target);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut replayed = 0;
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let before = planned.get();
                run(&std::fs::read(&path).expect("read"), &hook);
                replayed += 1;
                let seed = path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-");
                if target == "elf" && seed {
                    assert!(
                        planned.get() > before,
                        "{}: no probe planned",
                        path.display()
                    );
                }
            }
            assert!(replayed > 0, "nothing replayed from {}", dir.display());
        }
    }
}
