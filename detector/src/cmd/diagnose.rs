//! `detector diagnose`: attach to one process (`--pid`), every process of matching
//! executables (`--exe GLOB`) or a command it starts (`-- CMD ARGS`), watch for a
//! window, detach, judge, report each.
//!
//! A target that exits during the window keeps what was collected until then: its
//! report says when it exited (`target_exited_after_s`) and the exit code is 8. With
//! several targets the exit code is the worst of theirs (8 over 1 over 0).
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::Format;
use crate::{
    collect::Tick,
    exit::{self, Failure},
    gobin::{AnalysisError, GoBinary},
    probes::{attach, budget::Budget, plan},
    report::{render_diagnosis, Diagnosis},
    rules::Thresholds,
    session::{self, Host},
    target::{Target, TargetError},
    watch::discover::{self, BinaryKey, Filter},
};

/// What to diagnose: exactly one of `--pid`, `--exe`, `-- CMD`.
pub enum Targets {
    Pid(u32),
    /// Every running process whose executable (path or file name) matches the glob,
    /// as `watch --exe` matches.
    Exe(String),
    /// A command to start, diagnose, and stop at the end of the window.
    Command(Vec<String>),
}

pub struct Options {
    pub targets: Targets,
    pub duration: Duration,
    pub format: Format,
    pub thresholds: Thresholds,
    pub budget: Budget,
}

/// Maps are read once per tick: rates and "sustained" are judged on these ticks.
const TICK: Duration = Duration::from_secs(1);

/// How often the duty cycle looks for probes that turned hot between ticks.
const LOOK: Duration = Duration::from_millis(50);

/// `-- CMD`: how long the command has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

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

/// One process being diagnosed.
struct Watched {
    target: Target,
    ticks: Vec<Tick>,
    /// When it exited, from the start of the window.
    exited_after: Option<Duration>,
}

/// The command started by `-- CMD`, stopped when dropped: SIGTERM to its process
/// group, then SIGKILL after [`STOP_GRACE`].
struct Started(Child);

impl Started {
    fn spawn(argv: &[String]) -> Result<Started, Failure> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| Failure::new(exit::Code::Usage, "-- needs a command to run"))?;
        // stdout carries the report: the command's own output goes to stderr.
        use std::os::{fd::AsFd, unix::process::CommandExt};
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            // Its own process group: Ctrl-C ends the window, not the command.
            .process_group(0);
        // If detector is killed (no chance to stop it), the command gets SIGTERM from
        // the kernel rather than running on alone.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                exit::Code::NoSuchProcess
            } else {
                exit::Code::Other
            };
            Failure::new(
                code,
                format!("cannot start {prog:?}: {e}; check the command after --"),
            )
        })?;
        Ok(Started(child))
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let pgid = self.0.id() as libc::pid_t;
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process's target, after checking its Go version is supported.
fn checked(t: Target) -> Result<Target, Failure> {
    let info = t.binary.info();
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
    Ok(t)
}

/// Every running Go process whose executable matches `glob`; each binary analysed once.
fn matching(glob: &str) -> Result<Vec<Target>, Failure> {
    let filter = Filter::new(vec![], &[glob.to_string()], &[])
        .map_err(|e| Failure::new(exit::Code::Usage, format!("--exe {e}")))?;
    let procs: Vec<_> = discover::scan(std::process::id())
        .into_iter()
        .filter(|p| filter.wants(p))
        .collect();
    let mut binaries: HashMap<BinaryKey, Option<Arc<GoBinary>>> = HashMap::new();
    let mut out = vec![];
    for p in &procs {
        let binary = binaries.entry(p.key).or_insert_with(|| {
            GoBinary::open(std::path::Path::new(&format!("/proc/{}/exe", p.pid)))
                .ok()
                .map(Arc::new)
        });
        let Some(binary) = binary.clone() else {
            continue; // not Go, not amd64, or gone
        };
        let t = Target::with_binary(p.pid, p.exe.clone(), binary);
        if let Ok(t) = checked(t) {
            if t.alive() {
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        return Err(Failure::new(
            exit::Code::NoSuchProcess,
            format!(
                "no running Go process (supported version) matches --exe {glob:?} ({} processes match it); check the pattern against `ls -l /proc/*/exe` (it matches the full path or the file name)",
                procs.len()
            ),
        ));
    }
    Ok(out)
}

pub fn run(o: Options) -> Result<crate::exit::Code, Failure> {
    let mut started = None;
    let targets = match &o.targets {
        Targets::Pid(pid) => vec![checked(Target::open(*pid)?)?],
        Targets::Exe(glob) => matching(glob)?,
        Targets::Command(argv) => {
            let child = started.insert(Started::spawn(argv)?);
            // spawn returns once the command has exec'd: /proc/PID/exe is its binary.
            let t = Target::open(child.0.id()).map_err(|e| match e {
                TargetError::NoSuchProcess(pid) => exited(pid, Duration::ZERO),
                e => e.into(),
            })?;
            vec![checked(t)?]
        }
    };
    attach::check_privileges()?;

    let mut host: Host<u32> = Host::new(attach::Probes::load()?, o.budget, TICK);
    let mut watched = vec![];
    let many = matches!(o.targets, Targets::Exe(_));
    for target in targets {
        let pid = target.pid;
        let version = target.binary.info().go_version.expect("checked");
        let plan = plan::plan(&target.binary, version);
        let gone = match host.attach(pid, plan, &target.exe_path, Some(pid)) {
            Ok(_) => !target.alive(),
            Err(_) if !target.alive() => true,
            Err(e) => return Err(e.into()),
        };
        // Gone while the probes went in: said at once, not at the first look in the loop.
        if gone {
            if !many {
                return Err(exited(pid, Duration::ZERO));
            }
            warn(&format!(
                "process {pid} ({}) exited while probes were attached; left out",
                target.exe_display
            ));
            continue;
        }
        watched.push(Watched {
            target,
            ticks: vec![],
            exited_after: None,
        });
    }
    if watched.is_empty() {
        let glob = match &o.targets {
            Targets::Exe(g) => g.as_str(),
            _ => "",
        };
        return Err(Failure::new(
            exit::Code::TargetExited,
            format!("every process matching --exe {glob:?} exited 0.0 s into the diagnosis; no report is made"),
        ));
    }
    install_signal_handlers();
    // The window starts once every probe is in: counting from this first tick keeps
    // calls and pauses from half-attached moments out of the numbers.
    let start = Instant::now();
    let end = start + o.duration;
    let first = host.tick(start);
    for w in &mut watched {
        w.ticks.push(first.process(w.target.pid, &w.target));
    }
    let mut next_tick = start + TICK;
    let interrupted = || INTERRUPTED.load(Ordering::SeqCst);
    loop {
        host.wait(next_tick.min(end), LOOK, || {
            interrupted()
                || watched
                    .iter()
                    .any(|w| w.exited_after.is_none() && !w.target.alive())
        });
        let now = Instant::now();
        let tick = host.tick(now);
        for w in watched.iter_mut().filter(|w| w.exited_after.is_none()) {
            let mut t = tick.process(w.target.pid, &w.target);
            if !w.target.alive() {
                // The maps still hold its counts until the end; what /proc no longer
                // tells (CPU time, profiling rate) stays as last read.
                let last = w.ticks.last().expect("first tick");
                if crate::target::is_alive(w.target.pid) {
                    // It exec'd another program: what /proc and its memory tell now
                    // is that program's.
                    t.cpu_s = last.cpu_s;
                    t.cpu_profile_hz = last.cpu_profile_hz;
                } else {
                    t.cpu_s = t.cpu_s.or(last.cpu_s);
                    t.cpu_profile_hz = t.cpu_profile_hz.or(last.cpu_profile_hz);
                }
                w.exited_after = Some(now - start);
            }
            w.ticks.push(t);
        }
        while next_tick <= now {
            next_tick += TICK;
        }
        if now >= end || interrupted() || watched.iter().all(|w| w.exited_after.is_some()) {
            break;
        }
    }
    // The report comes first: unregistering uprobes waits on the kernel (about 0.1 s
    // per probe under load), so the probes are detached after it is printed.
    let mut code = exit::Code::NoFindings;
    let mut reports: Vec<Diagnosis> = vec![];
    for w in &watched {
        let session = host.session(w.target.pid).expect("attached above");
        let mut d = session::judge(&w.target, session, &w.ticks, &o.thresholds, o.budget);
        d.target_exited_after_s = w.exited_after.map(|a| a.as_secs_f64());
        let own = if w.exited_after.is_some() {
            exit::Code::TargetExited
        } else if d.findings.is_empty() {
            exit::Code::NoFindings
        } else {
            exit::Code::Findings
        };
        code = code.max(own);
        reports.push(d);
    }
    let text = match (o.format, many) {
        (Format::Text, _) => reports
            .iter()
            .map(render_diagnosis)
            .collect::<Vec<_>>()
            .join("\n"),
        // --exe: an array (as /findings), whatever the number of matches.
        (Format::Json, true) => to_json(&reports)?,
        // --pid, -- CMD: the one report, as before.
        (Format::Json, false) => to_json(&reports[0])?,
    };
    let written = super::write_stdout(&text);
    for w in &watched {
        if let Some(after) = w.exited_after {
            let what = if crate::target::is_alive(w.target.pid) {
                "exec'd another program"
            } else {
                "exited"
            };
            warn(&format!(
                "process {} {what} {:.1} s into the {:.1} s window; reported: what was collected until then (exit code 8)",
                w.target.pid,
                after.as_secs_f64(),
                o.duration.as_secs_f64()
            ));
        }
    }
    drop(host);
    drop(started);
    written?;
    Ok(code)
}

/// One line on stderr (not eprintln!: it panics when stderr cannot be written).
fn warn(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "detector: {msg}");
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map(|s| format!("{s}\n"))
        .map_err(|e| Failure::new(exit::Code::Other, e.to_string()))
}
