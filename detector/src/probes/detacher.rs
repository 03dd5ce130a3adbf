//! Removing probes without waiting, and what a duty cycle's phase costs beyond its
//! live time. A detach waits for grace periods (about 0.1 s, longer when other
//! uprobe users on the host queue on the same mutex); the duty cycle must not wait
//! with it, so its detaches run on background threads. Two stretches trap every call
//! without counting it, and the overhead budget pays for both:
//! - the head: from the start of a re-attach until counting resumes (the breakpoints
//!   go in first);
//! - the tail: from the end of the live phase until the breakpoints are gone. One
//!   uprobe at a time (the per-uprobe path), each breakpoint goes with its own
//!   unregistration, behind the others' grace periods: the whole detach. Through a
//!   uprobe_multi link, the kernel removes every breakpoint first and waits once
//!   after: the wait for the guardian, and the removal.
use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use super::attach::{release_all, AttachPath, Link};

/// The tail and head assumed until measured, per attach path (see
/// [`Detacher::tail`], [`Detacher::head`]): one uprobe's unregistration on 6.x,
/// uncontended, and its registration; a uprobe_multi link's breakpoint removal (and
/// the wait for a guardian busy with another request), and its creation. Measured
/// (6.18, a loaded 2-core VM): per uprobe 0.1-0.5 s detaches, 0.1-0.2 s attaches;
/// uprobe_multi about 1 ms removals, 5-15 ms attaches.
const INITIAL_TAIL_PER_UPROBE: Duration = Duration::from_millis(90);
const INITIAL_TAIL_MULTI: Duration = Duration::from_millis(10);
const INITIAL_HEAD_PER_UPROBE: Duration = Duration::from_millis(100);
const INITIAL_HEAD_MULTI: Duration = Duration::from_millis(15);

/// The state shared with the background threads.
#[derive(Debug)]
struct State {
    /// Background detaches not finished yet.
    in_flight: AtomicUsize,
    /// How long breakpoints stayed in after a detach began, smoothed (microseconds).
    tail_us: AtomicU64,
    /// How long a re-attach took until counting resumed, smoothed (microseconds).
    head_us: AtomicU64,
}

/// Detaches probes on background threads and measures them.
#[derive(Clone, Debug)]
pub struct Detacher(Arc<State>);

impl Default for Detacher {
    fn default() -> Self {
        Detacher::new(AttachPath::PerUprobe)
    }
}

impl Detacher {
    /// A detacher whose tail starts at what a detach takes on `path` until measured.
    pub fn new(path: AttachPath) -> Self {
        let (tail, head) = match path {
            AttachPath::PerUprobe => (INITIAL_TAIL_PER_UPROBE, INITIAL_HEAD_PER_UPROBE),
            AttachPath::UprobeMulti => (INITIAL_TAIL_MULTI, INITIAL_HEAD_MULTI),
        };
        Detacher(Arc::new(State {
            in_flight: AtomicUsize::new(0),
            tail_us: AtomicU64::new(tail.as_micros() as u64),
            head_us: AtomicU64::new(head.as_micros() as u64),
        }))
    }

    /// How long a re-attach traps calls before counting resumes (smoothed like the
    /// tail).
    pub fn head(&self) -> Duration {
        Duration::from_micros(self.0.head_us.load(Ordering::Relaxed))
    }

    /// Folds one re-attach's head into [`Detacher::head`].
    pub fn record_head(&self, took: Duration) {
        fold(&self.0.head_us, took);
    }

    /// How many detaches are still running. The duty cycle keeps cycled probes off
    /// while the kernel is behind, rather than queue more.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// How long a probe's breakpoint stays in the target after the duty cycle detaches
    /// it, as far as detector can tell (see the module's comment), smoothed. The
    /// kernel serialises uprobe (un)registrations under one mutex, so a detach waits
    /// behind every other one on the host (ours or another tool's), and the breakpoint
    /// traps each call while it waits. Measured on the target with the soak running,
    /// per uprobe: 0.03-0.4 s.
    pub fn tail(&self) -> Duration {
        Duration::from_micros(self.0.tail_us.load(Ordering::Relaxed))
    }

    /// Folds one detach's duration into [`Detacher::tail`] (a quarter weight: quick to
    /// follow a host that gets busy, not thrown by one slow detach).
    fn record(&self, took: Duration) {
        fold(&self.0.tail_us, took);
    }

    /// Drops `links` on a background thread.
    pub(super) fn release_later(&self, links: Vec<Arc<Link>>) {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("detach".into())
            .spawn(move || {
                let released = release_all(links);
                me.record(released.tail);
                log::debug!(
                    "background detach took {:?}, breakpoints in for {:?}, tail now {:?}",
                    released.took,
                    released.tail,
                    me.tail()
                );
                me.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            // The closure (and the links) came back inside the error and were dropped.
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            log::warn!("could not start a thread to detach a probe: {e}");
        }
    }
}

/// Folds `sample` into the smoothed figure `slot` at a quarter weight.
fn fold(slot: &AtomicU64, sample: Duration) {
    let sample = sample.as_micros().min(u64::MAX as u128) as u64;
    let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(old - old / 4 + sample / 4)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_follows_detaches_at_a_quarter_weight() {
        let d = Detacher::default();
        d.record(Duration::from_millis(490));
        assert_eq!(d.tail(), Duration::from_millis(190));
        assert_eq!(d.in_flight(), 0);
    }
}
