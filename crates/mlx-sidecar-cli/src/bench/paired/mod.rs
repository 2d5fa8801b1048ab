//! `bench --paired N`: the targets measured pair by pair, so that a noisy machine's drift
//! cancels out.
//!
//! The worker (under its supervisor) and the in-process baseline (`bench_inprocess.py serve`)
//! are started and warmed up once and kept running, and N pairs of each level go to them:
//! pair `i` sends the same work to both, the sidecar first in even pairs and the baseline
//! first in odd ones (ABBA), so that neither always runs in the other's wake.
//!
//! - At level 1 a pair is one request on each ([`single`]): a decode ratio and a TTFT
//!   difference.
//! - Above, a pair is one wave on each ([`waves`]): the level's requests as a closed loop of
//!   `c` streams, giving an aggregate ratio and a TTFT p50 difference.
//!
//! The report gives the medians with a distribution-free 95 % interval ([`stats`]), the
//! pooled ratios, and for each target whether it is met and whether the interval settles it.
//!
//! The process started first runs slower, so the pairs are shared out over an even number
//! of sessions (`--passes`), each starting both processes afresh, alternating which starts
//! first (see BENCHMARKS.md, "The process started first is slower").

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::measure::{LevelRun, RequestRecord};
use super::python::PythonEnv;
use super::workload::{LevelPlan, Prompt, Workload};
use super::{ModelArgs, drive, inprocess, procstat, sidecar};

pub(crate) mod clients;
mod single;
mod stats;
mod waves;

use single::{Pair, PairedSummary};
use stats::PairedTarget;
use waves::{WavePair, WaveSummary};

/// The in-process baseline kept running: `bench_inprocess.py serve`.
struct InprocessServer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What `serve` prints last, when its stdin ends (its CPU time comes with each request).
#[derive(Deserialize)]
struct ServeTotals {
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

    /// Sends one line and returns the JSON object it answers with.
    async fn ask(&mut self, request: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .context("sending bench_inprocess.py serve a request")?;
        self.next_json().await
    }

    /// Runs one request; returns its record (times from when the baseline received it) and
    /// the CPU seconds the baseline spent on it.
    async fn request(
        &mut self,
        prompt: &Prompt,
        max_tokens: u32,
    ) -> anyhow::Result<(RequestRecord, f64)> {
        let value = self
            .ask(serde_json::json!({ "prompt": prompt.ids, "max_tokens": max_tokens }))
            .await?;
        let cpu_s = value.get("cpu_s").and_then(serde_json::Value::as_f64);
        let record =
            serde_json::from_value(value).context("reading bench_inprocess.py serve's record")?;
        Ok((record, cpu_s.unwrap_or(0.0)))
    }

    /// Runs a wave: `plan`'s prompts as a closed loop of `plan.concurrency` streams.
    async fn wave(
        &mut self,
        workload: &Workload,
        plan: &LevelPlan,
        max_tokens: u32,
    ) -> anyhow::Result<LevelRun> {
        #[derive(Deserialize)]
        struct Reply {
            wall_s: f64,
            cpu_s: f64,
            requests: Vec<RequestRecord>,
        }
        let prompts: Vec<&Vec<u32>> = plan
            .prompts
            .iter()
            .map(|&i| &workload.prompts[i].ids)
            .collect();
        let value = self
            .ask(serde_json::json!({
                "concurrency": plan.concurrency,
                "prompts": prompts,
                "max_tokens": max_tokens,
            }))
            .await?;
        let reply: Reply =
            serde_json::from_value(value).context("reading bench_inprocess.py serve's wave")?;
        Ok(LevelRun {
            concurrency: plan.concurrency,
            wall_s: reply.wall_s,
            server_cpu_s: reply.cpu_s,
            client_cpu_s: 0.0,
            requests: reply.requests,
        })
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

/// The CPU time the single-stream pairs took in each process (the waves carry their own), and
/// each serving process's peak memory.
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

/// Everything a paired run measured.
pub(crate) struct PairedRun {
    /// Every single-stream pair (level 1), in running order.
    pub(crate) pairs: Vec<Pair>,
    /// Every wave pair (levels above 1), in running order.
    pub(crate) waves: Vec<WavePair>,
    /// CPU of the single-stream pairs, and both processes' peak memory.
    pub(crate) usage: PairedUsage,
    /// The worker's ModelInfo, for the report's versions.
    pub(crate) worker_info: Option<mlx_sidecar::ModelInfo>,
}

/// What a paired run prints and reports: the summary of the single-stream pairs (if level 1
/// ran), one per level of waves, and every target.
pub(crate) struct PairedReport {
    /// The whole report as text.
    pub(crate) text: String,
    /// The single-stream pairs' summary.
    pub(crate) summary: Option<PairedSummary>,
    /// One summary per level of waves.
    pub(crate) wave_summaries: Vec<WaveSummary>,
    /// The targets, single stream first.
    pub(crate) targets: Vec<PairedTarget>,
}

impl PairedReport {
    /// Summarizes a run.
    pub(crate) fn new(run: &PairedRun) -> Self {
        let mut text = String::new();
        let mut targets = Vec::new();
        let summary = (!run.pairs.is_empty()).then(|| {
            let summary = PairedSummary::new(&run.pairs, run.usage);
            let single = summary.targets();
            text.push_str(&summary.render(&single));
            targets.extend(single);
            summary
        });
        let wave_summaries = waves::summaries(&run.waves);
        for s in &wave_summaries {
            let target = s.target();
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&s.render(&target));
            targets.push(target);
        }
        let mib = |v: u64| v as f64 / (1024.0 * 1024.0);
        text.push_str(&format!(
            "\npeak resident memory MiB: worker {:.1}, in-process {:.1}\n",
            mib(run.usage.worker_peak_rss_bytes),
            mib(run.usage.inprocess_peak_rss_bytes)
        ));
        Self {
            text,
            summary,
            wave_summaries,
            targets,
        }
    }
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

/// Runs the workload's levels as pairs (single requests at level 1, waves above) in
/// `passes` sessions, both paths started afresh for each; the `--paired` count of pairs of
/// every level is shared out over the sessions in order.
pub(crate) async fn run(
    setup: &PairedSetup<'_>,
    workload: &Workload,
    passes: usize,
) -> anyhow::Result<PairedRun> {
    let pairs = workload
        .spec
        .paired
        .context("the workload was not made for the paired mode")?;
    let passes = sessions(passes);
    let per_pass = pairs.div_ceil(passes).max(1);
    let mut joined = PairedRun {
        pairs: Vec::new(),
        waves: Vec::new(),
        usage: PairedUsage::default(),
        worker_info: None,
    };
    for pass in 0..passes {
        let range = (pass * per_pass).min(pairs)..((pass + 1) * per_pass).min(pairs);
        if range.is_empty() {
            break;
        }
        eprintln!("pass {}/{passes}", pass + 1);
        let run = run_session(setup, workload, range, pass).await?;
        joined.pairs.extend(run.pairs);
        joined.waves.extend(run.waves);
        joined.usage.add(run.usage);
        joined.worker_info = joined.worker_info.or(run.worker_info);
    }
    Ok(joined)
}

/// Runs a pair's two halves back to back, the sidecar's first when `sidecar_first`; returns
/// (sidecar, in-process).
async fn back_to_back<S, B, SF, BF>(
    sidecar_first: bool,
    sidecar: impl FnOnce() -> SF,
    baseline: impl FnOnce() -> BF,
) -> anyhow::Result<(S, B)>
where
    SF: Future<Output = anyhow::Result<S>>,
    BF: Future<Output = anyhow::Result<B>>,
{
    if sidecar_first {
        let s = sidecar().await.context("sidecar")?;
        Ok((s, baseline().await.context("in-process")?))
    } else {
        let b = baseline().await.context("in-process")?;
        Ok((sidecar().await.context("sidecar")?, b))
    }
}

/// Starts both paths, warms them up, and runs the pairs numbered `pairs` of every level
/// (level 1: those prompts; above: that many waves), as pass `pass`.
async fn run_session(
    setup: &PairedSetup<'_>,
    workload: &Workload,
    pairs: Range<usize>,
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
        1,
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
    let max_tokens = workload.spec.max_tokens;
    let mut run = PairedRun {
        pairs: Vec::new(),
        waves: Vec::new(),
        usage: PairedUsage::default(),
        worker_info,
    };
    for plan in &workload.levels {
        if plan.concurrency == 1 {
            let worker_cpu0 = worker_pid.and_then(procstat::cpu_seconds);
            let client_cpu0 = procstat::own_cpu_seconds();
            for (i, index) in pairs.clone().enumerate() {
                let prompt: Arc<Prompt> = workload.prompts[plan.prompts[index]].clone();
                let sidecar_first = i % 2 == 0;
                let (sidecar, (inprocess, cpu_s)) = back_to_back(
                    sidecar_first,
                    || send(prompt.clone(), max_tokens, Instant::now()),
                    || baseline.request(&prompt, max_tokens),
                )
                .await
                .with_context(|| format!("pair {index}"))?;
                run.usage.inprocess_cpu_s += cpu_s;
                run.pairs.push(Pair {
                    pass,
                    worker_started_first: worker_first,
                    sidecar_first,
                    sidecar,
                    inprocess,
                });
                if (i + 1) % 10 == 0 || i + 1 == pairs.len() {
                    let summary = PairedSummary::new(&run.pairs, PairedUsage::default());
                    eprintln!(
                        "  {} pairs: decode ratio median {:.3}, TTFT difference median {:+.2} ms",
                        run.pairs.len(),
                        summary.decode_ratio.median,
                        summary.ttft_delta_ms.median
                    );
                }
            }
            run.usage.worker_cpu_s += procstat::cpu_seconds_since(worker_pid, worker_cpu0);
            run.usage.client_cpu_s += procstat::own_cpu_seconds() - client_cpu0;
            continue;
        }
        for (i, index) in pairs.clone().enumerate() {
            let sidecar_first = i % 2 == 0;
            let (sidecar, inprocess) = back_to_back(
                sidecar_first,
                || drive::run_level(workload, plan, max_tokens, worker_pid, send.clone()),
                || baseline.wave(workload, plan, max_tokens),
            )
            .await
            .with_context(|| format!("{} streams, wave {index}", plan.concurrency))?;
            run.waves.push(WavePair {
                concurrency: plan.concurrency,
                pass,
                worker_started_first: worker_first,
                sidecar_first,
                sidecar,
                inprocess,
            });
        }
        let of_level: Vec<&WavePair> = run
            .waves
            .iter()
            .filter(|w| w.concurrency == plan.concurrency)
            .collect();
        let summary = WaveSummary::new(plan.concurrency, &of_level);
        eprintln!(
            "  {} streams, {} waves: aggregate ratio median {:.3}, TTFT p50 difference median {:+.2} ms",
            plan.concurrency,
            of_level.len(),
            summary.aggregate_ratio.median,
            summary.ttft_p50_delta_ms.median
        );
    }
    run.usage.worker_peak_rss_bytes = worker_pid.and_then(procstat::peak_rss_bytes).unwrap_or(0);
    sup.shutdown().await.ok();
    let totals = baseline.finish().await?;
    run.usage.inprocess_peak_rss_bytes = totals.peak_rss_bytes;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_even_so_each_process_starts_first_as_often() {
        assert_eq!([0, 1, 2, 3, 4, 5].map(sessions), [2, 2, 2, 4, 4, 6]);
    }
}
