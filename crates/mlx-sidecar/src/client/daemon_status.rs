//! [`DaemonStatus`]: what a `mlx-sidecar serve` daemon says about itself through its
//! `mlx_sidecar.v1.Daemon/Status` rpc, read by [`Client::daemon_status`](crate::Client::daemon_status).

use std::time::Duration;

use mlx_sidecar_proto::v1 as pb;
use serde::{Serialize, Serializer};

use super::types::ShardInfo;

/// A daemon's state: what it runs, its worker and standby, its load and its listeners.
/// Serializes (serde) with the durations as `*_seconds` numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonStatus {
    /// The daemon's version.
    pub daemon_version: String,
    /// The daemon's process id.
    pub daemon_pid: u32,
    /// Time since the daemon started.
    #[serde(rename = "daemon_uptime_seconds", serialize_with = "as_seconds")]
    pub daemon_uptime: Duration,
    /// The supervisor's state: "starting", "ready", "unhealthy", "restarting", "stopping",
    /// "stopped", "gave_up" or "unspecified".
    pub worker_state: String,
    /// The loaded model's short name (empty before the first worker was ready).
    pub model_id: String,
    /// Where the model was loaded from.
    pub model_path: String,
    /// "cpu", "gpu" or "unspecified".
    pub device: String,
    /// "cpu", "metal", "cuda" or "unspecified".
    pub backend: String,
    /// Free-form device description, such as "cpu".
    pub device_name: String,
    /// The active worker's process id, while one runs.
    pub worker_pid: Option<u32>,
    /// Time since the active worker became ready (zero when none is).
    #[serde(rename = "worker_uptime_seconds", serialize_with = "as_seconds")]
    pub worker_uptime: Duration,
    /// Workers started after the first (crash restarts and standby takeovers).
    pub worker_restarts: u32,
    /// Requests through the daemon that have output.
    pub requests_running: u32,
    /// Requests through the daemon waiting for their first output.
    pub requests_waiting: u32,
    /// The standby: "off", "starting", "ready", "none" or "unspecified".
    pub standby: String,
    /// The standby worker's process id, while one runs.
    pub standby_pid: Option<u32>,
    /// Where the daemon accepts connections.
    pub listeners: Vec<DaemonListener>,
    /// True once the daemon drains for shutdown (new requests are refused).
    pub draining: bool,
    /// Each replica (`serve --workers N`), in order; one for a single worker (none from a
    /// daemon older than replicas). The fields above describe the pool: its best state,
    /// the first replica's worker and standby, restarts summed over replicas.
    pub replicas: Vec<DaemonReplica>,
    /// The model the daemon was told to serve: the path it was given, "test model" or
    /// "default model"; set also before a worker has described its model (`None` from a
    /// daemon older than this field).
    pub configured_model: Option<String>,
    /// The sharded group (`serve --shard-ranks N`): its ranks and backend, and each rank's
    /// pid while the group of the worker that last described the model runs (with several
    /// replicas, one replica's group: its worker's pid comes first); `None` when one
    /// process holds the model.
    pub shard: Option<ShardInfo>,
}

/// One replica of a daemon's workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonReplica {
    /// Its index, from 0.
    pub index: u32,
    /// Its state, in the words of [`DaemonStatus::worker_state`].
    pub state: String,
    /// Its active worker's process id, while one runs.
    pub worker_pid: Option<u32>,
    /// Its standby's process id, while one runs.
    pub standby_pid: Option<u32>,
    /// Workers started in its place after the first.
    pub restarts: u32,
    /// Requests on it now.
    pub in_flight: u32,
    /// The device it is pinned to (`CUDA_VISIBLE_DEVICES`), empty when it shares the default.
    pub device: String,
}

/// One socket a daemon accepts connections on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonListener {
    /// "unix" or "tcp".
    pub kind: String,
    /// The socket path, or HOST:PORT.
    pub address: String,
    /// Every request on it must carry the API key.
    pub requires_api_key: bool,
    /// Handed over by systemd (socket activation) rather than bound.
    pub activated: bool,
}

impl From<pb::StatusResponse> for DaemonStatus {
    fn from(s: pb::StatusResponse) -> Self {
        let worker_state = state_name(s.worker_state);
        let device = match pb::DeviceKind::try_from(s.device) {
            Ok(pb::DeviceKind::Cpu) => "cpu",
            Ok(pb::DeviceKind::Gpu) => "gpu",
            _ => "unspecified",
        };
        let backend = match pb::Backend::try_from(s.backend) {
            Ok(pb::Backend::Cpu) => "cpu",
            Ok(pb::Backend::Metal) => "metal",
            Ok(pb::Backend::Cuda) => "cuda",
            _ => "unspecified",
        };
        let standby = match pb::StandbyState::try_from(s.standby) {
            Ok(pb::StandbyState::Off) => "off",
            Ok(pb::StandbyState::Starting) => "starting",
            Ok(pb::StandbyState::Ready) => "ready",
            Ok(pb::StandbyState::None) => "none",
            _ => "unspecified",
        };
        DaemonStatus {
            daemon_version: s.daemon_version,
            daemon_pid: s.daemon_pid,
            daemon_uptime: seconds(s.daemon_uptime_seconds),
            worker_state: worker_state.to_owned(),
            model_id: s.model_id,
            model_path: s.model_path,
            device: device.to_owned(),
            backend: backend.to_owned(),
            device_name: s.device_name,
            worker_pid: s.worker_pid,
            worker_uptime: seconds(s.worker_uptime_seconds),
            worker_restarts: s.worker_restarts,
            requests_running: s.requests_running,
            requests_waiting: s.requests_waiting,
            standby: standby.to_owned(),
            standby_pid: s.standby_pid,
            listeners: s
                .listeners
                .into_iter()
                .map(|l| DaemonListener {
                    kind: l.kind,
                    address: l.address,
                    requires_api_key: l.requires_api_key,
                    activated: l.activated,
                })
                .collect(),
            draining: s.draining,
            replicas: s
                .replicas
                .into_iter()
                .map(|r| DaemonReplica {
                    index: r.index,
                    state: state_name(r.state).to_owned(),
                    worker_pid: r.worker_pid,
                    standby_pid: r.standby_pid,
                    restarts: r.restarts,
                    in_flight: r.in_flight,
                    device: r.device,
                })
                .collect(),
            configured_model: s.configured_model,
            shard: s.shard.map(ShardInfo::from),
        }
    }
}

/// A wire `WorkerState` in words.
fn state_name(state: i32) -> &'static str {
    match pb::WorkerState::try_from(state) {
        Ok(pb::WorkerState::Starting) => "starting",
        Ok(pb::WorkerState::Ready) => "ready",
        Ok(pb::WorkerState::Unhealthy) => "unhealthy",
        Ok(pb::WorkerState::Restarting) => "restarting",
        Ok(pb::WorkerState::Stopping) => "stopping",
        Ok(pb::WorkerState::Stopped) => "stopped",
        Ok(pb::WorkerState::GaveUp) => "gave_up",
        _ => "unspecified",
    }
}

/// A duration from seconds on the wire; a negative or invalid value reads as zero.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

/// Serializes a duration as seconds (JSON: `"worker_uptime_seconds": 12.5`).
fn as_seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
