//! The transport ceiling: what the socket and both gRPC stacks (tonic in this process,
//! grpc.aio in the worker) can carry, with the model out of the way.
//!
//! The real worker runs in its benchmark mode (`--synthetic-tokens`, see
//! `sidecar/mlx_worker/synthetic.py`): its engine makes up one token per running sequence per
//! step as fast as it can, and everything after the engine step (detokenizing, messages, the
//! hand-off to the event loop, gRPC, the socket, this client) is the real code. It is run
//! twice: with the worker sending all tokens a stream has ready as one message (per-step
//! batching, the normal behaviour) and forced to one token per message, to show the gain.
//! The unary round trip (ModelInfo, health) is timed on the first.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::drive;
use super::measure::{LevelSummary, percentile};
use super::python::PythonEnv;
use super::sidecar;
use super::workload::{LevelPlan, Workload};
use super::{BenchArgs, ModelArgs};

/// One mode of the synthetic worker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CeilingMode {
    /// What it shows.
    pub(crate) label: String,
    /// The worker's `--synthetic-tokens` value.
    pub(crate) spec: String,
    /// Figures per concurrency level.
    pub(crate) levels: Vec<LevelSummary>,
}

/// Round trips of a unary call, microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Unary {
    /// The call.
    pub(crate) call: String,
    /// Calls timed.
    pub(crate) calls: usize,
    /// Median, microseconds.
    pub(crate) p50_us: f64,
    /// 99th percentile, microseconds.
    pub(crate) p99_us: f64,
}

/// The transport ceiling's results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CeilingReport {
    /// Tokens per request.
    pub(crate) tokens_per_request: u32,
    /// Per-step batching, then one token per message.
    pub(crate) modes: Vec<CeilingMode>,
    /// Unary round trips.
    pub(crate) unary: Vec<Unary>,
}

impl CeilingReport {
    /// The printed table.
    pub(crate) fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "transport ceiling (worker streaming made-up tokens, {} per request):\n",
            self.tokens_per_request
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>5} {:>14} {:>9} {:>13} {:>13}",
            "mode", "conc", "aggregate t/s", "tok/msg", "worker CPU", "client CPU"
        );
        for m in &self.modes {
            for l in &m.levels {
                let _ = writeln!(
                    out,
                    "  {:<26} {:>5} {:>14.0} {:>9.2} {:>13.4} {:>13.4}",
                    m.label,
                    l.concurrency,
                    l.aggregate_tps,
                    l.tokens_per_message,
                    l.server_cpu_s_per_1k_tokens,
                    l.client_cpu_s_per_1k_tokens
                );
            }
        }
        if let [batched, single] = self.modes.as_slice() {
            for (b, s) in batched.levels.iter().zip(&single.levels) {
                let gain = if s.aggregate_tps > 0.0 {
                    b.aggregate_tps / s.aggregate_tps
                } else {
                    0.0
                };
                let _ = writeln!(
                    out,
                    "  gain of per-step batching at concurrency {}: {gain:.2}x",
                    b.concurrency
                );
            }
        }
        let _ = writeln!(
            out,
            "  unary round trip (CPU seconds in s/1k tokens above):"
        );
        for u in &self.unary {
            let _ = writeln!(
                out,
                "    {:<10} p50 {:>8.1} µs   p99 {:>8.1} µs   ({} calls)",
                u.call, u.p50_us, u.p99_us, u.calls
            );
        }
        out
    }
}

impl CeilingReport {
    /// The Markdown tables.
    pub(crate) fn render_markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "Transport ceiling (the real worker streaming made-up tokens, {} per request):\n\n",
            self.tokens_per_request
        );
        let _ = writeln!(
            out,
            "| mode | conc | aggregate tok/s | tok/msg | worker CPU s/1k tok | Rust CPU s/1k tok |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|");
        for m in &self.modes {
            for l in &m.levels {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.2} | {:.4} | {:.4} |",
                    m.label,
                    l.concurrency,
                    l.aggregate_tps,
                    l.tokens_per_message,
                    l.server_cpu_s_per_1k_tokens,
                    l.client_cpu_s_per_1k_tokens
                );
            }
        }
        let _ = writeln!(out, "\n| unary call | p50 µs | p99 µs | calls |");
        let _ = writeln!(out, "|---|--:|--:|--:|");
        for u in &self.unary {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {} |",
                u.call, u.p50_us, u.p99_us, u.calls
            );
        }
        out
    }
}

/// Times `calls` sequential calls of `f`.
async fn time_calls<F, Fut, T>(call: &str, calls: usize, f: F) -> anyhow::Result<Unary>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, mlx_sidecar::Error>>,
{
    for _ in 0..calls.min(50) {
        f().await?;
    }
    let mut us = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        f().await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Unary {
        call: call.to_owned(),
        calls,
        p50_us: percentile(&us, 50.0),
        p99_us: percentile(&us, 99.0),
    })
}

/// Measures the transport ceiling.
pub(crate) async fn run(
    py: &PythonEnv,
    model: &ModelArgs,
    socket_dir: Option<&Path>,
    workload: &Workload,
    args: &BenchArgs,
    startup_timeout: Duration,
) -> anyhow::Result<CeilingReport> {
    let max_batch = args.ceiling_concurrency.iter().copied().max().unwrap_or(1);
    // Each request gets a prompt of the workload (cycled: no model, no cache to fool).
    let plan = |c: usize| LevelPlan {
        concurrency: c,
        prompts: (0..(2 * c).max(4))
            .map(|i| i % workload.prompts.len())
            .collect(),
    };
    let mut modes = Vec::new();
    let mut unary = Vec::new();
    for (label, spec) in [
        ("per-step batching", "merge=1"),
        ("one token per message", "merge=0"),
    ] {
        let extra = ["--synthetic-tokens".to_owned(), spec.to_owned()];
        let sup =
            sidecar::start(py, model, socket_dir, &extra, max_batch, 1, startup_timeout).await?;
        let client = sup.client();
        let send = sidecar::sender(client.clone(), &workload.eos_token_ids);
        let pid = sup.worker_pid();
        drive::run_level(workload, &plan(1), 16, pid, send.clone()).await?;
        let mut levels = Vec::new();
        for &c in &args.ceiling_concurrency {
            let run = drive::run_level(workload, &plan(c), args.ceiling_tokens, pid, send.clone())
                .await?;
            let summary = LevelSummary::from_records(&run);
            eprintln!(
                "  {label}, concurrency {c}: {:.0} tok/s, {:.2} tokens per message",
                summary.aggregate_tps, summary.tokens_per_message
            );
            levels.push(summary);
        }
        if unary.is_empty() {
            let n = args.ceiling_unary_calls;
            unary.push(time_calls("ModelInfo", n, || client.model_info()).await?);
            unary.push(time_calls("health", n, || client.health()).await?);
        }
        sup.shutdown().await.ok();
        modes.push(CeilingMode {
            label: label.to_owned(),
            spec: spec.to_owned(),
            levels,
        });
    }
    Ok(CeilingReport {
        tokens_per_request: args.ceiling_tokens,
        modes,
        unary,
    })
}
