//! Catalog case 10: runtime/trace left on. The tracer's reader (runtime.readTrace0,
//! or ReadTrace before Go 1.21) runs only while tracing is on, so a trace started at
//! startup is seen without its Start call. On-demand windows (/debug/pprof/trace)
//! last seconds; tracing through a whole window longer than `trace_max_window_s`
//! with no stop is "always on".
//!
//! Go 1.25+: a `trace.FlightRecorder` left on is the sanctioned practice, not this
//! case. It runs the same tracer and the same reader as `trace.Start` (both subscribe
//! to runtime/trace's multiplexer, whose first subscriber calls runtime.StartTrace),
//! and when it was started before detector attached no probe sees which API started
//! it. The multiplexer itself says who the tracer runs for: when, at the window's end,
//! it runs for a flight recorder and no `trace.Start` writer, nothing is flagged.
use super::features::{self, Feature};
use super::{counted_calls, on_throughout, Finding, Param, Rule, Severity, Thresholds};
use crate::apis::Api;
use crate::collect::Collected;

pub const TRACE_MAX_WINDOW_S: Param = Param {
    key: "trace_max_window_s",
    default: 10.0,
    whole: false,
    doc: "the execution tracer running continuously for longer than this (seconds) is \"always on\" rather than an on-demand window",
};

pub const RULE: Rule = Rule {
    id: "trace-always-on",
    catalog_case: Some(10),
    title: "execution tracer always on",
    observes: "the execution tracer's reader active (runtime.readTrace0 / ReadTrace) in every second of a window longer than an on-demand trace, with no trace.Stop",
    params: &[&TRACE_MAX_WINDOW_S],
    needs: &[Api::TraceReader, Api::StartTrace, Api::TraceStart, Api::TraceStop],
    judge,
    fixture_case: "trace",
};

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let stopped = c.calls_of(Api::TraceStop).is_some_and(|s| s.calls > 0);
    let Some(reader) = on_throughout(c, Api::TraceReader, stopped, t.get(&TRACE_MAX_WINDOW_S))
    else {
        return vec![];
    };
    if c.trace_subscribers
        .is_some_and(|s| s.flight_recorder && !s.trace_start)
    {
        return vec![];
    }
    let start = counted_calls(c, Api::TraceStart, |_| true);
    let site = start.as_ref().and_then(|s| s.sites.first().cloned());
    let mut evidence = vec![format!(
        "the tracer's reader ran in every one of the {} seconds watched ({} reads), and trace.Stop was never called",
        reader.per_tick.len(),
        reader.calls
    )];
    if start.is_none() {
        evidence.push(
            "tracing was started before detector attached (no trace.Start in the window)".into(),
        );
    }
    if let Some(s) = c.trace_subscribers.filter(|s| s.trace_start) {
        evidence.push(format!(
            "runtime/trace's multiplexer runs the tracer for a trace.Start writer{}",
            if s.flight_recorder {
                " and a flight recorder (the recorder alone would be fine)"
            } else {
                ""
            }
        ));
    }
    if let Some(cpu) = c.cpu_seconds {
        evidence.push(format!(
            "the process used {:.2} cores meanwhile",
            cpu / c.duration_s
        ));
    }
    let flight_recorder = features::has(c, Feature::FlightRecorder);
    vec![Finding {
        rule: RULE.id,
        severity: Severity::High,
        title: RULE.title.into(),
        summary: format!(
            "the execution tracer has been on for the whole {:.0} s window with no stop: every goroutine transition, GC and syscall event is recorded and written out",
            c.duration_s
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "tracing records every scheduler event into per-P buffers that are flushed and written continuously: up to ~30% throughput and hundreds of MB/s of trace data on busy services".into(),
        fix: fix_text(flight_recorder).into(),
        fine_when: fine_text(flight_recorder).into(),
    }]
}

/// With `flight_recorder` (Go 1.25+: runtime/trace/flightrecorder.go) the record of
/// the past comes from a trace.FlightRecorder, a bounded in-memory window.
fn fix_text(flight_recorder: bool) -> &'static str {
    if flight_recorder {
        "stop the always-on trace; for a record of the past keep a runtime/trace.FlightRecorder on instead (Go 1.25+: the last seconds of trace in a bounded in-memory window, written out with WriteTo when something goes wrong), and take 5-10 s traces on demand through net/http/pprof's /debug/pprof/trace?seconds=5 on an authenticated admin port"
    } else {
        "stop the always-on trace; take 5-10 s traces on demand through net/http/pprof's /debug/pprof/trace?seconds=5 on an authenticated admin port"
    }
}

fn fine_text(flight_recorder: bool) -> &'static str {
    if flight_recorder {
        "pre-production load tests and short reproductions of a known bug; a trace.FlightRecorder left on is the sanctioned always-on form and is not flagged"
    } else {
        "pre-production load tests and short reproductions of a known bug"
    }
}
