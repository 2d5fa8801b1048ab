//! The full path: this process's supervisor spawns the real worker, and the library's client
//! sends the workload over gRPC on the Unix socket: Rust client → tonic → socket → grpc.aio →
//! worker engine → MLX.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use mlx_sidecar::Supervisor;
use mlx_sidecar::{Client, GenerateEvent, GenerateRequest};
use mlx_sidecar::{SupervisorConfig, WorkerCommand};

use super::drive;
use super::measure::RequestRecord;
use super::python::PythonEnv;
use super::workload::{BAN_BIAS, Prompt, Workload};
use super::{ModelArgs, PathRun};

/// Starts a supervised worker (`replicas` of them, each a worker of its own) with the
/// bench's model and batch size, and waits until every one is ready.
pub(crate) async fn start(
    py: &PythonEnv,
    model: &ModelArgs,
    socket_dir: Option<&std::path::Path>,
    extra_args: &[String],
    max_batch: usize,
    replicas: usize,
    timeout: Duration,
) -> anyhow::Result<Supervisor> {
    let mut worker = WorkerCommand::new(&py.python, &py.worker_dir)
        .with_args(model.worker_args())
        .with_args(["--max-batch".to_owned(), max_batch.to_string()])
        .with_args(extra_args.iter().cloned());
    for (k, v) in &py.env {
        worker = worker.with_env(k, v);
    }
    let mut config = SupervisorConfig::new(worker)
        .with_startup_timeout(timeout)
        .with_replicas(replicas);
    if let Some(dir) = socket_dir {
        config = config.with_socket_dir(dir);
    }
    let supervisor = Supervisor::spawn(config)
        .await
        .context("starting the supervisor")?;
    supervisor
        .wait_all_ready(timeout)
        .await
        .context("waiting for the worker to be ready")?;
    Ok(supervisor)
}

/// Sends one request and records its timings as the client sees them.
async fn one_request(
    client: Client,
    prompt: Arc<Prompt>,
    max_tokens: u32,
    eos: Arc<[u32]>,
    t0: Instant,
) -> anyhow::Result<RequestRecord> {
    let mut request = GenerateRequest::tokens(prompt.ids.clone())
        .max_tokens(max_tokens)
        .ignore_eos(true);
    for &id in eos.iter() {
        request = request.logit_bias(id, BAN_BIAS);
    }
    let start = t0.elapsed().as_secs_f64();
    let mut stream = client.generate(request).await?;
    let (mut first, mut last) = (None, start);
    let (mut messages, mut text, mut ids) = (0u64, String::new(), Vec::new());
    let (mut prompt_tokens, mut server_ttft_ms) = (None, None);
    while let Some(event) = stream.next_event().await {
        match event? {
            GenerateEvent::Token {
                text: t, token_ids, ..
            } => {
                let now = t0.elapsed().as_secs_f64();
                first.get_or_insert(now);
                last = now;
                ids.extend_from_slice(&token_ids);
                messages += 1;
                text.push_str(&t);
            }
            GenerateEvent::Finished(done) => {
                prompt_tokens = Some(u64::from(done.usage.prompt_tokens));
                server_ttft_ms = Some(done.timings.time_to_first_token_ms);
            }
        }
    }
    let Some(prompt_tokens) = prompt_tokens else {
        bail!("the stream ended without its final message");
    };
    let end = t0.elapsed().as_secs_f64();
    Ok(RequestRecord {
        start,
        first_token: first.unwrap_or(end),
        last_token: last,
        end,
        tokens: ids.len() as u64,
        prompt_tokens,
        text,
        messages,
        token_ids: ids,
        server_ttft_ms,
    })
}

/// A function sending one workload request through `client` (greedy, end-of-sequence
/// tokens banned), for [`drive`].
pub(crate) fn sender(
    client: Client,
    eos: &[u32],
) -> impl Fn(Arc<Prompt>, u32, Instant) -> BoxFuture<'static, anyhow::Result<RequestRecord>>
+ Clone
+ Send
+ 'static {
    let eos: Arc<[u32]> = eos.into();
    move |prompt, max_tokens, t0| {
        Box::pin(one_request(
            client.clone(),
            prompt,
            max_tokens,
            eos.clone(),
            t0,
        ))
    }
}

/// Runs the workload through a ready supervisor's client.
pub(crate) async fn run(supervisor: &Supervisor, workload: &Workload) -> anyhow::Result<PathRun> {
    let send = sender(supervisor.client(), &workload.eos_token_ids);
    drive::run_path(workload, supervisor.worker_pid(), send).await
}
