//! detector: finds misuse of the Go runtime in live processes.
//!
//! The pipeline, one module per stage: `target` (which process, which binary) →
//! `gobin` (what is in a Go binary) → `probes` (which probe goes where, and attaching
//! them) → `collect` (kernel maps into facts) → `rules` (facts into findings) →
//! `report` (text and JSON). `cmd` wires them into the subcommands; `watch` runs
//! the same pipeline host-wide as a daemon with a Prometheus endpoint.
//!
//! `gobin` is the `detector-gobin` crate, re-exported under its old path: the pure
//! Go binary parser, which knows nothing of probes or processes.
pub mod apis;
pub mod cmd;
pub mod collect;
pub mod exit;
/// The kernel-side contract (map keys, error counter names), for tests and tools.
pub use detector_common as common;
pub use detector_gobin as gobin;
pub mod probes;
pub mod report;
pub mod rules;
pub mod session;
pub mod target;
pub mod watch;
