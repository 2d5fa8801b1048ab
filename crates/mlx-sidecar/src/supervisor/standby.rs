//! The standby worker (only with [`crate::SupervisorConfig::standby`]): a task of its own
//! keeps a second worker loaded and idle on the socket path the active worker does not
//! use, so that the owner can put it in the dead active worker's place at once.
//!
//! ```text
//!   Idle ──Keep──> Start ──spawned──> Warm ──SERVING──> Serve (idle, health-probed)
//!    ^                                  │                  │
//!    │                    exit / not ready in time   exit / health failures
//!    │                                  v                  v
//!    │                               Crashed ──> Backoff ──> Start
//!    └── Take: the standby (serving or still starting) is handed over, or nothing
//! ```
//!
//! The owner sends `Keep` once its active worker is ready, `Take` when the active worker
//! died, and `Stop` at shutdown. After `Take` the keeper is idle until the next `Keep`, so
//! the owner may use the other path for a fresh start meanwhile. Standby crashes are
//! restarted under their own [`RestartTracker`] (the same policy), so they never count
//! against the active worker's restart intensity; past their own limit the supervisor runs
//! on without a standby. Every spawn goes through the same spawner as the active worker's
//! (own process group, parent-death signal, stdin pipe, clean environment, log capture),
//! and its process group joins the shared slot that `Drop` kills.

use std::path::PathBuf;

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
    socket,
};
use crate::{
    Error,
    config::SupervisorConfig,
    worker::{ExitStatusInfo, WorkerView, transport},
};

/// Messages from the owner task to the keeper.
#[derive(Debug)]
pub(crate) enum Command {
    /// The active worker serves on the other path: keep a standby ready on `socket`.
    Keep { socket: PathBuf },
    /// The active worker died: hand over the standby, if there is one.
    Take {
        reply: oneshot::Sender<Option<Handover>>,
    },
    /// Stop the standby, then answer.
    Stop { reply: oneshot::Sender<()> },
}

/// A standby handed over to the owner.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) worker: Worker,
    /// Whether it had reported `SERVING` (else it is still starting).
    pub(crate) ready: bool,
}

enum Phase {
    Idle,
    Start {
        attempt: u32,
        socket: PathBuf,
    },
    Warm(Worker),
    Serve(Worker),
    Crashed {
        worker: Worker,
        status: ExitStatusInfo,
    },
    Backoff {
        attempt: u32,
        until: Instant,
        socket: PathBuf,
    },
    /// A standby offered to an owner that no longer waited for it: stop it, then idle.
    Retire(Worker),
    Stop {
        worker: Option<Worker>,
        reply: Option<oneshot::Sender<()>>,
    },
    Done,
}

/// What ended a wait while a standby runs.
enum Wake {
    Exited(ExitStatusInfo),
    Command(Option<Command>),
    Probe(Result<(), String>),
}

/// The keeper task's state.
pub(crate) struct Keeper {
    pub(crate) config: SupervisorConfig,
    pub(crate) slot: SharedSlot,
    pub(crate) view: watch::Sender<WorkerView>,
    pub(crate) events: broadcast::Sender<LifecycleEvent>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) restarts: RestartTracker,
    /// Standby crashes hit the restart intensity limit: no more standbys.
    pub(crate) gave_up: bool,
}

impl Keeper {
    /// Runs until stopped (or until the owner is gone).
    pub(crate) async fn run(mut self) {
        let mut phase = Phase::Idle;
        loop {
            phase = match phase {
                Phase::Idle => self.idle().await,
                Phase::Start { attempt, socket } => self.start(attempt, socket).await,
                Phase::Warm(worker) => self.warm(worker).await,
                Phase::Serve(worker) => self.serve(worker).await,
                Phase::Crashed { worker, status } => self.crashed(&worker, status),
                Phase::Backoff {
                    attempt,
                    until,
                    socket,
                } => self.backoff(attempt, until, socket).await,
                Phase::Retire(worker) => self.retire(worker).await,
                Phase::Stop { worker, reply } => self.stop(worker, reply).await,
                Phase::Done => break,
            };
        }
    }

    /// No standby: wait for the owner to want one.
    async fn idle(&mut self) -> Phase {
        match self.commands.recv().await {
            Some(Command::Keep { socket }) if !self.gave_up => Phase::Start { attempt: 0, socket },
            Some(Command::Keep { .. }) => Phase::Idle,
            other => self.command(other, None),
        }
    }

    /// Spawns a standby on `socket`.
    async fn start(&mut self, attempt: u32, socket: PathBuf) -> Phase {
        let spawned = match socket::claim(&socket) {
            Ok(()) => {
                let nice = priority::standby_nice();
                Worker::spawn_at(&self.config, &socket, self.slot.clone(), nice).await
            }
            Err(e) => Err(e),
        };
        match spawned {
            Ok(worker) => {
                let pid = worker.pid;
                self.view.send_modify(|v| v.standby_pid = Some(pid));
                self.emit(LifecycleEvent::StandbyStarting { attempt, pid });
                Phase::Warm(worker)
            }
            Err(Error::Stopped) => Phase::Done,
            Err(error) => {
                tracing::error!(error = %error, "cannot spawn the standby worker");
                self.restart(None, None, socket)
            }
        }
    }

    /// Waits for the standby to report `SERVING` within the start-up window.
    async fn warm(&mut self, mut worker: Worker) -> Phase {
        let window = self
            .config
            .startup_timeout
            .saturating_sub(worker.spawned_at.elapsed());
        let ready = liveness::wait_serving(
            worker.health.clone(),
            worker.startup_hint.clone(),
            worker.socket.clone(),
            self.config.health_timeout,
        );
        tokio::pin!(ready);
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        loop {
            let wake = tokio::select! {
                status = worker.wait() => Wake::Exited(status),
                command = self.commands.recv() => Wake::Command(command),
                () = &mut ready => Wake::Probe(Ok(())),
                () = &mut deadline => Wake::Probe(Err(format!(
                    "not SERVING within the start-up window of {:?}",
                    self.config.startup_timeout
                ))),
            };
            match wake {
                Wake::Exited(status) => return Phase::Crashed { worker, status },
                Wake::Command(Some(Command::Keep { .. })) => {}
                Wake::Command(command) => return self.command(command, Some((worker, false))),
                Wake::Probe(Ok(())) => {
                    let now = Instant::now();
                    worker.ready_at = Some(now);
                    // Before the announcement: whoever hears it finds the priority set.
                    if self.config.shadow_prefill {
                        self.offer_for_shadows(&mut worker);
                    }
                    self.emit(LifecycleEvent::StandbyReady {
                        pid: worker.pid,
                        load_time: now.duration_since(worker.spawned_at),
                        startup: worker.log.startup(),
                    });
                    return Phase::Serve(worker);
                }
                Wake::Probe(Err(reason)) => {
                    tracing::warn!(pid = worker.pid, %reason, "standby worker not ready; killing it");
                    let status = worker.terminate(self.config.shutdown_grace).await;
                    return Phase::Crashed { worker, status };
                }
            }
        }
    }

    /// Probes the idle standby like the active worker; kills it after
    /// `health_failure_threshold` failures in a row.
    async fn serve(&mut self, mut worker: Worker) -> Phase {
        let mut liveness =
            liveness::Liveness::new(self.config.health_interval, self.config.health_timeout);
        let mut failures = 0u32;
        loop {
            let probe = liveness.next(worker.health.clone(), worker.socket.clone());
            let wake = tokio::select! {
                status = worker.wait() => Wake::Exited(status),
                command = self.commands.recv() => Wake::Command(command),
                result = probe => Wake::Probe(result),
            };
            match wake {
                Wake::Exited(status) => return Phase::Crashed { worker, status },
                Wake::Command(Some(Command::Keep { .. })) => {}
                Wake::Command(command) => return self.command(command, Some((worker, true))),
                Wake::Probe(Ok(())) => failures = 0,
                Wake::Probe(Err(reason)) => {
                    failures += 1;
                    tracing::warn!(pid = worker.pid, failures, %reason, "standby worker unhealthy");
                    if failures >= self.config.health_failure_threshold {
                        let status = worker.terminate(self.config.shutdown_grace).await;
                        return Phase::Crashed { worker, status };
                    }
                }
            }
        }
    }

    /// The standby ended: start another after its backoff delay, or give up on standbys.
    fn crashed(&mut self, worker: &Worker, status: ExitStatusInfo) -> Phase {
        self.forget_standby();
        let served_for = worker.ready_at.map(|t| t.elapsed());
        self.restart(
            served_for,
            Some((worker.pid, status)),
            worker.socket.clone(),
        )
    }

    /// Asks the restart policy what follows a standby's crash (`crash`: its pid and
    /// status; `None` when it could not even be spawned).
    fn restart(
        &mut self,
        served_for: Option<std::time::Duration>,
        crash: Option<(u32, ExitStatusInfo)>,
        socket: PathBuf,
    ) -> Phase {
        let decision = self.restarts.on_crash(served_for);
        let restart_in = match &decision {
            Decision::Restart { delay, .. } => Some(*delay),
            Decision::GiveUp { .. } => None,
        };
        if let Some((pid, status)) = crash {
            self.emit(LifecycleEvent::StandbyCrashed {
                pid,
                status,
                restart_in,
            });
        }
        match decision {
            Decision::Restart { attempt, delay } => Phase::Backoff {
                attempt,
                until: Instant::now() + delay,
                socket,
            },
            Decision::GiveUp { reason } => {
                tracing::error!(%reason, "no more standby workers; the active worker carries on alone");
                self.gave_up = true;
                Phase::Idle
            }
        }
    }

    /// Waits out a standby's backoff delay.
    async fn backoff(&mut self, attempt: u32, until: Instant, socket: PathBuf) -> Phase {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Phase::Start { attempt, socket },
                command = self.commands.recv() => match command {
                    Some(Command::Keep { .. }) => {}
                    other => return self.command(other, None),
                },
            }
        }
    }

    /// `Take`, `Stop` or a closed channel, with the standby `held` (and whether it serves).
    fn command(&mut self, command: Option<Command>, held: Option<(Worker, bool)>) -> Phase {
        match command {
            Some(Command::Take { reply }) => {
                self.forget_standby();
                let handover = held.map(|(worker, ready)| Handover { worker, ready });
                match reply.send(handover) {
                    Ok(()) | Err(None) => Phase::Idle,
                    // The owner stopped waiting (or is gone): stop what was offered.
                    Err(Some(handover)) => Phase::Retire(handover.worker),
                }
            }
            Some(Command::Stop { reply }) => Phase::Stop {
                worker: held.map(|(worker, _)| worker),
                reply: Some(reply),
            },
            None => Phase::Stop {
                worker: held.map(|(worker, _)| worker),
                reply: None,
            },
            Some(Command::Keep { socket }) => match held {
                // Not sent while a standby runs; keep the one there is.
                Some((worker, true)) => Phase::Serve(worker),
                Some((worker, false)) => Phase::Warm(worker),
                None => Phase::Start { attempt: 0, socket },
            },
        }
    }

    /// Stops a standby nobody took, and waits for the next command.
    async fn retire(&mut self, mut worker: Worker) -> Phase {
        let status = worker.terminate(self.config.shutdown_grace).await;
        tracing::info!(pid = worker.pid, %status, "standby worker not taken; stopped");
        Phase::Idle
    }

    /// Stops the standby (SIGTERM: it is idle, so it exits at once; then the grace, then
    /// SIGKILL to its group) and answers.
    async fn stop(&mut self, worker: Option<Worker>, reply: Option<oneshot::Sender<()>>) -> Phase {
        if let Some(mut worker) = worker {
            let status = worker.terminate(self.config.shutdown_grace).await;
            tracing::info!(pid = worker.pid, %status, "standby worker stopped");
        }
        self.forget_standby();
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        Phase::Done
    }

    /// The standby serves: streams may shadow their prompts on it (see
    /// `client::shadow`). Its start-up ran at the low priority; its shadows run at the
    /// normal one, since at the low one a busy CPU leaves them no time (measured:
    /// CHAOS.md, "Shadow prefill on the standby").
    fn offer_for_shadows(&self, worker: &mut Worker) {
        if worker.lowered {
            match priority::restore(worker.pid) {
                Ok(()) => worker.lowered = false,
                Err(e) => {
                    tracing::warn!(pid = worker.pid, error = %e, "cannot restore the standby's CPU priority");
                }
            }
        }
        let channel = transport::uds_channel(worker.socket.clone());
        self.view.send_modify(|v| v.standby_channel = Some(channel));
    }

    /// No standby any more (crashed, handed over or stopped): clients stop shadowing.
    fn forget_standby(&self) {
        self.view.send_modify(|v| {
            v.standby_pid = None;
            v.standby_channel = None;
        });
    }

    /// Broadcasts `event` and logs it.
    fn emit(&self, event: LifecycleEvent) {
        events::announce(&self.events, event);
    }
}
