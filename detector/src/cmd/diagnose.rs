//! `detector diagnose --pid N`: attach, watch for a window, detach, judge, report.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::Format;
use crate::{
    collect::{self, Sample},
    exit::{self, Failure},
    gobin::AnalysisError,
    probes::{attach, plan},
    report::{render_diagnosis, Diagnosis, ProbeInfo},
    rules::{self, Thresholds},
    target::{self, Target},
};

pub struct Options {
    pub pid: u32,
    pub duration: Duration,
    pub format: Format,
    pub thresholds: Thresholds,
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
        exit::TARGET_EXITED,
        format!(
            "process {pid} exited {:.1} s into the diagnosis; probes are detached and no report is made: diagnose a process that keeps running for the whole --duration",
            after.as_secs_f64()
        ),
    )
}

pub fn run(o: Options) -> Result<u8, Failure> {
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
    let attached = match attach::attach(&plan, &target.exe_path, Some(o.pid)) {
        Ok(a) => a,
        Err(_) if !target.alive() => return Err(exited(o.pid, Duration::ZERO)),
        Err(e) => return Err(e.into()),
    };
    install_signal_handlers();
    // The window starts once every probe is in: counting from a baseline taken now
    // keeps calls and pauses from half-attached moments out of the numbers.
    let baseline = attached.snapshot();
    let start = Instant::now();
    let cpu_start = target::cpu_seconds(o.pid);
    let mut samples = Vec::new();
    let mut next_tick = start + TICK;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if !target.alive() {
            return Err(exited(o.pid, now - start));
        }
        let done = now - start >= o.duration || INTERRUPTED.load(Ordering::SeqCst);
        if now >= next_tick || done {
            samples.push(Sample {
                at_s: (now - start).as_secs_f64(),
                snap: attached.snapshot().since(&baseline),
                cpu_s: cpu_start
                    .zip(target::cpu_seconds(o.pid))
                    .map(|(a, b)| (b - a).max(0.0)),
                cpu_profile_hz: target.cpu_profile_hz(),
            });
            next_tick += TICK;
        }
        if done {
            break;
        }
    }
    let probes = ProbeInfo {
        attached: attached.attached,
        failed: attached.failures.clone(),
        skipped: plan.skipped.clone(),
    };
    // The report comes first: unregistering uprobes waits on the kernel (about 0.1 s
    // per probe under load), so the probes are detached after it is printed.

    let collected = collect::summarize(&target, &plan, &samples);
    let findings = rules::judge(&collected, &o.thresholds);
    let code = if findings.is_empty() {
        exit::NO_FINDINGS
    } else {
        exit::FINDINGS
    };
    let diagnosis = Diagnosis::new(&target, probes, findings, collected);
    match o.format {
        Format::Text => print!("{}", render_diagnosis(&diagnosis)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&diagnosis)
                .map_err(|e| Failure::new(exit::OTHER, e.to_string()))?
        ),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    drop(attached);
    Ok(code)
}
