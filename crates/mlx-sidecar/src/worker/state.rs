//! What the supervisor publishes about its worker, and what clients read to find it: the
//! [`WorkerView`] carried by a `watch` channel (one tonic channel per worker generation),
//! the public [`WorkerState`], and how the last worker process ended ([`ExitStatusInfo`]).

use std::{fmt, os::unix::process::ExitStatusExt, path::PathBuf, process::ExitStatus};

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
    /// A channel to the standby while it serves (idle), when streams shadow their prompts
    /// there (`SupervisorConfig::shadow_prefill`).
    pub(crate) standby_channel: Option<Channel>,
    /// Whether streams shadow their prompts on this replica's standbys (a standby is
    /// configured, with `SupervisorConfig::shadow_prefill`).
    pub(crate) shadow_prefill: bool,
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
            standby_channel: None,
            shadow_prefill: false,
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
}
