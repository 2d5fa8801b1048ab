//! [`AppState`]: what both fronts share — the supervised [`Client`], the daemon's
//! [`Metrics`], the HTTP [`Limits`], the daemon's view of its worker (published by
//! [`crate::worker`]), each replica's live status and the [`Drain`]. Cheap to clone.

use std::{sync::Arc, time::Instant};

use mlx_sidecar::{Client, ReplicaMonitor, ReplicaStatus};
use tokio::sync::watch;

use crate::{
    config::Limits, drain::Drain, metrics::Metrics, openai::error::ApiError, worker::WorkerView,
};

/// What every handler, the gRPC services and the drain layer share; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    metrics: Metrics,
    limits: Limits,
    worker: watch::Receiver<WorkerView>,
    replicas: ReplicaMonitor,
    drain: Arc<Drain>,
    started: Instant,
    started_unix: u64,
}

impl AppState {
    /// The state of a daemon calling its worker through `client`; `worker` is the view
    /// [`crate::worker`] publishes.
    pub(crate) fn new(
        client: Client,
        metrics: Metrics,
        limits: Limits,
        worker: watch::Receiver<WorkerView>,
        replicas: ReplicaMonitor,
        drain: Arc<Drain>,
    ) -> Self {
        AppState {
            inner: Arc::new(Shared {
                client,
                metrics,
                limits,
                worker,
                replicas,
                drain,
                started: Instant::now(),
                started_unix: crate::openai::unix_now(),
            }),
        }
    }

    /// The library client requests go through.
    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The daemon's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The HTTP limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The drain: whether the daemon is shutting down, and what is in flight.
    pub(crate) fn drain(&self) -> &Arc<Drain> {
        &self.inner.drain
    }

    /// The daemon's view of its worker now.
    pub(crate) fn worker(&self) -> WorkerView {
        self.inner.worker.borrow().clone()
    }

    /// Each replica's status now (state, pids, load), read live from the supervisor.
    pub(crate) fn replicas(&self) -> Vec<ReplicaStatus> {
        self.inner.replicas.replicas()
    }

    /// When the daemon started.
    pub(crate) fn started(&self) -> Instant {
        self.inner.started
    }

    /// Unix time the daemon started (the models' `created`).
    pub(crate) fn started_unix(&self) -> u64 {
        self.inner.started_unix
    }

    /// The served model's id (what `model` in a request must be, if given), or 503 before
    /// a first worker has described its model.
    pub(crate) fn served_model(&self) -> Result<String, ApiError> {
        let model = self
            .inner
            .worker
            .borrow()
            .model
            .as_ref()
            .map(|m| m.model_id.clone());
        model.ok_or_else(|| {
            ApiError::unavailable(
                "no worker has loaded the model yet",
                self.inner.limits.retry_after,
            )
        })
    }

    /// Whether a worker is ready and the daemon is not draining (`GET /ready`).
    pub(crate) fn is_ready(&self) -> bool {
        self.inner.worker.borrow().is_ready() && !self.inner.drain.is_draining()
    }
}
