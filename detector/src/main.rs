//! The `detector` command line.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use detector::cmd::{self, parse_duration, Format};

const AFTER_HELP: &str = "\
Exit codes:
  0  no findings            1  findings (diagnose)      2  bad command line
  3  no such process        4  not a Go binary          5  not amd64 ELF, or corrupt
  6  unsupported Go version 7  missing privileges       8  target exited mid-run
  9  kernel refused probes  10 other error";

#[derive(Parser)]
#[command(
    name = "detector",
    version,
    about = "Finds misuse of the Go runtime in live processes, with eBPF uprobes",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what can be probed in a Go binary (offline, no privileges needed).
    Inspect {
        /// The Go executable to analyse.
        binary: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Watch a running Go process for a while and report misuse (needs CAP_BPF + CAP_PERFMON).
    Diagnose {
        /// The process to diagnose.
        #[arg(long)]
        pid: u32,
        /// How long to watch: 10s, 500ms, 2m.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[command(flatten)]
        rules: RuleOptions,
        /// ReadMemStats calls per second (from user code, sustained) that make a finding
        /// (same as --set readmemstats_per_second=N).
        #[arg(long)]
        readmemstats_min_rate: Option<f64>,
    },
    /// List every rule, what it observes and its thresholds (after --config and --set).
    Rules {
        #[command(flatten)]
        rules: RuleOptions,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(clap::Args)]
struct RuleOptions {
    /// TOML file with a [thresholds] table (keys: see `detector rules`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one threshold, e.g. --set caller_per_second=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Inspect { binary, format } => cmd::inspect::run(&binary, format),
        Command::Diagnose {
            pid,
            duration,
            format,
            rules,
            readmemstats_min_rate,
        } => cmd::thresholds(rules.config.as_deref(), &rules.sets).and_then(|mut t| {
            if let Some(r) = readmemstats_min_rate {
                t.readmemstats_per_second = r;
            }
            cmd::diagnose::run(cmd::diagnose::Options {
                pid,
                duration,
                format,
                thresholds: t,
            })
        }),
        Command::Rules { rules, format } => cmd::thresholds(rules.config.as_deref(), &rules.sets)
            .and_then(|t| cmd::rules::run(&t, format)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => f.exit(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_are_distinct() {
        use detector::exit::*;
        let mut codes = vec![
            NO_FINDINGS,
            FINDINGS,
            USAGE,
            NO_SUCH_PROCESS,
            NOT_GO,
            UNSUPPORTED_BINARY,
            UNSUPPORTED_GO_VERSION,
            NO_PRIVILEGES,
            TARGET_EXITED,
            BPF_FAILED,
            OTHER,
        ];
        let n = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }
}
