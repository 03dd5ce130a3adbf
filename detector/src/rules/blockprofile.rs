//! Catalog case 5: SetBlockProfileRate(1) left on (and its twin for the mutex profile,
//! SetMutexProfileFraction(1), which is always inlined and cannot be probed). Both are
//! set once at startup, so both are judged from live activity: every recorded event
//! goes through runtime.saveblockevent(cycles, rate, skip, which), whose `rate` is the
//! setting in effect (block: CPU ticks per sample; mutex: the fraction) and `which`
//! tells the two profiles apart.
use detector_common::{BUCKET_BLOCK, BUCKET_MUTEX};

use super::{counted_calls, cpu_severity, fmt_pct, Finding, Param, Rule, Thresholds};
use crate::apis::Api;
use crate::collect::Collected;

pub const BLOCK_PROFILE_MIN_RATE_NS: Param = Param {
    key: "block_profile_min_rate_ns",
    default: 1000.0,
    whole: false,
    doc: "block profile sampling rates below this (ns of blocking per sample) record (nearly) every event",
};

pub const MUTEX_PROFILE_MIN_FRACTION: Param = Param {
    key: "mutex_profile_min_fraction",
    default: 5.0,
    whole: false,
    doc: "mutex profile fractions below this record (nearly) every contention",
};

pub const BLOCK_RULE: Rule = Rule {
    id: "block-profile-every-event",
    catalog_case: Some(5),
    title: "block profile recording every blocking event",
    observes: "block-profile events recorded (runtime.saveblockevent) with the sampling rate in effect read from its arguments, and SetBlockProfileRate(rate) calls",
    params: &[&BLOCK_PROFILE_MIN_RATE_NS],
    needs: &[Api::SetBlockProfileRate, Api::SaveBlockEvent],
    judge: judge_block,
    fixture_case: "blockprofile",
};

pub const MUTEX_RULE: Rule = Rule {
    id: "mutex-profile-every-event",
    catalog_case: Some(5),
    title: "mutex profile recording every contention",
    observes: "mutex-profile events recorded (runtime.saveblockevent) with the fraction in effect read from its arguments (SetMutexProfileFraction is always inlined)",
    params: &[&MUTEX_PROFILE_MIN_FRACTION],
    needs: &[Api::SaveBlockEvent],
    judge: judge_mutex,
    fixture_case: "mutexprofile",
};

/// Cost of one recorded event: a stack walk, a hash and a bucket update.
const NS_PER_EVENT: f64 = 1_500.0;

/// Recorded events of one profile: (events, smallest rate setting seen).
fn events(c: &Collected, which: u64) -> Option<(u64, u64)> {
    let s = c.calls_of(Api::SaveBlockEvent)?;
    let mut n = 0;
    let mut rate = u64::MAX;
    for a in &s.args {
        let v = a.value as u64;
        if v & 0xff == which {
            n += a.calls;
            rate = rate.min(v >> 8);
        }
    }
    (n > 0).then_some((n, rate))
}

fn judge_block(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let seen = events(c, BUCKET_BLOCK);
    // Rate in effect, in ns: the runtime stores CPU ticks (1 means "every event").
    let live_ns = seen.and_then(|(_, ticks)| {
        if ticks <= 1 {
            Some(ticks as f64)
        } else {
            c.ticks_per_second.map(|hz| ticks as f64 * 1e9 / hz)
        }
    });
    let set = counted_calls(c, Api::SetBlockProfileRate, |r| {
        r > 0 && (r as f64) < t.get(&BLOCK_PROFILE_MIN_RATE_NS)
    });
    let live_low = live_ns.filter(|ns| *ns < t.get(&BLOCK_PROFILE_MIN_RATE_NS));
    if live_low.is_none() && set.is_none() {
        return vec![];
    }
    let per_s = seen.map_or(0.0, |(n, _)| n as f64 / c.duration_s);
    let core = per_s * NS_PER_EVENT / 1e9;
    let mut evidence = vec![];
    if let (Some((n, ticks)), Some(ns)) = (seen, live_ns) {
        evidence.push(format!(
            "{n} block events recorded in {:.1} s ({per_s:.0}/s) with a sampling rate of {ticks} CPU ticks = {ns:.0} ns",
            c.duration_s
        ));
    }
    let site = set.as_ref().and_then(|s| s.sites.first().cloned());
    if set.is_none() {
        evidence.push(
            "no SetBlockProfileRate call in the window: the rate was set before detector attached"
                .into(),
        );
    }
    vec![Finding {
        rule: BLOCK_RULE.id,
        severity: cpu_severity(core),
        title: BLOCK_RULE.title.into(),
        summary: format!(
            "the block profile records every blocking event ({per_s:.0} events/s, about {} of a core in stack walks, and the profile grows without bound)",
            fmt_pct(core)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "every blocking channel operation, select and lock wait walks the stack and updates the profile: several times slower blocking and hundreds of MB of profile after hours".into(),
        fix: "sample: SetBlockProfileRate(10000) (10 µs) or more in steady state, and raise the resolution only for a short diagnosis window through an admin endpoint".into(),
        fine_when: "reproducing a rare blocking bug in a test environment; library benchmarks".into(),
    }]
}

fn judge_mutex(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let Some((n, fraction)) = events(c, BUCKET_MUTEX) else {
        return vec![];
    };
    if fraction == 0 || fraction as f64 >= t.get(&MUTEX_PROFILE_MIN_FRACTION) {
        return vec![];
    }
    let per_s = n as f64 / c.duration_s;
    let core = per_s * NS_PER_EVENT / 1e9;
    vec![Finding {
        rule: MUTEX_RULE.id,
        severity: cpu_severity(core),
        title: MUTEX_RULE.title.into(),
        summary: format!(
            "the mutex profile records 1 in {fraction} contentions ({per_s:.0} events/s, about {} of a core in stack walks)",
            fmt_pct(core)
        ),
        call_site: None,
        culprit: None,
        evidence: vec![
            format!("{n} mutex events recorded in {:.1} s with SetMutexProfileFraction({fraction}) in effect", c.duration_s),
            "SetMutexProfileFraction is always inlined: its call site cannot be probed; search the code for it".into(),
        ],
        cost: "every contended unlock walks the stack and updates the profile".into(),
        fix: "sample: SetMutexProfileFraction(100) or more in steady state (or 0 to turn it off), and raise it only for a diagnosis window".into(),
        fine_when: "reproducing a contention bug in a test environment".into(),
    }]
}
