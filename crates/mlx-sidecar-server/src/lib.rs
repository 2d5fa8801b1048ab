//! mlx-sidecar-server: the `mlx-sidecar serve` daemon as a library. One supervised MLX
//! worker, shared by every local process (and, with a key, remote ones) over gRPC and an
//! OpenAI-compatible HTTP API on one socket, with Prometheus metrics.
//!
//! # Theory of operation
//!
//! A request crosses each layer once:
//!
//! ```text
//! listeners → mux → auth → drain → gRPC relay / OpenAI routes → library Client → supervisor → worker
//! ```
//!
//! - **listeners** (`listen`): [`run`] binds them first — the per-user Unix socket
//!   ([`mlx_sidecar::daemon::default_socket_path`] unless configured; 0600
//!   in a 0700 folder, claimed pueue-style so a second daemon is refused and a stale
//!   socket replaced), optionally TCP (loopback only without an [`ApiKey`]), or the
//!   sockets systemd hands over (`LISTEN_FDS`) — so that a refused daemon never starts a
//!   worker. Then it spawns the library's [`Supervisor`], which owns the worker process,
//!   restarts it, and keeps a standby if asked.
//! - **mux** (`mux`): every listener serves one service that steers by content type:
//!   `application/grpc*` to the tonic routes, everything else to the axum HTTP router;
//!   `axum::serve` speaks HTTP/1.1 and h2c on both.
//! - **auth** (`auth`): on TCP listeners with a key, every request must carry
//!   `authorization: Bearer KEY` (compared in constant time), else 401 / `UNAUTHENTICATED`.
//! - **drain** (`drain`): counts inference requests in flight until their response body
//!   ends, and once the daemon drains refuses new ones with 503 / `UNAVAILABLE`.
//! - **gRPC** (`grpc`): the `mlx_sidecar.v1.Inference` relay, the daemon's own
//!   `mlx_sidecar.v1.Daemon` (`Status`), `grpc.health.v1` and server reflection.
//!   **HTTP** (`http`, `openai`): `POST /v1/chat/completions`, `POST /v1/completions`
//!   (JSON or server-sent events), `GET /v1/models`, `GET /metrics`, `GET /health`,
//!   `GET /ready`, behind a body limit that answers a readable 413; every HTTP error body
//!   is built by `openai::error::ApiError` in OpenAI's shape.
//! - **library Client**: both fronts call the worker through the supervisor's
//!   [`mlx_sidecar::Client`], so they share its semantics: a call waits for a ready worker
//!   within its deadline, a worker that dies before the first token is retried on the
//!   next one without the caller noticing, and dropping a stream (a caller that went
//!   away) cancels the generation in the worker. Its errors reach remote callers through
//!   `remote_error`, which keeps the worker's log lines in the daemon's own log.
//!
//! Beside the request path, one `AppState` is shared by everything: the client, the
//! metrics (`metrics`: a Prometheus registry per daemon; both fronts record each request
//! through one `RequestObserver`, whose running and waiting gauges the `Status` rpc also
//! reports), the HTTP [`Limits`], the drain, and the daemon's view of its worker. That
//! view comes from one task (`worker`) that follows the supervisor's lifecycle events: it
//! feeds `/ready` and `Status`, sets health `SERVING` only while a worker is ready, sets
//! the worker gauges and restart counters, and tells systemd `READY=1` once the first
//! worker is ready.
//!
//! When `shutdown` resolves: systemd hears `STOPPING=1`, health turns `NOT_SERVING`, new
//! inference requests are refused with a retryable error (gRPC `UNAVAILABLE`, HTTP 503),
//! requests in flight run on for up to [`ServeConfig::grace`], then the listeners close,
//! the supervisor drains and stops its worker, and the socket file is removed.
//!
//! ```no_run
//! # async fn example() -> Result<(), mlx_sidecar_server::ServeError> {
//! use mlx_sidecar::{SupervisorConfig, WorkerCommand};
//! use mlx_sidecar_server::{ServeConfig, run};
//!
//! let worker = WorkerCommand::new(".venv/bin/python", "sidecar");
//! let config = ServeConfig::new(SupervisorConfig::new(worker));
//! run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

mod auth;
mod body_limit;
mod config;
mod drain;
mod grpc;
mod http;
mod listen;
mod metrics;
mod mux;
mod openai;
mod remote_error;
mod state;
mod worker;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use mlx_sidecar::Supervisor;
use tokio::{sync::watch, task::JoinSet, time::Instant};

pub use auth::ApiKey;
pub use config::{
    DEFAULT_GRACE, DEFAULT_MAX_BODY_BYTES, Limits, ListeningCallback, OnListening, ServeConfig,
    ServeError,
};

use crate::{
    drain::Drain,
    grpc::{daemon::DaemonService, health::HealthPublisher, relay::Relay},
    listen::Bound,
    metrics::Metrics,
    state::AppState,
    worker::{Follower, WorkerView},
};

/// How long closing listeners may wait for open connections after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the daemon until `shutdown` resolves, then drains and stops; see the
/// [crate docs](crate). Returns `Ok(())` after a clean stop.
///
/// Fails at start when a listener cannot be bound (another daemon owns the socket, a
/// non-loopback address without a key, ...) or the worker cannot be spawned; fails later
/// only when a listener breaks or the supervisor cannot stop its worker.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let bound = listen::bind_all(&config).await?;
    let _socket_files = SocketFiles(
        bound
            .iter()
            .filter_map(|b| match b {
                Bound::Unix { owned, .. } => owned.clone(),
                Bound::Tcp { .. } => None,
            })
            .collect(),
    );
    let listeners: Vec<_> = bound.iter().map(|b| b.info().clone()).collect();
    if let Some(OnListening(callback)) = &config.on_listening {
        let names: Vec<String> = listeners.iter().map(ToString::to_string).collect();
        callback(&names);
    }
    let supervisor = Supervisor::spawn(config.supervisor.clone()).await?;
    let events = supervisor.subscribe();
    let client = supervisor.client();

    let drain = Arc::new(Drain::default());
    let metrics = Metrics::new();
    let configured_shard = worker::configured_shard(&config.supervisor.worker);
    let (view, worker) = watch::channel(WorkerView::initial(
        config.supervisor.standby,
        configured_shard.clone(),
    ));
    let state = AppState::new(
        client.clone(),
        metrics.clone(),
        config.limits.clone(),
        worker,
        supervisor.monitor(),
        drain.clone(),
    );
    let (health, health_service) = HealthPublisher::new().await;
    let relay = Relay {
        state: state.clone(),
    };
    let daemon = DaemonService {
        state: state.clone(),
        listeners: Arc::new(listeners.clone()),
        configured_model: grpc::daemon::configured_model(&config.supervisor.worker).into(),
    };
    let grpc = grpc::routes(relay, daemon, health_service)?;
    let http = http::router(state.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut serving = JoinSet::new();
    for listener in bound {
        let key = listener
            .info()
            .requires_api_key
            .then(|| config.api_key.clone())
            .flatten();
        let router = mux::service(http.clone(), grpc.clone(), &state, key, config.open_probes);
        let mut stop = stop_rx.clone();
        serving.spawn(mux::serve(listener, router, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }));
    }
    let names: Vec<String> = listeners.iter().map(ToString::to_string).collect();
    tracing::info!(listeners = ?names, "mlx-sidecar daemon listening");

    let follower = Follower::new(
        view,
        health.clone(),
        drain.clone(),
        metrics,
        client,
        configured_shard,
    );
    let mut follower = Box::pin(follower.run(&supervisor, events));
    let mut follower_done = false;
    tokio::pin!(shutdown);
    let mut failure = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut follower, if !follower_done => follower_done = true,
            Some(ended) = serving.join_next() => {
                failure = Some(listener_failure(ended));
                break;
            }
        }
    }

    // Drain: refuse new work, let what runs finish within the grace.
    tracing::info!(grace = ?config.grace, in_flight = drain.in_flight(), "draining");
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::debug!(error = %e, "cannot tell systemd STOPPING=1");
    }
    drain.start();
    health.set(false).await;
    let drain_started = Instant::now();
    let idle = drain.wait_idle(config.grace);
    tokio::pin!(idle);
    let left = loop {
        tokio::select! {
            left = &mut idle => break left,
            () = &mut follower, if !follower_done => follower_done = true,
        }
    };
    if left > 0 {
        tracing::warn!(left, grace = ?config.grace, "requests still running after the grace; cutting them off");
    } else {
        tracing::info!(took = ?drain_started.elapsed(), "drained");
    }

    // Close the listeners; connections still open get a short bound.
    health.close().await;
    stop_tx.send_replace(true);
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(ended) = serving.join_next().await {
            if let Err(e) = listener_failure(ended) {
                tracing::warn!(error = %e, "a listener failed while closing");
            }
        }
    })
    .await;
    if closed.is_err() {
        serving.abort_all();
    }
    drop(follower);
    let stopped = supervisor.shutdown().await;
    tracing::info!("mlx-sidecar daemon stopped");
    if let Some(Err(e)) = failure {
        return Err(e);
    }
    stopped.map_err(ServeError::from)
}

/// The error of a listener task that ended before shutdown (`Ok` only if it ended cleanly,
/// which a listener does not do unasked).
fn listener_failure(
    ended: Result<Result<(), ServeError>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match ended {
        Ok(result) => result,
        Err(e) => Err(ServeError::Serve {
            listener: "a listener task".to_owned(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// The socket files this daemon bound, removed when it stops (also on an early error).
struct SocketFiles(Vec<(PathBuf, u64)>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for (path, inode) in &self.0 {
            listen::remove_owned(path, *inode);
        }
    }
}
