//! Catalog cases 4 and 13: the CPU profiler at a high rate, and a CPU profile left
//! running without bound. Both are usually set up at startup, long before detector
//! attaches, so both are judged from live activity: the profiler's signal handler
//! (runtime.sigprof) runs `hz` times per CPU-second the process uses while profiling
//! is on, and never otherwise. Calls made during the window (SetCPUProfileRate,
//! StartCPUProfile, StopCPUProfile) are used when seen.
use super::{
    counted_calls, cpu_severity, fmt_pct, on_throughout, site_lines, Finding, Param, Rule,
    Severity, Thresholds,
};
use crate::apis::Api;
use crate::collect::Collected;

pub const CPU_PROFILE_MAX_HZ: Param = Param {
    key: "cpu_profile_max_hz",
    default: 100.0,
    whole: false,
    doc: "highest CPU profiling rate (Hz) that is not a finding: the runtime's default",
};

pub const CPU_PROFILE_MAX_WINDOW_S: Param = Param {
    key: "cpu_profile_max_window_s",
    default: 30.0,
    whole: false,
    doc: "a CPU profile running continuously for longer than this (seconds) is unbounded",
};

pub const RATE_RULE: Rule = Rule {
    id: "cpu-profile-rate-high",
    catalog_case: Some(4),
    title: "CPU profiler running above the default 100 Hz",
    observes: "the profiling rate in effect read from the process's memory (runtime.prof.hz, located in setcpuprofilerate's code), SetCPUProfileRate(hz) calls, and SIGPROF handler runs (runtime.sigprof) per CPU-second",
    params: &[&CPU_PROFILE_MAX_HZ],
    needs: &[Api::SetCpuProfileRate, Api::Sigprof],
    judge: judge_rate,
    fixture_case: "cpuprofile-rate",
};

pub const UNBOUNDED_RULE: Rule = Rule {
    id: "cpu-profile-unbounded",
    catalog_case: Some(13),
    title: "CPU profile running without bound",
    observes: "the CPU profiler active (runtime.sigprof) in every second of a window longer than the longest reasonable profile, with no StopCPUProfile",
    params: &[&CPU_PROFILE_MAX_WINDOW_S],
    needs: &[Api::Sigprof, Api::StartCpuProfile, Api::StopCpuProfile],
    judge: judge_unbounded,
    fixture_case: "cpuprofile-unbounded",
};

/// Cost of one SIGPROF: signal delivery, a stack walk and a profile-buffer write.
const NS_PER_SAMPLE: f64 = 3_000.0;
/// Below this much CPU use the rate estimate is too noisy to judge.
const MIN_CORES: f64 = 0.02;
const MIN_SAMPLES: u64 = 20;

/// The profiling rate in effect, estimated from SIGPROFs per CPU-second.
pub(crate) fn estimated_hz(c: &Collected) -> Option<f64> {
    let sig = c.calls_of(Api::Sigprof)?;
    let cpu = c.cpu_seconds?;
    (sig.calls >= MIN_SAMPLES && cpu / c.duration_s >= MIN_CORES).then(|| sig.calls as f64 / cpu)
}

fn judge_rate(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let set = counted_calls(c, Api::SetCpuProfileRate, |hz| {
        hz as f64 > t.get(&CPU_PROFILE_MAX_HZ)
    });
    let est = estimated_hz(c);
    // The setting itself, from memory: exact, and there even if set at startup.
    let in_memory = c
        .cpu_profile_hz_max
        .filter(|hz| *hz as f64 > t.get(&CPU_PROFILE_MAX_HZ))
        .map(f64::from);
    // Without the setting's address, the sample rate is the fallback; the kernel
    // fires per-thread CPU timers at most once per scheduler tick, so it is a lower
    // bound of the setting; 2.5x the threshold leaves room for its noise.
    let high_est =
        est.filter(|hz| c.cpu_profile_hz_max.is_none() && *hz > 2.5 * t.get(&CPU_PROFILE_MAX_HZ));
    if set.is_none() && high_est.is_none() && in_memory.is_none() {
        return vec![];
    }
    let hz = in_memory.or(high_est).or_else(|| {
        set.as_ref()
            .and_then(|s| s.sites.first())
            .and_then(|s| s.args.iter().map(|a| a.value as f64).reduce(f64::max))
    });
    let sigs_per_s = c.calls_of(Api::Sigprof).map_or(0.0, |s| s.per_second);
    let core = sigs_per_s * NS_PER_SAMPLE / 1e9;
    let mut evidence = vec![];
    if let Some(hz) = in_memory {
        evidence.push(format!(
            "runtime.prof.hz = {hz:.0} in the process's memory, profiling on in {} of {} ticks",
            c.cpu_profile_on_ticks,
            c.calls_of(Api::Sigprof).map_or(0, |s| s.per_tick.len())
        ));
    }
    if let (Some(e), Some(cpu)) = (est, c.cpu_seconds) {
        evidence.push(format!(
            "{:.0} SIGPROF samples/s while the process used {:.2} cores: {e:.0} samples per CPU-second (the kernel caps per-thread CPU timers at its tick rate)",
            sigs_per_s,
            cpu / c.duration_s
        ));
    }
    let site = set.as_ref().and_then(|s| s.sites.first().cloned());
    match &set {
        Some(s) => evidence.extend(site_lines(s.stats, 3)),
        None => evidence.push(
            "no SetCPUProfileRate call in the window: the rate was set before detector attached"
                .into(),
        ),
    }
    vec![Finding {
        rule: RATE_RULE.id,
        severity: cpu_severity(core).max(Severity::Medium),
        title: RATE_RULE.title.into(),
        summary: format!(
            "CPU profiling at {} Hz ({}x the default): {:.0} samples/s cost about {} of a core",
            hz.map_or("?".into(), |h| format!("{h:.0}")),
            hz.map_or("?".into(), |h| format!("{:.0}", h / 100.0)),
            sigs_per_s,
            fmt_pct(core)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "every sample is a signal, a stack walk and a buffer write on the thread that was running; at 10 kHz that is about 15% CPU and milliseconds of added tail latency".into(),
        fix: "keep the default 100 Hz (drop SetCPUProfileRate) and profile for longer if you need more samples".into(),
        fine_when: "microbenchmarks of microsecond-scale functions on a developer machine; investigating signal delivery itself".into(),
    }]
}

fn judge_unbounded(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    // Any stop in the window means the profile is bounded by the program.
    let stopped = c.calls_of(Api::StopCpuProfile).is_some_and(|s| s.calls > 0)
        || c.calls_of(Api::SetCpuProfileRate)
            .is_some_and(|s| s.args.iter().any(|a| a.value == 0 && a.calls > 0));
    let Some(sig) = on_throughout(c, Api::Sigprof, stopped, t.get(&CPU_PROFILE_MAX_WINDOW_S))
    else {
        return vec![];
    };
    let start = counted_calls(c, Api::StartCpuProfile, |_| true);
    let site = start.as_ref().and_then(|s| s.sites.first().cloned());
    let mut evidence = vec![format!(
        "the CPU profiler took samples in every one of the {} seconds watched ({} samples), and StopCPUProfile was never called",
        sig.per_tick.len(),
        sig.calls
    )];
    if start.is_none() {
        evidence.push(
            "it was started before detector attached (no StartCPUProfile in the window)".into(),
        );
    }
    vec![Finding {
        rule: UNBOUNDED_RULE.id,
        severity: Severity::Medium,
        title: UNBOUNDED_RULE.title.into(),
        summary: format!(
            "a CPU profile has been running for the whole {:.0} s window (longer than {:.0} s) with no stop: it writes to its file for as long as the process lives",
            c.duration_s, t.get(&CPU_PROFILE_MAX_WINDOW_S)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "an unbounded profile streams to local disk forever: steady I/O, a file that fills the disk, and a process that fails when the write does".into(),
        fix: "profile in fixed windows (e.g. 30 s every 5 min) with rotation and upload, or use a continuous-profiling agent with bounded local buffering".into(),
        fine_when: "short-lived batch jobs profiled end to end; local development".into(),
    }]
}
