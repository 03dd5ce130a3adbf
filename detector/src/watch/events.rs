//! Process discovery by kernel events: two raw tracepoint programs (`sched_process_exec`,
//! and `sched_process_exit` of main threads) push (pid, kind, time) into a ring buffer,
//! and the agent sleeps on its descriptor. A new Go process is so attached as soon as
//! it runs, whatever `--interval`, and an exited one dropped, without walking /proc.
//! Events the ring buffer had no room for are counted in the kernel; the agent then
//! rescans /proc (as it does at start and every `--rescan-interval`, a safety net for
//! anything else missed).
use std::{
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use detector_common::{ProcEvent, PROC_EXEC, PROC_EXIT};
use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, MetricType},
};

use crate::probes::attach::Probes;

/// What happened to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// It executed a new program, at this CLOCK_MONOTONIC time (ns).
    Exec {
        pid: u32,
        at_ns: u64,
    },
    Exit {
        pid: u32,
    },
}

/// The ring buffer and the lost-event counter, with the programs attached.
pub struct Events {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    lost_seen: u64,
}

impl Events {
    /// Loads and attaches the tracepoint programs of `probes`' object. The links live
    /// as long as `probes`.
    pub fn start(probes: &mut Probes) -> Result<Events, String> {
        let ebpf = probes.ebpf_mut();
        for (prog, name) in [
            ("proc_exec", "sched_process_exec"),
            ("proc_exit", "sched_process_exit"),
        ] {
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("program {prog} missing"))?
                .try_into()
                .map_err(|e| format!("{prog}: {e}"))?;
            p.load().map_err(|e| format!("{prog}: {e:#}"))?;
            p.attach(name).map_err(|e| format!("{name}: {e:#}"))?;
        }
        let ring = ebpf
            .take_map("PROC_EVENTS")
            .ok_or("map PROC_EVENTS missing")?;
        let lost = ebpf
            .take_map("PROC_EVENTS_LOST")
            .ok_or("map PROC_EVENTS_LOST missing")?;
        Ok(Events {
            ring: RingBuf::try_from(ring).map_err(|e| e.to_string())?,
            lost: PerCpuArray::try_from(lost).map_err(|e| e.to_string())?,
            lost_seen: 0,
        })
    }

    /// Sleeps until an event is ready or `timeout` passed; true when one is ready.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // ppoll, not poll: a timeout below a millisecond must not become 0 (a spin).
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and timespec for the duration of the call.
        let n = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
        n > 0 && fd.revents & libc::POLLIN != 0
    }

    /// Takes every event ready, oldest first.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        while let Some(item) = self.ring.next() {
            if let Some(e) = parse(&item) {
                out.push(e);
            }
        }
    }

    /// Events lost (ring buffer full) since the last call.
    pub fn lost(&mut self) -> u64 {
        let total: u64 = self
            .lost
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(self.lost_seen);
        let new = total.saturating_sub(self.lost_seen);
        self.lost_seen = total;
        new
    }
}

fn parse(b: &[u8]) -> Option<Event> {
    if b.len() < size_of::<ProcEvent>() {
        return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let ev = ProcEvent {
        tgid: u32_at(0),
        kind: u32_at(4),
        ns: u64::from_ne_bytes(b[8..16].try_into().expect("8 bytes")),
    };
    match ev.kind {
        PROC_EXEC => Some(Event::Exec {
            pid: ev.tgid,
            at_ns: ev.ns,
        }),
        PROC_EXIT => Some(Event::Exit { pid: ev.tgid }),
        _ => None,
    }
}

/// Now on `clock` (CLOCK_MONOTONIC: `bpf_ktime_get_ns`'s; CLOCK_BOOTTIME: /proc's
/// process start times), in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Upper bounds (seconds) of the discovery latency histogram's buckets.
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How discovery goes: the agent's own view, exported as self-metrics.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryStats {
    /// Whether exec/exit events run (1) or discovery scans /proc every tick (0).
    pub events_up: bool,
    pub exec_events: u64,
    pub exit_events: u64,
    pub lost_events: u64,
    /// Full /proc scans (at start, every `--rescan-interval`, after lost events).
    pub rescans: u64,
    /// Per bucket of [`LATENCY_BOUNDS`], then +Inf: processes first exported that long
    /// after they started (their exec, or their start time when a rescan found them).
    pub latency_counts: [u64; LATENCY_BOUNDS.len() + 1],
    pub latency_sum: f64,
}

impl DiscoveryStats {
    pub fn observe_latency(&mut self, seconds: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency_counts[i] += 1;
        self.latency_sum += seconds;
    }

    /// The self-metrics of discovery, in /metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::{EncodeMetric, NoLabelSet};
        let no_labels: Vec<(&str, String)> = vec![];
        let mut m = enc.encode_descriptor(
            "detector_discovery_latency_seconds",
            "From a Go process's exec (or start, when a /proc rescan found it) until detector exported it",
            None,
            MetricType::Histogram,
        )?;
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .chain([f64::INFINITY].iter())
            .zip(self.latency_counts.iter())
            .map(|(b, n)| {
                cumulative += n;
                (*b, *n)
            })
            .collect();
        m.encode_family(&no_labels)?
            .encode_histogram::<NoLabelSet>(self.latency_sum, cumulative, &buckets, None)?;
        let counters = [
            (
                "detector_proc_exec_events",
                "Process execs seen through the kernel's sched_process_exec tracepoint",
                self.exec_events,
            ),
            (
                "detector_proc_exit_events",
                "Process exits seen through the kernel's sched_process_exit tracepoint",
                self.exit_events,
            ),
            (
                "detector_proc_events_lost",
                "Process events the ring buffer had no room for (each loss triggers a /proc rescan)",
                self.lost_events,
            ),
            (
                "detector_proc_rescans",
                "Full /proc scans (at start, every --rescan-interval as a safety net, after lost events; every tick without events)",
                self.rescans,
            ),
        ];
        for (name, help, v) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m.encode_family(&no_labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "detector_proc_events_up",
            "1 while processes are discovered by kernel exec/exit events, 0 when /proc is scanned every tick instead",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(self.events_up as i64)
            .encode(m.encode_family(&no_labels)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        let mut b = vec![];
        b.extend(42u32.to_ne_bytes());
        b.extend(PROC_EXEC.to_ne_bytes());
        b.extend(7u64.to_ne_bytes());
        assert_eq!(parse(&b), Some(Event::Exec { pid: 42, at_ns: 7 }));
        b[4..8].copy_from_slice(&PROC_EXIT.to_ne_bytes());
        assert_eq!(parse(&b), Some(Event::Exit { pid: 42 }));
        assert_eq!(parse(&b[..8]), None);
    }

    #[test]
    fn latency_buckets() {
        let mut s = DiscoveryStats::default();
        s.observe_latency(0.003);
        s.observe_latency(0.2);
        s.observe_latency(99.0);
        assert_eq!(s.latency_counts[0], 1);
        assert_eq!(s.latency_counts[5], 1);
        assert_eq!(s.latency_counts[LATENCY_BOUNDS.len()], 1);
    }
}
