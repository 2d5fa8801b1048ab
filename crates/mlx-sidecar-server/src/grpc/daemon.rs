//! `mlx_sidecar.v1.Daemon`: the `Status` rpc, answered from the daemon's own view of its
//! worker (`crate::worker::WorkerView`), its load (the metrics' running and waiting
//! gauges, which both fronts feed), each replica (read live from the supervisor) and its
//! listeners and, for a sharded model, its group's ranks, without calling the worker. Until a worker has described its model, the
//! configured one (`configured_model`) is what says which model is loading.

use std::sync::Arc;

use mlx_sidecar::{WorkerCommand, WorkerState};
use mlx_sidecar_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert;
use crate::{listen::ListenerInfo, state::AppState, worker::Standby};

/// The `Daemon` service.
#[derive(Debug, Clone)]
pub(crate) struct DaemonService {
    pub(crate) state: AppState,
    pub(crate) listeners: Arc<Vec<ListenerInfo>>,
    /// The model the daemon was told to serve, in words (see [`configured_model`]).
    pub(crate) configured_model: Arc<str>,
}

/// The model `worker` loads, as `Status` names it before a worker has described it: the
/// path given, or "test model" / "default model" when none was.
pub(crate) fn configured_model(worker: &WorkerCommand) -> String {
    match &worker.model {
        Some(path) => path.display().to_string(),
        None if worker.uses_test_model() => "test model".to_owned(),
        None => "default model".to_owned(),
    }
}

#[tonic::async_trait]
impl pb::daemon_server::Daemon for DaemonService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.snapshot()))
    }
}

impl DaemonService {
    fn snapshot(&self) -> pb::StatusResponse {
        let worker = self.state.worker();
        let metrics = self.state.metrics();
        let model = worker.model.as_ref();
        let text =
            |f: fn(&mlx_sidecar::ModelInfo) -> &String| model.map(f).cloned().unwrap_or_default();
        pb::StatusResponse {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            daemon_pid: std::process::id(),
            daemon_uptime_seconds: self.state.started().elapsed().as_secs_f64(),
            worker_state: worker_state(&worker.state).into(),
            model_id: text(|m| &m.model_id),
            model_path: text(|m| &m.model_path),
            device: model
                .map_or(pb::DeviceKind::Unspecified, |m| {
                    convert::device_kind(&m.device)
                })
                .into(),
            backend: model
                .map_or(pb::Backend::Unspecified, |m| convert::backend(&m.backend))
                .into(),
            device_name: text(|m| &m.device_name),
            worker_pid: worker.pid,
            worker_uptime_seconds: worker
                .ready_since
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
            worker_restarts: worker.restarts,
            requests_running: metrics.running(),
            requests_waiting: metrics.waiting(),
            standby: standby(worker.standby).into(),
            standby_pid: worker.standby_pid,
            listeners: self
                .listeners
                .iter()
                .map(|l| pb::Listener {
                    kind: l.kind.to_owned(),
                    address: l.address.clone(),
                    requires_api_key: l.requires_api_key,
                    activated: l.activated,
                })
                .collect(),
            draining: self.state.drain().is_draining(),
            replicas: self
                .state
                .replicas()
                .iter()
                .map(|r| pb::Replica {
                    index: u32::try_from(r.index).unwrap_or(u32::MAX),
                    state: worker_state(&r.state).into(),
                    worker_pid: r.pid,
                    standby_pid: r.standby_pid,
                    restarts: u32::try_from(r.restarts).unwrap_or(u32::MAX),
                    in_flight: u32::try_from(r.in_flight).unwrap_or(u32::MAX),
                    device: r.device.clone().unwrap_or_default(),
                })
                .collect(),
            configured_model: Some(self.configured_model.to_string()),
            shard: worker.shard.as_ref().map(convert::shard_info),
        }
    }
}

fn worker_state(state: &WorkerState) -> pb::WorkerState {
    match state {
        WorkerState::Starting => pb::WorkerState::Starting,
        WorkerState::Ready => pb::WorkerState::Ready,
        WorkerState::Unhealthy => pb::WorkerState::Unhealthy,
        WorkerState::Restarting { .. } => pb::WorkerState::Restarting,
        WorkerState::Stopping => pb::WorkerState::Stopping,
        WorkerState::Stopped => pb::WorkerState::Stopped,
        WorkerState::GaveUp => pb::WorkerState::GaveUp,
        _ => pb::WorkerState::Unspecified,
    }
}

fn standby(standby: Standby) -> pb::StandbyState {
    match standby {
        Standby::Off => pb::StandbyState::Off,
        Standby::Starting => pb::StandbyState::Starting,
        Standby::Ready => pb::StandbyState::Ready,
        Standby::None => pb::StandbyState::None,
    }
}
