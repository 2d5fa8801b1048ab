//! The daemon paths: `mlx-sidecar serve` (this very binary), started by the bench on its own
//! socket in the scratch directory and on a free loopback port, its worker given the same
//! options as the sidecar path's (`--dequantize`, `--max-batch`, `--worker-arg`).
//!
//! - `daemon`: the library's `Client::connect` to the daemon's socket; the daemon relays gRPC
//!   to its worker ([`sidecar::sender`] sends the requests, as on the embedded path).
//! - `daemon-http`: the daemon's OpenAI `/v1/completions`, streamed, over loopback TCP, driven
//!   by the same HTTP client as mlx-lm's server ([`http::sender`]).
//!
//! The "server" CPU and memory of these paths are the worker's, as on the sidecar path; the
//! daemon process's own are read separately ([`Daemon::usage`]).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mlx_sidecar::{Client, Endpoint, HealthStatus};
use tokio::process::{Child, Command};

use super::measure::RequestRecord;
use super::python::PythonEnv;
use super::workload::{Prompt, Workload};
use super::{ModelArgs, PathRun, drive, http, procstat, sidecar};

/// What the bench needs to start the daemon like the embedded supervisor.
pub(crate) struct DaemonSetup<'a> {
    /// The interpreter (the daemon gets it as `--python`).
    pub(crate) py: &'a PythonEnv,
    /// How the model is loaded.
    pub(crate) model: &'a ModelArgs,
    /// Extra options for the worker (`--worker-arg`).
    pub(crate) worker_args: &'a [String],
    /// The worker's `--max-batch`.
    pub(crate) max_batch: usize,
    /// The bench's scratch directory (the daemon's socket and log go there).
    pub(crate) scratch: &'a Path,
    /// How long the daemon may take until its worker is ready.
    pub(crate) timeout: Duration,
}

/// A running `mlx-sidecar serve`, its worker ready.
pub(crate) struct Daemon {
    child: Child,
    pid: u32,
    worker_pid: Option<u32>,
    client: Client,
    http_addr: SocketAddr,
}

/// The daemon process's own usage over a path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DaemonUsage {
    /// Its peak resident memory (`VmHWM`, reset when the path started), bytes.
    pub(crate) peak_rss_bytes: u64,
    /// CPU seconds it spent since it was ready.
    pub(crate) cpu_s: f64,
}

impl Daemon {
    /// Starts the daemon and waits until it answers health `SERVING` on its socket.
    pub(crate) async fn start(setup: &DaemonSetup<'_>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let dir = setup.scratch.join("daemon");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("daemon.sock");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let http_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut args: Vec<String> = vec!["--python".into(), path_arg(&setup.py.python)];
        if let Some(m) = &setup.model.model {
            args.extend(["--model".into(), path_arg(m)]);
        }
        if let Some(c) = &setup.model.cache_dir {
            args.extend(["--cache-dir".into(), path_arg(c)]);
        }
        args.extend([
            "--startup-timeout".into(),
            setup.timeout.as_secs_f64().to_string(),
            "serve".into(),
            "--socket".into(),
            path_arg(&socket),
            "--listen".into(),
            http_addr.to_string(),
            "--grace".into(),
            "5".into(),
            format!("--worker-arg=--dequantize={}", setup.model.dequantize),
            format!("--worker-arg=--max-batch={}", setup.max_batch),
        ]);
        args.extend(
            setup
                .worker_args
                .iter()
                .map(|a| format!("--worker-arg={a}")),
        );
        let log_path = dir.join("daemon.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting mlx-sidecar serve")?;
        let pid = child.id().context("the daemon has no pid")?;
        let log_tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let mut child = child;
        let deadline = Instant::now() + setup.timeout;
        let client = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mlx-sidecar serve exited at start: {status}\n{}",
                    log_tail()
                );
            }
            if let Ok(client) = Client::connect(Endpoint::Unix(socket.clone())).await {
                if matches!(client.health().await, Ok(HealthStatus::Serving)) {
                    break client;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "mlx-sidecar serve was not ready within {:?}\n{}",
                    setup.timeout,
                    log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let worker_pid = client
            .daemon_status()
            .await
            .context("asking the daemon for its status")?
            .worker_pid;
        Ok(Self {
            child,
            pid,
            worker_pid,
            client,
            http_addr,
        })
    }

    /// Its worker's process id.
    pub(crate) fn worker_pid(&self) -> Option<u32> {
        self.worker_pid
    }

    /// A client of its gRPC API on the Unix socket.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Where its HTTP API listens (loopback TCP).
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Sets the daemon's peak memory back to its current size and returns its CPU time, to
    /// be read back by [`Daemon::usage`].
    pub(crate) fn mark(&self) -> Option<f64> {
        procstat::reset_peak(self.pid);
        procstat::cpu_seconds(self.pid)
    }

    /// Its peak memory and CPU time since `mark`.
    pub(crate) fn usage(&self, mark: Option<f64>) -> DaemonUsage {
        DaemonUsage {
            peak_rss_bytes: procstat::peak_rss_bytes(self.pid).unwrap_or(0),
            cpu_s: procstat::cpu_seconds_since(Some(self.pid), mark),
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after a grace period).
    pub(crate) async fn stop(mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
    }
}

/// A path as a command-line argument.
fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// One of the two daemon paths, as a sender of workload requests.
pub(crate) fn sender(
    daemon: &Daemon,
    over_http: bool,
    eos: &[u32],
) -> impl Fn(
    std::sync::Arc<Prompt>,
    u32,
    Instant,
) -> futures_util::future::BoxFuture<'static, anyhow::Result<RequestRecord>>
+ Clone
+ Send
+ 'static {
    let grpc = sidecar::sender(daemon.client(), eos);
    let web = http::sender(daemon.http_addr(), eos);
    move |prompt, max_tokens, t0| {
        if over_http {
            web(prompt, max_tokens, t0)
        } else {
            grpc(prompt, max_tokens, t0)
        }
    }
}

/// Starts the daemon, runs the workload through it (gRPC, or HTTP with `over_http`), prints
/// the daemon process's own peak memory and CPU, and stops it.
pub(crate) async fn run(
    setup: &DaemonSetup<'_>,
    workload: &Workload,
    over_http: bool,
) -> anyhow::Result<PathRun> {
    let daemon = Daemon::start(setup).await?;
    let mark = daemon.mark();
    let send = sender(&daemon, over_http, &workload.eos_token_ids);
    let run = drive::run_path(workload, daemon.worker_pid(), send).await;
    let usage = daemon.usage(mark);
    eprintln!(
        "  the daemon process itself: peak resident {:.1} MiB, {:.2} CPU s",
        usage.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        usage.cpu_s
    );
    daemon.stop().await;
    run
}
