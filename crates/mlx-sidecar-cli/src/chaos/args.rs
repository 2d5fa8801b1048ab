//! `chaos`'s command line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::plan::{FaultPlan, parse_duration, parse_faults};

/// `chaos`.
#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// Concurrent clients, each sending one request after another.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) clients: usize,

    /// Stop after this many requests in all (with --duration: whichever comes first).
    #[arg(long, value_name = "N")]
    pub(crate) requests: Option<u64>,

    /// Run the load for this long (500ms, 60s, 5m) [default: 60s].
    ///
    /// The 60 s default applies unless --requests, --kill-cycles, or a --faults schedule in
    /// which every fault has a count=, sets the end.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) duration: Option<Duration>,

    /// SIGKILL the worker N times, one kill after each recovery, then end.
    ///
    /// Each kill follows a random pause of 0.5 to 1.5 times --kill-every after service is back; the
    /// run ends when the last recovery is done.
    #[arg(long, value_name = "N", conflicts_with = "faults")]
    pub(crate) kill_cycles: Option<u32>,

    /// With --kill-cycles: the mean pause between recovery and the next kill.
    ///
    /// Pauses shorter than --reset-after let the restart delay grow (the backoff at work).
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) kill_every: Duration,

    /// The faults to inject, comma-separated, e.g. kill:every=3s,stop:every=20s:for=3s.
    ///
    /// Kinds: kill:every=3s, stop:every=20s:for=3s, delete-socket:every=30s,
    /// slow-start:every=45s:delay=2s. Each also takes after=DUR (first injection) and count=N (most
    /// injections). Faults never overlap.
    #[arg(long, value_parser = parse_fault_list, value_name = "SPEC")]
    pub(crate) faults: Option<FaultList>,

    /// Prompt length of each request, in tokens (random token ids).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) prompt_tokens: usize,

    /// Distinct prompts the load takes in turn.
    ///
    /// Before any fault, each runs once alone for its greedy reference, then the same load
    /// runs through them without faults (the floor); every completed stream must equal its
    /// prompt's reference, token id by token id.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) prompts: u64,

    /// Tokens generated per request (end-of-sequence ignored: exactly this many).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) max_tokens: u32,

    /// Deadline of each request; 10 s past it, an unanswered request counts as lost.
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) request_timeout: Duration,

    /// Supervisor health probe interval (3 failures in a row replace the worker).
    #[arg(long, default_value = "500ms", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) health_interval: Duration,

    /// Deadline of one health probe.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) health_timeout: Duration,

    /// Delay before a backed-off restart; it doubles, with jitter, for crashes in a row.
    ///
    /// A backed-off restart is the second of crashes in a row (the first restart after a served run
    /// is immediate), or any restart of a worker that never became ready.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) restart_delay: Duration,

    /// A worker that served this long resets the restart delay.
    ///
    /// Its crash is then restarted at once (or after --restart-delay with --no-immediate-restart).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) reset_after: Duration,

    /// Wait --restart-delay before the first restart after a served run too.
    ///
    /// Turns off the restart policy's immediate_first_restart.
    #[arg(long)]
    pub(crate) no_immediate_restart: bool,

    /// The supervisor gives up after more than this many restarts within --restart-window.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub(crate) max_restarts: u32,

    /// The window of --max-restarts.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) restart_window: Duration,

    /// Grace for a stopping worker to finish its requests (SIGTERM, then SIGKILL).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) grace: Duration,

    /// More worker arguments (repeatable), e.g. --worker-arg=--max-batch=16.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) worker_arg: Vec<String>,

    /// Print the report as one JSON object on stdout instead of tables.
    #[arg(long)]
    pub(crate) json: bool,

    /// Also write the JSON report to this file (for CI artifacts).
    ///
    /// Written whatever stdout shows.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_file: Option<PathBuf>,

    /// Write an SVG chart of throughput over time, with the faults marked.
    #[arg(long, value_name = "FILE")]
    pub(crate) chart: Option<PathBuf>,

    /// Requests do not resume on the next worker when theirs dies mid-stream: they fail
    /// with the worker-died error (the behaviour before resuming, for comparison).
    #[arg(long)]
    pub(crate) no_resume: bool,

    /// Random seed for prompts and pauses.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) seed: u64,

    /// Run N replicas (as `serve --workers N`); the load spreads over them.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) workers: u16,

    /// With --workers: each fault hits one replica (in turn) or all of them together.
    #[arg(long, value_enum, default_value_t = FaultTarget::One)]
    pub(crate) fault_target: FaultTarget,
}

/// Which replicas a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FaultTarget {
    /// One replica per fault, taking turns.
    One,
    /// Every replica at the same time.
    All,
}

/// The parsed `--faults` value (a newtype, so clap takes the whole list as one value).
#[derive(Debug, Clone)]
pub(crate) struct FaultList(pub(crate) Vec<FaultPlan>);

fn parse_fault_list(text: &str) -> Result<FaultList, String> {
    parse_faults(text).map(FaultList)
}
