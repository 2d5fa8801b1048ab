//! Fixtures shared by the integration tests of the mlx-sidecar crates (not published): the
//! real interpreter and worker source of this repository, a tiny model made once per test
//! binary run, supervisor configurations with short timings, waiting on conditions with
//! deadlines, and (in [`raw`] and [`procfs`]) a raw gRPC channel to a worker and `/proc`
//! readings for the fault catalogue's leak checks.
//!
//! The library's tests (`crates/mlx-sidecar/tests/it`), the command's
//! (`crates/mlx-sidecar-cli/tests/it`) and the daemon's (`crates/mlx-sidecar-server/tests`)
//! use it.

pub mod procfs;
pub mod raw;

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use mlx_sidecar::{
    Client, Completion, Error, GenerateEvent, GenerateRequest, GenerateStream, LifecycleEvent,
    RestartPolicy, Supervisor, SupervisorConfig, WorkerCommand,
};
use tokio::{sync::broadcast, time::Instant};

/// The repository's root directory (this crate lives in `crates/mlx-sidecar-testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python interpreter with MLX: `MLX_SIDECAR_PYTHON`, else the repository's `.venv`.
pub fn python() -> PathBuf {
    std::env::var_os("MLX_SIDECAR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// The worker's source directory (`sidecar/` in the repository).
pub fn worker_dir() -> PathBuf {
    repo_root().join("sidecar")
}

/// Sends the crate's `tracing` events to the test output (shown for failing tests).
pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// The tiny random-weight model, written once per test binary run.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = MODEL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir for the tiny model");
        let path = dir.path().join("tiny");
        let status = std::process::Command::new(python())
            .args(["-m", "mlx_worker.testing.tiny_model"])
            .arg(&path)
            .env("PYTHONPATH", worker_dir())
            .status()
            .expect("run mlx_worker.testing.tiny_model");
        assert!(status.success(), "tiny_model failed: {status}");
        (dir, path)
    });
    path
}

/// The worker command for the tiny model, with small limits.
pub fn tiny_worker() -> WorkerCommand {
    WorkerCommand::new(python(), worker_dir())
        .with_model(tiny_model())
        .with_args(["--grace-seconds", "2", "--max-batch", "8"])
}

/// A restart policy fit for tests: quick, growing delays.
pub fn quick_restarts() -> RestartPolicy {
    RestartPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(2),
        factor: 2.0,
        jitter: true,
        reset_after: Duration::from_secs(60),
        max_restarts: 10,
        within: Duration::from_secs(60),
        immediate_first_restart: true,
    }
}

/// A supervisor configuration with short timings, its socket directory in `sandbox`.
pub fn config(worker: WorkerCommand, sandbox: &Path) -> SupervisorConfig {
    init_tracing();
    SupervisorConfig::new(worker)
        .with_socket_dir(sandbox)
        .with_startup_timeout(Duration::from_secs(60))
        .with_health(Duration::from_millis(250), Duration::from_secs(1), 3)
        .with_restart(quick_restarts())
        .with_shutdown_grace(Duration::from_secs(3))
}

/// How long tests wait for a worker to start (generous: 2 cores, tests run in parallel).
pub const READY: Duration = Duration::from_secs(60);

/// A supervisor of the tiny model with [`config`]'s short timings, once its worker is ready.
pub async fn ready_tiny_supervisor(sandbox: &Path) -> Supervisor {
    let supervisor = Supervisor::spawn(config(tiny_worker(), sandbox))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    supervisor
}

/// Sends `request` and collects the whole answer, failing the test on any error.
pub async fn complete(client: &Client, request: GenerateRequest) -> Completion {
    client
        .generate(request)
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect")
}

/// Waits for the first event matching `pred`, failing the test after `timeout`. Returns the
/// event and everything seen before it.
pub async fn wait_event(
    events: &mut broadcast::Receiver<LifecycleEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&LifecycleEvent) -> bool,
) -> (LifecycleEvent, Vec<(Instant, LifecycleEvent)>) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no matching event within {timeout:?}; saw {seen:#?}"))
            .expect("event channel open");
        if pred(&event) {
            return (event, seen);
        }
        seen.push((Instant::now(), event));
    }
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` is gone (absent, or a zombie waiting to be reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
}

/// Reads `stream` until at least `bytes` of text have arrived (it must not finish first).
pub async fn text_of_at_least(stream: &mut GenerateStream, bytes: usize) -> String {
    let mut received = String::new();
    while received.len() < bytes {
        match stream.next_event().await.expect("event").expect("event ok") {
            GenerateEvent::Token { text, .. } => received.push_str(&text),
            GenerateEvent::Finished(f) => panic!("finished too early: {f:?}"),
        }
    }
    received
}

/// Reads a stream whose worker was just killed: text that still arrives joins `received`,
/// and the stream must end with an error within 2 s.
pub async fn error_after_kill(stream: &mut GenerateStream, received: &mut String) -> Error {
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.next_event().await {
                Some(Ok(GenerateEvent::Token { text, .. })) => received.push_str(&text),
                Some(Ok(GenerateEvent::Finished(f))) => panic!("finished despite the kill: {f:?}"),
                Some(Err(e)) => break e,
                None => panic!("stream ended without an error"),
            }
        }
    })
    .await
    .expect("the stream ends within 2 s of the kill")
}
