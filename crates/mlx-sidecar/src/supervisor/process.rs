//! One running worker process, owned by the supervisor's task: the child, its held-open
//! stdin, its output readers, and the ways to stop it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    process::{Child, ChildStdin},
    sync::Notify,
    task::JoinHandle,
    time::Instant,
};
use tonic::transport::Channel;

use super::{
    command::{self, SharedSlot},
    logs::{self, LogTail},
};
use crate::{
    Error,
    config::SupervisorConfig,
    worker::{ExitStatusInfo, transport},
};

/// A spawned worker.
#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    pub(crate) pid: u32,
    /// The socket it binds.
    pub(crate) socket: PathBuf,
    pub(crate) spawned_at: Instant,
    /// When it first reported `SERVING`.
    pub(crate) ready_at: Option<Instant>,
    /// When it began to take calls as the active worker (for a standby, its promotion).
    pub(crate) serving_since: Option<Instant>,
    /// Held open, never written: the worker exits on EOF if the supervisor vanishes.
    _stdin: Option<ChildStdin>,
    stderr_reader: Option<JoinHandle<()>>,
    pub(crate) log: LogTail,
    /// Woken when the worker logs that it listens or is ready.
    pub(crate) startup_hint: Arc<Notify>,
    /// A channel used only for health probes, so that probes never queue behind calls.
    pub(crate) health: Channel,
    /// Its exit status once reaped.
    exited: Option<ExitStatusInfo>,
    slot: SharedSlot,
    /// Started at a lower CPU priority (a standby): restored at its promotion.
    pub(crate) lowered: bool,
}

impl Worker {
    /// Spawns a worker on the socket `socket`.
    pub(crate) async fn spawn(
        config: &SupervisorConfig,
        socket: &std::path::Path,
        slot: SharedSlot,
    ) -> Result<Worker, Error> {
        Self::spawn_at(config, socket, slot, None).await
    }

    /// Spawns a worker on the socket `socket`, at the nice value `nice` when given (a
    /// standby; see `priority`).
    pub(crate) async fn spawn_at(
        config: &SupervisorConfig,
        socket: &std::path::Path,
        slot: SharedSlot,
        nice: Option<i32>,
    ) -> Result<Worker, Error> {
        let mut cmd = command::build(&config.worker, socket);
        if let Some(nice) = nice {
            command::lower_priority(&mut cmd, nice);
        }
        let mut child = command::spawn(cmd, config.worker.python.clone(), slot.clone()).await?;
        let pid = child.id().unwrap_or_default();
        let log = LogTail::new(config.log_tail_lines);
        let startup_hint = Arc::new(Notify::new());
        let stderr_reader = child.stderr.take().map(|stderr| {
            logs::spawn_stderr_reader(stderr, pid, log.clone(), startup_hint.clone())
        });
        if let Some(stdout) = child.stdout.take() {
            logs::spawn_stdout_reader(stdout, pid);
        }
        Ok(Worker {
            _stdin: child.stdin.take(),
            child,
            pid,
            socket: socket.to_path_buf(),
            spawned_at: Instant::now(),
            ready_at: None,
            serving_since: None,
            stderr_reader,
            log,
            startup_hint,
            health: transport::uds_channel(socket.to_path_buf()),
            exited: None,
            slot,
            lowered: nice.is_some(),
        })
    }

    /// Waits for the process to exit (cancel-safe) and reaps it.
    pub(crate) async fn wait(&mut self) -> ExitStatusInfo {
        if let Some(status) = self.exited {
            return status;
        }
        let status = match self.child.wait().await {
            Ok(status) => ExitStatusInfo::from(status),
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot wait for the worker");
                ExitStatusInfo {
                    code: None,
                    signal: None,
                }
            }
        };
        self.exited = Some(status);
        self.after_exit().await;
        status
    }

    /// After the worker itself exited: kill whatever is left of its process group, forget
    /// the group, and let the stderr reader finish so the log tail is complete.
    async fn after_exit(&mut self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        if let Ok(mut slot) = self.slot.lock() {
            let pgid = self.pgid().as_raw();
            slot.pgids.retain(|&p| p != pgid);
        }
        if let Some(reader) = self.stderr_reader.take() {
            // EOF comes once every holder of the pipe exited; don't wait for strays.
            let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
        }
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    /// Stops a worker that may be hung or stopped: SIGTERM and SIGCONT to the group, up to
    /// `grace` to exit, then SIGKILL to the group. Returns how it ended.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> ExitStatusInfo {
        if self.exited.is_none() {
            let _ = killpg(self.pgid(), Signal::SIGTERM);
            let _ = killpg(self.pgid(), Signal::SIGCONT);
        }
        self.wait_or_kill(grace).await
    }

    /// Waits up to `grace` for the worker to exit, then SIGKILLs its group.
    pub(crate) async fn wait_or_kill(&mut self, grace: Duration) -> ExitStatusInfo {
        if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
            return status;
        }
        tracing::warn!(
            pid = self.pid,
            ?grace,
            "worker did not exit within its grace period; killing it"
        );
        if self.exited.is_none() {
            let _ = killpg(self.pgid(), Signal::SIGKILL);
        }
        self.wait().await
    }
}
