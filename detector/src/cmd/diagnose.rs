//! `detector diagnose --pid N`: attach, watch for a window, detach, judge, report.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::Format;
use crate::{
    exit::{self, Failure},
    gobin::AnalysisError,
    probes::{attach, budget::Budget, plan},
    report::render_diagnosis,
    rules::Thresholds,
    session::{self, Host},
    target::Target,
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

/// How often the duty cycle looks for probes that turned hot between ticks.
const LOOK: Duration = Duration::from_millis(50);

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
    let mut host: Host<()> = Host::new(attach::Probes::load()?, o.budget, TICK);
    match host.attach((), plan, &target.exe_path, Some(o.pid)) {
        Ok(_) => {}
        Err(_) if !target.alive() => return Err(exited(o.pid, Duration::ZERO)),
        Err(e) => return Err(e.into()),
    }
    // Gone while the probes went in: said at once, not at the first look in the loop.
    if !target.alive() {
        return Err(exited(o.pid, Duration::ZERO));
    }
    install_signal_handlers();
    // The window starts once every probe is in: counting from this first tick keeps
    // calls and pauses from half-attached moments out of the numbers.
    let start = Instant::now();
    let end = start + o.duration;
    let mut ticks = vec![host.tick(start).process((), &target)];
    let mut next_tick = start + TICK;
    let interrupted = || INTERRUPTED.load(Ordering::SeqCst);
    loop {
        host.wait(next_tick.min(end), LOOK, || {
            interrupted() || !target.alive()
        });
        let now = Instant::now();
        if !target.alive() {
            return Err(exited(o.pid, now - start));
        }
        ticks.push(host.tick(now).process((), &target));
        while next_tick <= now {
            next_tick += TICK;
        }
        if now >= end || interrupted() {
            break;
        }
    }
    // The report comes first: unregistering uprobes waits on the kernel (about 0.1 s
    // per probe under load), so the probes are detached after it is printed.
    let session = host.session(()).expect("attached above");
    let diagnosis = session::judge(&target, session, &ticks, &o.thresholds, o.budget);
    let code = if diagnosis.findings.is_empty() {
        exit::Code::NoFindings
    } else {
        exit::Code::Findings
    };
    let text = match o.format {
        Format::Text => render_diagnosis(&diagnosis),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&diagnosis)
                .map_err(|e| Failure::new(exit::Code::Other, e.to_string()))?
        ),
    };
    let written = super::write_stdout(&text);
    drop(host);
    written?;
    Ok(code)
}
