//! What the supervisor tells the outside world: its [`WorkerState`], the
//! [`LifecycleEvent`]s it broadcasts, and (crate-internal) the [`WorkerView`] that clients
//! watch to find the current worker's channel.

use std::{
    fmt, os::unix::process::ExitStatusExt, path::PathBuf, process::ExitStatus, time::Duration,
};

use tokio::sync::broadcast;
use tonic::transport::Channel;

/// The supervisor's state, as [`crate::Supervisor::state`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// A worker process is starting and has not reported `SERVING` yet.
    Starting,
    /// The worker reports `SERVING`; calls go to it.
    Ready,
    /// The worker's last health check failed (it is killed and restarted after
    /// `health_failure_threshold` failures in a row). Calls still go to it.
    Unhealthy,
    /// The worker died; a new one starts after the backoff delay.
    Restarting {
        /// Which restart this is (1 for the first).
        attempt: u32,
    },
    /// The supervisor is draining the worker after [`crate::Supervisor::shutdown`].
    Stopping,
    /// The supervisor stopped; no worker runs.
    Stopped,
    /// The worker crashed more often than the restart policy allows; no worker runs and
    /// every call fails with [`crate::Error::GaveUp`].
    GaveUp,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerState::Starting => f.write_str("starting"),
            WorkerState::Ready => f.write_str("ready"),
            WorkerState::Unhealthy => f.write_str("unhealthy"),
            WorkerState::Restarting { attempt } => write!(f, "restarting (attempt {attempt})"),
            WorkerState::Stopping => f.write_str("stopping"),
            WorkerState::Stopped => f.write_str("stopped"),
            WorkerState::GaveUp => f.write_str("gave up"),
        }
    }
}

/// How a worker process ended: an exit code or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatusInfo {
    /// The exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// The signal number, when a signal killed the process.
    pub signal: Option<i32>,
}

impl ExitStatusInfo {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<ExitStatus> for ExitStatusInfo {
    fn from(status: ExitStatus) -> Self {
        ExitStatusInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for ExitStatusInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

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

/// Why the supervisor gave up, kept for the errors of later calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GaveUpInfo {
    pub(crate) reason: String,
    pub(crate) last_status: Option<ExitStatusInfo>,
    pub(crate) last_log: Vec<String>,
}

impl GaveUpInfo {
    pub(crate) fn to_error(&self) -> crate::Error {
        crate::Error::GaveUp {
            reason: self.reason.clone(),
            last_status: self.last_status.map(|s| s.to_string()),
            last_log: self.last_log.clone(),
        }
    }
}

/// The supervisor's current worker as clients see it (through a `watch` channel).
#[derive(Debug, Clone)]
pub(crate) struct WorkerView {
    pub(crate) state: WorkerState,
    /// Counts spawned worker processes; a call remembers the generation it talks to.
    pub(crate) generation: u64,
    /// Whether that generation's process is still running.
    pub(crate) alive: bool,
    pub(crate) pid: Option<u32>,
    /// The channel to the worker, once it has reported `SERVING`.
    pub(crate) channel: Option<Channel>,
    /// How the last worker process ended.
    pub(crate) last_status: Option<ExitStatusInfo>,
    pub(crate) gave_up: Option<GaveUpInfo>,
    /// The socket of the current (active) worker.
    pub(crate) socket: PathBuf,
    /// The standby worker's process id, while one runs.
    pub(crate) standby_pid: Option<u32>,
}

impl WorkerView {
    pub(crate) fn initial(socket: PathBuf) -> Self {
        WorkerView {
            state: WorkerState::Starting,
            generation: 0,
            alive: false,
            pid: None,
            channel: None,
            last_status: None,
            gave_up: None,
            socket,
            standby_pid: None,
        }
    }

    /// A channel calls may use now (the worker served once and still runs).
    pub(crate) fn usable_channel(&self) -> Option<&Channel> {
        match self.state {
            WorkerState::Ready | WorkerState::Unhealthy if self.alive => self.channel.as_ref(),
            _ => None,
        }
    }

    /// No worker will come any more.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(
            self.state,
            WorkerState::GaveUp | WorkerState::Stopped | WorkerState::Stopping
        )
    }

    /// The error a call gets when the view is terminal.
    pub(crate) fn terminal_error(&self) -> crate::Error {
        match &self.gave_up {
            Some(info) => info.to_error(),
            None => crate::Error::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_says_code_or_signal() {
        let code = ExitStatusInfo {
            code: Some(3),
            signal: None,
        };
        assert_eq!(code.to_string(), "exit code 3");
        let killed = ExitStatusInfo {
            code: None,
            signal: Some(9),
        };
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
    }

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
