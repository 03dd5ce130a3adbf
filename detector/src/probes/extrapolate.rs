//! Estimates for duty-cycled probes: what a probe counted while live, plus its rate
//! for the time it was off (see `probes::budget` for why probes are cycled).
use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use detector_common::CallKey;

use super::attach::Snapshot;

/// Turns cumulative counts of probes that were live part of the time into estimates
/// for the whole time: each interval of a cycled probe adds rate × interval, the rate
/// being counts ÷ live time over its latest [`RATE_POOL`] of live time (a phase cut by
/// a tick, or a short probation, is pooled with what follows rather than trusted on
/// its own: a few milliseconds of a paced load say little). Counts of always-live
/// probes pass through unchanged.
#[derive(Default)]
pub struct Extrapolator {
    raw_then: HashMap<CallKey, u64>,
    estimate: HashMap<CallKey, f64>,
    rate: HashMap<CallKey, f64>,
    on_then: HashMap<u32, f64>,
    at_then: Option<Instant>,
    /// Live time and counts per probe since its rate was last set from a full pool.
    pool_on: HashMap<u32, f64>,
    pool: HashMap<CallKey, u64>,
    /// Probes cut in a surge, with the rate the cut saw (all keys): see `surged`.
    surged: HashMap<u32, f64>,
}

/// Live time a rate is measured over, at least (once that much has been seen).
const RATE_POOL: f64 = 0.05;

/// Calls of a key a sample must hold for its rate to be scaled up to the whole time
/// (Poisson noise: below this, ±45 % or worse).
const MIN_SCALED_CALLS: u64 = 5;

impl Extrapolator {
    /// Probe `probe` was cut in a surge ([`DutyCycle::cut_surges`]) at `rate` hits/s.
    /// Its live time before the cut was mostly before the surge, so a rate measured
    /// over it would be far too low (−60 % held for 9 s in one run): at the next update
    /// its keys take `rate`, shared as their counts in that interval are, and its pool
    /// starts afresh.
    pub fn surged(&mut self, probe: u32, rate: f64) {
        self.surged.insert(probe, rate);
    }

    /// Estimates from `raw` (cumulative counts) and `on` (cumulative live seconds per
    /// probe id), as of `now`.
    pub fn update(&mut self, raw: &Snapshot, on: &HashMap<u32, f64>, now: Instant) -> Snapshot {
        let interval = self
            .at_then
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let scale_of = |probe: u32| -> Option<f64> {
            let on_now = *on.get(&probe)?;
            // A probe new since the last update starts from its own counts.
            let on_delta = on_now - self.on_then.get(&probe)?;
            if interval <= 0.0 || on_delta >= interval * 0.999 {
                None
            } else {
                Some(on_delta.max(0.0))
            }
        };
        let scales: HashMap<u32, Option<f64>> =
            on.keys().map(|&probe| (probe, scale_of(probe))).collect();
        let partly_live = |probe: u32| scales.get(&probe).copied().flatten();
        // This interval's live time and counts join the pools.
        for (&probe, scale) in &scales {
            match scale {
                Some(on) => *self.pool_on.entry(probe).or_default() += on,
                None => {
                    self.pool_on.remove(&probe);
                }
            }
        }
        let mut deltas: Vec<(CallKey, u64, u64)> = Vec::with_capacity(raw.calls.len());
        for (k, &v) in &raw.calls {
            let d = v.saturating_sub(*self.raw_then.get(k).unwrap_or(&0));
            if partly_live(k.probe).is_some() {
                *self.pool.entry(*k).or_default() += d;
            }
            deltas.push((*k, v, d));
        }
        // A full pool sets its probe's rates; a probe with no rate yet takes what
        // there is.
        let full: HashSet<u32> = self
            .pool_on
            .iter()
            .filter(|(_, &on)| on >= RATE_POOL)
            .map(|(&p, _)| p)
            .collect();
        for (k, _, _) in &deltas {
            let Some(&pooled) = self.pool_on.get(&k.probe) else {
                continue;
            };
            let n = if full.contains(&k.probe) {
                self.pool.remove(k).unwrap_or(0)
            } else if pooled >= 0.001 && !self.rate.contains_key(k) {
                self.pool.get(k).copied().unwrap_or(0)
            } else {
                continue;
            };
            // A key seen a few times only is counted, not scaled: one call in a 50 ms
            // sample would read as 20/s, enough to make a finding of a stray call.
            if n >= MIN_SCALED_CALLS {
                self.rate.insert(*k, n as f64 / pooled);
            } else {
                self.rate.remove(k);
            }
        }
        for p in &full {
            self.pool_on.insert(*p, 0.0);
        }
        for (probe, rate) in std::mem::take(&mut self.surged) {
            let of_probe = || deltas.iter().filter(move |(k, _, _)| k.probe == probe);
            let total: u64 = of_probe().map(|(_, _, d)| d).sum();
            for (k, _, d) in of_probe() {
                self.pool.remove(k);
                if total > 0 && *d >= MIN_SCALED_CALLS {
                    self.rate.insert(*k, rate * *d as f64 / total as f64);
                } else {
                    self.rate.remove(k);
                }
            }
            self.pool_on.insert(probe, 0.0);
        }
        let mut out = Snapshot {
            calls: HashMap::with_capacity(raw.calls.len()),
            stw: raw.stw.clone(),
            errors: raw.errors,
            stacks: raw.stacks.clone(),
        };
        for (k, v, d) in deltas {
            let add = match partly_live(k.probe) {
                None => {
                    // Live all along: the rate to hold if the probe is cycled next.
                    if interval > 0.0 {
                        self.rate.insert(k, d as f64 / interval);
                    }
                    d as f64
                }
                // What was counted while live, and the rate for the time off.
                Some(on) => match self.rate.get(&k) {
                    Some(r) => d as f64 + r * (interval - on).max(0.0),
                    // Too few calls seen to scale: what was counted.
                    None => d as f64,
                },
            };
            *self.estimate.entry(k).or_default() += add;
            out.calls
                .insert(k, self.estimate[&k].round().max(v as f64) as u64);
        }
        self.raw_then = raw.calls.clone();
        self.on_then = on.clone();
        self.at_then = Some(now);
        out
    }

    /// Forgets processes that are gone.
    pub fn forget(&mut self, gone: &HashSet<u32>) {
        self.raw_then.retain(|k, _| !gone.contains(&k.tgid));
        self.estimate.retain(|k, _| !gone.contains(&k.tgid));
        self.rate.retain(|k, _| !gone.contains(&k.tgid));
        self.pool.retain(|k, _| !gone.contains(&k.tgid));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(probe: u32) -> CallKey {
        CallKey {
            tgid: 7,
            probe,
            caller: 0x1000,
            arg: 0,
            stack: 0,
        }
    }

    fn snap(n: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.calls.insert(key(3), n);
        s
    }

    #[test]
    fn counts_are_scaled_by_the_live_share_of_each_interval() {
        let t0 = Instant::now();
        let mut x = Extrapolator::default();
        let on = |s: f64| HashMap::from([(3u32, s)]);
        // Start: live 0 s, nothing counted.
        assert_eq!(x.update(&snap(0), &on(0.0), t0).calls[&key(3)], 0);
        // 1 s later: live 0.1 s, 1000 counted → 10,000 estimated.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(x.update(&snap(1000), &on(0.1), t1).calls[&key(3)], 10_000);
        // Next second not live at all: the last rate (10,000/s) holds.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(x.update(&snap(1000), &on(0.1), t2).calls[&key(3)], 20_000);
        // Live the whole next second: counts pass through.
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(x.update(&snap(1500), &on(1.1), t3).calls[&key(3)], 20_500);
        // Off the next second: the rate of the last live second (500/s) holds.
        let t4 = t3 + Duration::from_secs(1);
        assert_eq!(x.update(&snap(1500), &on(1.1), t4).calls[&key(3)], 21_000);
    }

    #[test]
    fn a_sliver_of_live_time_is_pooled_with_the_next() {
        let t0 = Instant::now();
        let mut x = Extrapolator::default();
        let on = |s: f64| HashMap::from([(3u32, s)]);
        let sec = |n: u64| t0 + Duration::from_secs(n);
        x.update(&snap(0), &on(0.0), t0);
        // 0.1 s live, 1000 counted: 10,000/s.
        assert_eq!(
            x.update(&snap(1000), &on(0.1), sec(1)).calls[&key(3)],
            10_000
        );
        // 2 ms live at the end of a tick, 40 counted (a noisy 20,000/s): the rate holds
        // for the 998 ms off, the 40 counted are added as they are.
        assert_eq!(
            x.update(&snap(1040), &on(0.102), sec(2)).calls[&key(3)],
            20_020
        );
        // The rest of that phase, 98 ms and 980 counted: pooled, 1020 in 0.1 s, for
        // the 902 ms off.
        assert_eq!(
            x.update(&snap(2020), &on(0.2), sec(3)).calls[&key(3)],
            30_200
        );
    }

    #[test]
    fn a_surge_sets_the_rate_held_afterwards() {
        let t0 = Instant::now();
        let mut x = Extrapolator::default();
        let on = |s: f64| HashMap::from([(3u32, s)]);
        let sec = |n: u64| t0 + Duration::from_secs(n);
        x.update(&snap(0), &on(0.0), t0);
        // Live all of the first second, quiet: 100 calls.
        assert_eq!(x.update(&snap(100), &on(1.0), sec(1)).calls[&key(3)], 100);
        // A surge to 100,000/s, cut 0.6 s into the next second after 5,000 calls:
        // the 0.4 s off take the surge's rate, not the 8,300/s of the live 0.6 s.
        x.surged(3, 100_000.0);
        assert_eq!(
            x.update(&snap(5_100), &on(1.6), sec(2)).calls[&key(3)],
            45_100
        );
        // Off the next second: the surge's rate holds.
        assert_eq!(
            x.update(&snap(5_100), &on(1.6), sec(3)).calls[&key(3)],
            145_100
        );
    }

    #[test]
    fn a_key_seen_a_few_times_is_counted_not_scaled() {
        let t0 = Instant::now();
        let mut x = Extrapolator::default();
        let on = |s: f64| HashMap::from([(3u32, s)]);
        x.update(&snap(0), &on(0.0), t0);
        // One call in 50 ms of live time: 1, not 20/s.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(x.update(&snap(1), &on(0.05), t1).calls[&key(3)], 1);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(x.update(&snap(1), &on(0.05), t2).calls[&key(3)], 1);
    }

    #[test]
    fn always_live_probes_pass_through() {
        let t0 = Instant::now();
        let mut x = Extrapolator::default();
        x.update(&snap(5), &HashMap::new(), t0);
        let s = x.update(&snap(17), &HashMap::new(), t0 + Duration::from_secs(1));
        assert_eq!(s.calls[&key(3)], 17);
    }
}
