//! The overhead budget. Every probe hit costs the target a trap into the kernel (about
//! 1.5 µs), charged to the thread that made the call. A hot API (100k runtime.Caller
//! calls a second) would cost the target 15 % of a core if every call were probed, so
//! each process gets a budget (by default 1 % of one core). When the probes of a
//! process would cost more, the hottest call probes are detached and re-attached on a
//! duty cycle: live for a fraction of every period, long enough to measure the rate,
//! call sites and arguments. [`Extrapolator`] turns what was counted while they were
//! live into estimates for the whole window, and reports show the sampled fraction.
//!
//! Only call probes are cycled. Pause probes fire once per stop-the-world, which
//! costs the target far more than the probe, and the forced-GC probes keep state.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use detector_common::COOKIE_FORCED_GC_ENTER;

use super::{
    attach::{AttachPath, AttachedPlan, Probes, Snapshot},
    plan::{Plan, Program},
};

/// The target's cost of one hit of a probe on an instruction the kernel emulates
/// (`push rbp`, the first instruction after the stack check on Go 1.21+; the stack
/// check's `jbe` on Go 1.19): the trap, the eBPF program and the return.
/// BENCHMARKS.md measures 0.5-0.9 µs here, on Go 1.19 as on 1.27; the higher figure
/// keeps the budget on the safe side.
pub const HIT_COST_S: f64 = 1.5e-6;

/// The cost of a hit on an instruction the kernel single-steps (the entry of a Go 1.19
/// nosplit function starting with `sub rsp`, RETs): a second trap for the debug exception. Measured
/// 29 µs in this Firecracker VM, where the debug trap exits to the hypervisor; bare
/// metal is nearer 3 µs. The VM figure keeps the budget safe everywhere.
pub const SINGLE_STEP_HIT_COST_S: f64 = 30e-6;

/// A live phase is at least this long: the attach takes a few milliseconds, and a
/// shorter phase sees too few calls to keep call sites. A probe allowed less per
/// period saves its share up and goes live once it has this much.
const MIN_ON: Duration = Duration::from_millis(3);

/// A rate is measured over at least this much live time.
const MIN_MEASURED: Duration = Duration::from_millis(10);

/// The first look at the rates comes this soon after attaching, so that a hot probe
/// costs the target its full rate for 50 ms, not for a whole period. A cycled probe's
/// estimates rest on this sample until its first live phase, seconds later: 25 ms of
/// a paced load on a busy machine were off by up to 15 %.
const PROBATION: Duration = Duration::from_millis(50);

/// Units made of more uprobes than this are never cycled: the kernel unregisters
/// uprobes one at a time, about 0.1 s each (an RCU grace period under a global mutex),
/// so cycling many at once would back up every uprobe user on the host.
const MAX_PROBES_PER_UNIT: usize = 8;
/// The same through uprobe_multi links: a unit is one link, attached and detached in
/// one step with one wait for grace periods however many uprobes it holds (an inlined
/// API's sites: at most `plan`'s bound of 64).
const MAX_PROBES_PER_UNIT_MULTI: usize = 64;

/// Live phases ending this close together end together, so that their units are
/// detached in one request (see [`DutyCycle::poll`]).
const COALESCE: Duration = Duration::from_millis(10);

/// Cycled probes stay off for a period while this many detaches are still running:
/// the kernel serialises them, and a backlog would also block every other attach.
const MAX_DETACH_BACKLOG: usize = 4;

/// A unit that may be live this share of the time or more stays live.
const ALMOST_ALWAYS: f64 = 0.9;

/// An always-live unit seen costing, on its own, this many times the whole budget
/// between evaluations is cut at once (see [`DutyCycle::cut_surges`]).
const SURGE: f64 = 2.0;
/// Shortest interval a quick look measures a rate over.
const SURGE_LOOK: Duration = Duration::from_millis(20);

/// Per-process budget on the target's CPU spent in probe hits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Share of one core (0.01 = 1 %); 0 turns the budget off: every hit is probed.
    pub share_of_core: f64,
}

impl Budget {
    pub const DEFAULT_PERCENT: f64 = 1.0;

    pub fn from_percent(percent: f64) -> Budget {
        Budget {
            share_of_core: (percent / 100.0).max(0.0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.share_of_core > 0.0
    }
}

/// One cycled unit: every uprobe of one call probe id (a function, or an inlined
/// API's sites).
struct Unit {
    /// The id in the kernel's keys (the binary's id base included).
    call_id: u32,
    /// Indexes into `Plan::probes`.
    probes: Vec<usize>,
    /// Target CPU seconds per hit.
    hit_cost_s: f64,
    /// Live time saved up (seconds) while the share per period is below [`MIN_ON`].
    credit_s: f64,
    live_since: Option<Instant>,
    off_at: Option<Instant>,
    /// Seconds live in phases that have ended.
    on_closed: f64,
    /// Share of each period the unit is live (1 = always).
    fraction: f64,
    /// Counts at the last evaluation, per process.
    hits_then: HashMap<u32, u64>,
    on_then: f64,
    /// The last quick look at its hit counter (see [`DutyCycle::cut_surges`]).
    look: Option<(Instant, u64)>,
    /// The last quick look saw it over the surge threshold (a rate then may include
    /// time before the surge began: the next look measures it).
    surging: bool,
    /// Cut by a quick look: the next evaluation starts its measurement afresh.
    rebase: bool,
}

impl Unit {
    fn on_seconds(&self, now: Instant) -> f64 {
        self.on_closed
            + self
                .live_since
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
    }
}

/// The duty cycle of one attached plan (one process in `diagnose`, one binary and
/// every process running it in `watch`).
pub struct DutyCycle {
    budget: Budget,
    period: Duration,
    units: Vec<Unit>,
    next_eval: Instant,
    start: Instant,
    evals: u64,
    /// Units cut by a quick look since [`DutyCycle::take_surges`]: (call id, hits/s).
    surges: Vec<(u32, f64)>,
}

impl DutyCycle {
    /// Units for the plan's call probes that are live now; `id_base` as attached.
    pub fn new(
        plan: &Plan,
        attached: &AttachedPlan,
        id_base: u32,
        budget: Budget,
        period: Duration,
        now: Instant,
    ) -> DutyCycle {
        let mut by_id: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, p) in plan.probes.iter().enumerate() {
            if p.program == Program::CountCall
                && p.cookie & COOKIE_FORCED_GC_ENTER == 0
                // Every call stops the world: it costs the target far more than its
                // probe, and its pauses are matched to its calls, so it stays live.
                && !p.api.always_stops_the_world()
                && Probes::is_live(attached, i)
            {
                by_id.entry(p.cookie as u32 + id_base).or_default().push(i);
            }
        }
        let mut units: Vec<Unit> = by_id
            .into_iter()
            .filter(|(_, probes)| {
                probes.len()
                    <= match attached.path {
                        AttachPath::UprobeMulti => MAX_PROBES_PER_UNIT_MULTI,
                        AttachPath::PerUprobe => MAX_PROBES_PER_UNIT,
                    }
            })
            .map(|(call_id, probes)| Unit {
                call_id,
                hit_cost_s: if probes.iter().any(|&i| plan.probes[i].single_step) {
                    SINGLE_STEP_HIT_COST_S
                } else {
                    HIT_COST_S
                },
                credit_s: 0.0,
                probes,
                live_since: Some(now),
                off_at: None,
                on_closed: 0.0,
                fraction: 1.0,
                hits_then: HashMap::new(),
                on_then: 0.0,
                look: None,
                surging: false,
                rebase: false,
            })
            .collect();
        units.sort_by_key(|u| u.call_id);
        DutyCycle {
            budget,
            period,
            units,
            next_eval: now + PROBATION,
            start: now,
            evals: 0,
            surges: Vec::new(),
        }
    }

    /// Whether [`DutyCycle::evaluate`] is due.
    pub fn due(&self, now: Instant) -> bool {
        self.budget.enabled() && now >= self.next_eval
    }

    /// Whether the first evaluation is due: it cannot wait for the caller's next
    /// tick, since a hot probe costs its full rate until then.
    pub fn probation_due(&self, now: Instant) -> bool {
        self.evals == 0 && self.due(now)
    }

    /// The next moment something must happen between the caller's ticks, on which it
    /// runs the evaluations (see `session`): the end of a live phase, or the
    /// probation's evaluation. An evaluation waiting for the tick is no deadline, or
    /// the caller would wake at once, again and again, until the tick.
    pub fn next_deadline_between_ticks(&self) -> Option<Instant> {
        if !self.budget.enabled() {
            return None;
        }
        let eval = (self.evals == 0).then_some(self.next_eval);
        self.units.iter().filter_map(|u| u.off_at).chain(eval).min()
    }

    /// Seconds each call probe id has been live since the cycle started.
    pub fn on_seconds(&self, now: Instant) -> HashMap<u32, f64> {
        self.units
            .iter()
            .map(|u| (u.call_id, u.on_seconds(now)))
            .collect()
    }

    /// Call probe ids live for only part of the time right now.
    pub fn cycled(&self) -> HashSet<u32> {
        self.units
            .iter()
            .filter(|u| u.fraction < 1.0)
            .map(|u| u.call_id)
            .collect()
    }

    /// Drops the kernel's pause entries of this plan's units, before it is detached
    /// for good (watch's binaries come and go; their probe ids are not reused, but the
    /// entries would fill the map).
    pub fn forget(&self, probes: &mut Probes) {
        for u in &self.units {
            probes.set_counting(u.call_id, true);
        }
    }

    /// Ends the live phases whose time is up.
    pub fn poll(&mut self, now: Instant, probes: &mut Probes, attached: &mut AttachedPlan) {
        // Units whose phases end together are detached in one request: the guardian
        // serves one at a time, so separate ones would keep the later units'
        // breakpoints in while the first one's grace periods pass.
        let mut off: Vec<usize> = Vec::new();
        for u in &mut self.units {
            if u.off_at.is_some_and(|t| t <= now + COALESCE) {
                u.off_at = None;
                // A unit staying off for a period is paused and detached already.
                let Some(since) = u.live_since.take() else {
                    continue;
                };
                // Counting stops here, at a known moment; the detach that follows
                // takes the kernel a while, and the probe must not count meanwhile.
                probes.set_counting(u.call_id, false);
                let live = Instant::now().saturating_duration_since(since);
                log::debug!("unit {} off after {live:?} live", u.call_id);
                u.on_closed += live.as_secs_f64();
                off.extend_from_slice(&u.probes);
            }
        }
        if !off.is_empty() {
            probes.detach_unit_later(attached, &off);
        }
    }

    /// A quick look between evaluations, for callers to make at every wake. An
    /// always-live unit that turns hot after an evaluation (a load that starts after
    /// attach, a burst) would cost the target its full rate until the next one, up to
    /// a whole period: about 1 % of a core over a 15 s window at 100k calls/s. Each
    /// such unit's hit counter is read (one lookup); one costing over [`SURGE`] × the
    /// budget per process in two looks running is ended now and cycled at a
    /// provisional share (from the second look, all of it after the surge began), and
    /// the next evaluation measures it afresh.
    pub fn cut_surges(&mut self, now: Instant, probes: &mut Probes, attached: &mut AttachedPlan) {
        if !self.budget.enabled() || self.evals == 0 {
            return;
        }
        let budget = self.budget.share_of_core;
        let mut cut = false;
        for u in &mut self.units {
            if u.fraction < 1.0 || u.live_since.is_none() {
                u.look = None;
                u.surging = false;
                continue;
            }
            let Some(hits) = probes.hits_of(u.call_id) else {
                continue;
            };
            let Some((at, then)) = u.look else {
                u.look = Some((now, hits));
                continue;
            };
            let dt = now.saturating_duration_since(at);
            if dt < SURGE_LOOK {
                continue;
            }
            u.look = Some((now, hits));
            // The counter sums every process of the plan; the mean per process.
            let procs = u.hits_then.len().max(1) as f64;
            let rate = hits.saturating_sub(then) as f64 / dt.as_secs_f64();
            let cost = rate * u.hit_cost_s / procs;
            let over = cost > SURGE * budget;
            if over && !std::mem::replace(&mut u.surging, true) {
                continue;
            }
            u.surging = over;
            if over {
                log::debug!(
                    "unit {} surged to {:.1} % of a core: cut",
                    u.call_id,
                    cost * 100.0
                );
                // Half of what it may cost alone: it likely shares the budget.
                u.fraction = (0.5 * budget / cost).min(1.0);
                u.rebase = true;
                u.off_at = Some(now);
                u.credit_s = 0.0;
                u.look = None;
                u.surging = false;
                self.surges.push((u.call_id, rate));
                cut = true;
            }
        }
        if cut {
            self.poll(now, probes, attached);
        }
    }

    /// The units cut by quick looks since the last call, with the rate (hits per second,
    /// all processes) that made them cut: for [`Extrapolator::surged`].
    pub fn take_surges(&mut self) -> Vec<(u32, f64)> {
        std::mem::take(&mut self.surges)
    }

    /// Measures each unit's hit rate per process from `raw` (cumulative kernel counts),
    /// shares the budget out, and starts this period's live phases.
    pub fn evaluate(
        &mut self,
        now: Instant,
        raw: &Snapshot,
        plan: &Plan,
        probes: &mut Probes,
        attached: &mut AttachedPlan,
    ) {
        let probation = self.evals == 0;
        self.evals += 1;
        // Aligned on the start, so each period of the caller's ticks gets a live phase.
        self.next_eval = self.start + self.period * self.evals.min(u32::MAX as u64) as u32;
        while self.next_eval <= now {
            self.next_eval += self.period;
        }

        // Hits by probe id, then by process (one pass over the snapshot).
        let mut hits: HashMap<u32, HashMap<u32, u64>> = HashMap::new();
        for (k, v) in &raw.calls {
            *hits.entry(k.probe).or_default().entry(k.tgid).or_default() += v;
        }
        // Cost per process: (unit index, CPU seconds per second if always live).
        let mut costs: HashMap<u32, Vec<(usize, f64)>> = HashMap::new();
        let mut measured = vec![false; self.units.len()];
        for (ui, u) in self.units.iter_mut().enumerate() {
            let on = u.on_seconds(now);
            let on_delta = on - u.on_then;
            let now_hits = hits.remove(&u.call_id).unwrap_or_default();
            if std::mem::take(&mut u.rebase) {
                // Its live time since the last evaluation was mostly before the surge:
                // a rate over it would be far too low. It keeps its provisional share.
                u.hits_then = now_hits;
                u.on_then = on;
                continue;
            }
            // Shorter live time is left to add up: the counts were read a little
            // before `now`, a skew that would swamp the rate of a sliver.
            if on_delta >= MIN_MEASURED.as_secs_f64() {
                measured[ui] = true;
                for (pid, n) in &now_hits {
                    let d = n.saturating_sub(*u.hits_then.get(pid).unwrap_or(&0));
                    let rate = d as f64 / on_delta;
                    log::trace!(
                        "unit {} pid {pid}: {d} hits in {:.1} ms live: {rate:.0}/s",
                        u.call_id,
                        on_delta * 1e3
                    );
                    costs
                        .entry(*pid)
                        .or_default()
                        .push((ui, rate * u.hit_cost_s));
                }
                u.hits_then = now_hits;
                u.on_then = on;
            }
        }
        let mut fraction: Vec<f64> = vec![1.0; self.units.len()];
        for shares in costs.values() {
            for (ui, f) in water_fill(shares, self.budget.share_of_core) {
                fraction[ui] = fraction[ui].min(f);
            }
        }
        for f in &mut fraction {
            // Cycling costs a detach the kernel serialises: not worth it to save 10 %.
            if *f >= ALMOST_ALWAYS {
                *f = 1.0;
            }
        }
        let period = self.period.as_secs_f64();
        // What a phase costs beyond its live time: the breakpoints trap every call
        // from the start of the re-attach until counting resumes, and after the phase
        // until the kernel has removed them (both measured; see `detacher`).
        let tail = (probes.detacher().tail() + probes.detacher().head()).as_secs_f64();
        let mut go_live = vec![false; self.units.len()];
        for (ui, u) in self.units.iter_mut().enumerate() {
            if !measured[ui] {
                // Not live since the last look (e.g. a re-attach failed): try again.
                fraction[ui] = u.fraction;
            }
            u.fraction = fraction[ui];
            let cycled = u.fraction < 1.0;
            let kernel_behind = probes.detacher().in_flight() >= MAX_DETACH_BACKLOG;
            // Off for this period: probation has used the share already, or the kernel
            // is behind with detaches, or the share saved up is still too short.
            let mut stay_off = false;
            if !cycled {
                u.off_at = None;
                u.credit_s = 0.0;
            } else if probation || kernel_behind {
                u.off_at = Some(now);
                stay_off = true;
            } else {
                u.credit_s += u.fraction * period;
                match live_phase(u.credit_s, tail, period) {
                    Some(live) => {
                        u.off_at = Some(now + Duration::from_secs_f64(live));
                        u.credit_s = 0.0;
                    }
                    None => {
                        u.off_at = Some(now);
                        stay_off = true;
                    }
                }
            }
            go_live[ui] = u.live_since.is_none() && !stay_off;
            if cycled {
                log::trace!(
                    "unit {}: live {:.2} % of the time, credit {:.1} ms",
                    u.call_id,
                    u.fraction * 100.0,
                    u.credit_s * 1e3
                );
            }
        }
        // Units whose time is up stop counting before any re-attach (each can wait
        // behind other uprobe users), so they count nothing past `now`.
        self.poll(now, probes, attached);
        for (ui, u) in self.units.iter_mut().enumerate() {
            if !go_live[ui] {
                continue;
            }
            // One step for the unit's probes where the kernel has uprobe_multi links.
            let began = Instant::now();
            if probes.reattach_unit(plan, attached, &u.probes) {
                // Live from when counting resumes, once the kernel has the
                // breakpoint in and the program linked, not from `now`.
                probes.set_counting(u.call_id, true);
                let t = Instant::now();
                probes.detacher().record_head(t - began);
                log::debug!("unit {} live after {:?}", u.call_id, t - now);
                u.live_since = Some(t);
                if let Some(off) = u.off_at.as_mut() {
                    *off += t - now;
                }
            }
        }
    }
}

/// How long a cycled unit goes live, given the live time it has saved up (`credit_s`),
/// or `None` to keep saving. A live phase costs the target its live time plus its
/// head and tail (`tail_s`: the breakpoints trap every call, uncounted, while they
/// go in and until the kernel has removed them; see [`super::detacher`]), so they
/// are paid out of the credit: a hot probe goes live less often rather than over its budget. A phase is
/// at least as long as its tail, so that at least half of what it costs is spent
/// counting (a few phases of 0.1 s measure a rate better than many of 5 ms).
fn live_phase(credit_s: f64, tail_s: f64, period_s: f64) -> Option<f64> {
    let live = credit_s - tail_s;
    (live >= MIN_ON.as_secs_f64().max(tail_s)).then(|| live.min(period_s))
}

/// Max-min fair shares of `budget` among units of cost `(unit, cost)`: units cheaper
/// than an equal share keep running in full, the others get equal shares of what is
/// left. Returns each unit's fraction of time live (≤ 1).
fn water_fill(costs: &[(usize, f64)], budget: f64) -> Vec<(usize, f64)> {
    let mut sorted: Vec<(usize, f64)> = costs.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut left = budget;
    let mut out = Vec::with_capacity(sorted.len());
    let n = sorted.len();
    for (i, (ui, cost)) in sorted.into_iter().enumerate() {
        let share = left / (n - i) as f64;
        if cost <= share {
            out.push((ui, 1.0));
            left -= cost;
        } else {
            out.push((ui, (share / cost).clamp(0.0, 1.0)));
            left -= share;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_units_keep_running_and_hot_ones_share_the_rest() {
        // Budget 0.01: a unit costing 0.001 runs in full; two costing 0.1 and 0.2 share
        // the remaining 0.009 equally (0.0045 each).
        let f = water_fill(&[(0, 0.1), (1, 0.001), (2, 0.2)], 0.01);
        let get = |u: usize| f.iter().find(|(i, _)| *i == u).unwrap().1;
        assert_eq!(get(1), 1.0);
        assert!((get(0) - 0.045).abs() < 1e-9);
        assert!((get(2) - 0.0225).abs() < 1e-9);
        let spent = 0.001 + get(0) * 0.1 + get(2) * 0.2;
        assert!((spent - 0.01).abs() < 1e-9);
    }

    #[test]
    fn the_detach_tail_is_paid_from_the_live_time() {
        // 100k calls/s at 1.5 µs, two hot probes sharing 1 %: 33 ms a period each.
        let share = 0.005 / (100_000.0 * HIT_COST_S);
        let tail = 0.09;
        let mut credit = 0.0;
        let mut phases = Vec::new();
        for period in 0..12 {
            credit += share;
            if let Some(live) = live_phase(credit, tail, 1.0) {
                phases.push((period, live));
                credit = 0.0;
            }
        }
        // Live once every 6 periods, for what is left of 200 ms after the tail.
        assert_eq!(phases.len(), 2, "{phases:?}");
        assert!((phases[0].1 - 0.11).abs() < 1e-9, "{phases:?}");
        let cost: f64 = phases.iter().map(|(_, live)| live + tail).sum();
        assert!(cost <= share * 12.0 + 1e-9, "{cost} > {}", share * 12.0);
        assert!(phases.iter().all(|(_, live)| *live >= MIN_ON.as_secs_f64()));
        // A quick detach leaves most of the share live; a long phase is capped.
        assert_eq!(live_phase(0.5, 0.0, 1.0), Some(0.5));
        assert_eq!(live_phase(2.0, 0.1, 1.0), Some(1.0));
        assert_eq!(live_phase(0.05, 0.1, 1.0), None);
        assert_eq!(live_phase(0.15, 0.1, 1.0), None);
        assert_eq!(live_phase(0.004, 0.0, 1.0), Some(0.004));
    }

    #[test]
    fn between_ticks_only_the_probation_and_phase_ends_are_deadlines() {
        let start = Instant::now();
        let mut d = DutyCycle {
            budget: Budget {
                share_of_core: 0.01,
            },
            period: Duration::from_secs(1),
            units: Vec::new(),
            next_eval: start + PROBATION,
            start,
            evals: 0,
            surges: Vec::new(),
        };
        assert_eq!(d.next_deadline_between_ticks(), Some(start + PROBATION));
        // After the probation, an evaluation that is due waits for the caller's tick.
        d.evals = 1;
        assert_eq!(d.next_deadline_between_ticks(), None);
    }

    #[test]
    fn under_budget_everything_runs() {
        let f = water_fill(&[(0, 0.004), (1, 0.005)], 0.01);
        assert!(f.iter().all(|(_, x)| *x == 1.0));
    }
}
