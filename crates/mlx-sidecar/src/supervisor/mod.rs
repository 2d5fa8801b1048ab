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
//! - `priority` starts a standby at a lower CPU priority and gives it back at its promotion;
//! - `events` is what the outside hears: [`LifecycleEvent`], [`StartupTimes`];
//! - `replica` is one owner task (and its standby keeper) with its socket; [`Supervisor`]
//!   runs [`SupervisorConfig::replicas`] of them, each with its own restart policy, health
//!   probes and (with [`SupervisorConfig::replica_devices`]) device.
//!
//! Each replica's owner publishes its current worker through [`crate::worker`]'s
//! `WorkerView`; clients made by [`Supervisor::client`] read all of them there (and pick
//! the least loaded ready replica per call), so this module and the client never import
//! each other beyond that constructor.

mod command;
mod events;
mod liveness;
mod logs;
mod owner;
mod priority;
mod process;
mod replica;
mod restart;
mod socket;
mod standby;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::{broadcast, watch};

pub use events::{LifecycleEvent, StartupTimes};

use crate::{
    Client, Error,
    client::StreamCounts,
    config::SupervisorConfig,
    worker::{ExitStatusInfo, Member, Replicas, WorkerState, WorkerView, pool_state},
};
use replica::Replica;

/// Keeps one MLX worker process running (or, with [`SupervisorConfig::replicas`], one per
/// replica); see the [crate docs](crate) for how.
///
/// Dropping the supervisor kills the workers' process groups (and the standbys', if any) at
/// once (SIGKILL) and removes the socket directories; [`Supervisor::shutdown`] stops them
/// gracefully instead.
#[derive(Debug)]
pub struct Supervisor {
    replicas: Vec<Replica>,
    /// The replicas' views and in-flight counters, shared with every client.
    pool: Replicas,
    events: broadcast::Sender<LifecycleEvent>,
    /// What this supervisor's clients' streams counted (shared with them).
    counts: Arc<StreamCounts>,
}

/// One replica as [`Supervisor::replicas`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The replica's index, from 0.
    pub index: usize,
    /// Its state.
    pub state: WorkerState,
    /// Its active worker's process id, while one runs.
    pub pid: Option<u32>,
    /// Its standby's process id, while one runs.
    pub standby_pid: Option<u32>,
    /// Its active worker's socket.
    pub socket: PathBuf,
    /// How its last worker process ended, if one has.
    pub last_exit: Option<ExitStatusInfo>,
    /// Calls in flight on it now (from this supervisor's clients).
    pub in_flight: usize,
    /// Workers started in its place after the first (restarts and standby takeovers).
    pub restarts: u64,
    /// The device it is pinned to (`CUDA_VISIBLE_DEVICES`), if any.
    pub device: Option<String>,
}

/// Reads each replica's status; made by [`Supervisor::monitor`], cheap to clone. After the
/// supervisor is gone every replica reads as stopped.
#[derive(Debug, Clone)]
pub struct ReplicaMonitor {
    pool: Replicas,
    devices: Vec<Option<String>>,
}

impl ReplicaMonitor {
    /// Each replica's state, worker, socket and load now.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.pool
            .members()
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let view = member.view.borrow();
                ReplicaStatus {
                    index,
                    state: view.state.clone(),
                    pid: if view.alive { view.pid } else { None },
                    standby_pid: view.standby_pid,
                    socket: view.socket.clone(),
                    last_exit: view.last_status,
                    in_flight: member.in_flight.load(Ordering::Relaxed),
                    restarts: view.generation.saturating_sub(1),
                    device: self.devices.get(index).cloned().flatten(),
                }
            })
            .collect()
    }
}

impl Supervisor {
    /// Starts supervising: prepares each replica's socket, spawns its worker and returns
    /// without waiting for them to be ready (see [`Supervisor::wait_ready`]; calls wait by
    /// themselves).
    ///
    /// Fails when a socket path cannot be used, the interpreter cannot be started, or
    /// several replicas are asked for with a fixed `socket_path`.
    pub async fn spawn(config: SupervisorConfig) -> Result<Supervisor, Error> {
        let count = config.replicas.max(1);
        if count > 1 {
            if let Some(path) = &config.socket_path {
                return Err(Error::Socket {
                    path: path.clone(),
                    reason: "several replicas need one socket each, in private socket \
                             directories; replicas cannot be combined with socket_path"
                        .into(),
                });
            }
        }
        let (events, _) = broadcast::channel(256 * count);
        let mut replicas = Vec::with_capacity(count);
        for index in 0..count {
            let device = config.replica_device(index);
            replicas.push(Replica::spawn(config.for_replica(index), device, events.clone()).await?);
        }
        let pool = Replicas::new(
            replicas
                .iter()
                .map(|r| Member {
                    view: r.view.clone(),
                    in_flight: Default::default(),
                })
                .collect(),
        );
        Ok(Supervisor {
            replicas,
            pool,
            events,
            counts: Arc::default(),
        })
    }

    /// Waits until a worker (of any replica) reports `SERVING`, for at most `timeout`.
    ///
    /// Fails with [`Error::GaveUp`] if the supervisor gave up, [`Error::NotReady`] on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let views = self.views();
        wait_views(views, timeout, |v| v.usable_channel().is_some(), false).await
    }

    /// Waits until every replica's worker reports `SERVING`, for at most `timeout`.
    ///
    /// Fails with [`Error::GaveUp`] if a replica gave up, [`Error::NotReady`] on timeout.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Result<(), Error> {
        let views = self.views();
        wait_views(views, timeout, |v| v.usable_channel().is_some(), true).await
    }

    /// A client that always talks to a current worker (cheap; clone freely): each call goes
    /// to the ready replica with the fewest calls in flight.
    pub fn client(&self) -> Client {
        Client::supervised(self.pool.clone(), self.events.clone(), self.counts.clone())
    }

    /// How many generation streams of this supervisor's clients were resumed on another
    /// worker after the one serving them died (see [`crate::GenerateRequest::max_resumes`]).
    pub fn resumes(&self) -> u64 {
        self.counts.resumes.load(Ordering::Relaxed)
    }

    /// Lifecycle events of every replica from now on. A receiver that falls more than 256
    /// events per replica behind loses the oldest ones.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    /// The supervisor's state now: with replicas, the most serving replica's (ready if
    /// any is; gave up only when all have).
    pub fn state(&self) -> WorkerState {
        pool_state(&self.views())
    }

    /// How many replicas run ([`SupervisorConfig::replicas`]).
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// Each replica's state, worker, socket and load now.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.monitor().replicas()
    }

    /// A cheap handle that reads [`Supervisor::replicas`] without holding the supervisor
    /// (for a status page or metrics).
    pub fn monitor(&self) -> ReplicaMonitor {
        ReplicaMonitor {
            pool: self.pool.clone(),
            devices: self.replicas.iter().map(|r| r.device.clone()).collect(),
        }
    }

    /// The running (active) worker's process id: the one calls go to. With replicas, the
    /// first replica's that has one running (see [`Supervisor::replicas`] for each).
    pub fn worker_pid(&self) -> Option<u32> {
        self.replicas.iter().find_map(|r| {
            let view = r.view.borrow();
            if view.alive { view.pid } else { None }
        })
    }

    /// The standby worker's process id, while one runs (starting or serving), with
    /// [`SupervisorConfig::standby`]; it gets no calls until it takes over. With replicas,
    /// the first replica's that has one.
    pub fn standby_pid(&self) -> Option<u32> {
        self.replicas
            .iter()
            .find_map(|r| r.view.borrow().standby_pid)
    }

    /// How the last worker process ended, if one has (with replicas: of the first replica
    /// where one has).
    pub fn last_exit(&self) -> Option<ExitStatusInfo> {
        self.replicas
            .iter()
            .find_map(|r| r.view.borrow().last_status)
    }

    /// The active worker's socket path (of the first replica). With a standby there are two
    /// paths in the socket directory, and this one changes when the standby takes over.
    pub fn socket_path(&self) -> PathBuf {
        self.replicas
            .first()
            .map(|r| r.view.borrow().socket.clone())
            .unwrap_or_default()
    }

    /// The directory holding the socket (the supervisor's private directory, unless
    /// `socket_path` was configured); with replicas, the first replica's (each has its own).
    pub fn socket_dir(&self) -> PathBuf {
        self.replicas
            .first()
            .map(|r| r.socket_dir.clone())
            .unwrap_or_default()
    }

    /// Stops gracefully: every worker gets SIGTERM and finishes in-flight requests within
    /// its grace period (then it is killed), and the socket directories are removed. The
    /// replicas stop at the same time.
    pub async fn shutdown(self) -> Result<(), Error> {
        let results =
            futures_util::future::join_all(self.replicas.into_iter().map(Replica::shutdown)).await;
        results.into_iter().collect()
    }

    fn views(&self) -> Vec<watch::Receiver<WorkerView>> {
        self.replicas.iter().map(|r| r.view.clone()).collect()
    }
}

/// Waits until `ready` holds for one of `views` (for all with `all`), a view needed turns
/// terminal, or `timeout` passes.
async fn wait_views(
    mut views: Vec<watch::Receiver<WorkerView>>,
    timeout: Duration,
    ready: impl Fn(&WorkerView) -> bool,
    all: bool,
) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    loop {
        let mut done = 0;
        let mut terminal = None;
        for view in &mut views {
            let v = view.borrow_and_update();
            if ready(&v) {
                done += 1;
            } else if v.is_terminal() {
                terminal.get_or_insert_with(|| v.terminal_error());
            }
        }
        let needed = if all { views.len() } else { 1 };
        if done >= needed {
            return Ok(());
        }
        if let Some(error) = terminal {
            if all || views.iter().all(|v| v.borrow().is_terminal()) {
                return Err(error);
            }
        }
        match tokio::time::timeout_at(deadline, Replicas::changed(&mut views)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::Stopped),
            Err(_) => {
                return Err(Error::NotReady {
                    waited: started.elapsed(),
                    state: pool_state(&views).to_string(),
                });
            }
        }
    }
}
