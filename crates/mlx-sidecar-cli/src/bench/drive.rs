//! Drives one path that is reached through a client (the sidecar over gRPC, mlx-lm's server
//! over HTTP): a closed loop of `c` tasks per level, each sending its next request as soon as
//! its previous one is complete, with CPU time read around each level.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;

use super::PathRun;
use super::measure::{LevelRun, RequestRecord};
use super::procstat;
use super::workload::{LevelPlan, Prompt, Workload};

/// Runs one level: `plan.concurrency` requests in flight at once until all are done.
pub(crate) async fn run_level<F, Fut>(
    workload: &Workload,
    plan: &LevelPlan,
    max_tokens: u32,
    server_pid: Option<u32>,
    send: F,
) -> anyhow::Result<LevelRun>
where
    F: Fn(Arc<Prompt>, u32, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<RequestRecord>> + Send,
{
    let prompts: Arc<Vec<Arc<Prompt>>> = Arc::new(
        plan.prompts
            .iter()
            .map(|&i| workload.prompts[i].clone())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let server_cpu0 = server_pid.and_then(procstat::cpu_seconds);
    let client_cpu0 = procstat::own_cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency.min(prompts.len()) {
        let (prompts, next, send) = (prompts.clone(), next.clone(), send.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(prompt) = prompts.get(i) else { break };
                let record = send(prompt.clone(), max_tokens, t0)
                    .await
                    .with_context(|| format!("request {i}"))?;
                done.push((i, record));
            }
            anyhow::Ok(done)
        });
    }
    let mut records: Vec<Option<RequestRecord>> = vec![None; prompts.len()];
    while let Some(joined) = tasks.join_next().await {
        for (i, record) in joined.context("a client task panicked")?? {
            records[i] = Some(record);
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let client_cpu_s = procstat::own_cpu_seconds() - client_cpu0;
    let server_cpu_s = procstat::cpu_seconds_since(server_pid, server_cpu0);
    Ok(LevelRun {
        concurrency: plan.concurrency,
        wall_s,
        server_cpu_s,
        client_cpu_s,
        requests: records.into_iter().flatten().collect(),
    })
}

/// Runs the warm-up, then every measured level; reports the peak memory of the serving
/// process and of this one (reset at the start, so it is this path's own).
pub(crate) async fn run_path<F, Fut>(
    workload: &Workload,
    server_pid: Option<u32>,
    send: F,
) -> anyhow::Result<PathRun>
where
    F: Fn(Arc<Prompt>, u32, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<RequestRecord>> + Send,
{
    procstat::reset_peak(std::process::id());
    for plan in &workload.warmup {
        run_level(
            workload,
            plan,
            workload.spec.warmup_tokens,
            server_pid,
            send.clone(),
        )
        .await?;
    }
    let mut levels = Vec::new();
    for plan in &workload.levels {
        let run = run_level(
            workload,
            plan,
            workload.spec.max_tokens,
            server_pid,
            send.clone(),
        )
        .await?;
        let tokens: u64 = run.requests.iter().map(|r| r.tokens).sum();
        eprintln!(
            "  concurrency {:>3}: {tokens} tokens in {:.2} s",
            plan.concurrency, run.wall_s
        );
        levels.push(run);
    }
    Ok(PathRun {
        levels,
        server_peak_rss_bytes: server_pid.and_then(procstat::peak_rss_bytes).unwrap_or(0),
        client_peak_rss_bytes: procstat::peak_rss_bytes(std::process::id()).unwrap_or(0),
    })
}
