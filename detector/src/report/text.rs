//! The human-readable rendering: findings first, then the evidence tables.
use std::fmt::Write;

use super::{Diagnosis, Inspection};
use crate::apis::Api;
use crate::collect::Culprit;
use crate::gobin::owner::Owner;
use crate::rules::{fmt_ns, fmt_pct};

pub fn render_diagnosis(d: &Diagnosis) -> String {
    let mut o = String::new();
    let t = &d.target;
    let c = &d.collected;
    let mut kind = vec![];
    if t.stripped {
        kind.push("stripped");
    }
    if t.pie {
        kind.push("PIE");
    }
    if t.cgo {
        kind.push("cgo");
    }
    let _ = writeln!(o, "detector diagnose: pid {} {}", t.pid, t.exe);
    let _ = writeln!(
        o,
        "  {}{}{}, watched {:.1} s, {} probes attached ({})",
        t.go_version,
        if kind.is_empty() { "" } else { ", " },
        kind.join(", "),
        c.duration_s,
        d.probes.attached,
        d.probes.attach_path.describe()
    );
    if let Some(after) = d.target_exited_after_s {
        let _ = writeln!(
            o,
            "  the process exited (or exec'd another program) {after:.1} s into the window: this report covers what was collected until then"
        );
    }
    for (sym, err) in &d.probes.failed {
        let _ = writeln!(o, "  warning: probe on {sym} not attached: {err}");
    }
    if let Some(w) = map_full_warning(&c.kernel_errors) {
        let _ = writeln!(o, "  warning: {w}");
    }
    let _ = writeln!(o);

    if d.findings.is_empty() {
        let _ = writeln!(o, "FINDINGS: none");
    } else {
        let _ = writeln!(o, "FINDINGS ({})", d.findings.len());
    }
    for f in &d.findings {
        let _ = writeln!(o, "  [{}] {}: {}", f.severity.label(), f.rule, f.title);
        let _ = writeln!(o, "      {}", f.summary);
        match (&f.culprit, &f.call_site) {
            (Some(c), _) => {
                let _ = writeln!(o, "      culprit: {}", culprit_text(c));
                if c.path.len() > 2 {
                    let _ = writeln!(o, "      path:    {}", c.path.join(" → "));
                }
            }
            (None, Some(s)) => {
                let _ = writeln!(o, "      call site: {} ({}:{})", s.function, s.file, s.line);
            }
            (None, None) => {}
        }
        for e in &f.evidence {
            let _ = writeln!(o, "      - {e}");
        }
        let _ = writeln!(o, "      cost: {}", f.cost);
        let _ = writeln!(o, "      fix:  {}", f.fix);
        let _ = writeln!(o, "      fine when: {}", f.fine_when);
    }
    let _ = writeln!(o);

    let _ = writeln!(o, "CALLS");
    let called: Vec<_> = c.calls.iter().filter(|s| s.calls > 0).collect();
    if called.is_empty() {
        let _ = writeln!(o, "  no probed runtime function was called");
    }
    for s in called {
        let _ = writeln!(
            o,
            "  {:<32} {:>9} calls {:>10.1}/s{}",
            s.api,
            s.calls,
            s.per_second,
            s.sampled
                .map(|f| format!(
                    "  (estimated: probed {:.1}% of the time, overhead budget)",
                    f * 100.0
                ))
                .unwrap_or_default()
        );
        for site in s.sites.iter().take(3) {
            let who = match &site.culprit {
                Some(c) if c.function != site.function => {
                    format!("{} ← {}", site.function, c.function)
                }
                _ => site.function.clone(),
            };
            let _ = writeln!(
                o,
                "      {:>9}  {who} ({}:{}){}",
                site.calls,
                site.file,
                site.line,
                site.excluded
                    .as_deref()
                    .map(|r| format!(" [not counted: {r}]"))
                    .unwrap_or_default()
            );
        }
        if !s.args.is_empty() {
            let args: Vec<String> = s.args.iter().take(6).map(|a| arg_text(s.func, a)).collect();
            let _ = writeln!(o, "      arguments: {}", args.join(", "));
        }
    }
    if let Some(cpu) = c.cpu_seconds {
        let _ = writeln!(
            o,
            "  process CPU: {:.2} cores{}",
            cpu / c.duration_s,
            match (c.cpu_profile_hz_max, c.calls_of(Api::Sigprof)) {
                (Some(hz), _) if hz > 0 => format!(", CPU profiler at {hz} Hz"),
                (_, Some(s)) if s.calls > 0 && cpu > 0.0 => format!(
                    ", {:.0} CPU profile samples per CPU-second",
                    s.calls as f64 / cpu
                ),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(o);

    if !c.stw_measured {
        let _ = writeln!(o, "STOP-THE-WORLD: not measured (runtime symbols missing)");
        return o;
    }
    let _ = writeln!(
        o,
        "STOP-THE-WORLD: {} pauses ({:.1}/s), {} stopped ({} of it stopping), {} of wall time",
        c.pauses_total,
        c.pauses_total as f64 / c.duration_s,
        fmt_ns(c.stopped_ns),
        fmt_ns(c.stopping_ns),
        fmt_pct(c.stopped_share)
    );
    if !c.pauses.is_empty() {
        let _ = writeln!(
            o,
            "  {:<34} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}  caused by",
            "reason", "pauses", "/s", "total", "p50", "p99", "max", "stopping", "share"
        );
    }
    for p in &c.pauses {
        let cause = match (&p.api, &p.call_site) {
            (Some(api), Some(site)) => format!("{api} from {}", site.function),
            (Some(api), None) => api.clone(),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "  {:<34} {:>7} {:>7.1} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}  {cause}",
            p.reason.name,
            p.pauses,
            p.per_second,
            fmt_ns(p.total_ns),
            fmt_ns(p.p50_ns),
            fmt_ns(p.p99_ns),
            fmt_ns(p.max_ns),
            p.stopping
                .as_ref()
                .map_or("-".into(), |st| fmt_ns(st.total_ns)),
            fmt_pct(p.stw_share)
        );
    }
    o
}

/// What full kernel maps cost this window, in one line (None when nothing).
pub fn map_full_warning(kernel_errors: &[u64]) -> Option<String> {
    use detector_common::errors as e;
    let n = |i: u32| kernel_errors.get(i as usize).copied().unwrap_or(0);
    let mut parts = vec![];
    let mut say = |i: u32, what: &str| {
        if n(i) > 0 {
            parts.push(format!("{} {what}", n(i)));
        }
    };
    say(
        e::CALL_MAP_FULL,
        "calls not attributed to a call site (in the totals)",
    );
    say(e::CALL_LOST, "calls lost (not in the totals)");
    say(e::STACK_MAP_FULL, "calling stacks not stored");
    say(e::STW_MAP_FULL, "pauses not recorded");
    say(e::STW_OPEN_MAP_FULL, "pause starts not recorded");
    say(e::FORCED_GC_MAP_FULL, "forced collections not tracked");
    (!parts.is_empty()).then(|| format!("kernel maps full: {}", parts.join(", ")))
}

fn arg_text(api: Api, a: &crate::collect::ArgCount) -> String {
    match api {
        Api::SaveBlockEvent => {
            let (rate, which) = ((a.value as u64) >> 8, a.value as u64 & 0xff);
            let profile = match which {
                detector_common::BUCKET_BLOCK => "block rate(ticks)",
                detector_common::BUCKET_MUTEX => "mutex fraction",
                _ => "profile",
            };
            format!("{profile}={rate} ×{}", a.calls)
        }
        Api::SetFinalizer => format!(
            "finalizer={} ×{}",
            a.function
                .as_deref()
                .unwrap_or(if a.value == 0 { "nil" } else { "?" }),
            a.calls
        ),
        _ => format!("{}={} ×{}", api.arg_name(), a.value, a.calls),
    }
}

pub fn render_inspection(i: &Inspection) -> String {
    let mut o = String::new();
    let b = &i.binary;
    let _ = writeln!(o, "{}", i.path);
    let _ = writeln!(
        o,
        "  Go {}  stripped: {}  PIE: {}  cgo: {}  functions: {}",
        if b.go_version_string.is_empty() {
            "(unknown)"
        } else {
            &b.go_version_string
        },
        yes(b.stripped),
        yes(b.pie),
        yes(b.cgo),
        b.function_count
    );
    if let Some(m) = &b.main_module {
        let _ = writeln!(o, "  main module: {m}");
    }
    let _ = writeln!(
        o,
        "  attach path on this kernel: {}",
        i.attach_path.map_or(
            "unknown without BPF privileges (uprobe_multi links on Linux 6.6+)",
            |p| p.describe()
        )
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  {:<30} {:<8} {:>12} {:>12} {:>12} notes",
        "API", "status", "address", "file offset", "probe at"
    );
    for f in &i.functions {
        let hex = |v: Option<u64>| v.map(|v| format!("{v:#x}")).unwrap_or_else(|| "-".into());
        let mut notes = vec![];
        if let Some(s) = f.symbol {
            notes.push(s.to_string());
        }
        let executed = match f.single_step {
            Some(true) => "single-stepped: a hit costs a second trap",
            _ => "emulated",
        };
        match f.probe_on {
            Some("entry") => notes.push(format!("no stack check: probe at the entry, {executed}")),
            Some("stack_check_jump") => notes.push(format!(
                "probe on the stack check's JBE, {executed} (a hit bound for morestack is not a call)"
            )),
            Some(_) => notes.push(format!("probe after the stack check, {executed}")),
            None => {}
        }
        if let Some(n) = &f.note {
            notes.push(n.clone());
        }
        let _ = writeln!(
            o,
            "  {:<30} {:<8} {:>12} {:>12} {:>12} {}",
            f.api,
            f.status,
            hex(f.address),
            hex(f.file_offset),
            hex(f.probe_address),
            notes.join("; ")
        );
    }
    o
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A culprit in one line: where it is, who owns it, what drives it.
pub fn culprit_text(c: &Culprit) -> String {
    let owner = match (c.owner, &c.module) {
        (Owner::Main, _) => "main module".to_string(),
        (Owner::Dependency, Some(m)) => format!("dependency {m}"),
        (Owner::Dependency, None) => "dependency".to_string(),
        (Owner::Std, _) => "standard library".to_string(),
        (Owner::Runtime, _) => "runtime".to_string(),
        (Owner::Foreign, _) => "not Go code".to_string(),
    };
    let mut t = format!("{} ({}:{}, {owner})", c.function, c.file, c.line);
    match (&c.driven_by, &c.within) {
        (Some(d), Some(w)) => t.push_str(&format!(
            ", dispatched by {d} for a request that went through {w}: something sends those \
             requests (a client polling an endpoint)"
        )),
        (Some(d), None) => t.push_str(&format!(
            ", entered from {d}: no program code on the stack, so something drives {d} to call it \
             (a client polling an endpoint, a timer)"
        )),
        _ => {}
    }
    if c.truncated {
        t.push_str(" (stack deeper than walked)");
    }
    t
}
