//! `bench --paired N`: the single-stream targets measured request by request, so that a noisy
//! machine's drift cancels out.
//!
//! The pass design (`--passes`) compares whole runs minutes apart; on a shared machine whose
//! speed wanders by tens of per cent from one minute to the next, it takes many passes to see
//! a difference of 1 %. Here the worker (under its supervisor) and the in-process baseline
//! (`bench_inprocess.py serve`: mlx-lm's `stream_generate`, one request at a time on demand)
//! are both started and warmed up once and kept running, and N single requests go to each,
//! alternating in pairs: pair `i` sends the same prompt to both, the sidecar first in even
//! pairs and the baseline first in odd ones (ABBA), so that neither always runs in the other's
//! wake. Each pair gives a decode ratio (sidecar / in-process tokens per second after the
//! first token) and a TTFT difference; the report gives their medians with a distribution-free
//! 95 % interval (order statistics of the binomial), the pooled decode ratio, and says for each
//! target whether it is met and whether the interval settles it.
//!
//! Which process starts first matters: on the 2-core CPU, two copies of the same baseline
//! script, paired this way, gave the one started first 0.93 to 0.96 of the other's decode rate
//! and a TTFT 1 to 13 ms longer, in eight sessions out of eight, whichever copy it was. So the
//! pairs are shared out over an even number of sessions (`--passes P`, rounded up to even,
//! at least 2), each starting both processes afresh, the worker first in even sessions and
//! the baseline first in odd ones; each session's medians are given too.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::measure::{RequestRecord, per_thousand_tokens, percentile, tokens_per_message};
use super::python::PythonEnv;
use super::workload::{Prompt, Workload};
use super::{ModelArgs, drive, inprocess, procstat, sidecar};

/// The in-process baseline kept running: `bench_inprocess.py serve`.
struct InprocessServer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What `serve` prints last, when its stdin ends.
#[derive(Deserialize)]
struct ServeTotals {
    cpu_s: f64,
    peak_rss_bytes: u64,
}

impl InprocessServer {
    /// Starts `serve` on the workload (written to `scratch`) and waits until it has warmed up.
    async fn start(
        py: &PythonEnv,
        model: &ModelArgs,
        workload: &Workload,
        mlx_lm_dir: &Path,
        scratch: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let workload_file = scratch.join("paired-workload.json");
        std::fs::write(&workload_file, workload.to_inprocess_json().to_string())
            .with_context(|| format!("writing {}", workload_file.display()))?;
        let args = inprocess::script_args(
            "serve",
            model,
            mlx_lm_dir,
            &workload_file.display().to_string(),
        );
        let mut cmd = py.script_command(&args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", py.python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("bench_inprocess.py serve: no pipes");
        };
        let mut server = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let ready = tokio::time::timeout(timeout, server.next_json())
            .await
            .context("bench_inprocess.py serve did not get ready in time")??;
        anyhow::ensure!(
            ready.get("ready").and_then(serde_json::Value::as_bool) == Some(true),
            "bench_inprocess.py serve said {ready} instead of being ready"
        );
        Ok(server)
    }

    /// The next line of its stdout that is a JSON object (anything else a library prints
    /// there is skipped).
    async fn next_json(&mut self) -> anyhow::Result<serde_json::Value> {
        loop {
            let Some(line) = self
                .lines
                .next_line()
                .await
                .context("reading bench_inprocess.py serve")?
            else {
                bail!("bench_inprocess.py serve ended early");
            };
            if let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_str(&line) {
                return Ok(value);
            }
        }
    }

    /// Runs one request and returns its record (times from when the baseline received it).
    async fn request(&mut self, prompt: &Prompt, max_tokens: u32) -> anyhow::Result<RequestRecord> {
        let mut line = serde_json::json!({ "prompt": prompt.ids, "max_tokens": max_tokens })
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .context("sending bench_inprocess.py serve a request")?;
        let value = self.next_json().await?;
        serde_json::from_value(value).context("reading bench_inprocess.py serve's record")
    }

    /// Ends its input and returns its totals.
    async fn finish(mut self) -> anyhow::Result<ServeTotals> {
        self.stdin.shutdown().await.ok();
        drop(self.stdin);
        let mut totals = None;
        while let Some(line) = self.lines.next_line().await? {
            if let Ok(t) = serde_json::from_str::<ServeTotals>(&line) {
                totals = Some(t);
            }
        }
        let status = self.child.wait().await?;
        anyhow::ensure!(
            status.success(),
            "bench_inprocess.py serve failed: {status}"
        );
        totals.context("bench_inprocess.py serve printed no totals")
    }
}

/// One pair: the same prompt on both paths, back to back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pair {
    /// Which pass (session of both processes, from 0) it ran in.
    pub(crate) pass: usize,
    /// Whether the worker was started before the baseline in that session.
    pub(crate) worker_started_first: bool,
    /// Whether the sidecar ran first in this pair.
    pub(crate) sidecar_first: bool,
    /// The full path's request.
    pub(crate) sidecar: RequestRecord,
    /// The in-process baseline's request.
    pub(crate) inprocess: RequestRecord,
}

impl Pair {
    /// Sidecar / in-process decode rate.
    fn decode_ratio(&self) -> f64 {
        match (self.sidecar.decode_tps(), self.inprocess.decode_tps()) {
            (Some(s), Some(b)) if b > 0.0 => s / b,
            _ => 0.0,
        }
    }

    /// Sidecar minus in-process TTFT, ms.
    fn ttft_delta_ms(&self) -> f64 {
        self.sidecar.ttft_ms() - self.inprocess.ttft_ms()
    }
}

/// A median with a distribution-free 95 % confidence interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Median {
    /// The median.
    pub(crate) median: f64,
    /// Lower end of the interval.
    pub(crate) ci95_low: f64,
    /// Upper end of the interval.
    pub(crate) ci95_high: f64,
}

/// The median of `values` and the interval `[x(k), x(n+1-k)]` (1-based order statistics)
/// with the largest `k` such that a Binomial(n, 1/2) falls below `k` with probability at most
/// 2.5 %; for fewer than 6 values no such `k` exists and the interval is the whole range.
pub(crate) fn median_ci95(values: &[f64]) -> Median {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Median {
            median: 0.0,
            ci95_low: 0.0,
            ci95_high: 0.0,
        };
    }
    // P(X < k) for X ~ Binomial(n, 1/2), by summing the probabilities in log space.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let (mut ln_choose, mut below, mut k) = (0.0f64, 0.0f64, 0usize);
    loop {
        // below = P(X <= k - 1) = P(X < k); add P(X = k) to test k + 1.
        let next = below + (ln_choose + ln_half_n).exp();
        if next > 0.025 || k + 1 > n / 2 {
            break;
        }
        below = next;
        k += 1;
        ln_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
    }
    let (low, high) = if k == 0 {
        (sorted[0], sorted[n - 1])
    } else {
        (sorted[k - 1], sorted[n - k])
    };
    Median {
        median: percentile(&sorted, 50.0),
        ci95_low: low,
        ci95_high: high,
    }
}

/// One single-stream target, judged on the median of the pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairedTarget {
    /// What is compared.
    pub(crate) name: String,
    /// The median over the pairs, with its interval.
    pub(crate) measured: Median,
    /// The bound it must meet.
    pub(crate) bound: f64,
    /// `>=` or `<=`.
    pub(crate) relation: &'static str,
    /// Whether the median meets it.
    pub(crate) met: bool,
    /// Whether the whole interval lies on one side of the bound (so that the verdict does
    /// not hang on noise).
    pub(crate) settled: bool,
}

impl PairedTarget {
    fn new(name: &str, measured: Median, bound: f64, at_least: bool) -> Self {
        let (met, settled) = if at_least {
            (
                measured.median >= bound,
                measured.ci95_low >= bound || measured.ci95_high < bound,
            )
        } else {
            (
                measured.median <= bound,
                measured.ci95_high <= bound || measured.ci95_low > bound,
            )
        };
        Self {
            name: name.to_owned(),
            measured,
            bound,
            relation: if at_least { ">=" } else { "<=" },
            met,
            settled,
        }
    }
}

/// The figures over all pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairedSummary {
    /// Pairs run.
    pub(crate) pairs: usize,
    /// Sidecar / in-process decode rate, pair by pair.
    pub(crate) decode_ratio: Median,
    /// All the sidecar's decode tokens over all its decode time, divided by the same of the
    /// baseline.
    pub(crate) decode_ratio_pooled: f64,
    /// Sidecar minus in-process TTFT, ms, pair by pair.
    pub(crate) ttft_delta_ms: Median,
    /// The median decode ratio and TTFT difference of each pass (both processes started
    /// afresh), which shows how much a process's start moves them.
    pub(crate) by_pass: Vec<(f64, f64)>,
    /// TTFT p50 of each path, ms.
    pub(crate) ttft_p50_ms: (f64, f64),
    /// p50 of the worker's own TTFT (from the request's arrival to its first token), ms: the
    /// rest of the sidecar's TTFT is the way there and back (client, gRPC, socket).
    pub(crate) worker_ttft_p50_ms: f64,
    /// Median decode rate of each path, tokens per second.
    pub(crate) decode_tps_p50: (f64, f64),
    /// Pairs whose two requests generated the same token ids.
    pub(crate) identical_token_ids: usize,
    /// Tokens per gRPC message on the full path.
    pub(crate) tokens_per_message: f64,
    /// CPU seconds per thousand generated tokens: the worker, the in-process baseline, this
    /// (Rust) process.
    pub(crate) cpu_s_per_1k_tokens: (f64, f64, f64),
    /// Peak resident memory, bytes: the worker, the in-process baseline.
    pub(crate) peak_rss_bytes: (u64, u64),
}

/// CPU and memory totals of the run, apart from the pairs themselves.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PairedUsage {
    pub(crate) worker_cpu_s: f64,
    pub(crate) inprocess_cpu_s: f64,
    pub(crate) client_cpu_s: f64,
    pub(crate) worker_peak_rss_bytes: u64,
    pub(crate) inprocess_peak_rss_bytes: u64,
}

impl PairedUsage {
    /// Adds a later session's usage: CPU times add up, peak memory is the larger.
    fn add(&mut self, later: PairedUsage) {
        self.worker_cpu_s += later.worker_cpu_s;
        self.inprocess_cpu_s += later.inprocess_cpu_s;
        self.client_cpu_s += later.client_cpu_s;
        self.worker_peak_rss_bytes = self.worker_peak_rss_bytes.max(later.worker_peak_rss_bytes);
        self.inprocess_peak_rss_bytes = self
            .inprocess_peak_rss_bytes
            .max(later.inprocess_peak_rss_bytes);
    }
}

impl PairedSummary {
    /// Summarizes the pairs.
    pub(crate) fn new(pairs: &[Pair], usage: PairedUsage) -> Self {
        let ratios: Vec<f64> = pairs.iter().map(Pair::decode_ratio).collect();
        let deltas: Vec<f64> = pairs.iter().map(Pair::ttft_delta_ms).collect();
        let pooled = |side: fn(&Pair) -> &RequestRecord| {
            let (tokens, seconds) = pairs
                .iter()
                .map(side)
                .filter(|r| r.decode_tps().is_some())
                .fold((0.0, 0.0), |(t, s), r| {
                    (
                        t + (r.tokens - 1) as f64,
                        s + (r.last_token - r.first_token),
                    )
                });
            if seconds > 0.0 { tokens / seconds } else { 0.0 }
        };
        let (s_pooled, b_pooled) = (pooled(|p| &p.sidecar), pooled(|p| &p.inprocess));
        let column = |f: fn(&RequestRecord) -> f64, side: fn(&Pair) -> &RequestRecord| {
            percentile(&pairs.iter().map(|p| f(side(p))).collect::<Vec<_>>(), 50.0)
        };
        let tokens: u64 = pairs.iter().map(|p| p.sidecar.tokens).sum();
        let messages: u64 = pairs.iter().map(|p| p.sidecar.messages).sum();
        let per_1k = |cpu: f64| per_thousand_tokens(cpu, tokens);
        Self {
            pairs: pairs.len(),
            decode_ratio: median_ci95(&ratios),
            decode_ratio_pooled: if b_pooled > 0.0 {
                s_pooled / b_pooled
            } else {
                0.0
            },
            ttft_delta_ms: median_ci95(&deltas),
            by_pass: {
                let passes = pairs.iter().map(|p| p.pass + 1).max().unwrap_or(0);
                (0..passes)
                    .map(|pass| {
                        let of = |f: fn(&Pair) -> f64| {
                            let v: Vec<f64> =
                                pairs.iter().filter(|p| p.pass == pass).map(f).collect();
                            percentile(&v, 50.0)
                        };
                        (of(Pair::decode_ratio), of(Pair::ttft_delta_ms))
                    })
                    .collect()
            },
            ttft_p50_ms: (
                column(RequestRecord::ttft_ms, |p| &p.sidecar),
                column(RequestRecord::ttft_ms, |p| &p.inprocess),
            ),
            worker_ttft_p50_ms: percentile(
                &pairs
                    .iter()
                    .filter_map(|p| p.sidecar.server_ttft_ms)
                    .collect::<Vec<_>>(),
                50.0,
            ),
            decode_tps_p50: (
                column(|r| r.decode_tps().unwrap_or(0.0), |p| &p.sidecar),
                column(|r| r.decode_tps().unwrap_or(0.0), |p| &p.inprocess),
            ),
            identical_token_ids: pairs
                .iter()
                .filter(|p| p.sidecar.token_ids == p.inprocess.token_ids)
                .count(),
            tokens_per_message: tokens_per_message(tokens, messages),
            cpu_s_per_1k_tokens: (
                per_1k(usage.worker_cpu_s),
                per_1k(usage.inprocess_cpu_s),
                per_1k(usage.client_cpu_s),
            ),
            peak_rss_bytes: (usage.worker_peak_rss_bytes, usage.inprocess_peak_rss_bytes),
        }
    }

    /// The two single-stream targets.
    pub(crate) fn targets(&self) -> Vec<PairedTarget> {
        vec![
            PairedTarget::new(
                "single stream: decode tok/s, sidecar / in-process (median of pairs)",
                self.decode_ratio,
                0.99,
                true,
            ),
            PairedTarget::new(
                "single stream: TTFT, sidecar - in-process, ms (median of pairs)",
                self.ttft_delta_ms,
                2.0,
                false,
            ),
        ]
    }

    /// The summary and targets as text.
    pub(crate) fn render(&self, targets: &[PairedTarget]) -> String {
        let mut out = format!(
            "single stream, paired: {} pairs (same prompt on both paths, back to back, \
             order alternating)\n\n",
            self.pairs
        );
        let row = |name: &str, m: &Median, digits: usize| {
            format!(
                "  {name:<42} {:>9.*}   95 % interval {:.*} to {:.*}\n",
                digits, m.median, digits, m.ci95_low, digits, m.ci95_high
            )
        };
        out.push_str(&row(
            "decode ratio, sidecar / in-process",
            &self.decode_ratio,
            3,
        ));
        out.push_str(&format!(
            "  {:<42} {:>9.3}\n",
            "decode ratio, pooled", self.decode_ratio_pooled
        ));
        out.push_str(&row(
            "TTFT difference, sidecar - in-process, ms",
            &self.ttft_delta_ms,
            2,
        ));
        if !self.by_pass.is_empty() {
            let list = |f: fn(&(f64, f64)) -> f64, digits: usize| {
                self.by_pass
                    .iter()
                    .map(|p| format!("{:.*}", digits, f(p)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            out.push_str(&format!(
                "  {:<42} decode ratio {}; TTFT difference {}\n",
                "medians by session (worker first in 1, 3, ...)",
                list(|p| p.0, 3),
                list(|p| p.1, 2)
            ));
        }
        out.push_str(&format!(
            "  {:<42} {:>9.2} / {:.2} (in the worker {:.2})\n  {:<42} {:>9.1} / {:.1}\n",
            "TTFT p50 ms, sidecar / in-process",
            self.ttft_p50_ms.0,
            self.ttft_p50_ms.1,
            self.worker_ttft_p50_ms,
            "decode tok/s p50, sidecar / in-process",
            self.decode_tps_p50.0,
            self.decode_tps_p50.1,
        ));
        let (w, b, c) = self.cpu_s_per_1k_tokens;
        let mib = |v: u64| v as f64 / (1024.0 * 1024.0);
        out.push_str(&format!(
            "  {:<42} worker {w:.3}, in-process {b:.3}, Rust side {c:.4}\n  {:<42} worker \
             {:.1}, in-process {:.1}\n  tokens per message (sidecar): {:.2}\n  identical token \
             ids: {}/{} pairs\n\ntargets:\n",
            "CPU s per 1k tokens",
            "peak resident memory MiB",
            mib(self.peak_rss_bytes.0),
            mib(self.peak_rss_bytes.1),
            self.tokens_per_message,
            self.identical_token_ids,
            self.pairs,
        ));
        for t in targets {
            out.push_str(&format!(
                "  [{}] {}: {:.3} (needs {} {}){}\n",
                if t.met { "met" } else { "MISSED" },
                t.name,
                t.measured.median,
                t.relation,
                t.bound,
                if t.settled {
                    ""
                } else {
                    "; the 95 % interval straddles the bound: more pairs needed"
                }
            ));
        }
        out
    }
}

/// Everything a paired run measured.
pub(crate) struct PairedRun {
    /// Every pair, in running order.
    pub(crate) pairs: Vec<Pair>,
    /// CPU and memory.
    pub(crate) usage: PairedUsage,
    /// The worker's ModelInfo, for the report's versions.
    pub(crate) worker_info: Option<mlx_sidecar::client::ModelInfo>,
}

/// Sessions a paired run uses for `--passes P`: P rounded up to an even number, at least 2,
/// so that each process starts first equally often.
pub(crate) fn sessions(passes: usize) -> usize {
    passes.max(2).next_multiple_of(2)
}

/// Where and how both paths start.
pub(crate) struct PairedSetup<'a> {
    /// The interpreter and worker source.
    pub(crate) py: &'a PythonEnv,
    /// How the model is loaded, alike on both paths.
    pub(crate) model: &'a ModelArgs,
    /// Parent directory of the worker's socket directory.
    pub(crate) socket_dir: Option<&'a Path>,
    /// Extra options for the worker (`--worker-arg`).
    pub(crate) worker_args: &'a [String],
    /// The mlx-lm directory `prepare` wrote (the baseline's tokenizer).
    pub(crate) mlx_lm_dir: &'a Path,
    /// The bench's scratch directory.
    pub(crate) scratch: &'a Path,
    /// How long each path may take to start.
    pub(crate) timeout: Duration,
}

/// Runs `workload.levels[0]`'s prompts as pairs in `passes` sessions (both paths started
/// afresh for each, the prompts shared out in order), and joins the sessions.
pub(crate) async fn run(
    setup: &PairedSetup<'_>,
    workload: &Workload,
    passes: usize,
) -> anyhow::Result<PairedRun> {
    let plan = workload
        .levels
        .first()
        .context("the paired workload has no level")?;
    let passes = sessions(passes);
    let per_pass = plan.prompts.len().div_ceil(passes);
    let mut joined = PairedRun {
        pairs: Vec::new(),
        usage: PairedUsage::default(),
        worker_info: None,
    };
    for (pass, prompts) in plan.prompts.chunks(per_pass.max(1)).enumerate() {
        eprintln!("pass {}/{passes}", pass + 1);
        let run = run_session(setup, workload, prompts, pass).await?;
        joined.pairs.extend(run.pairs);
        joined.usage.add(run.usage);
        joined.worker_info = joined.worker_info.or(run.worker_info);
    }
    Ok(joined)
}

/// Starts both paths, warms them up, and runs `prompts` (indices into the workload's
/// prompts) as pairs, numbered as pass `pass`.
async fn run_session(
    setup: &PairedSetup<'_>,
    workload: &Workload,
    prompts: &[usize],
    pass: usize,
) -> anyhow::Result<PairedRun> {
    let PairedSetup {
        py,
        model,
        socket_dir,
        worker_args,
        mlx_lm_dir,
        scratch,
        timeout,
    } = *setup;
    // Which process starts first alternates from session to session (see the module docs).
    let worker_first = pass % 2 == 0;
    let start_baseline =
        || InprocessServer::start(py, model, workload, mlx_lm_dir, scratch, timeout);
    let mut baseline = None;
    if !worker_first {
        eprintln!("starting the in-process baseline, then the worker");
        baseline = Some(start_baseline().await?);
    } else {
        eprintln!("starting the worker, then the in-process baseline");
    }
    let sup = sidecar::start(
        py,
        model,
        socket_dir,
        worker_args,
        workload.max_batch,
        timeout,
    )
    .await?;
    let worker_pid = sup.worker_pid();
    let worker_info = sup.client().model_info().await.ok();
    let send = sidecar::sender(sup.client(), &workload.eos_token_ids);
    for warmup in &workload.warmup {
        drive::run_level(
            workload,
            warmup,
            workload.spec.warmup_tokens,
            worker_pid,
            send.clone(),
        )
        .await?;
    }
    let mut baseline = match baseline {
        Some(b) => b,
        None => start_baseline().await?,
    };
    if let Some(pid) = worker_pid {
        procstat::reset_peak(pid);
    }
    let worker_cpu0 = worker_pid.and_then(procstat::cpu_seconds);
    let client_cpu0 = procstat::own_cpu_seconds();
    let max_tokens = workload.spec.max_tokens;
    let mut pairs = Vec::with_capacity(prompts.len());
    for (i, &index) in prompts.iter().enumerate() {
        let prompt: Arc<Prompt> = workload.prompts[index].clone();
        let sidecar_first = i % 2 == 0;
        let mut via_sidecar = None;
        if sidecar_first {
            via_sidecar = Some(send(prompt.clone(), max_tokens, Instant::now()).await?);
        }
        let inprocess = baseline
            .request(&prompt, max_tokens)
            .await
            .with_context(|| format!("pair {i}, in-process"))?;
        let sidecar = match via_sidecar {
            Some(r) => r,
            None => send(prompt, max_tokens, Instant::now())
                .await
                .with_context(|| format!("pair {i}, sidecar"))?,
        };
        pairs.push(Pair {
            pass,
            worker_started_first: worker_first,
            sidecar_first,
            sidecar,
            inprocess,
        });
        if (i + 1) % 10 == 0 || i + 1 == prompts.len() {
            let summary = PairedSummary::new(&pairs, PairedUsage::default());
            eprintln!(
                "  {} pairs: decode ratio median {:.3}, TTFT difference median {:+.2} ms",
                pairs.len(),
                summary.decode_ratio.median,
                summary.ttft_delta_ms.median
            );
        }
    }
    let worker_cpu_s = match (worker_cpu0, worker_pid.and_then(procstat::cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let client_cpu_s = procstat::own_cpu_seconds() - client_cpu0;
    let worker_peak_rss_bytes = worker_pid.and_then(procstat::peak_rss_bytes).unwrap_or(0);
    sup.shutdown().await.ok();
    let totals = baseline.finish().await?;
    Ok(PairedRun {
        pairs,
        usage: PairedUsage {
            worker_cpu_s,
            inprocess_cpu_s: totals.cpu_s,
            client_cpu_s,
            worker_peak_rss_bytes,
            inprocess_peak_rss_bytes: totals.peak_rss_bytes,
        },
        worker_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ttft: f64, tokens: u64, decode_s: f64) -> RequestRecord {
        RequestRecord {
            start: 0.0,
            first_token: ttft,
            last_token: ttft + decode_s,
            end: ttft + decode_s,
            tokens,
            prompt_tokens: 4,
            text: String::new(),
            messages: tokens,
            token_ids: vec![1; tokens as usize],
            server_ttft_ms: None,
        }
    }

    #[test]
    fn the_median_interval_follows_the_binomial() {
        // Fewer than 6 values: no order statistic gives 95 %, so the whole range.
        let m = median_ci95(&[3.0, 1.0, 2.0]);
        assert_eq!((m.median, m.ci95_low, m.ci95_high), (2.0, 1.0, 3.0));
        // n = 6: P(X < 1) = 1/64 <= 2.5 %, P(X < 2) = 7/64 > 2.5 %: k = 1, the range.
        let six: Vec<f64> = (1..=6).map(f64::from).collect();
        let m = median_ci95(&six);
        assert_eq!((m.median, m.ci95_low, m.ci95_high), (3.5, 1.0, 6.0));
        // n = 20: the textbook interval is x(6) to x(15).
        let twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let m = median_ci95(&twenty);
        assert_eq!((m.median, m.ci95_low, m.ci95_high), (10.5, 6.0, 15.0));
        // n = 100: x(40) to x(61).
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let m = median_ci95(&hundred);
        assert_eq!((m.ci95_low, m.ci95_high), (40.0, 61.0));
        assert_eq!(median_ci95(&[]).median, 0.0);
    }

    #[test]
    fn pairs_give_ratios_differences_and_verdicts() {
        // The sidecar decodes 9 tokens in 0.1 s (90 tok/s) against 0.09 s (100 tok/s), and
        // its first token comes 1 ms later, in every pair.
        let pairs: Vec<Pair> = (0..20)
            .map(|i| Pair {
                pass: i / 10,
                worker_started_first: i < 10,
                sidecar_first: i % 2 == 0,
                sidecar: record(0.011, 10, 0.1),
                inprocess: record(0.010, 10, 0.09),
            })
            .collect();
        let s = PairedSummary::new(&pairs, PairedUsage::default());
        assert!((s.decode_ratio.median - 0.9).abs() < 1e-9, "{s:?}");
        assert!((s.decode_ratio_pooled - 0.9).abs() < 1e-9);
        assert!((s.ttft_delta_ms.median - 1.0).abs() < 1e-9);
        assert_eq!(s.identical_token_ids, 20);
        assert_eq!(s.by_pass.len(), 2);
        assert!((s.by_pass[1].0 - 0.9).abs() < 1e-9 && (s.by_pass[1].1 - 1.0).abs() < 1e-9);
        let targets = s.targets();
        assert!(!targets[0].met && targets[0].settled);
        assert!(targets[1].met && targets[1].settled);
        let text = s.render(&targets);
        assert!(
            text.contains("[MISSED]") && text.contains("[met]"),
            "{text}"
        );
    }

    #[test]
    fn sessions_are_even_so_each_process_starts_first_as_often() {
        assert_eq!([0, 1, 2, 3, 4, 5].map(sessions), [2, 2, 2, 4, 4, 6]);
    }

    #[test]
    fn a_verdict_within_the_noise_is_not_settled() {
        let m = Median {
            median: 1.0,
            ci95_low: 0.97,
            ci95_high: 1.02,
        };
        let t = PairedTarget::new("x", m, 0.99, true);
        assert!(t.met && !t.settled);
        let t = PairedTarget::new("x", m, 0.96, true);
        assert!(t.met && t.settled);
    }
}
