//! The supervisor: one task owns the worker process; [`Supervisor`] is the handle.
//!
//! - `command` builds the worker's command line and spawns it (clean environment, own
//!   process group, parent-death signal from a dedicated spawner thread);
//! - `socket` picks and claims the socket path (private directory, stale socket removal);
//! - `process` is one running worker and the ways to stop it;
//! - `logs` turns the worker's JSON log lines into `tracing` events and keeps a tail;
//! - `liveness` probes a running worker (socket file, then `grpc.health.v1`) and waits for a
//!   starting one to serve;
//! - `restart` applies the [`crate::RestartPolicy`];
//! - `owner` is the task: a state machine with one function per phase;
//! - `standby` is a second task, only with [`SupervisorConfig::standby`]: it keeps an idle
//!   standby worker loaded and hands it to `owner` when the active worker dies;
//! - `events` is what the outside hears: [`LifecycleEvent`], [`StartupTimes`].
//!
//! The owner publishes the current worker through [`crate::worker`]'s `WorkerView`; clients
//! made by [`Supervisor::client`] read it there, so this module and the client never import
//! each other beyond that constructor.

mod command;
mod events;
mod liveness;
mod logs;
mod owner;
mod process;
mod restart;
mod socket;
mod standby;

use std::{path::PathBuf, sync::Arc, time::Duration};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};

pub use events::{LifecycleEvent, StartupTimes};

use crate::{
    Client, Error,
    config::SupervisorConfig,
    worker::{ExitStatusInfo, WorkerState, WorkerView},
};
use command::{ProcessSlot, SharedSlot};
use owner::{Control, Owner};
use restart::RestartTracker;
use socket::{Cleanup, SocketPlace};
use standby::Keeper;

/// Keeps one MLX worker process running; see the [crate docs](crate) for how.
///
/// Dropping the supervisor kills the worker's process group (and the standby's, if any) at
/// once (SIGKILL) and removes the socket directory; [`Supervisor::shutdown`] stops it
/// gracefully instead.
#[derive(Debug)]
pub struct Supervisor {
    control: mpsc::Sender<Control>,
    view: watch::Receiver<WorkerView>,
    /// Lets `Drop` tell clients that no worker will come, even though it aborts the task.
    view_tx: watch::Sender<WorkerView>,
    events: broadcast::Sender<LifecycleEvent>,
    slot: SharedSlot,
    task: Option<JoinHandle<()>>,
    /// The standby keeper's task, with [`SupervisorConfig::standby`].
    standby_task: Option<JoinHandle<()>>,
    socket_dir: PathBuf,
    cleanup: Cleanup,
    /// Streams resumed by this supervisor's clients (shared with them).
    resumes: Arc<std::sync::atomic::AtomicU64>,
}

impl Supervisor {
    /// Starts supervising: prepares the socket, spawns the worker and returns without
    /// waiting for it to be ready (see [`Supervisor::wait_ready`]; calls wait by themselves).
    ///
    /// Fails when the socket path cannot be used or the interpreter cannot be started.
    pub async fn spawn(config: SupervisorConfig) -> Result<Supervisor, Error> {
        let socket = SocketPlace::prepare(&config)?;
        let socket_path = socket.path().to_path_buf();
        let socket_dir = socket.dir();
        let cleanup = socket.cleanup_target();
        let (view_tx, view_rx) = watch::channel(WorkerView::initial(socket_path.clone()));
        let (events, _) = broadcast::channel(256);
        let (control_tx, control_rx) = mpsc::channel(8);
        let (first_tx, first_rx) = oneshot::channel();
        let slot: SharedSlot = Arc::new(std::sync::Mutex::new(ProcessSlot::default()));
        let (standby, standby_task) = if config.standby {
            let (commands_tx, commands) = mpsc::unbounded_channel();
            let keeper = Keeper {
                config: config.clone(),
                slot: slot.clone(),
                view: view_tx.clone(),
                events: events.clone(),
                commands,
                restarts: RestartTracker::new(config.restart.clone()),
                gave_up: false,
            };
            (Some(commands_tx), Some(tokio::spawn(keeper.run())))
        } else {
            (None, None)
        };
        let owner = Owner {
            restarts: RestartTracker::new(config.restart.clone()),
            config,
            socket,
            view: view_tx.clone(),
            events: events.clone(),
            slot: slot.clone(),
            control: control_rx,
            first_spawn: Some(first_tx),
            generation: 0,
            shutdown_reply: None,
            active_socket: socket_path,
            standby,
        };
        let supervisor = Supervisor {
            control: control_tx,
            view: view_rx,
            view_tx,
            events,
            slot,
            task: Some(tokio::spawn(owner.run())),
            standby_task,
            socket_dir,
            cleanup,
            resumes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        match first_rx.await {
            Ok(Ok(())) => Ok(supervisor),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Stopped),
        }
    }

    /// Waits until the worker reports `SERVING`, for at most `timeout`.
    ///
    /// Fails with [`Error::GaveUp`] if the supervisor gave up, [`Error::NotReady`] on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut view = self.view.clone();
        let started = tokio::time::Instant::now();
        let outcome = {
            let waited = tokio::time::timeout(
                timeout,
                view.wait_for(|v| v.usable_channel().is_some() || v.is_terminal()),
            )
            .await;
            match waited {
                Err(_) => None,
                Ok(Err(_)) => Some(Err(Error::Stopped)),
                Ok(Ok(v)) if v.is_terminal() => Some(Err(v.terminal_error())),
                Ok(Ok(_)) => Some(Ok(())),
            }
        };
        outcome.unwrap_or_else(|| {
            Err(Error::NotReady {
                waited: started.elapsed(),
                state: view.borrow().state.to_string(),
            })
        })
    }

    /// A client that always talks to the current worker (cheap; clone freely).
    pub fn client(&self) -> Client {
        Client::supervised(self.view.clone(), self.events.clone(), self.resumes.clone())
    }

    /// How many generation streams of this supervisor's clients were resumed on another
    /// worker after the one serving them died (see [`crate::GenerateRequest::max_resumes`]).
    pub fn resumes(&self) -> u64 {
        self.resumes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lifecycle events from now on. A receiver that falls more than 256 events behind
    /// loses the oldest ones.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    /// The supervisor's state now.
    pub fn state(&self) -> WorkerState {
        self.view.borrow().state.clone()
    }

    /// The running (active) worker's process id: the one calls go to.
    pub fn worker_pid(&self) -> Option<u32> {
        let view = self.view.borrow();
        if view.alive { view.pid } else { None }
    }

    /// The standby worker's process id, while one runs (starting or serving), with
    /// [`SupervisorConfig::standby`]; it gets no calls until it takes over.
    pub fn standby_pid(&self) -> Option<u32> {
        self.view.borrow().standby_pid
    }

    /// How the last worker process ended, if one has.
    pub fn last_exit(&self) -> Option<ExitStatusInfo> {
        self.view.borrow().last_status
    }

    /// The active worker's socket path. With a standby there are two paths in the
    /// socket directory, and this one changes when the standby takes over.
    pub fn socket_path(&self) -> PathBuf {
        self.view.borrow().socket.clone()
    }

    /// The directory holding the socket (the supervisor's private directory, unless
    /// `socket_path` was configured).
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir.clone()
    }

    /// Stops gracefully: the worker gets SIGTERM and finishes in-flight requests within
    /// its grace period (then it is killed), and the socket directory is removed.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        if self
            .control
            .send(Control::Shutdown { reply: reply_tx })
            .await
            .is_ok()
        {
            let _ = reply_rx.await;
        }
        for task in [self.task.take(), self.standby_task.take()]
            .into_iter()
            .flatten()
        {
            task.await.map_err(|e| {
                Error::io(
                    "the supervisor task failed",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.closed = true;
            for pgid in slot.pgids.drain(..) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        for task in [self.task.take(), self.standby_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        self.view_tx.send_modify(|v| {
            if v.state != WorkerState::GaveUp {
                v.state = WorkerState::Stopped;
            }
            v.alive = false;
            v.channel = None;
        });
        self.cleanup.run();
    }
}
