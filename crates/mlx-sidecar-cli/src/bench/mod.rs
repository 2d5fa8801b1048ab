//! `mlx-sidecar bench`: one fixed, reproducible workload, measured side by side on several
//! paths on the same model:
//!
//! 1. `sidecar`: the full path, this process's supervisor and client → gRPC on the Unix
//!    socket → the worker → MLX ([`sidecar`]);
//! 2. `inprocess`: the same workload in one Python process calling mlx-lm directly
//!    (`scripts/bench_inprocess.py`, embedded in the binary; [`inprocess`]);
//! 3. `http`: mlx-lm's own HTTP server on a loopback port, driven by a streaming HTTP client
//!    ([`http`]);
//! 4. `daemon` and `daemon-http`: through a `mlx-sidecar serve` the bench starts, by the
//!    library's client on its socket or by the HTTP client on its `/v1/completions`
//!    ([`daemon`]).
//!
//! How the parts fit: [`workload`] builds the prompts and levels (via the script's `prepare`,
//! which also writes the model as the worker loads it into an mlx-lm directory for the HTTP
//! server); [`drive`] runs a closed loop of `c` clients per level for the two client-driven
//! paths; every path yields the same per-request records ([`measure`]), which [`report`]
//! summarizes, compares (ratios, the issue's targets, identical outputs) and prints, and
//! [`chart`] draws. [`procstat`] reads CPU time and peak memory from `/proc`. [`ceiling`]
//! measures the transport alone, with the worker in its synthetic-token benchmark mode.
//! The paths run one after another, never at once, so they don't compete for the machine.
//! With `--passes N` the whole sequence of paths runs N times, alternating, each path started
//! afresh every pass, and each path's passes are merged ([`measure::merge_passes`]) into one
//! run before it is summarized, so that the machine's drift weighs on every path alike; the
//! aggregate ratios are also given pass by pass, which shows how far that drift moves them.
//! `--paired N` instead measures the targets pair by pair (single requests at level 1, waves
//! of requests above), both paths kept running and alternating ([`paired`]), which cancels
//! that drift; with `--paths A,B` any two client-driven paths are paired
//! ([`paired::clients`]), such as the daemon against the embedded client.

mod ceiling;
mod chart;
mod chat;
mod daemon;
mod drive;
mod http;
mod inprocess;
mod measure;
mod paired;
mod procstat;
mod python;
mod report;
mod sidecar;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use self::measure::LevelRun;
use self::python::{PythonEnv, ScratchDir};
use self::report::{PathReport, Report};
use self::workload::{Prepared, WorkloadSpec};
use super::args::GlobalArgs;
use super::progress::StderrProgress;
use super::session;

/// `bench`: measure the full path against mlx-lm in-process and mlx-lm's HTTP server.
#[derive(Debug, Args, Clone)]
pub(crate) struct BenchArgs {
    /// Concurrency levels, in running order [default: 1,4,16,64; with --paired: 1].
    ///
    /// A level is the number of requests in flight at once.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub(crate) concurrency: Option<Vec<usize>>,

    /// Tokens in each prompt.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub(crate) prompt_tokens: usize,

    /// Worker replicas of the `replicas` path (the `sidecar` path runs one worker).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub(crate) replicas: usize,

    /// Tokens each request generates (exactly: end-of-sequence tokens are banned).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub(crate) max_tokens: u32,

    /// Requests per level: max(rounds × concurrency, --min-requests).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub(crate) rounds: usize,

    /// Fewest requests in a level.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) min_requests: usize,

    /// Tokens each warm-up request generates.
    ///
    /// One single stream and one small batch are run on every path before measuring.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) warmup_tokens: u32,

    /// The paths to measure, in running order [default: sidecar,inprocess,http].
    ///
    /// With --paired: two paths, the measured one first and its baseline [default:
    /// sidecar,inprocess]; any two of sidecar, http, daemon, daemon-http can be paired too.
    #[arg(long, value_delimiter = ',')]
    pub(crate) paths: Option<Vec<PathKind>>,

    /// Run the whole sequence of paths this many times, alternating.
    ///
    /// The paths alternate (sidecar, inprocess, sidecar, inprocess, ...), each started afresh every
    /// pass; each path's figures are over all its passes. The transport ceiling runs once. With
    /// --paired: the number of sessions.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) passes: usize,

    /// Measure the targets in N pairs instead, both paths kept running.
    ///
    /// The worker and the in-process baseline are started and kept running, and N pairs of each
    /// level go to them, the order swapped every pair: at level 1 a pair is one request on each
    /// (the same prompt, back to back); above, one wave on each (the level's requests as a closed
    /// loop, the same prompts). So the machine's drift weighs on both alike. Prints the medians of
    /// the pairs' ratios (decode, aggregate) and TTFT differences with 95 % intervals. The N pairs
    /// are shared out over `--passes` sessions (rounded up to an even number, at least 2; fewer
    /// when there are fewer pairs than that), both processes started afresh for each, the worker
    /// first in every other session. Levels: `--concurrency` (default 1).
    #[arg(long, value_name = "N", conflicts_with_all = ["transport_ceiling", "chart"])]
    pub(crate) paired: Option<usize>,

    /// Measure the worker's prefix cache instead: a multi-turn chat and users sharing a prompt.
    ///
    /// The worker runs twice, its prefix cache off, then on: a conversation of --chat-turns
    /// turns (each prompt the last one plus its answer of --max-tokens tokens plus a new user
    /// turn), timed turn by turn; then --chat-users requests sent at once that share a system
    /// prompt, with the prompt tokens they computed and the cached ones they reported.
    #[arg(long, conflicts_with_all = ["paired", "paths", "transport_ceiling", "chart"])]
    pub(crate) chat: bool,

    /// Turns of the --chat conversation.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) chat_turns: usize,

    /// Tokens of the --chat system prompts.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub(crate) chat_system_tokens: usize,

    /// Tokens of each --chat user turn.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) chat_user_tokens: usize,

    /// Users sending at once with a shared system prompt in --chat.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) chat_users: usize,

    /// Write every figure (and the per-request measurements) to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,

    /// Also write the figures as Markdown tables (for BENCHMARKS.md) into this file.
    #[arg(long, value_name = "FILE.md")]
    pub(crate) markdown: Option<PathBuf>,

    /// Draw the figures as an SVG chart into this file.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) chart: Option<PathBuf>,

    /// Also measure the transport alone (the worker streaming made-up tokens).
    ///
    /// The real worker runs in its `--synthetic-tokens` benchmark mode, without running the model.
    #[arg(long)]
    pub(crate) transport_ceiling: bool,

    /// Concurrency levels of the transport ceiling.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        value_name = "N,N,..."
    )]
    pub(crate) ceiling_concurrency: Vec<usize>,

    /// Tokens per request in the transport ceiling.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) ceiling_tokens: u32,

    /// Unary calls (ModelInfo, health) timed for the round-trip figures.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub(crate) ceiling_unary_calls: usize,

    /// How the worker treats quantized weights.
    ///
    /// Passed on as the worker's --dequantize.
    ///
    /// The baselines load the model the same way.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub(crate) dequantize: String,

    /// Use this directory as the worker's source instead of the embedded copy.
    ///
    /// It goes on the worker's PYTHONPATH.
    #[arg(long, env = "MLX_SIDECAR_WORKER_DIR", value_name = "DIR")]
    pub(crate) worker_dir: Option<PathBuf>,

    /// An option for the measured worker, e.g. --worker-arg=--stream-interval-ms=10.
    ///
    /// The sidecar path only; repeatable.
    #[arg(long = "worker-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) worker_args: Vec<String>,

    /// Set an environment variable for every measured Python process alike.
    ///
    /// The worker, the in-process baseline and mlx-lm's server all get it, e.g.
    /// MLX_MAX_OPS_PER_BUFFER=100; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub(crate) env: Vec<(String, String)>,
}

impl BenchArgs {
    /// The concurrency levels: `--concurrency`, or by default 1, 4, 16 and 64 (with
    /// `--paired`, 1: the single-stream targets).
    fn levels(&self) -> Vec<usize> {
        match (&self.concurrency, self.paired) {
            (Some(levels), _) => levels.clone(),
            (None, Some(_)) => vec![1],
            (None, None) => vec![1, 4, 16, 64],
        }
    }
}

impl BenchArgs {
    /// The paths: `--paths`, or by default all three of issue 5 (with `--paired`, the sidecar
    /// and the in-process baseline).
    fn paths(&self) -> Vec<PathKind> {
        match (&self.paths, self.paired) {
            (Some(paths), _) => paths.clone(),
            (None, Some(_)) => vec![PathKind::Sidecar, PathKind::Inprocess],
            (None, None) => vec![PathKind::Sidecar, PathKind::Inprocess, PathKind::Http],
        }
    }
}

/// Parses `KEY=VALUE` for `--env`.
fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') && !value.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// One of the measured paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathKind {
    /// Rust client → gRPC on the Unix socket → worker → MLX.
    Sidecar,
    /// The same with `--replicas` workers, each request to the least loaded one.
    Replicas,
    /// One Python process calling mlx-lm directly.
    Inprocess,
    /// mlx-lm's own HTTP server.
    Http,
    /// `mlx-sidecar serve` started by the bench; the library's client on its Unix socket.
    Daemon,
    /// The same daemon's OpenAI `/v1/completions`, streamed, over loopback TCP.
    DaemonHttp,
}

impl PathKind {
    /// Its name on the command line and in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PathKind::Sidecar => "sidecar",
            PathKind::Replicas => "replicas",
            PathKind::Inprocess => "inprocess",
            PathKind::Http => "http",
            PathKind::Daemon => "daemon",
            PathKind::DaemonHttp => "daemon-http",
        }
    }
}

/// With `--test-model`: writes the worker's tiny test model (the same weights the worker
/// serves) into `scratch` as an mlx-lm directory, so that every path, the baselines
/// included, loads it by `--model`.
async fn write_test_model(py: &PythonEnv, scratch: &Path) -> anyhow::Result<PathBuf> {
    let dir = scratch.join("test-model");
    let status = py
        .command([
            "-m".as_ref(),
            "mlx_worker.testing.tiny_model".as_ref(),
            dir.as_os_str(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("writing the test model")?;
    anyhow::ensure!(status.success(), "writing the test model failed ({status})");
    Ok(dir)
}

/// How the model is loaded, passed the same way to the worker and the baseline script.
#[derive(Debug, Clone)]
pub(crate) struct ModelArgs {
    model: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    dequantize: String,
}

impl ModelArgs {
    fn common(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(m) = &self.model {
            args.extend(["--model".to_owned(), m.display().to_string()]);
        }
        if let Some(c) = &self.cache_dir {
            args.extend(["--cache-dir".to_owned(), c.display().to_string()]);
        }
        args.extend(["--dequantize".to_owned(), self.dequantize.clone()]);
        args
    }

    /// Arguments for `bench_inprocess.py prepare|run`.
    pub(crate) fn script_args(&self) -> Vec<String> {
        self.common()
    }

    /// Arguments for the worker (`--model` goes through [`WorkerCommand`] too, as an arg).
    ///
    /// [`WorkerCommand`]: mlx_sidecar::WorkerCommand
    pub(crate) fn worker_args(&self) -> Vec<String> {
        self.common()
    }
}

/// What one path measured.
#[derive(Debug, Clone)]
pub(crate) struct PathRun {
    /// One entry per measured level.
    pub(crate) levels: Vec<LevelRun>,
    /// Peak resident memory of the serving process.
    pub(crate) server_peak_rss_bytes: u64,
    /// Peak resident memory of this process while it drove the path (0: not involved).
    pub(crate) client_peak_rss_bytes: u64,
}

/// Facts about this machine, for the report.
fn machine() -> BTreeMap<String, serde_json::Value> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut m = BTreeMap::new();
    m.insert("os".into(), std::env::consts::OS.into());
    m.insert("arch".into(), std::env::consts::ARCH.into());
    m.insert(
        "kernel".into(),
        read("/proc/sys/kernel/osrelease").trim().into(),
    );
    m.insert("cpu".into(), cpu.into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    m.insert("cpus".into(), cpus.into());
    m.insert("memory_bytes".into(), (mem_kib * 1024).into());
    m
}

/// What the worker says about itself, for the report's versions.
fn add_worker_versions(
    versions: &mut BTreeMap<String, serde_json::Value>,
    info: &mlx_sidecar::ModelInfo,
) {
    versions.insert("worker".into(), info.worker_version.clone().into());
    versions.insert(
        "device".into(),
        format!("{} ({})", info.device_name, info.backend).into(),
    );
    versions.insert("cpu_blas".into(), info.cpu_blas.clone().into());
}

/// Writes `--json` (the report) and `--markdown` (made by `markdown`), where asked for.
fn write_outputs(
    args: &BenchArgs,
    report: &impl Serialize,
    markdown: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The command line as typed, for the report.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Runs the bench; Ctrl-C or SIGTERM stops it cleanly (the worker, the servers and the
/// scratch directory go with it) and exits with 130 or 143.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &BenchArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("catching Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    tokio::select! {
        result = run_bench(global, args, progress) => result,
        _ = interrupt.recv() => {
            eprintln!("bench interrupted; stopping");
            Ok(ExitCode::from(130))
        }
        _ = terminate.recv() => {
            eprintln!("bench terminated; stopping");
            Ok(ExitCode::from(143))
        }
    }
}

/// The bench itself (see the module docs).
async fn run_bench(
    global: &GlobalArgs,
    args: &BenchArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    let concurrency = args.levels();
    anyhow::ensure!(
        !concurrency.is_empty(),
        "--concurrency needs at least one level"
    );
    anyhow::ensure!(
        concurrency.iter().all(|&c| c > 0),
        "concurrency levels must be > 0"
    );
    anyhow::ensure!(
        args.paired.is_none()
            || concurrency
                .iter()
                .enumerate()
                .all(|(i, c)| !concurrency[..i].contains(c)),
        "--concurrency with --paired: each level once"
    );
    anyhow::ensure!(args.max_tokens >= 2, "--max-tokens must be at least 2");
    // The daemon builds its worker's command itself: the embedded worker source, and only the
    // variables the supervisor passes on.
    anyhow::ensure!(
        !args
            .paths()
            .iter()
            .any(|p| matches!(p, PathKind::Daemon | PathKind::DaemonHttp))
            || (args.env.is_empty() && args.worker_dir.is_none()),
        "the daemon paths take neither --env nor --worker-dir"
    );
    anyhow::ensure!(args.passes >= 1, "--passes must be at least 1");
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let startup_timeout = Duration::from_secs_f64(global.startup_timeout.max(1.0));

    // The interpreter and worker source: the managed environment (or --python).
    let env = mlx_sidecar::env::ensure(&session::env_options(global), progress)
        .await
        .context("preparing the Python environment")?;
    let worker_dir = args
        .worker_dir
        .clone()
        .unwrap_or_else(|| env.worker_dir.clone());
    let scratch = ScratchDir::new()?;
    let py = PythonEnv::new(
        env.python.clone(),
        worker_dir,
        args.env.clone(),
        scratch.path(),
    )?;
    let model = ModelArgs {
        model: match (&global.model, global.test_model) {
            (None, true) => Some(write_test_model(&py, scratch.path()).await?),
            (model, _) => model.clone(),
        },
        cache_dir: global.cache_dir.clone(),
        dequantize: args.dequantize.clone(),
    };
    if args.chat {
        let mlx_lm_dir = scratch.path().join("mlx-lm-model");
        let mut report = chat::run(
            args,
            &py,
            &model,
            global.socket_dir.as_deref(),
            &mlx_lm_dir,
            startup_timeout,
        )
        .await?;
        report["command"] = command_line().into();
        report["started_unix_s"] = started_unix_s.into();
        report["machine"] = serde_json::to_value(machine())?;
        let text = report["text"].as_str().unwrap_or_default().to_owned();
        write_outputs(args, &report, || format!("```\n{text}```\n"))?;
        return Ok(ExitCode::SUCCESS);
    }

    // The workload (paired: at level 1 one request per pair; see WorkloadSpec::requests).
    if let Some(n) = args.paired {
        anyhow::ensure!(n >= 1, "--paired needs at least one pair");
    }
    let spec = WorkloadSpec {
        levels: concurrency,
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        rounds: args.rounds,
        min_requests: args.min_requests,
        warmup_tokens: args.warmup_tokens,
        passes: args.passes,
        paired: args.paired,
    };
    eprintln!(
        "preparing the workload ({} prompts of {} tokens)",
        spec.prompt_count(),
        spec.prompt_tokens
    );
    let mlx_lm_dir = scratch.path().join("mlx-lm-model");
    let mut prepare_args = vec!["prepare".to_owned()];
    prepare_args.extend(model.script_args());
    prepare_args.extend([
        "--out-dir".to_owned(),
        mlx_lm_dir.display().to_string(),
        "--prompt-tokens".to_owned(),
        spec.prompt_tokens.to_string(),
        "--count".to_owned(),
        spec.prompt_count().to_string(),
    ]);
    let (prepared, _) = py.run_script(&prepare_args, None).await?;
    let versions_value = prepared.get("versions").cloned().unwrap_or_default();
    let prepared: Prepared =
        serde_json::from_value(prepared).context("reading the prepared workload")?;
    let model_value = prepared.model.clone();
    let mlx_lm_dir = prepared.mlx_lm_dir.clone();
    let workload = spec.clone().build(prepared)?;

    let mut versions: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    versions.insert("mlx_sidecar".into(), env!("CARGO_PKG_VERSION").into());
    if let serde_json::Value::Object(map) = versions_value {
        versions.extend(map);
    }

    let paths = args.paths();
    let daemon_setup = daemon::DaemonSetup {
        py: &py,
        model: &model,
        worker_args: &args.worker_args,
        max_batch: workload.max_batch,
        scratch: scratch.path(),
        timeout: startup_timeout,
    };
    if args.paired.is_some() && paths != [PathKind::Sidecar, PathKind::Inprocess] {
        let [measured, baseline] = paths[..] else {
            anyhow::bail!("--paired compares two paths: --paths MEASURED,BASELINE");
        };
        let setup = paired::clients::ClientSetup {
            daemon: daemon_setup,
            socket_dir: global.socket_dir.as_deref(),
            mlx_lm_dir: &mlx_lm_dir,
        };
        let run = paired::clients::run(&setup, &workload, measured, baseline, args.passes).await?;
        let (text, summaries) = paired::clients::render(&run, &workload.spec.levels);
        println!("{text}");
        let targets: Vec<_> = summaries
            .iter()
            .flat_map(|s| s.targets(measured, baseline))
            .collect();
        let report = serde_json::json!({
            "command": command_line(),
            "started_unix_s": started_unix_s,
            "machine": machine(),
            "versions": versions,
            "model": model_value,
            "workload": workload.spec,
            "summaries": summaries,
            "targets": targets,
            "run": run,
        });
        write_outputs(args, &report, || format!("```\n{text}```\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.paired.is_some() {
        let setup = paired::PairedSetup {
            py: &py,
            model: &model,
            socket_dir: global.socket_dir.as_deref(),
            worker_args: &args.worker_args,
            mlx_lm_dir: &mlx_lm_dir,
            scratch: scratch.path(),
            timeout: startup_timeout,
        };
        let run = paired::run(&setup, &workload, args.passes).await?;
        if let Some(info) = &run.worker_info {
            add_worker_versions(&mut versions, info);
        }
        let paired::PairedReport {
            text,
            summary,
            wave_summaries,
            targets,
        } = paired::PairedReport::new(&run);
        println!("{text}");
        let report = serde_json::json!({
            "command": command_line(),
            "started_unix_s": started_unix_s,
            "machine": machine(),
            "versions": versions,
            "model": model_value,
            "workload": workload.spec,
            "summary": summary,
            "wave_summaries": wave_summaries,
            "targets": targets,
            "pairs": run.pairs,
            "waves": run.waves,
        });
        write_outputs(args, &report, || format!("```\n{text}```\n"))?;
        return Ok(ExitCode::SUCCESS);
    }

    // Every pass runs every path, in order; each path's passes are merged afterwards.
    let mut runs: Vec<Vec<PathRun>> = vec![Vec::new(); paths.len()];
    for pass in 1..=args.passes {
        if args.passes > 1 {
            eprintln!("pass {pass}/{}", args.passes);
        }
        for (&kind, passes) in paths.iter().zip(&mut runs) {
            eprintln!("path {}:", kind.name());
            let run = match kind {
                PathKind::Sidecar | PathKind::Replicas => {
                    let replicas = if kind == PathKind::Replicas {
                        args.replicas.max(1)
                    } else {
                        1
                    };
                    let sup = sidecar::start(
                        &py,
                        &model,
                        global.socket_dir.as_deref(),
                        &args.worker_args,
                        workload.max_batch,
                        replicas,
                        startup_timeout,
                    )
                    .await?;
                    if let Ok(info) = sup.client().model_info().await {
                        add_worker_versions(&mut versions, &info);
                    }
                    let run = sidecar::run(&sup, &workload).await;
                    sup.shutdown().await.ok();
                    run?
                }
                PathKind::Inprocess => inprocess::run(&py, &model, &workload, &mlx_lm_dir).await?,
                PathKind::Daemon => daemon::run(&daemon_setup, &workload, false).await?,
                PathKind::DaemonHttp => daemon::run(&daemon_setup, &workload, true).await?,
                PathKind::Http => {
                    let server = http::HttpServer::start(
                        &py,
                        &mlx_lm_dir,
                        scratch.path(),
                        &model.dequantize,
                        workload.max_batch,
                        startup_timeout,
                    )
                    .await?;
                    let run = http::run(&server, &workload).await;
                    server.stop().await;
                    run?
                }
            };
            passes.push(run);
        }
    }
    let paths = paths
        .iter()
        .zip(runs)
        .map(|(&kind, passes)| PathReport::new(kind, passes))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let transport_ceiling = if args.transport_ceiling {
        eprintln!("transport ceiling (synthetic tokens):");
        Some(
            ceiling::run(
                &py,
                &model,
                global.socket_dir.as_deref(),
                &workload,
                args,
                startup_timeout,
            )
            .await?,
        )
    } else {
        None
    };

    let mut report = Report {
        command: command_line(),
        started_unix_s,
        machine: machine(),
        versions,
        model: model_value,
        workload: spec,
        paths,
        ratios: Vec::new(),
        targets: Vec::new(),
        outputs: Vec::new(),
        transport_ceiling,
    };
    report.compare();
    println!("{}", report.render());
    write_outputs(args, &report, || report.render_markdown())?;
    if let Some(path) = &args.chart {
        chart::draw(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::BenchArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn levels(args: &[&str]) -> Vec<usize> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        cli.bench.levels()
    }

    #[test]
    fn paths_default_to_issue_5s_three_or_to_the_in_process_pair() {
        let paths = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{e}"))
                .bench
                .paths()
        };
        use super::PathKind::*;
        assert_eq!(paths(&[]), [Sidecar, Inprocess, Http]);
        assert_eq!(paths(&["--paired", "4"]), [Sidecar, Inprocess]);
        assert_eq!(
            paths(&["--paired", "4", "--paths", "daemon-http,http"]),
            [DaemonHttp, Http]
        );
        assert_eq!(paths(&["--paths", "daemon,sidecar"]), [Daemon, Sidecar]);
    }

    #[test]
    fn levels_default_to_all_four_or_to_one_stream_when_paired() {
        assert_eq!(levels(&[]), [1, 4, 16, 64]);
        assert_eq!(levels(&["--paired", "10"]), [1]);
        assert_eq!(
            levels(&["--paired", "10", "--concurrency", "4,16"]),
            [4, 16]
        );
        assert_eq!(levels(&["--concurrency", "2"]), [2]);
    }
}
