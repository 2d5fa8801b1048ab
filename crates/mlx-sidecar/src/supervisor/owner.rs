//! The task that owns the worker process: a state machine with one function per phase.
//!
//! ```text
//!            ┌───────────── crash / not ready in time ──────────────┐
//!            v                                                      │
//!   Start ──ready──> Serve ──exit / health failures──> Crashed ──> Backoff ──> Start
//!     │                │                                  │
//!     └── shutdown ────┴──────────> Stop <── shutdown ────┴──> GaveUp (intensity limit)
//! ```
//!
//! Each phase waits on only what matters to it (the child's exit, the health probe or
//! start-up probe, the backoff timer, control messages) and returns the next phase.
//! Every change is published on the `watch` channel that clients read, and announced as a
//! [`LifecycleEvent`] (broadcast and `tracing`).
//!
//! With a standby (see `standby`), *ready* asks the keeper for one, and *crashed* takes it
//! instead of backing off: a standby that serves goes straight to *serve* (`Promoted`,
//! then `Ready`), one still starting to *await* (the second half of *start*). The
//! restart still counts against the intensity limit.

use std::{path::PathBuf, time::Duration};

use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    command::SharedSlot,
    events::{self, LifecycleEvent},
    liveness, priority,
    process::Worker,
    restart::{Decision, RestartTracker},
    socket::SocketPlace,
    standby::{self, Handover},
};
use crate::{
    Error,
    config::SupervisorConfig,
    worker::{ExitStatusInfo, GaveUpInfo, WorkerState, WorkerView, transport},
};

/// Messages from the [`crate::Supervisor`] handle to its owner task.
#[derive(Debug)]
pub(crate) enum Control {
    /// Drain and stop the worker, then answer.
    Shutdown { reply: oneshot::Sender<()> },
}

enum Phase {
    Start {
        attempt: u32,
    },
    /// A spawned worker (a promoted standby) that has not reported `SERVING` yet.
    Await(Worker),
    Serve(Worker),
    Crashed {
        worker: Worker,
        status: ExitStatusInfo,
    },
    Backoff {
        attempt: u32,
        delay: Duration,
    },
    GaveUp(GaveUpInfo),
    Stop(Option<Worker>),
    Done,
}

/// What ended a wait in the start or serve phase.
enum Wake<T> {
    Exited(ExitStatusInfo),
    Control(Option<Control>),
    Other(T),
}

pub(crate) struct Owner {
    pub(crate) config: SupervisorConfig,
    pub(crate) socket: SocketPlace,
    pub(crate) view: watch::Sender<WorkerView>,
    pub(crate) events: broadcast::Sender<LifecycleEvent>,
    pub(crate) slot: SharedSlot,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) restarts: RestartTracker,
    /// Told how the first spawn went, so `Supervisor::spawn` can fail at once.
    pub(crate) first_spawn: Option<oneshot::Sender<Result<(), Error>>>,
    pub(crate) generation: u64,
    pub(crate) shutdown_reply: Option<oneshot::Sender<()>>,
    /// The socket path the active worker uses (with a standby, one of two).
    pub(crate) active_socket: PathBuf,
    /// The standby keeper's commands, with [`SupervisorConfig::standby`].
    pub(crate) standby: Option<mpsc::UnboundedSender<standby::Command>>,
}

impl Owner {
    /// Runs the state machine until the supervisor stops.
    pub(crate) async fn run(mut self) {
        let mut phase = Phase::Start { attempt: 0 };
        loop {
            phase = match phase {
                Phase::Start { attempt } => self.start(attempt).await,
                Phase::Await(worker) => self.await_ready(worker).await,
                Phase::Serve(worker) => self.serve(worker).await,
                Phase::Crashed { worker, status } => self.crashed(worker, status).await,
                Phase::Backoff { attempt, delay } => self.backoff(attempt, delay).await,
                Phase::GaveUp(info) => self.gave_up(info).await,
                Phase::Stop(worker) => self.stop(worker).await,
                Phase::Done => break,
            };
        }
    }

    /// Spawns a worker and waits for it to report `SERVING` within the start-up window.
    async fn start(&mut self, attempt: u32) -> Phase {
        if let Err(e) = self.socket.claim(&self.active_socket) {
            return self.fail_to_start(e);
        }
        self.generation += 1;
        let generation = self.generation;
        let socket = self.active_socket.clone();
        self.view.send_modify(|v| {
            v.state = WorkerState::Starting;
            v.generation = generation;
            v.alive = false;
            v.pid = None;
            v.channel = None;
            v.socket = socket;
        });
        let worker = match Worker::spawn(&self.config, &self.active_socket, self.slot.clone()).await
        {
            Ok(worker) => worker,
            Err(Error::Stopped) => return Phase::Done,
            Err(e) if self.first_spawn.is_some() => return self.fail_to_start(e),
            Err(e) => return self.spawn_failed(e),
        };
        if let Some(first) = self.first_spawn.take() {
            let _ = first.send(Ok(()));
        }
        let pid = worker.pid;
        self.view.send_modify(|v| {
            v.alive = true;
            v.pid = Some(pid);
        });
        self.emit(LifecycleEvent::Starting { attempt, pid });
        self.await_ready(worker).await
    }

    /// Waits for a spawned worker to report `SERVING` within the start-up window (counted
    /// from its spawn).
    async fn await_ready(&mut self, mut worker: Worker) -> Phase {
        let pid = worker.pid;
        let ready = liveness::wait_serving(
            worker.health.clone(),
            worker.startup_hint.clone(),
            worker.socket.clone(),
            self.config.health_timeout,
        );
        let window = self
            .config
            .startup_timeout
            .saturating_sub(worker.spawned_at.elapsed());
        let wake = tokio::select! {
            status = worker.wait() => Wake::Exited(status),
            control = self.control.recv() => Wake::Control(control),
            ready = tokio::time::timeout(window, ready) => Wake::Other(ready.is_ok()),
        };
        match wake {
            Wake::Exited(status) => Phase::Crashed { worker, status },
            Wake::Control(control) => self.stop_requested(control, Some(worker)),
            Wake::Other(true) => self.ready(worker),
            Wake::Other(false) => {
                let reason = format!(
                    "not SERVING within the start-up window of {:?}",
                    self.config.startup_timeout
                );
                self.emit(LifecycleEvent::Unhealthy {
                    pid,
                    reason,
                    failures: 1,
                });
                let status = worker.terminate(self.config.shutdown_grace).await;
                Phase::Crashed { worker, status }
            }
        }
    }

    /// The worker reported `SERVING` (a promoted standby: earlier): publish its channel,
    /// and ask for a standby on the other path.
    fn ready(&mut self, mut worker: Worker) -> Phase {
        let now = Instant::now();
        let ready_at = *worker.ready_at.get_or_insert(now);
        worker.serving_since = Some(now);
        let load_time = ready_at.duration_since(worker.spawned_at);
        let channel = transport::uds_channel(worker.socket.clone());
        self.view.send_modify(|v| {
            v.state = WorkerState::Ready;
            v.channel = Some(channel);
        });
        self.emit(LifecycleEvent::Ready {
            pid: worker.pid,
            load_time,
            startup: worker.log.startup(),
        });
        if let (Some(keeper), Some(other)) = (&self.standby, self.socket.other(&worker.socket)) {
            let _ = keeper.send(standby::Command::Keep {
                socket: other.to_path_buf(),
            });
        }
        Phase::Serve(worker)
    }

    /// Probes a ready worker every `health_interval`; kills it after
    /// `health_failure_threshold` failures in a row (no answer within the deadline,
    /// `NOT_SERVING`, or its socket file gone). A crash is noticed at once.
    async fn serve(&mut self, mut worker: Worker) -> Phase {
        let mut liveness =
            liveness::Liveness::new(self.config.health_interval, self.config.health_timeout);
        let mut failures = 0u32;
        loop {
            let probe = liveness.next(worker.health.clone(), worker.socket.clone());
            let wake = tokio::select! {
                status = worker.wait() => Wake::Exited(status),
                control = self.control.recv() => Wake::Control(control),
                result = probe => Wake::Other(result),
            };
            match wake {
                Wake::Exited(status) => return Phase::Crashed { worker, status },
                Wake::Control(control) => return self.stop_requested(control, Some(worker)),
                Wake::Other(Ok(())) => {
                    if failures > 0 {
                        failures = 0;
                        tracing::info!(pid = worker.pid, "worker healthy again");
                        self.view.send_modify(|v| v.state = WorkerState::Ready);
                    }
                }
                Wake::Other(Err(reason)) => {
                    failures += 1;
                    self.view.send_modify(|v| v.state = WorkerState::Unhealthy);
                    self.emit(LifecycleEvent::Unhealthy {
                        pid: worker.pid,
                        reason,
                        failures,
                    });
                    if failures >= self.config.health_failure_threshold {
                        let grace = self.unresponsive_grace();
                        tracing::warn!(
                            pid = worker.pid,
                            failures,
                            ?grace,
                            "killing the unresponsive worker"
                        );
                        let status = worker.terminate(grace).await;
                        return Phase::Crashed { worker, status };
                    }
                }
            }
        }
    }

    /// How long an unresponsive worker gets to drain after SIGTERM: the shutdown grace, or
    /// with a standby waiting to take over at most one health timeout (a worker that failed
    /// its probes rarely finishes anything; the standby serves the callers meanwhile).
    fn unresponsive_grace(&self) -> Duration {
        let standby_waiting = self.standby.is_some() && self.view.borrow().standby_pid.is_some();
        if standby_waiting {
            self.config.shutdown_grace.min(self.config.health_timeout)
        } else {
            self.config.shutdown_grace
        }
    }

    /// The worker ended unasked: promote the standby, or restart after a backoff delay, or
    /// give up.
    async fn crashed(&mut self, worker: Worker, status: ExitStatusInfo) -> Phase {
        self.view.send_modify(|v| {
            v.alive = false;
            v.channel = None;
            v.last_status = Some(status);
        });
        self.emit(LifecycleEvent::Crashed {
            pid: worker.pid,
            status,
        });
        let served_for = worker.serving_since.map(|t| t.elapsed());
        match self.restarts.on_crash(served_for) {
            Decision::Restart { attempt, delay } => {
                if let Some(handover) = self.take_standby().await {
                    return self.promote(handover, attempt);
                }
                self.view
                    .send_modify(|v| v.state = WorkerState::Restarting { attempt });
                self.emit(LifecycleEvent::Restarting { attempt, delay });
                Phase::Backoff { attempt, delay }
            }
            Decision::GiveUp { reason } => Phase::GaveUp(GaveUpInfo {
                reason,
                last_status: Some(status),
                last_log: worker.log.snapshot(),
            }),
        }
    }

    /// The standby, if the keeper has one (it is idle afterwards either way). The keeper
    /// answers at once unless it is busy stopping an unhealthy standby; then there is
    /// none to take, and the wait is cut short after `health_timeout`.
    async fn take_standby(&mut self) -> Option<Handover> {
        let keeper = self.standby.as_ref()?;
        let (reply, answer) = oneshot::channel();
        keeper.send(standby::Command::Take { reply }).ok()?;
        match tokio::time::timeout(self.config.health_timeout, answer).await {
            Ok(answer) => answer.ok().flatten(),
            Err(_) => {
                tracing::warn!("the standby keeper is busy; restarting without a standby");
                None
            }
        }
    }

    /// Puts the standby in the dead worker's place: a new generation that calls go to as
    /// soon as it serves (at once, if it already does).
    fn promote(&mut self, handover: Handover, attempt: u32) -> Phase {
        let Handover { worker, ready } = handover;
        if worker.lowered
            && let Err(e) = priority::restore(worker.pid)
        {
            tracing::warn!(pid = worker.pid, error = %e, "cannot restore the promoted worker's CPU priority");
        }
        self.generation += 1;
        let generation = self.generation;
        self.active_socket = worker.socket.clone();
        let (pid, socket) = (worker.pid, worker.socket.clone());
        self.view.send_modify(|v| {
            v.state = WorkerState::Starting;
            v.generation = generation;
            v.alive = true;
            v.pid = Some(pid);
            v.channel = None;
            v.socket = socket;
        });
        self.emit(LifecycleEvent::Promoted {
            pid,
            attempt,
            was_ready: ready,
        });
        if ready {
            self.ready(worker)
        } else {
            Phase::Await(worker)
        }
    }

    /// Stops the standby keeper and its worker, if there is one.
    async fn stop_standby(&mut self) {
        if let Some(keeper) = self.standby.take() {
            let (reply, done) = oneshot::channel();
            if keeper.send(standby::Command::Stop { reply }).is_ok() {
                let _ = done.await;
            }
        }
    }

    /// A restart could not even spawn the process (say, `fork` failed for lack of
    /// memory): back off and try again like after a crash, within the same limits.
    fn spawn_failed(&mut self, error: Error) -> Phase {
        tracing::error!(error = %error, "cannot spawn the worker");
        match self.restarts.on_crash(None) {
            Decision::Restart { attempt, delay } => {
                self.view
                    .send_modify(|v| v.state = WorkerState::Restarting { attempt });
                self.emit(LifecycleEvent::Restarting { attempt, delay });
                Phase::Backoff { attempt, delay }
            }
            Decision::GiveUp { reason } => Phase::GaveUp(GaveUpInfo {
                reason: format!("{reason}; the last start failed: {error}"),
                last_status: self.view.borrow().last_status,
                last_log: Vec::new(),
            }),
        }
    }

    /// Waits out the backoff delay (a shutdown cuts it short).
    async fn backoff(&mut self, attempt: u32, delay: Duration) -> Phase {
        tokio::select! {
            () = tokio::time::sleep(delay) => Phase::Start { attempt },
            control = self.control.recv() => self.stop_requested(control, None),
        }
    }

    /// A start that cannot succeed by retrying (no interpreter at the first start, the
    /// socket taken by a live process).
    fn fail_to_start(&mut self, error: Error) -> Phase {
        let info = GaveUpInfo {
            reason: error.to_string(),
            last_status: None,
            last_log: Vec::new(),
        };
        if let Some(first) = self.first_spawn.take() {
            let _ = first.send(Err(error));
        }
        Phase::GaveUp(info)
    }

    /// No more restarts: every call now fails with the reason; wait for shutdown.
    async fn gave_up(&mut self, info: GaveUpInfo) -> Phase {
        tracing::error!(reason = %info.reason, last_log = ?info.last_log, "supervisor gave up on the worker");
        self.stop_standby().await;
        self.view.send_modify(|v| {
            v.state = WorkerState::GaveUp;
            v.alive = false;
            v.channel = None;
            v.gave_up = Some(info.clone());
        });
        let _ = self.events.send(LifecycleEvent::GaveUp {
            reason: info.reason,
            last_status: info.last_status,
            last_log: info.last_log,
        });
        let control = self.control.recv().await;
        self.stop_requested(control, None)
    }

    fn stop_requested(&mut self, control: Option<Control>, worker: Option<Worker>) -> Phase {
        match control {
            Some(Control::Shutdown { reply }) => self.shutdown_reply = Some(reply),
            None => tracing::debug!("supervisor handle dropped"),
        }
        Phase::Stop(worker)
    }

    /// Drains the worker (SIGTERM; it finishes in-flight work within the grace) and stops
    /// the standby meanwhile, then kills what is left and removes the socket.
    async fn stop(&mut self, worker: Option<Worker>) -> Phase {
        self.view.send_modify(|v| {
            if v.state != WorkerState::GaveUp {
                v.state = WorkerState::Stopping;
            }
            v.channel = None;
        });
        let grace = self.config.shutdown_grace;
        let active = async {
            match worker {
                Some(mut worker) => {
                    let status = worker.terminate(grace).await;
                    tracing::info!(pid = worker.pid, %status, "worker stopped");
                    Some(status)
                }
                None => None,
            }
        };
        let (status, ()) = tokio::join!(active, self.stop_standby());
        if let Some(status) = status {
            self.view.send_modify(|v| v.last_status = Some(status));
        }
        self.view.send_modify(|v| {
            if v.state != WorkerState::GaveUp {
                v.state = WorkerState::Stopped;
            }
            v.alive = false;
        });
        self.socket.cleanup_target().run();
        self.emit(LifecycleEvent::Stopped);
        if let Some(reply) = self.shutdown_reply.take() {
            let _ = reply.send(());
        }
        Phase::Done
    }

    /// Broadcasts `event` and logs it.
    fn emit(&self, event: LifecycleEvent) {
        events::announce(&self.events, event);
    }
}
