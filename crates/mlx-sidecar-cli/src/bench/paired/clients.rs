//! `bench --paired N --paths A,B` for two client-driven paths (`sidecar`, `http`, `daemon`,
//! `daemon-http`): `A` measured against `B`, pair by pair, as the sidecar against the
//! in-process baseline ([`super`]). Both are started (the order alternating from session to
//! session), warmed up and kept running; pair `i` of a level runs the same work on both back
//! to back, `A` first in even pairs: one request at level 1, one wave (the level's requests
//! as a closed loop) above. Each pair gives an aggregate ratio, a decode ratio and a TTFT
//! (p50) difference; the report gives their medians with 95 % intervals.
//!
//! The targets are issue 14's where it names them: the daemon's gRPC against the embedded
//! client (decode ≥ 0.98, TTFT ≤ +1 ms at one stream), the daemon's HTTP against mlx-lm's
//! server (aggregate ≥ 1 below 64 streams, ≥ 1.5 at 64). A daemon's own peak memory and CPU
//! are reported too.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::future::BoxFuture;
use mlx_sidecar::Supervisor;
use serde::Serialize;

use super::super::daemon::{Daemon, DaemonSetup};
use super::super::measure::{LevelRun, LevelSummary, RequestRecord, percentile};
use super::super::workload::{LevelPlan, Prompt, Workload};
use super::super::{PathKind, drive, http, sidecar};
use super::sessions;
use super::stats::{Median, PairedTarget, median_ci95};

/// Sends one workload request.
type Sender = Arc<
    dyn Fn(Arc<Prompt>, u32, Instant) -> BoxFuture<'static, anyhow::Result<RequestRecord>>
        + Send
        + Sync,
>;

/// Where the client-driven paths start.
pub(crate) struct ClientSetup<'a> {
    /// The daemon's (and, through it, the embedded worker's) options.
    pub(crate) daemon: DaemonSetup<'a>,
    /// Parent directory of the embedded worker's socket directory.
    pub(crate) socket_dir: Option<&'a std::path::Path>,
    /// The mlx-lm directory `prepare` wrote (mlx-lm's server loads it).
    pub(crate) mlx_lm_dir: &'a std::path::Path,
}

/// One path, running.
enum Running {
    Sidecar(Supervisor),
    Http(http::HttpServer),
    Daemon(Daemon, Option<f64>),
}

impl Running {
    async fn start(
        kind: PathKind,
        setup: &ClientSetup<'_>,
        workload: &Workload,
    ) -> anyhow::Result<Self> {
        let d = &setup.daemon;
        Ok(match kind {
            PathKind::Sidecar => Running::Sidecar(
                sidecar::start(
                    d.py,
                    d.model,
                    setup.socket_dir,
                    d.worker_args,
                    workload.max_batch,
                    1,
                    d.timeout,
                )
                .await?,
            ),
            PathKind::Replicas => {
                anyhow::bail!(
                    "--paired has no replicas path: run it unpaired (--paths sidecar,replicas)"
                )
            }
            PathKind::Http => Running::Http(
                http::HttpServer::start(
                    d.py,
                    setup.mlx_lm_dir,
                    d.scratch,
                    &d.model.dequantize,
                    workload.max_batch,
                    d.timeout,
                )
                .await?,
            ),
            PathKind::Daemon | PathKind::DaemonHttp => {
                Running::Daemon(Daemon::start(d).await?, None)
            }
            PathKind::Inprocess => anyhow::bail!("the in-process baseline is not client-driven"),
        })
    }

    /// The process whose CPU time counts as the server's (the worker, or mlx-lm's server).
    fn server_pid(&self) -> Option<u32> {
        match self {
            Running::Sidecar(s) => s.worker_pid(),
            Running::Http(h) => Some(h.pid()),
            Running::Daemon(d, _) => d.worker_pid(),
        }
    }

    fn sender(&self, kind: PathKind, eos: &[u32]) -> Sender {
        match self {
            Running::Sidecar(s) => Arc::new(sidecar::sender(s.client(), eos)),
            Running::Http(h) => Arc::new(http::sender(h.addr(), eos)),
            Running::Daemon(d, _) => Arc::new(super::super::daemon::sender(
                d,
                kind == PathKind::DaemonHttp,
                eos,
            )),
        }
    }

    /// Starts counting a daemon's own memory and CPU from now.
    fn mark(&mut self) {
        if let Running::Daemon(d, mark) = self {
            *mark = d.mark();
        }
    }

    /// A daemon's own peak memory (bytes) and CPU seconds since [`Running::mark`].
    fn daemon_usage(&self) -> Option<(u64, f64)> {
        match self {
            Running::Daemon(d, mark) => {
                let u = d.usage(*mark);
                Some((u.peak_rss_bytes, u.cpu_s))
            }
            _ => None,
        }
    }

    async fn stop(self) {
        match self {
            Running::Sidecar(s) => {
                s.shutdown().await.ok();
            }
            Running::Http(h) => h.stop().await,
            Running::Daemon(d, _) => d.stop().await,
        }
    }
}

/// Runs `plan` through `send` (a closed loop of `plan.concurrency` streams).
async fn wave(
    workload: &Workload,
    plan: &LevelPlan,
    server_pid: Option<u32>,
    send: &Sender,
    max_tokens: u32,
) -> anyhow::Result<LevelRun> {
    let send = send.clone();
    drive::run_level(workload, plan, max_tokens, server_pid, move |p, m, t| {
        send(p, m, t)
    })
    .await
}

/// One pair: the same work on both paths, back to back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientPair {
    /// Streams in flight.
    pub(crate) concurrency: usize,
    /// The session (both paths started afresh) it ran in.
    pub(crate) pass: usize,
    /// Whether the measured path ran first.
    pub(crate) measured_first: bool,
    /// The measured path's run.
    pub(crate) measured: LevelRun,
    /// The baseline's run.
    pub(crate) baseline: LevelRun,
}

/// A daemon's own usage in one session.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct DaemonSession {
    /// Which path it served.
    pub(crate) path: PathKind,
    /// Its peak resident memory, bytes (reset after the warm-up).
    pub(crate) peak_rss_bytes: u64,
    /// Its CPU seconds after the warm-up.
    pub(crate) cpu_s: f64,
    /// Tokens generated through it after the warm-up.
    pub(crate) tokens: u64,
}

/// Everything a client-pairs run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientPairsRun {
    /// The measured path and its baseline.
    pub(crate) paths: (PathKind, PathKind),
    /// Every pair, in running order.
    pub(crate) pairs: Vec<ClientPair>,
    /// The daemons' own usage, session by session.
    pub(crate) daemons: Vec<DaemonSession>,
}

/// Runs the pairs of every level of `workload` between `measured` and `baseline`, in
/// `passes` sessions (see [`super::sessions`]).
pub(crate) async fn run(
    setup: &ClientSetup<'_>,
    workload: &Workload,
    measured: PathKind,
    baseline: PathKind,
    passes: usize,
) -> anyhow::Result<ClientPairsRun> {
    let pairs = workload
        .spec
        .paired
        .context("the workload was not made for the paired mode")?;
    let passes = sessions(passes);
    let per_pass = pairs.div_ceil(passes).max(1);
    let mut run = ClientPairsRun {
        paths: (measured, baseline),
        pairs: Vec::new(),
        daemons: Vec::new(),
    };
    let eos = &workload.eos_token_ids;
    let max_tokens = workload.spec.max_tokens;
    for pass in 0..passes {
        let range = (pass * per_pass).min(pairs)..((pass + 1) * per_pass).min(pairs);
        if range.is_empty() {
            break;
        }
        eprintln!("pass {}/{passes}", pass + 1);
        // Which path starts first alternates, as in the other paired mode.
        let order = if pass % 2 == 0 {
            [measured, baseline]
        } else {
            [baseline, measured]
        };
        let mut running = Vec::new();
        for kind in order {
            eprintln!("starting {}", kind.name());
            let path = Running::start(kind, setup, workload).await?;
            let send = path.sender(kind, eos);
            for warmup in &workload.warmup {
                wave(
                    workload,
                    warmup,
                    path.server_pid(),
                    &send,
                    workload.spec.warmup_tokens,
                )
                .await
                .with_context(|| format!("warming up {}", kind.name()))?;
            }
            running.push((kind, path, send));
        }
        if order[0] != measured {
            running.swap(0, 1);
        }
        for (_, path, _) in &mut running {
            path.mark();
        }
        let session_start = run.pairs.len();
        for plan in &workload.levels {
            for (i, index) in range.clone().enumerate() {
                // Level 1: pair i is one request (its own prompt); above, the level's wave.
                let one;
                let plan = if plan.concurrency == 1 {
                    one = LevelPlan {
                        concurrency: 1,
                        prompts: vec![plan.prompts[index]],
                    };
                    &one
                } else {
                    plan
                };
                let measured_first = i % 2 == 0;
                let mut runs = Vec::new();
                let sides = if measured_first { [0, 1] } else { [1, 0] };
                for side in sides {
                    let (kind, path, send) = &running[side];
                    let level = wave(workload, plan, path.server_pid(), send, max_tokens)
                        .await
                        .with_context(|| {
                            format!(
                                "{}, {} streams, pair {index}",
                                kind.name(),
                                plan.concurrency
                            )
                        })?;
                    runs.push((side, level));
                }
                runs.sort_by_key(|(side, _)| *side);
                let mut levels = runs.into_iter().map(|(_, l)| l);
                let (Some(m), Some(b)) = (levels.next(), levels.next()) else {
                    unreachable!("two sides ran");
                };
                run.pairs.push(ClientPair {
                    concurrency: plan.concurrency,
                    pass,
                    measured_first,
                    measured: m,
                    baseline: b,
                });
            }
            let summary = LevelPairs::new(&run.pairs, plan.concurrency);
            eprintln!(
                "  {} streams, {} pairs: aggregate ratio median {:.3}, TTFT p50 difference median {:+.2} ms",
                plan.concurrency,
                summary.pairs,
                summary.aggregate_ratio.median,
                summary.ttft_p50_delta_ms.median
            );
        }
        for (kind, path, _) in running {
            if let Some((peak_rss_bytes, cpu_s)) = path.daemon_usage() {
                let tokens = run.pairs[session_start..]
                    .iter()
                    .map(|p| {
                        let side = if kind == measured {
                            &p.measured
                        } else {
                            &p.baseline
                        };
                        side.requests.iter().map(|r| r.tokens).sum::<u64>()
                    })
                    .sum();
                run.daemons.push(DaemonSession {
                    path: kind,
                    peak_rss_bytes,
                    cpu_s,
                    tokens,
                });
            }
            path.stop().await;
        }
    }
    Ok(run)
}

/// The figures of one level's pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LevelPairs {
    /// Streams in flight.
    pub(crate) concurrency: usize,
    /// Pairs run.
    pub(crate) pairs: usize,
    /// Measured / baseline generated tokens per second of wall time, pair by pair.
    pub(crate) aggregate_ratio: Median,
    /// Measured / baseline decode rate per stream, pair by pair.
    pub(crate) decode_ratio: Median,
    /// Measured minus baseline TTFT p50, ms, pair by pair.
    pub(crate) ttft_p50_delta_ms: Median,
    /// Median over the pairs of each side's aggregate tokens per second.
    pub(crate) aggregate_tps_p50: (f64, f64),
    /// Median over the pairs of each side's TTFT p50, ms.
    pub(crate) ttft_p50_ms: (f64, f64),
    /// Median over the pairs of each side's worker (or server) CPU s per 1k tokens.
    pub(crate) server_cpu_s_per_1k_tokens: (f64, f64),
}

impl LevelPairs {
    /// Summarizes the pairs of level `concurrency` among `pairs`.
    pub(crate) fn new(pairs: &[ClientPair], concurrency: usize) -> Self {
        let figures: Vec<(LevelSummary, LevelSummary)> = pairs
            .iter()
            .filter(|p| p.concurrency == concurrency)
            .map(|p| {
                (
                    LevelSummary::from_records(&p.measured),
                    LevelSummary::from_records(&p.baseline),
                )
            })
            .collect();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let of = |f: &dyn Fn(&(LevelSummary, LevelSummary)) -> f64| {
            median_ci95(&figures.iter().map(f).collect::<Vec<_>>())
        };
        let p50 = |f: fn(&LevelSummary) -> f64| {
            let a: Vec<f64> = figures.iter().map(|(m, _)| f(m)).collect();
            let b: Vec<f64> = figures.iter().map(|(_, b)| f(b)).collect();
            (percentile(&a, 50.0), percentile(&b, 50.0))
        };
        Self {
            concurrency,
            pairs: figures.len(),
            aggregate_ratio: of(&|(m, b)| ratio(m.aggregate_tps, b.aggregate_tps)),
            decode_ratio: of(&|(m, b)| ratio(m.decode_tps_per_stream, b.decode_tps_per_stream)),
            ttft_p50_delta_ms: of(&|(m, b)| m.ttft_p50_ms - b.ttft_p50_ms),
            aggregate_tps_p50: p50(|l| l.aggregate_tps),
            ttft_p50_ms: p50(|l| l.ttft_p50_ms),
            server_cpu_s_per_1k_tokens: p50(|l| l.server_cpu_s_per_1k_tokens),
        }
    }

    /// Issue 14's targets for this level and these two paths (none for other pairs of paths).
    pub(crate) fn targets(&self, measured: PathKind, baseline: PathKind) -> Vec<PairedTarget> {
        let (m, b) = (measured.name(), baseline.name());
        let c = self.concurrency;
        match (measured, baseline) {
            (PathKind::Daemon, PathKind::Sidecar) if c == 1 => vec![
                PairedTarget::new(
                    &format!("single stream: decode tok/s, {m} / {b} (median of pairs)"),
                    self.decode_ratio,
                    0.98,
                    true,
                ),
                PairedTarget::new(
                    &format!("single stream: TTFT, {m} - {b}, ms (median of pairs)"),
                    self.ttft_p50_delta_ms,
                    1.0,
                    false,
                ),
            ],
            (PathKind::DaemonHttp, PathKind::Http) => vec![PairedTarget::new(
                &format!("{c} streams: aggregate tok/s, {m} / {b} (median of pairs)"),
                self.aggregate_ratio,
                if c >= 64 { 1.5 } else { 1.0 },
                true,
            )],
            _ => Vec::new(),
        }
    }

    /// The level's figures and targets as text.
    pub(crate) fn render(&self, measured: PathKind, baseline: PathKind) -> String {
        let (m, b) = (measured.name(), baseline.name());
        let mut out = format!(
            "{} streams, paired: {} pairs (the same work on both paths, back to back, order \
             alternating)\n\n",
            self.concurrency, self.pairs
        );
        out.push_str(
            &self
                .aggregate_ratio
                .render_row(&format!("aggregate ratio, {m} / {b}"), 3),
        );
        out.push_str(
            &self
                .decode_ratio
                .render_row(&format!("decode ratio, {m} / {b}"), 3),
        );
        out.push_str(
            &self
                .ttft_p50_delta_ms
                .render_row(&format!("TTFT p50 difference, {m} - {b}, ms"), 2),
        );
        out.push_str(&format!(
            "  {:<42} {:>9.1} / {:.1}\n  {:<42} {:>9.2} / {:.2}\n  {:<42} {:>9.3} / {:.3}\n",
            format!("aggregate tok/s p50, {m} / {b}"),
            self.aggregate_tps_p50.0,
            self.aggregate_tps_p50.1,
            format!("TTFT p50 ms, {m} / {b}"),
            self.ttft_p50_ms.0,
            self.ttft_p50_ms.1,
            "server CPU s per 1k tokens (worker)",
            self.server_cpu_s_per_1k_tokens.0,
            self.server_cpu_s_per_1k_tokens.1,
        ));
        let targets = self.targets(measured, baseline);
        if !targets.is_empty() {
            out.push_str("\ntargets:\n");
            for t in &targets {
                out.push_str(&t.render());
            }
        }
        out
    }
}

/// The whole report: every level, then the daemons' own usage.
pub(crate) fn render(run: &ClientPairsRun, levels: &[usize]) -> (String, Vec<LevelPairs>) {
    let (measured, baseline) = run.paths;
    let summaries: Vec<LevelPairs> = levels
        .iter()
        .map(|&c| LevelPairs::new(&run.pairs, c))
        .collect();
    let mut text = String::new();
    for s in &summaries {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&s.render(measured, baseline));
    }
    for d in &run.daemons {
        text.push_str(&format!(
            "\nthe daemon process itself ({}): peak resident {:.1} MiB, {:.3} CPU s per 1k tokens",
            d.path.name(),
            d.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            super::super::measure::per_thousand_tokens(d.cpu_s, d.tokens),
        ));
    }
    text.push('\n');
    (text, summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(concurrency: usize, wall_s: f64, ttft: f64, tokens: u64) -> LevelRun {
        LevelRun {
            concurrency,
            wall_s,
            server_cpu_s: 0.0,
            client_cpu_s: 0.0,
            requests: vec![RequestRecord {
                start: 0.0,
                first_token: ttft,
                last_token: wall_s,
                end: wall_s,
                tokens,
                prompt_tokens: 4,
                text: String::new(),
                messages: tokens,
                token_ids: Vec::new(),
                server_ttft_ms: None,
            }],
        }
    }

    #[test]
    fn pairs_give_ratios_and_the_daemon_targets() {
        // The daemon takes 1.02 s for what the embedded client does in 1.0 s, its first token
        // 2 ms later: 9 decode tokens in 1.008 s against 0.990 s, a decode ratio of 0.982.
        let pairs: Vec<ClientPair> = (0..10)
            .map(|i| ClientPair {
                concurrency: 1,
                pass: 0,
                measured_first: i % 2 == 0,
                measured: level(1, 1.02, 0.012, 10),
                baseline: level(1, 1.0, 0.010, 10),
            })
            .collect();
        let s = LevelPairs::new(&pairs, 1);
        assert_eq!(s.pairs, 10);
        assert!(
            (s.aggregate_ratio.median - 1.0 / 1.02).abs() < 1e-9,
            "{s:?}"
        );
        assert!(
            (s.decode_ratio.median - 0.990 / 1.008).abs() < 1e-9,
            "{s:?}"
        );
        assert!((s.ttft_p50_delta_ms.median - 2.0).abs() < 1e-9);
        let targets = s.targets(PathKind::Daemon, PathKind::Sidecar);
        assert_eq!(targets.len(), 2);
        assert!(targets[0].met, "{targets:?}");
        assert!(!targets[1].met, "{targets:?}");
        assert!(s.targets(PathKind::Sidecar, PathKind::Http).is_empty());
    }

    #[test]
    fn the_http_target_is_higher_at_64_streams() {
        let pairs: Vec<ClientPair> = (0..6)
            .map(|i| ClientPair {
                concurrency: 64,
                pass: 0,
                measured_first: i % 2 == 0,
                measured: level(64, 1.0, 0.5, 100),
                baseline: level(64, 1.2, 0.9, 100),
            })
            .collect();
        let s = LevelPairs::new(&pairs, 64);
        let targets = s.targets(PathKind::DaemonHttp, PathKind::Http);
        let [t] = targets.as_slice() else {
            panic!("one target: {targets:?}");
        };
        assert_eq!(t.bound, 1.5);
        assert!(!t.met && (t.measured.median - 1.2).abs() < 1e-9);
    }
}
