//! The HTTP peer: mlx-lm's own server (`python -m mlx_lm server`, loopback only), driven with
//! the same workload by a streaming HTTP client (hyper, one connection per request, as the
//! server closes each one after its response).
//!
//! Requests go to `/v1/completions` with `stream: true`, the prompt's text (which tokenizes to
//! the workload's ids; the usage the server reports is checked against them), greedy, and the
//! end-of-sequence ids banned through `logit_bias`. The server batches concurrent requests
//! with `BatchGenerator` up to `--decode-concurrency`, which is set to the largest level.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::process::Child;

use super::PathRun;
use super::drive;
use super::measure::RequestRecord;
use super::python::PythonEnv;
use super::workload::{BAN_BIAS, Prompt, Workload};

/// mlx-lm's server, running.
pub(crate) struct HttpServer {
    child: Child,
    addr: SocketAddr,
    pid: u32,
}

impl HttpServer {
    /// Starts `python -m mlx_lm server` on a free loopback port and waits (up to `timeout`)
    /// until it answers `/health`.
    pub(crate) async fn start(
        py: &PythonEnv,
        model_dir: &Path,
        log_dir: &Path,
        dequantize: &str,
        max_batch: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // `bench_inprocess.py http-server` is `python -m mlx_lm server`, run after the
        // worker's model package has set up the same CPU BLAS as the worker uses.
        let args: Vec<String> = vec![
            py.script.display().to_string(),
            "http-server".into(),
            "--dequantize".into(),
            dequantize.to_owned(),
            "--model".into(),
            model_dir.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--decode-concurrency".into(),
            max_batch.to_string(),
            "--prompt-concurrency".into(),
            max_batch.min(8).to_string(),
            "--log-level".into(),
            "WARNING".into(),
        ];
        // Its log (one line per request) goes to a file, shown only if it fails to start.
        let log_path = log_dir.join("mlx-lm-server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = py.command(&args);
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().context("starting mlx-lm's server")?;
        let log_tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let pid = child.id().context("mlx-lm's server has no pid")?;
        let mut server = Self { child, addr, pid };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("mlx-lm's server exited at start: {status}\n{}", log_tail());
            }
            if health(addr).await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "mlx-lm's server did not answer /health within {timeout:?}\n{}",
                    log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the server (SIGTERM to its process group, then SIGKILL after a grace period).
    pub(crate) async fn stop(mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
    }
}

/// Whether the server answers `GET /health` with 200.
async fn health(addr: SocketAddr) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get("/health")
            .header(HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::Ok(resp.status().is_success())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    text: String,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The request body of one prompt.
fn body(prompt: &Prompt, max_tokens: u32, eos: &[u32]) -> Bytes {
    let bias: serde_json::Map<String, serde_json::Value> = eos
        .iter()
        .map(|id| (id.to_string(), BAN_BIAS.into()))
        .collect();
    let body = serde_json::json!({
        "prompt": prompt.text,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "logit_bias": bias,
    });
    Bytes::from(body.to_string())
}

/// Sends one streaming completion and records its timings.
async fn one_request(
    addr: SocketAddr,
    prompt: &Prompt,
    max_tokens: u32,
    eos: &[u32],
    t0: Instant,
) -> anyhow::Result<RequestRecord> {
    let payload = body(prompt, max_tokens, eos);
    let start = t0.elapsed().as_secs_f64();
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post("/v1/completions")
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(payload))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&text));
    }
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let (mut first, mut last) = (None, start);
    let (mut messages, mut text) = (0u64, String::new());
    let mut usage = None;
    let mut done = false;
    while !done {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = t0.elapsed().as_secs_f64();
        buf.extend_from_slice(&data);
        // Server-sent events end with a blank line; comments (": keepalive") are skipped.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event = buf.split_to(end + 2);
            let Some(payload) = event.strip_prefix(b"data: ") else {
                continue;
            };
            let payload = payload.trim_ascii_end();
            if payload == b"[DONE]" {
                done = true;
                break;
            }
            let event: Event = serde_json::from_slice(payload)
                .with_context(|| format!("bad event {}", String::from_utf8_lossy(payload)))?;
            if let Some(u) = event.usage {
                usage = Some(u);
            }
            if let Some(choice) = event.choices.first() {
                messages += 1;
                first.get_or_insert(now);
                last = now;
                text.push_str(&choice.text);
                if choice.finish_reason.is_some() {
                    last = now;
                }
            }
        }
    }
    let end = t0.elapsed().as_secs_f64();
    let usage = usage.context("the server sent no usage")?;
    if usage.prompt_tokens != prompt.ids.len() as u64 {
        bail!(
            "mlx-lm's server tokenized the prompt to {} tokens, expected {}",
            usage.prompt_tokens,
            prompt.ids.len()
        );
    }
    Ok(RequestRecord {
        start,
        first_token: first.unwrap_or(end),
        last_token: last,
        end,
        tokens: usage.completion_tokens,
        prompt_tokens: usage.prompt_tokens,
        text,
        messages,
        token_ids: Vec::new(),
        server_ttft_ms: None,
    })
}

/// A function sending one workload request to the OpenAI-style server at `addr` (greedy,
/// end-of-sequence tokens banned), for [`drive`]: mlx-lm's server or the daemon's HTTP API.
pub(crate) fn sender(
    addr: SocketAddr,
    eos: &[u32],
) -> impl Fn(Arc<Prompt>, u32, Instant) -> BoxFuture<'static, anyhow::Result<RequestRecord>>
+ Clone
+ Send
+ 'static {
    let eos: Arc<[u32]> = eos.into();
    move |prompt: Arc<Prompt>, max_tokens: u32, t0: Instant| {
        let eos = eos.clone();
        Box::pin(async move { one_request(addr, &prompt, max_tokens, &eos, t0).await })
    }
}

/// Runs the workload against a started server.
pub(crate) async fn run(server: &HttpServer, workload: &Workload) -> anyhow::Result<PathRun> {
    let send = sender(server.addr, &workload.eos_token_ids);
    drive::run_path(workload, Some(server.pid()), send).await
}
