//! Fixtures of the daemon tests: a daemon (`run()` in this process, a real supervised worker
//! on the testkit's tiny model) with a handle that stops it, one such daemon shared by the
//! tests of a binary that do not change its state, and small clients: the TCP-with-key gRPC
//! client ([`client_ext`]), a plain HTTP/1 GET over any stream, reqwest, SSE and metrics
//! readers. Paths, the interpreter, the tiny model and short supervisor timings come from
//! `mlx-sidecar-testkit`.

#![allow(dead_code)]

pub(crate) mod client_ext;

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mlx_sidecar::WorkerCommand;
use mlx_sidecar_proto::v1::StatusResponse;
use mlx_sidecar_server::{ServeConfig, ServeError, run};
use mlx_sidecar_testkit as testkit;
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use client_ext::{DaemonConnection, DaemonEndpoint};

/// How long tests wait for a worker to start (2 cores, tests run in parallel).
pub(crate) const READY: Duration = Duration::from_secs(120);

/// A daemon configuration for `worker` with short timings, everything in `dir`.
pub(crate) fn config_for(worker: WorkerCommand, dir: &Path) -> ServeConfig {
    let supervisor = testkit::config(worker, dir).with_startup_timeout(Duration::from_secs(90));
    ServeConfig::new(supervisor)
        .with_socket_path(dir.join("run/daemon.sock"))
        .with_socket_activation(false)
        .with_grace(Duration::from_secs(30))
}

/// [`config_for`] the testkit's tiny worker.
pub(crate) fn config(dir: &Path) -> ServeConfig {
    config_for(testkit::tiny_worker(), dir)
}

/// `config` with a TCP listener on an ephemeral loopback port (no key), for HTTP clients.
pub(crate) fn with_tcp(config: ServeConfig) -> ServeConfig {
    config.with_listen("127.0.0.1:0".parse().expect("addr"))
}

/// The tiny model's worker with other arguments (`--max-batch`, `--max-queue`, ...).
pub(crate) fn tiny_worker_with(args: &[&str]) -> WorkerCommand {
    WorkerCommand::new(testkit::python(), testkit::worker_dir())
        .with_model(testkit::tiny_model())
        .with_args(["--grace-seconds", "2"])
        .with_args(args.iter().copied())
}

/// A daemon running `run()` in a task; stopped by [`Daemon::stop`] (or killed with the
/// test's runtime: dropping `run()` drops the supervisor, which SIGKILLs the worker).
pub(crate) struct Daemon {
    pub(crate) socket: PathBuf,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<Result<(), ServeError>>,
}

impl Daemon {
    /// Starts the daemon and waits until its health says `SERVING`.
    pub(crate) async fn start(config: ServeConfig) -> Daemon {
        let daemon = Daemon::start_without_waiting(config);
        daemon.wait_health(ServingStatus::Serving).await;
        daemon
    }

    /// Starts the daemon in a task.
    pub(crate) fn start_without_waiting(config: ServeConfig) -> Daemon {
        let socket = config.socket_path.clone().expect("tests set the socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, async move {
            let _ = stopped.await;
        }));
        Daemon {
            socket,
            stop: Some(stop),
            task,
        }
    }

    /// The first `Status` answer, polling until the daemon listens.
    pub(crate) async fn wait_status(&self) -> StatusResponse {
        let deadline = Instant::now() + READY;
        loop {
            let endpoint = DaemonEndpoint::Unix(self.socket.clone());
            if let Ok(connection) = DaemonConnection::connect(&endpoint, None).await {
                if let Ok(status) = connection.status().await {
                    return status;
                }
            }
            assert!(!self.task.is_finished(), "the daemon stopped");
            assert!(
                Instant::now() < deadline,
                "no Status answer within {READY:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn connection(&self) -> DaemonConnection {
        DaemonConnection::connect(&DaemonEndpoint::Unix(self.socket.clone()), None)
            .await
            .expect("connect to the daemon socket")
    }

    pub(crate) async fn health(&self) -> Option<ServingStatus> {
        let connection =
            DaemonConnection::connect(&DaemonEndpoint::Unix(self.socket.clone()), None)
                .await
                .ok()?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: "mlx_sidecar.v1.Inference".into(),
        });
        request.set_timeout(Duration::from_secs(2));
        let response = connection.health().check(request).await.ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    pub(crate) async fn wait_health(&self, wanted: ServingStatus) {
        let deadline = Instant::now() + READY;
        loop {
            if self.health().await == Some(wanted) {
                return;
            }
            assert!(
                !self.task.is_finished(),
                "the daemon stopped while waiting for {wanted:?}"
            );
            assert!(
                Instant::now() < deadline,
                "health not {wanted:?} within {READY:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn status(&self) -> StatusResponse {
        self.connection().await.status().await.expect("status")
    }

    /// `http://ADDR` of the daemon's TCP listener.
    pub(crate) async fn base(&self) -> String {
        let status = self.status().await;
        let tcp = status
            .listeners
            .iter()
            .find(|l| l.kind == "tcp")
            .expect("a TCP listener");
        format!("http://{}", tcp.address)
    }

    /// Requests running or waiting in the daemon, by its `Status`.
    pub(crate) async fn in_flight(&self) -> u32 {
        let status = self.status().await;
        status.requests_running + status.requests_waiting
    }

    /// Asks the daemon to stop and returns what `run()` returned.
    pub(crate) async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("run() returns within 60 s")
            .expect("run() did not panic")
    }
}

/// The daemon shared by the tests of one binary that leave its state alone.
pub(crate) struct Shared {
    /// The runtime the daemon runs on (kept for the whole binary).
    runtime: tokio::runtime::Runtime,
    /// The daemon's Unix socket.
    pub(crate) socket: PathBuf,
    /// The daemon, running as long as the binary.
    _daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// The served model id.
    pub(crate) model_id: String,
    /// The worker's pid when the daemon became ready.
    pub(crate) first_pid: u32,
    _dir: tempfile::TempDir,
}

/// The shared daemon, started on first use.
pub(crate) fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    // Started from a plain thread: the caller may be inside a runtime already.
    SHARED.get_or_init(|| {
        std::thread::spawn(start_shared)
            .join()
            .expect("the daemon starts")
    })
}

fn start_shared() -> Shared {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    remove_stale_dirs();
    // Statics are never dropped: the folder lives under cargo's target, swept next run.
    let dir = tempfile::Builder::new()
        .prefix("daemon-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let (daemon, base, model_id, first_pid) = runtime.block_on(async {
        let daemon = Daemon::start(with_tcp(config(dir.path()))).await;
        let status = daemon.status().await;
        let base = daemon.base().await;
        (
            daemon,
            base,
            status.model_id,
            status.worker_pid.expect("a worker runs"),
        )
    });
    Shared {
        runtime,
        socket: daemon.socket.clone(),
        _daemon: daemon,
        base,
        model_id,
        first_pid,
        _dir: dir,
    }
}

/// Removes the folders of earlier runs (the shared daemon's folder outlives its binary,
/// as statics are not dropped); an hour-old one belongs to no running test.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with("daemon-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Shared {
    /// The shared daemon's `Status`.
    pub(crate) async fn status(&self) -> StatusResponse {
        DaemonConnection::connect(&DaemonEndpoint::Unix(self.socket.clone()), None)
            .await
            .expect("connect")
            .status()
            .await
            .expect("status")
    }

    /// Asserts that the worker that served the first request still serves (no error made
    /// it restart) and answers a small request.
    pub(crate) async fn assert_still_serving(&self) {
        assert_eq!(
            self.status().await.worker_pid,
            Some(self.first_pid),
            "the worker was replaced"
        );
        let response = http()
            .post(format!("{}/v1/completions", self.base))
            .json(&serde_json::json!({"prompt": "Hello", "max_tokens": 2}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
}

/// A GET of `path` over HTTP/1.1 on `io`; the status, the headers and the body.
pub(crate) async fn http_get<IO>(
    io: IO,
    path: &str,
    key: Option<&str>,
) -> (u16, hyper::HeaderMap, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    http_call(io, hyper::Method::GET, path, key, None).await
}

/// A POST of the JSON `body` to `path` over HTTP/1.1 on `io`.
pub(crate) async fn http_post<IO>(
    io: IO,
    path: &str,
    body: &serde_json::Value,
) -> (u16, hyper::HeaderMap, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    http_call(io, hyper::Method::POST, path, None, Some(body.to_string())).await
}

async fn http_call<IO>(
    io: IO,
    method: hyper::Method,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (u16, hyper::HeaderMap, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "daemon");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let body = match body {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from(json))
        }
        None => Full::new(Bytes::new()),
    };
    let response = sender
        .send_request(request.body(body).expect("request"))
        .await
        .expect("HTTP response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("HTTP body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP client with a deadline per request.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// The `data:` payloads of an SSE body, in order.
pub(crate) fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// The value of the sample `name{labels}` in a metrics text (0 when absent).
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The daemon's metrics text.
pub(crate) async fn metrics_text(base: &str) -> String {
    let response = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("text")
}
