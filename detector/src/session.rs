//! The one session loop of `diagnose` and `watch`. A [`Session`] is one binary's
//! probes: its plan, the attached probes, the overhead budget's duty cycle and the
//! extrapolator that turns duty-cycled counts into estimates. A [`Host`] holds the
//! loaded programs and every session sharing their maps (`diagnose`: one, for one
//! process; `watch`: one per distinct binary on the host), waits between ticks while
//! the duty cycles run, and at each tick reads the maps once and yields each
//! process's cumulative counts ([`Tick`]).
//!
//! `diagnose` and `watch` differ only in what they do with the ticks: `diagnose`
//! keeps every tick of its window and reports once; `watch` keeps a rolling window
//! per process, judges it every few ticks and exports counters.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use detector_common::{CallKey, StwKey, StwStats};

use crate::{
    collect::{self, Tick},
    probes::{
        attach::{AttachedPlan, ProbeError, Probes, Snapshot},
        budget::{Budget, DutyCycle},
        extrapolate::Extrapolator,
        plan::Plan,
    },
    report::{Diagnosis, ProbeInfo},
    rules::{self, Thresholds},
    target::Target,
};

/// One binary's probes and what corrects their counts.
pub struct Session {
    pub plan: Plan,
    pub attached: AttachedPlan,
    /// Call probe ids of this binary are `id_base .. id_base + plan.call_probes.len()`
    /// in the kernel's keys (the maps are shared by every session of a host).
    pub id_base: u32,
    pub duty: DutyCycle,
    extrapolate: Extrapolator,
}

impl Session {
    fn ids(&self) -> std::ops::Range<u32> {
        self.id_base..self.id_base + self.plan.call_probes.len() as u32
    }

    /// Between ticks: ends the live phases that are over, cuts probes that turned
    /// hot, and runs the first evaluation, which cannot wait for the tick (a hot probe
    /// costs its full rate until then).
    fn between_ticks(&mut self, now: Instant, probes: &mut Probes) {
        self.duty.cut_surges(now, probes, &mut self.attached);
        self.duty.poll(now, probes, &mut self.attached);
        if self.duty.probation_due(now) {
            let raw = probes.snapshot();
            self.duty
                .evaluate(now, &raw, &self.plan, probes, &mut self.attached);
        }
    }

    /// At a tick: estimates from this binary's call counts (`calls`, global ids),
    /// split by process with ids local to the plan; then the evaluation, if due.
    fn tick(
        &mut self,
        now: Instant,
        probes: &mut Probes,
        calls: HashMap<CallKey, u64>,
        raw: &Snapshot,
    ) -> BinaryTick {
        let on = self.duty.on_seconds(now);
        for (probe, rate) in self.duty.take_surges() {
            self.extrapolate.surged(probe, rate);
        }
        let estimated = self.extrapolate.update(
            &Snapshot {
                calls,
                ..Snapshot::default()
            },
            &on,
            now,
        );
        let mut by_pid: HashMap<u32, HashMap<CallKey, u64>> = HashMap::new();
        for (mut k, v) in estimated.calls {
            k.probe -= self.id_base;
            by_pid.entry(k.tgid).or_default().insert(k, v);
        }
        let on_s = on
            .into_iter()
            .filter(|(id, _)| self.ids().contains(id))
            .map(|(id, s)| (id - self.id_base, s))
            .collect();
        if self.duty.due(now) {
            self.duty
                .evaluate(now, raw, &self.plan, probes, &mut self.attached);
        }
        BinaryTick { by_pid, on_s }
    }

    /// What a report says of these probes.
    pub fn probe_info(&self, budget: Budget) -> ProbeInfo {
        ProbeInfo {
            attached: self.attached.attached,
            failed: self.attached.failures.clone(),
            skipped: self.plan.skipped.clone(),
            overhead_budget_percent: budget.share_of_core * 100.0,
            attach_path: self.attached.path,
        }
    }
}

/// What one tick saw of one binary.
struct BinaryTick {
    /// Cumulative call counts (estimates for duty-cycled probes) by process, ids local.
    by_pid: HashMap<u32, HashMap<CallKey, u64>>,
    /// Cumulative live seconds of each call probe (local ids).
    on_s: HashMap<u32, f64>,
}

/// The loaded programs and the sessions that share their maps.
pub struct Host<K: Ord + Copy> {
    probes: Probes,
    sessions: BTreeMap<K, Session>,
    next_id_base: u32,
    budget: Budget,
    /// How often the caller ticks (and so how often the duty cycle evaluates).
    period: Duration,
    /// When [`Host::wait`] runs the duty cycles again at the latest.
    next_look: Instant,
}

/// What one tick saw of every session's processes.
pub struct HostTick<K: Ord + Copy> {
    pub at: Instant,
    binaries: BTreeMap<K, BinaryTick>,
    stw: HashMap<u32, HashMap<StwKey, StwStats>>,
    /// The whole snapshot's kernel-side error counters and total hits.
    pub errors: [u64; detector_common::errors::COUNT as usize],
    pub hits: u64,
    /// Entries in the kernel maps read at this tick: (map, entries), for the
    /// agent's self-metrics (the call map's count includes calls without a site).
    pub map_entries: [(&'static str, u64); 3],
    /// Every known calling stack (all processes).
    stacks: std::sync::Arc<HashMap<detector_common::StackKey, detector_common::Stack>>,
}

impl<K: Ord + Copy> HostTick<K> {
    /// Every process with entries in the kernel maps, watched or not.
    pub fn pids(&self) -> HashSet<u32> {
        self.binaries
            .values()
            .flat_map(|b| b.by_pid.keys())
            .chain(self.stw.keys())
            .copied()
            .collect()
    }

    /// Process `pid`'s cumulative counts, if it runs the binary of session `key`.
    pub fn process(&self, key: K, target: &Target) -> Tick {
        let b = self.binaries.get(&key);
        let pid = target.pid;
        Tick {
            at: self.at,
            snap: Snapshot {
                calls: b
                    .and_then(|b| b.by_pid.get(&pid))
                    .cloned()
                    .unwrap_or_default(),
                stw: self.stw.get(&pid).cloned().unwrap_or_default(),
                errors: self.errors,
                stacks: self.stacks.clone(),
            },
            cpu_s: target.cpu_seconds(),
            cpu_profile_hz: target.cpu_profile_hz(),
            on_s: b.map(|b| b.on_s.clone()).unwrap_or_default(),
        }
    }
}

impl<K: Ord + Copy> Host<K> {
    pub fn new(probes: Probes, budget: Budget, period: Duration) -> Host<K> {
        Host {
            probes,
            sessions: BTreeMap::new(),
            next_id_base: 0,
            budget,
            period,
            next_look: Instant::now(),
        }
    }

    /// Attaches `plan` to `exe` (a path the kernel can open: `/proc/PID/exe` reaches
    /// binaries in containers), for process `pid` only or every process running it.
    pub fn attach(
        &mut self,
        key: K,
        plan: Plan,
        exe: &Path,
        pid: Option<u32>,
    ) -> Result<&Session, ProbeError> {
        let id_base = self.next_id_base;
        let attached = self.probes.attach_plan(&plan, exe, pid, id_base)?;
        self.next_id_base += plan.call_probes.len() as u32;
        let duty = DutyCycle::new(
            &plan,
            &attached,
            id_base,
            self.budget,
            self.period,
            Instant::now(),
        );
        let session = Session {
            plan,
            attached,
            id_base,
            duty,
            extrapolate: Extrapolator::default(),
        };
        if let Some(old) = self.sessions.insert(key, session) {
            self.release([old]);
        }
        Ok(&self.sessions[&key])
    }

    pub fn session(&self, key: K) -> Option<&Session> {
        self.sessions.get(&key)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (&K, &Session)> {
        self.sessions.iter()
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Waits until `until`, running every duty cycle on the way (waking at least every
    /// `look` for the surge checks); returns early once `stop()` says so.
    pub fn wait(&mut self, until: Instant, look: Duration, stop: impl Fn() -> bool) {
        self.wait_on(until, look, stop, std::thread::sleep)
    }

    /// [`Host::wait`], sleeping with `nap` (which may return early: `watch` sleeps on
    /// its process events, and `stop` then says whether one came).
    pub fn wait_on(
        &mut self,
        until: Instant,
        look: Duration,
        stop: impl Fn() -> bool,
        mut nap: impl FnMut(Duration),
    ) {
        let deadline = |sessions: &BTreeMap<K, Session>| {
            sessions
                .values()
                .filter_map(|s| s.duty.next_deadline_between_ticks())
                .min()
        };
        loop {
            let now = Instant::now();
            // A nap cut short (a process event) does not run the duty cycles early.
            let due = deadline(&self.sessions).is_some_and(|d| d <= now);
            if now >= self.next_look || due || now >= until {
                for s in self.sessions.values_mut() {
                    s.between_ticks(now, &mut self.probes);
                }
                self.next_look = now + look;
            }
            if now >= until || stop() {
                return;
            }
            let wake = deadline(&self.sessions)
                .map_or(until, |d| d.min(until))
                .min(self.next_look);
            nap(wake.saturating_duration_since(Instant::now()));
        }
    }

    /// Reads the maps once and ticks every session.
    pub fn tick(&mut self, now: Instant) -> HostTick<K> {
        let raw = self.probes.snapshot();
        let ranges = self.sessions.iter().map(|(k, s)| (s.ids(), *k)).collect();
        let mut calls = calls_by_session(ranges, &raw.calls);
        let mut binaries = BTreeMap::new();
        for (key, s) in self.sessions.iter_mut() {
            let own = calls.remove(key).unwrap_or_default();
            binaries.insert(*key, s.tick(now, &mut self.probes, own, &raw));
        }
        let mut stw: HashMap<u32, HashMap<StwKey, StwStats>> = HashMap::new();
        for (k, v) in &raw.stw {
            stw.entry(k.tgid).or_default().insert(*k, *v);
        }
        HostTick {
            at: now,
            binaries,
            stw,
            errors: raw.errors,
            hits: raw.calls.values().sum::<u64>() + raw.stw.values().map(|s| s.count).sum::<u64>(),
            map_entries: [
                ("calls", raw.calls.len() as u64),
                ("stacks", raw.stacks.len() as u64),
                ("stw", raw.stw.len() as u64),
            ],
            stacks: raw.stacks.clone(),
        }
    }

    /// Forgets processes that are gone: their kernel entries and estimates.
    pub fn forget(&mut self, gone: &HashSet<u32>) {
        self.probes.forget(gone);
        for s in self.sessions.values_mut() {
            s.extrapolate.forget(gone);
        }
    }

    /// Detaches the sessions of `keys`, side by side, and waits for the kernel.
    pub fn detach(&mut self, keys: impl IntoIterator<Item = K>) {
        let gone: Vec<Session> = keys
            .into_iter()
            .filter_map(|k| self.sessions.remove(&k))
            .collect();
        self.release(gone);
    }

    fn release(&mut self, sessions: impl IntoIterator<Item = Session>) {
        let mut plans = vec![];
        for s in sessions {
            s.duty.forget(&mut self.probes);
            plans.push(s.attached);
        }
        self.probes.detach_many(plans);
    }
}

impl<K: Ord + Copy> Drop for Host<K> {
    fn drop(&mut self) {
        let all = std::mem::take(&mut self.sessions);
        self.release(all.into_values());
    }
}

/// Each session's call entries, found by probe id range (`ranges` in any order) in
/// one pass over the snapshot.
fn calls_by_session<K: Ord + Copy>(
    mut ranges: Vec<(std::ops::Range<u32>, K)>,
    calls: &HashMap<CallKey, u64>,
) -> BTreeMap<K, HashMap<CallKey, u64>> {
    ranges.sort_by_key(|r| r.0.start);
    let mut out: BTreeMap<K, HashMap<CallKey, u64>> = BTreeMap::new();
    for (k, v) in calls {
        let i = ranges.partition_point(|r| r.0.end <= k.probe);
        if let Some((ids, key)) = ranges.get(i) {
            if ids.contains(&k.probe) {
                out.entry(*key).or_default().insert(*k, *v);
            }
        }
    }
    out
}

/// Summarises and judges one process over the window its ticks span (oldest first,
/// cumulative), into the report both `diagnose` and `/findings` give.
pub fn judge(
    target: &Target,
    session: &Session,
    ticks: &[Tick],
    thresholds: &Thresholds,
    budget: Budget,
) -> Diagnosis {
    let samples = collect::window(ticks);
    // The wall time of the window's first tick, from how long ago it was taken.
    let started = ticks.first().map_or_else(SystemTime::now, |t| {
        SystemTime::now() - Instant::now().saturating_duration_since(t.at)
    });
    let collected = collect::summarize(target, &session.plan, &samples, started);
    let findings = if samples.is_empty() {
        vec![]
    } else {
        rules::judge(&collected, thresholds)
    };
    Diagnosis::new(target, session.probe_info(budget), findings, collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_go_to_the_session_owning_their_probe_id() {
        let key = |probe: u32| CallKey {
            tgid: 7,
            probe,
            caller: 0,
            arg: 0,
            stack: 0,
        };
        let calls: HashMap<CallKey, u64> = [0, 4, 5, 9, 10, 30].map(|p| (key(p), 1)).into();
        // Keys in another order than their id ranges, and an empty range.
        let ranges = vec![(10..20, 'a'), (0..5, 'z'), (5..10, 'm'), (20..20, 'e')];
        let by = calls_by_session(ranges, &calls);
        let ids = |k: char| {
            let mut v: Vec<u32> = by[&k].keys().map(|c| c.probe).collect();
            v.sort();
            v
        };
        assert_eq!(ids('z'), [0, 4]);
        assert_eq!(ids('m'), [5, 9]);
        assert_eq!(ids('a'), [10]);
        assert!(!by.contains_key(&'e'), "id 30 belongs to no session");
    }
}
