//! The `detector` command line.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use detector::cmd::{self, parse_duration, Format};

mod generate;

const AFTER_HELP: &str = "\
Exit codes:
  0  no findings            1  findings (diagnose)      2  bad command line
  3  no such process        4  not a Go binary          5  not amd64 ELF, or corrupt
  6  unsupported Go version 7  missing privileges       8  target exited mid-run
  9  kernel refused probes  10 other error            11 watch: cannot listen
  12 watch: bad --web-config";

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
    #[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "exe", "command"])))]
    Diagnose {
        /// The process to diagnose.
        #[arg(long)]
        pid: Option<u32>,
        /// Every running process whose executable (full path or file name) matches this
        /// glob, as `watch --exe` matches; JSON output is then an array of reports.
        #[arg(long, value_name = "GLOB")]
        exe: Option<String>,
        /// Start this command, diagnose it, then stop it (SIGTERM, SIGKILL after 5 s).
        /// Its stdout goes to stderr (stdout carries the report).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
        /// How long to watch: 10s, 500ms, 2m.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[command(flatten)]
        rules: RuleOptions,
        #[command(flatten)]
        budget: BudgetOptions,
        /// ReadMemStats calls per second (from user code, sustained) that make a finding
        /// (same as --set readmemstats_per_second=N).
        #[arg(long)]
        readmemstats_min_rate: Option<f64>,
    },
    /// Watch every Go process on the host and serve Prometheus metrics, findings as
    /// JSON and a health check (a daemon; needs CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE).
    Watch {
        /// Address of the HTTP endpoint (/metrics, /findings, /healthz). Port 0 picks one.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
        /// Only these processes (repeatable).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
        /// Only executables whose path or file name matches this glob (repeatable).
        #[arg(long = "exe", value_name = "GLOB")]
        exe: Vec<String>,
        /// Never executables matching this glob (repeatable).
        #[arg(long = "exclude", value_name = "GLOB")]
        exclude: Vec<String>,
        /// How often the kernel maps are read (new processes are found at once, from
        /// the kernel's exec events).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// How often all of /proc is scanned, a safety net under the exec and exit
        /// events (also done at start and whenever events were lost).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        rescan_interval: Duration,
        /// Rules judge each process over this much of its recent past.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        window: Duration,
        /// Watch (and export) at most this many processes: bounds the series count.
        #[arg(long, default_value_t = 100)]
        max_processes: usize,
        /// Export series of their own (a `pid` label) for up to MAX processes, lowest
        /// pids first (200 when no MAX is given); by default, and beyond MAX, series
        /// are by service: executable and container.
        #[arg(long, value_name = "MAX", num_args = 0..=1, default_missing_value = "200")]
        per_pid_series: Option<usize>,
        /// TLS and basic auth for every endpoint, from a Prometheus exporter-toolkit
        /// web config file (tls_server_config, basic_auth_users with bcrypt hashes).
        #[arg(long, value_name = "FILE")]
        web_config: Option<PathBuf>,
        #[command(flatten)]
        rules: RuleOptions,
        #[command(flatten)]
        budget: BudgetOptions,
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
struct BudgetOptions {
    /// Most CPU the probes may cost each target process, in percent of one core. Hotter
    /// probes are duty-cycled and their counts extrapolated (reports show the sampled
    /// share). 0 turns the budget off: every call is probed.
    #[arg(long, value_name = "PERCENT", default_value_t = detector::probes::budget::Budget::DEFAULT_PERCENT, value_parser = parse_percent)]
    overhead_budget: f64,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage (e.g. 1, 0.5 or 0)"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("`{s}` is outside 0..=100"));
    }
    Ok(v)
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
    // The probe guardian detector starts for itself (not a user command, not in --help).
    if std::env::args().nth(1).as_deref() == Some(detector::probes::guardian::SUBCOMMAND) {
        return detector::probes::guardian::serve().into();
    }
    // Man pages and shell completions from this file's clap definition (for packaging).
    if std::env::args().nth(1).as_deref() == Some(generate::SUBCOMMAND) {
        let dir = std::env::args_os().nth(2).map(PathBuf::from);
        return generate::run(<Cli as clap::CommandFactory>::command(), dir.as_deref());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Inspect { binary, format } => cmd::inspect::run(&binary, format),
        Command::Diagnose {
            pid,
            exe,
            command,
            duration,
            format,
            rules,
            budget,
            readmemstats_min_rate,
        } => cmd::thresholds(rules.config.as_deref(), &rules.sets).and_then(|mut t| {
            if let Some(r) = readmemstats_min_rate {
                t.set(&format!("readmemstats_per_second={r}"))
                    .map_err(|e| detector::exit::Failure::new(detector::exit::Code::Usage, e))?;
            }
            let targets = match (pid, exe) {
                (Some(pid), _) => cmd::diagnose::Targets::Pid(pid),
                (None, Some(glob)) => cmd::diagnose::Targets::Exe(glob),
                (None, None) => cmd::diagnose::Targets::Command(command),
            };
            cmd::diagnose::run(cmd::diagnose::Options {
                targets,
                duration,
                format,
                thresholds: t,
                budget: detector::probes::budget::Budget::from_percent(budget.overhead_budget),
            })
        }),
        Command::Watch {
            listen,
            pids,
            exe,
            exclude,
            interval,
            rescan_interval,
            window,
            max_processes,
            per_pid_series,
            web_config,
            rules,
            budget,
        } => cmd::thresholds(rules.config.as_deref(), &rules.sets).and_then(|thresholds| {
            let filter = detector::watch::discover::Filter::new(pids, &exe, &exclude)
                .map_err(|e| detector::exit::Failure::new(detector::exit::Code::Usage, e))?;
            // Checked before anything else: a bad file is refused at once, root or not.
            let web = web_config
                .as_deref()
                .map(detector::watch::web::WebConfig::load)
                .transpose()?;
            detector::watch::run(detector::watch::Options {
                web,
                listen,
                config: detector::watch::agent::Config {
                    filter,
                    thresholds,
                    interval,
                    rescan_interval,
                    window,
                    max_processes,
                    budget: detector::probes::budget::Budget::from_percent(budget.overhead_budget),
                    per_pid_series: per_pid_series.unwrap_or(0),
                },
            })
        }),
        Command::Rules { rules, format } => cmd::thresholds(rules.config.as_deref(), &rules.sets)
            .and_then(|t| cmd::rules::run(&t, format)),
    };
    match result {
        Ok(code) => code.into(),
        Err(f) => f.exit(),
    }
}

#[cfg(test)]
mod tests {}
