//! What the supervisor tells the outside world as things happen: the [`LifecycleEvent`]s it
//! broadcasts (and logs), and the [`StartupTimes`] a ready worker reports.

use std::time::Duration;

use tokio::sync::broadcast;

use crate::worker::ExitStatusInfo;

/// What happened to the worker, broadcast by [`crate::Supervisor::subscribe`] and logged
/// as `tracing` events (target `mlx_sidecar::supervisor`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A worker process was spawned.
    Starting {
        /// 0 for the first start, then the restart number.
        attempt: u32,
        /// The worker's process id.
        pid: u32,
    },
    /// The worker reported `SERVING` and calls go to it (for a promoted standby: it took over).
    Ready {
        /// The worker's process id.
        pid: u32,
        /// From spawning the process to `SERVING` (imports, model load, warm-up). For a
        /// promoted standby that was time spent before it took over.
        load_time: Duration,
        /// Where the start-up time went, as the worker reported it (its "startup" log
        /// event); `None` if that line was not seen.
        startup: Option<StartupTimes>,
    },
    /// A health check failed, or the worker did not become ready in time.
    Unhealthy {
        /// The worker's process id.
        pid: u32,
        /// What failed.
        reason: String,
        /// Failed checks in a row so far.
        failures: u32,
    },
    /// The worker process ended without being asked to (or was killed as unhealthy).
    Crashed {
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        status: ExitStatusInfo,
    },
    /// A new worker will be started after `delay`.
    Restarting {
        /// Which restart this is (1 for the first).
        attempt: u32,
        /// The backoff delay before it starts.
        delay: Duration,
    },
    /// The supervisor stopped restarting the worker.
    GaveUp {
        /// Why.
        reason: String,
        /// The last worker's exit status.
        last_status: Option<ExitStatusInfo>,
        /// The last worker's last log lines.
        last_log: Vec<String>,
    },
    /// The supervisor shut down and the worker is gone.
    Stopped,
    /// A standby worker was spawned (only with [`crate::SupervisorConfig::standby`]). It
    /// loads the model and waits, idle, to take over when the active worker dies.
    StandbyStarting {
        /// 0 for the first standby since the last promotion, then its restart number.
        attempt: u32,
        /// The standby's process id.
        pid: u32,
    },
    /// The standby reports `SERVING`: it can take over at once.
    StandbyReady {
        /// The standby's process id.
        pid: u32,
        /// From spawning the process to `SERVING`.
        load_time: Duration,
        /// Where its start-up time went, as it reported it.
        startup: Option<StartupTimes>,
    },
    /// The standby ended (or was killed after failing its health checks) while idle.
    StandbyCrashed {
        /// The standby's process id.
        pid: u32,
        /// How it ended.
        status: ExitStatusInfo,
        /// When the next standby starts; `None` when standby crashes hit the restart
        /// intensity limit and the supervisor runs without one from now on (the active
        /// worker is not affected).
        restart_in: Option<Duration>,
    },
    /// The active worker died and the standby took its place, without a backoff delay.
    /// Follows the old worker's [`LifecycleEvent::Crashed`]. [`LifecycleEvent::Ready`]
    /// for `pid` comes next: at once when the standby was serving, else once it is (there is
    /// no [`LifecycleEvent::Starting`] for it: it started earlier, as a standby). A new
    /// standby is started once this one is ready.
    Promoted {
        /// The former standby's process id, now the active worker's.
        pid: u32,
        /// Which restart of the active worker this is (as `Restarting` would say).
        attempt: u32,
        /// Whether the standby already reported `SERVING` when it took over.
        was_ready: bool,
    },
    /// A generation stream whose worker died after output began continued on the next
    /// ready worker (see [`crate::GenerateRequest::max_resumes`]). Sent by the client that
    /// resumed it (one from [`crate::Supervisor::client`]), once the continuation's first
    /// message arrived.
    Resumed {
        /// The process id of the worker that took the stream over, when known.
        pid: Option<u32>,
        /// The request's id, as the caller set it (may be empty).
        request_id: String,
        /// How many times this stream has been resumed, this time included.
        resume_count: u32,
        /// Tokens the caller had received before the seam.
        delivered_tokens: usize,
        /// From noticing the death to the continuation's first message.
        stall: Duration,
        /// From the last message the caller received before the seam to the
        /// continuation's first: the pause the caller sees, the time the dying worker
        /// took to go (and so to be noticed) included. At least `stall`.
        gap: Duration,
    },
}

/// Logs `event` through `tracing` and broadcasts it: how the owner and the standby keeper
/// announce every lifecycle event.
pub(crate) fn announce(events: &broadcast::Sender<LifecycleEvent>, event: LifecycleEvent) {
    match &event {
        LifecycleEvent::Starting { attempt, pid } => {
            tracing::info!(attempt, pid, "worker starting");
        }
        LifecycleEvent::Ready {
            pid,
            load_time,
            startup,
        } => tracing::info!(pid, ?load_time, ?startup, "worker ready"),
        LifecycleEvent::Unhealthy {
            pid,
            reason,
            failures,
        } => tracing::warn!(pid, failures, %reason, "worker unhealthy"),
        LifecycleEvent::Crashed { pid, status } => {
            tracing::warn!(pid, %status, "worker crashed");
        }
        LifecycleEvent::Restarting { attempt, delay } => {
            tracing::info!(attempt, ?delay, "restarting the worker");
        }
        LifecycleEvent::GaveUp { reason, .. } => tracing::error!(%reason, "gave up"),
        LifecycleEvent::Stopped => tracing::info!("supervisor stopped"),
        LifecycleEvent::Promoted {
            pid,
            attempt,
            was_ready,
        } => tracing::info!(pid, attempt, was_ready, "standby worker promoted"),
        LifecycleEvent::StandbyStarting { attempt, pid } => {
            tracing::info!(attempt, pid, "standby worker starting");
        }
        LifecycleEvent::StandbyReady {
            pid,
            load_time,
            startup,
        } => tracing::info!(pid, ?load_time, ?startup, "standby worker ready"),
        LifecycleEvent::StandbyCrashed {
            pid,
            status,
            restart_in,
        } => tracing::warn!(pid, %status, ?restart_in, "standby worker crashed"),
        // Clients log and send these themselves; listed for completeness.
        LifecycleEvent::Resumed { .. } => {}
    }
    let _ = events.send(event);
}

/// Where a worker's start-up time went, from the "startup" event the worker logs when it
/// becomes ready. The phases add up to `process_to_ready`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StartupTimes {
    /// From the process's start to the worker's server object: the Python interpreter,
    /// the standard library and gRPC imports, binding the socket.
    pub interpreter: Duration,
    /// Importing MLX and mlx-lm (on the engine thread).
    pub imports: Duration,
    /// Loading the model (converting it first, if it was not cached).
    pub load: Duration,
    /// The warm-up generation.
    pub warmup: Duration,
    /// From the process's start to ready, as the worker measured it.
    pub process_to_ready: Duration,
}

impl StartupTimes {
    /// Reads the fields of the worker's "startup" event (`import_s`, `load_s`,
    /// `warmup_s`, `total_s`, `process_start_to_ready_s`); `None` if one is missing.
    pub(crate) fn from_fields(fields: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        let secs = |key: &str| {
            fields
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
        };
        let total = secs("total_s")?;
        let process_to_ready = secs("process_start_to_ready_s")?;
        let imports = secs("import_s")?;
        let load = secs("load_s")?;
        let warmup = secs("warmup_s")?;
        Some(StartupTimes {
            interpreter: process_to_ready.saturating_sub(total),
            imports,
            load,
            warmup,
            process_to_ready,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_times_come_from_the_startup_event() {
        let fields = serde_json::json!({"import_s": 1.0, "load_s": 0.5, "warmup_s": 0.25,
            "total_s": 2.0, "process_start_to_ready_s": 2.5, "model": "m"});
        let times = fields.as_object().and_then(StartupTimes::from_fields);
        assert_eq!(
            times,
            Some(StartupTimes {
                interpreter: Duration::from_millis(500),
                imports: Duration::from_secs(1),
                load: Duration::from_millis(500),
                warmup: Duration::from_millis(250),
                process_to_ready: Duration::from_millis(2500),
            })
        );
        assert_eq!(StartupTimes::from_fields(&serde_json::Map::new()), None);
    }
}
