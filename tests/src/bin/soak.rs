//! `cargo xtask soak`: the target safety soak (see `detector_tests::soak`) for every Go
//! version of the fixtures, one after the other.
//!
//!   soak [--cycles N] [--go SUBSTR]... [--kind KIND] [--kill-every K] [--seed S]
//!        [--duration D] [--connections N] [--delay-ms MS]
//!
//! Defaults: 1,000 cycles per Go version, one run in every 10 SIGKILLed, diagnose
//! --duration 300ms, wrk with 4 connections pausing 1 ms between requests. The build
//! kind rotates over the Go versions (default, stripped, pie, cgo) unless --kind is
//! given. Prints one line per version and a table; exits 1 on any violation.
use std::process::ExitCode;

use detector_tests::{detector_bin, require_bpf_privileges, soak, versions, KINDS};

fn main() -> ExitCode {
    let mut cycles = 1000;
    let mut gos: Vec<String> = vec![];
    let mut kind: Option<String> = None;
    let mut kill_every = 10;
    let mut seed: Option<u64> = None;
    let mut duration = "300ms".to_string();
    let mut connections = 4;
    let mut delay_ms = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        let bad = |what: &str| {
            eprintln!("soak: {a} takes {what}");
            ExitCode::from(2)
        };
        match a.as_str() {
            "--cycles" => match value().parse() {
                Ok(n) => cycles = n,
                Err(_) => return bad("a number"),
            },
            "--go" => gos.push(value()),
            "--kind" => kind = Some(value()),
            "--kill-every" => match value().parse() {
                Ok(n) => kill_every = n,
                Err(_) => return bad("a number (0: no kill)"),
            },
            "--seed" => match value().parse() {
                Ok(n) => seed = Some(n),
                Err(_) => return bad("a number"),
            },
            "--duration" => duration = value(),
            "--connections" => match value().parse() {
                Ok(n) => connections = n,
                Err(_) => return bad("a number"),
            },
            "--delay-ms" => match value().parse() {
                Ok(n) => delay_ms = n,
                Err(_) => return bad("a number"),
            },
            other => {
                eprintln!("soak: unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(k) = &kind {
        if !KINDS.contains(&k.as_str()) {
            eprintln!("soak: --kind is one of {KINDS:?}");
            return ExitCode::from(2);
        }
    }
    require_bpf_privileges();
    let detector = detector_bin();
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let selected: Vec<_> = versions("service")
        .into_iter()
        .enumerate()
        .filter(|(_, (_, name, _))| gos.is_empty() || gos.iter().any(|g| name.contains(g.as_str())))
        .collect();
    if selected.is_empty() {
        eprintln!("soak: no Go version matches {gos:?}");
        return ExitCode::from(2);
    }
    eprintln!(
        "soak: {} Go version(s), {cycles} cycles each, one run in {kill_every} killed, seed {seed}",
        selected.len()
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for (i, (_, name, dir)) in selected {
        let k = kind
            .clone()
            .unwrap_or_else(|| KINDS[i % KINDS.len()].to_string());
        let mut o = soak::Options::new(
            detector.clone(),
            dir.join(&k).join("service"),
            format!("{name}/{k}"),
        );
        o.cycles = cycles;
        o.kill_every = kill_every;
        o.seed = seed.wrapping_add(i as u64);
        o.duration = duration.clone();
        o.connections = connections;
        o.delay_ms = delay_ms;
        o.progress_every = 50;
        match soak::run(&o) {
            Ok(out) => {
                println!("{}", out.summary());
                rows.push(out);
            }
            Err(e) => {
                println!("{}: VIOLATION: {e:#}", o.label);
                failed = true;
            }
        }
    }
    println!();
    println!(
        "| Go / kind | cycles survived | diagnose runs killed (loading / attached / detaching) | completed | runs with the guardian seen | requests | errors | p99 latency | time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} ({} / {} / {}) | {} | {} | {} | {} | {:.1} ms | {:.0} s |",
            r.label,
            r.cycles,
            r.kills(),
            r.killed[0],
            r.killed[1],
            r.killed[2],
            r.completed,
            r.guardian_seen,
            r.requests,
            r.errors(),
            r.latency_p99_us as f64 / 1e3,
            r.elapsed.as_secs_f64()
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
