//! Removing probes without waiting. The kernel removes a uprobe's breakpoint at once,
//! then waits for RCU grace periods (about 0.1 s, longer when other uprobe users on
//! the host queue on the same mutex); the duty cycle must not wait with it, so its
//! detaches run on background threads, and how long they take is measured: the
//! breakpoint traps every call until the kernel is done (the "detach tail"), and the
//! overhead budget pays for it.
use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::attach::{release_all, AttachPath, Link};

/// The tail assumed until a detach is measured, per attach path (see
/// [`Detacher::tail`]): one uprobe's unregistration on 6.x, uncontended; a
/// uprobe_multi link's, all of its uprobes at once.
const INITIAL_TAIL_PER_UPROBE: Duration = Duration::from_millis(90);
const INITIAL_TAIL_MULTI: Duration = Duration::from_millis(90);

/// The state shared with the background threads.
#[derive(Debug)]
struct State {
    /// Background detaches not finished yet.
    in_flight: AtomicUsize,
    /// How long a background detach took, smoothed (microseconds).
    tail_us: AtomicU64,
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
        let tail = match path {
            // The 0.09 s an uncontended unregistration takes on 6.x.
            AttachPath::PerUprobe => INITIAL_TAIL_PER_UPROBE,
            AttachPath::UprobeMulti => INITIAL_TAIL_MULTI,
        };
        Detacher(Arc::new(State {
            in_flight: AtomicUsize::new(0),
            tail_us: AtomicU64::new(tail.as_micros() as u64),
        }))
    }

    /// How many detaches are still running. The duty cycle keeps cycled probes off
    /// while the kernel is behind, rather than queue more.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// How long a probe's breakpoint stays in the target after the duty cycle detaches
    /// it, as far as detector can tell: the time its detach took, smoothed. The kernel
    /// serialises uprobe (un)registrations under one mutex, so a detach waits behind
    /// every other one on the host (ours or another tool's), and the breakpoint traps
    /// each call while it waits. Measured on the target with the soak running:
    /// 0.03-0.4 s.
    pub fn tail(&self) -> Duration {
        Duration::from_micros(self.0.tail_us.load(Ordering::Relaxed))
    }

    /// Folds one detach's duration into [`Detacher::tail`] (a quarter weight: quick to
    /// follow a host that gets busy, not thrown by one slow detach).
    fn record(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .0
            .tail_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(old - old / 4 + sample / 4)
            });
    }

    /// Drops `links` on a background thread.
    pub(super) fn release_later(&self, links: Vec<Arc<Link>>) {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("detach".into())
            .spawn(move || {
                let t0 = Instant::now();
                release_all(links);
                let took = t0.elapsed();
                me.record(took);
                log::debug!("background detach took {took:?}, tail now {:?}", me.tail());
                me.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            // The closure (and the links) came back inside the error and were dropped.
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            log::warn!("could not start a thread to detach a probe: {e}");
        }
    }
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
