//! `detector diagnose --pid N`: attach, watch for a window, detach, judge, report.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use super::Format;
use crate::{
    collect::{self, Sample},
    exit::{self, Failure},
    gobin::AnalysisError,
    probes::{
        attach::{self, Snapshot},
        budget::{Budget, DutyCycle, Extrapolator},
        plan,
    },
    report::{render_diagnosis, Diagnosis, ProbeInfo},
    rules::{self, Thresholds},
    target::{self, Target},
};

pub struct Options {
    pub pid: u32,
    pub duration: Duration,
    pub format: Format,
    pub thresholds: Thresholds,
    pub budget: Budget,
}

/// Maps are read once per tick: rates and "sustained" are judged on these ticks.
const TICK: Duration = Duration::from_secs(1);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the window early; the report covers what was seen.
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn exited(pid: u32, after: Duration) -> Failure {
    Failure::new(
        exit::Code::TargetExited,
        format!(
            "process {pid} exited {:.1} s into the diagnosis; probes are detached and no report is made: diagnose a process that keeps running for the whole --duration",
            after.as_secs_f64()
        ),
    )
}

pub fn run(o: Options) -> Result<crate::exit::Code, Failure> {
    let target = Target::open(o.pid)?;
    let info = target.binary.info().clone();
    let version = info.go_version.ok_or_else(|| {
        Failure::from(AnalysisError::UnsupportedGoVersion {
            version: "unknown (no build info)".into(),
        })
    })?;
    if !version.is_supported() {
        return Err(AnalysisError::UnsupportedGoVersion {
            version: info.go_version_string.clone(),
        }
        .into());
    }
    attach::check_privileges()?;

    let plan = plan::plan(&target.binary, version);
    let mut attached = match attach::attach(&plan, &target.exe_path, Some(o.pid)) {
        Ok(a) => a,
        Err(_) if !target.alive() => return Err(exited(o.pid, Duration::ZERO)),
        Err(e) => return Err(e.into()),
    };
    // Gone while the probes went in: said at once, not at the first look in the loop.
    if !target.alive() {
        return Err(exited(o.pid, Duration::ZERO));
    }
    install_signal_handlers();
    // The window starts once every probe is in: counting from a baseline taken now
    // keeps calls and pauses from half-attached moments out of the numbers.
    let baseline = attached.snapshot();
    let start = Instant::now();
    let started = SystemTime::now();
    let cpu_start = target::cpu_seconds(o.pid);
    let mut duty = DutyCycle::new(&plan, attached.parts().1, 0, o.budget, TICK, start);
    let mut extrapolate = Extrapolator::default();
    let on_start = duty.on_seconds(start);
    extrapolate.update(&Snapshot::default(), &on_start, start);
    let mut samples = Vec::new();
    let mut next_tick = start + TICK;
    loop {
        let wake = duty.next_deadline().map_or(next_tick, |d| d.min(next_tick));
        let nap = wake.saturating_duration_since(Instant::now());
        std::thread::sleep(nap.min(Duration::from_millis(50)));
        let now = Instant::now();
        if !target.alive() {
            return Err(exited(o.pid, now - start));
        }
        {
            let (probes, live) = attached.parts();
            duty.cut_surges(now, probes, live);
            duty.poll(now, probes, live);
        }
        let done = now - start >= o.duration || INTERRUPTED.load(Ordering::SeqCst);
        let tick = now >= next_tick || done;
        let due = duty.due(now) && !done;
        if !tick && !due {
            continue;
        }
        let raw = attached.snapshot();
        if tick {
            let on = duty.on_seconds(now);
            for (probe, rate) in duty.take_surges() {
                extrapolate.surged(probe, rate);
            }
            samples.push(Sample {
                at_s: (now - start).as_secs_f64(),
                snap: extrapolate.update(&raw.since(&baseline), &on, now),
                cpu_s: cpu_start
                    .zip(target::cpu_seconds(o.pid))
                    .map(|(a, b)| (b - a).max(0.0)),
                cpu_profile_hz: target.cpu_profile_hz(),
                on_s: on
                    .iter()
                    .map(|(id, s)| (*id, s - on_start.get(id).unwrap_or(&0.0)))
                    .collect(),
            });
            next_tick += TICK;
        }
        if due {
            let (probes, live) = attached.parts();
            duty.evaluate(now, &raw, &plan, probes, live);
        }
        if done {
            break;
        }
    }
    let probes = ProbeInfo {
        attached: attached.attached,
        failed: attached.failures.clone(),
        skipped: plan.skipped.clone(),
        overhead_budget_percent: o.budget.share_of_core * 100.0,
    };
    // The report comes first: unregistering uprobes waits on the kernel (about 0.1 s
    // per probe under load), so the probes are detached after it is printed.

    let collected = collect::summarize(&target, &plan, &samples, started);
    let findings = rules::judge(&collected, &o.thresholds);
    let code = if findings.is_empty() {
        exit::Code::NoFindings
    } else {
        exit::Code::Findings
    };
    let diagnosis = Diagnosis::new(&target, probes, findings, collected);
    let text = match o.format {
        Format::Text => render_diagnosis(&diagnosis),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&diagnosis)
                .map_err(|e| Failure::new(exit::Code::Other, e.to_string()))?
        ),
    };
    let written = super::write_stdout(&text);
    drop(attached);
    written?;
    Ok(code)
}
