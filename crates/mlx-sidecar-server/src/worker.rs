//! Follows the supervisor: one task turns its [`LifecycleEvent`]s into the daemon's view of
//! the worker ([`WorkerView`], on a `watch` channel that `/ready`, the OpenAI routes and the
//! `Status` rpc read), drives `grpc.health.v1` (`SERVING` only while a worker is ready and
//! the daemon is not draining), sets the worker metrics (`worker_up`, `standby_ready`,
//! `worker_restarts_total{cause,worker}`, and `stream_resumes_total` from the clients'
//! `Resumed` events), and tells systemd `READY=1` when the first worker is
//! ready (`sd-notify`; nothing happens without `NOTIFY_SOCKET`). For a sharded worker it
//! also keeps the group's ranks, backend and rank pids (`Status`'s `shard`, the `shard_*`
//! metrics): configured from the start, with the pids its rank 0 reports while it runs.
//!
//! Each event only says *that* something changed; the state, pids and standby come from the
//! supervisor itself (its view is updated before the event is sent), so a lagging receiver
//! that missed events still ends up right. The daemon counts itself ready only once it
//! knows the model (asked for when a worker becomes ready, retried a few times), so a caller
//! who saw `/ready` 200, `SERVING` or `READY=1` finds requests served, not answered 503.
//!
//! A restart is counted when the supervisor announces it (`Restarting`, or `Promoted` when
//! the standby takes over), with the cause of the crash before it: `unhealthy` when the
//! crashed worker's last event was a failed health check (the supervisor kills a worker
//! right after the failure that reaches its threshold), else `signal` or `exit` from its
//! exit status. A standby that dies is counted (`worker="standby"`) when the supervisor
//! starts another (its `StandbyCrashed` names a delay), by `signal` or `exit`: an unhealthy
//! standby is stopped without an event that says so, so it counts under its exit status.

use std::{sync::Arc, time::Duration};

use mlx_sidecar::{
    Client, LifecycleEvent, ModelInfo, ShardInfo, Supervisor, WorkerCommand, WorkerState,
};
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use crate::{
    drain::Drain,
    grpc::health::HealthPublisher,
    metrics::{Metrics, RestartCause, WorkerRole},
};

/// Deadline of the model-info call made after each worker becomes ready.
const MODEL_INFO_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times the model-info call is made before the daemon waits for the next event.
const MODEL_INFO_ATTEMPTS: u32 = 4;

/// The pause before the second model-info call; it doubles after each failure.
const MODEL_INFO_FIRST_RETRY: Duration = Duration::from_millis(250);

/// The standby worker, as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standby {
    /// Not configured.
    Off,
    /// Loading the model.
    Starting,
    /// Loaded and idle, ready to take over.
    Ready,
    /// Configured, but none runs now.
    None,
}

/// What the daemon knows about its worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerView {
    /// The supervisor's state.
    pub(crate) state: WorkerState,
    /// The active worker's pid, while it runs.
    pub(crate) pid: Option<u32>,
    /// When the active worker became ready.
    pub(crate) ready_since: Option<Instant>,
    /// Workers started after the first (restarts and standby takeovers).
    pub(crate) restarts: u32,
    /// The standby's state.
    pub(crate) standby: Standby,
    /// The standby's pid, while one runs.
    pub(crate) standby_pid: Option<u32>,
    /// The model, as the last ready worker described it.
    pub(crate) model: Option<ModelInfo>,
    /// The sharded group, if the model is sharded (see [`current_shard`]).
    pub(crate) shard: Option<ShardInfo>,
}

impl WorkerView {
    /// Before the first event; `shard` is the configured group ([`configured_shard`]).
    pub(crate) fn initial(standby: bool, shard: Option<ShardInfo>) -> Self {
        WorkerView {
            state: WorkerState::Starting,
            pid: None,
            ready_since: None,
            restarts: 0,
            standby: if standby { Standby::None } else { Standby::Off },
            standby_pid: None,
            model: None,
            shard,
        }
    }

    /// Whether a worker runs and has loaded its model (it may not yet have described it).
    fn is_running(&self) -> bool {
        matches!(self.state, WorkerState::Ready | WorkerState::Unhealthy) && self.pid.is_some()
    }

    /// Whether requests can be served now: a worker runs and the daemon knows its model,
    /// which every request is checked against. `/ready`, the health service and systemd's
    /// READY=1 all follow this, so that none of them announces a daemon that answers 503.
    pub(crate) fn is_ready(&self) -> bool {
        self.is_running() && self.model.is_some()
    }
}

/// The sharded group `worker` asks for, as known before a worker describes it: its ranks
/// (0 when they come from a hostfile) and backend, no pids; `None` when not sharded.
pub(crate) fn configured_shard(worker: &WorkerCommand) -> Option<ShardInfo> {
    worker.shard.as_ref().map(|group| ShardInfo {
        ranks: group.ranks.unwrap_or(0),
        backend: group.backend.as_str().to_owned(),
        pids: Vec::new(),
    })
}

/// The sharded group to show: the one `model` reported while its rank 0 is one of the
/// `running` workers; else what is known without it (the last report's or the configured
/// ranks and backend), without pids, which would name processes that are gone.
fn current_shard(
    configured: Option<&ShardInfo>,
    model: Option<&ModelInfo>,
    running: &[u32],
) -> Option<ShardInfo> {
    let reported = model.and_then(|m| m.shard.as_ref());
    if let Some(shard) = reported {
        if shard.pids.first().is_some_and(|pid| running.contains(pid)) {
            return Some(shard.clone());
        }
    }
    reported.or(configured).map(|shard| ShardInfo {
        pids: Vec::new(),
        ..shard.clone()
    })
}

/// Follows `supervisor` until its events end; see the [module docs](self).
pub(crate) struct Follower {
    pub(crate) view: watch::Sender<WorkerView>,
    pub(crate) health: HealthPublisher,
    pub(crate) drain: Arc<Drain>,
    pub(crate) metrics: Metrics,
    pub(crate) client: Client,
    pub(crate) restarts: RestartCauses,
    pub(crate) notified_ready: bool,
    /// The configured sharded group ([`configured_shard`]).
    pub(crate) configured_shard: Option<ShardInfo>,
}

impl Follower {
    /// The follower of a new daemon, publishing on `view`.
    pub(crate) fn new(
        view: watch::Sender<WorkerView>,
        health: HealthPublisher,
        drain: Arc<Drain>,
        metrics: Metrics,
        client: Client,
        configured_shard: Option<ShardInfo>,
    ) -> Self {
        Follower {
            view,
            health,
            drain,
            metrics,
            client,
            restarts: RestartCauses::default(),
            notified_ready: false,
            configured_shard,
        }
    }

    /// Runs until the supervisor's event channel closes.
    pub(crate) async fn run(
        mut self,
        supervisor: &Supervisor,
        mut events: broadcast::Receiver<LifecycleEvent>,
    ) {
        // The worker may have become ready before the first event was read.
        self.update(supervisor, None).await;
        loop {
            match events.recv().await {
                Ok(event) => self.update(supervisor, Some(event)).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "lifecycle events missed; re-reading the supervisor");
                    self.update(supervisor, None).await;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.update(supervisor, Some(LifecycleEvent::Stopped)).await;
                    return;
                }
            }
        }
    }

    /// Re-reads the supervisor after `event`, and publishes.
    async fn update(&mut self, supervisor: &Supervisor, event: Option<LifecycleEvent>) {
        if let Some(event) = &event {
            if matches!(event, LifecycleEvent::Resumed { .. }) {
                self.metrics.count_resume();
            }
            if let Some((worker, cause)) = self.restarts.on_event(event) {
                self.metrics.count_restart(worker, cause);
            }
        }
        let state = supervisor.state();
        let pid = supervisor.worker_pid();
        let standby_pid = supervisor.standby_pid();
        let mut fetch_model = false;
        self.view.send_modify(|v| {
            match &event {
                Some(LifecycleEvent::Ready { .. }) => {
                    v.ready_since = Some(Instant::now());
                    fetch_model = true;
                }
                Some(LifecycleEvent::Restarting { .. } | LifecycleEvent::Promoted { .. }) => {
                    v.restarts += 1;
                }
                _ => {}
            }
            if v.standby != Standby::Off {
                v.standby = match (&event, standby_pid) {
                    (Some(LifecycleEvent::StandbyReady { .. }), Some(_)) => Standby::Ready,
                    (Some(LifecycleEvent::StandbyStarting { .. }), Some(_)) => Standby::Starting,
                    (_, None) => Standby::None,
                    (_, Some(_)) => v.standby,
                };
            }
            if pid.is_none() {
                v.ready_since = None;
            }
            v.state = state;
            v.pid = pid;
            v.standby_pid = standby_pid;
        });
        // Before the first event, a running worker needs its model described too.
        let (running, has_model) = {
            let v = self.view.borrow();
            (v.is_running(), v.model.is_some())
        };
        if running && (fetch_model || !has_model) {
            self.fetch_model_info().await;
        }
        let (ready, standby_ready) = {
            let v = self.view.borrow();
            (v.is_ready(), v.standby == Standby::Ready)
        };
        let replicas = supervisor.replicas();
        let running: Vec<u32> = replicas.iter().filter_map(|r| r.pid).chain(pid).collect();
        let shard = current_shard(
            self.configured_shard.as_ref(),
            self.view.borrow().model.as_ref(),
            &running,
        );
        self.metrics.set_shard(shard.as_ref());
        self.view.send_modify(|v| v.shard = shard);
        self.metrics.set_worker_up(ready);
        self.metrics.set_replicas(&replicas);
        self.metrics.set_standby_ready(standby_ready);
        self.health.set(ready && !self.drain.is_draining()).await;
        if ready && !self.notified_ready {
            self.notified_ready = true;
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "cannot tell systemd READY=1");
            }
        }
    }

    /// Asks the new worker for its model and stores the answer, trying a few times: until
    /// the first answer the daemon does not count itself ready.
    async fn fetch_model_info(&self) {
        let client = self.client.clone().with_timeout(MODEL_INFO_TIMEOUT);
        let mut pause = MODEL_INFO_FIRST_RETRY;
        for attempt in 1..=MODEL_INFO_ATTEMPTS {
            match client.model_info().await {
                Ok(info) => {
                    self.view.send_modify(|v| v.model = Some(info));
                    return;
                }
                Err(e) if attempt < MODEL_INFO_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "cannot read the worker's model info yet");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the worker's model info"),
            }
        }
    }
}

/// Remembers why the active worker crashed, to count the restart that follows by cause;
/// see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct RestartCauses {
    /// The process id of the last worker whose health check failed, until it is ready again.
    unhealthy_pid: Option<u32>,
    /// The cause of the last crash, counted when the restart is announced.
    pending: Option<RestartCause>,
}

impl RestartCauses {
    /// Takes in `event`; returns which worker and why when it announces a restart.
    fn on_event(&mut self, event: &LifecycleEvent) -> Option<(WorkerRole, RestartCause)> {
        match event {
            LifecycleEvent::StandbyCrashed {
                status,
                restart_in: Some(_),
                ..
            } => {
                let cause = if status.signal.is_some() {
                    RestartCause::Signal
                } else {
                    RestartCause::Exit
                };
                return Some((WorkerRole::Standby, cause));
            }
            LifecycleEvent::Ready { pid, .. } if self.unhealthy_pid == Some(*pid) => {
                self.unhealthy_pid = None;
            }
            LifecycleEvent::Unhealthy { pid, .. } => self.unhealthy_pid = Some(*pid),
            LifecycleEvent::Crashed { pid, status } => {
                self.pending = Some(if self.unhealthy_pid == Some(*pid) {
                    RestartCause::Unhealthy
                } else if status.signal.is_some() {
                    RestartCause::Signal
                } else {
                    RestartCause::Exit
                });
            }
            LifecycleEvent::Restarting { .. } | LifecycleEvent::Promoted { .. } => {
                let cause = self.pending.take().unwrap_or(RestartCause::Exit);
                return Some((WorkerRole::Active, cause));
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use mlx_sidecar::ExitStatusInfo;

    use super::*;

    fn ready(pid: u32) -> LifecycleEvent {
        LifecycleEvent::Ready {
            pid,
            load_time: Duration::from_secs(1),
            startup: None,
        }
    }

    fn crashed(pid: u32, code: Option<i32>, signal: Option<i32>) -> LifecycleEvent {
        LifecycleEvent::Crashed {
            pid,
            status: ExitStatusInfo { code, signal },
        }
    }

    fn restarting() -> LifecycleEvent {
        LifecycleEvent::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
        }
    }

    fn shard(ranks: u32, pids: &[u32]) -> ShardInfo {
        ShardInfo {
            ranks,
            backend: "ring".into(),
            pids: pids.to_vec(),
        }
    }

    #[test]
    fn the_shard_pids_show_only_while_its_rank_0_runs() {
        let configured = shard(2, &[]);
        assert_eq!(
            current_shard(Some(&configured), None, &[10]),
            Some(shard(2, &[]))
        );
        assert_eq!(current_shard(None, None, &[10]), None);
        let info = |shard: Option<ShardInfo>| {
            let mut info = ModelInfo::from(mlx_sidecar_proto::v1::ModelInfoResponse::default());
            info.shard = shard;
            info
        };
        // From a hostfile: the count is known once a worker has described its group.
        let from_hostfile = shard(0, &[]);
        let reported = info(Some(shard(3, &[10, 11, 12])));
        assert_eq!(
            current_shard(Some(&from_hostfile), Some(&reported), &[10]),
            Some(shard(3, &[10, 11, 12]))
        );
        // Its rank 0 died: the ranks stay, the pids go.
        assert_eq!(
            current_shard(Some(&from_hostfile), Some(&reported), &[20]),
            Some(shard(3, &[]))
        );
        assert_eq!(current_shard(None, Some(&info(None)), &[10]), None);
    }

    #[test]
    fn restarts_are_counted_by_the_cause_of_the_crash() {
        let mut causes = RestartCauses::default();
        let mut counted = Vec::new();
        for event in [
            ready(10),
            crashed(10, None, Some(9)),
            restarting(),
            ready(11),
            LifecycleEvent::Unhealthy {
                pid: 11,
                reason: "no answer".into(),
                failures: 3,
            },
            crashed(11, Some(0), None),
            LifecycleEvent::Promoted {
                pid: 12,
                attempt: 2,
                was_ready: true,
            },
            ready(12),
            crashed(12, Some(1), None),
            LifecycleEvent::StandbyCrashed {
                pid: 13,
                status: ExitStatusInfo {
                    code: None,
                    signal: Some(9),
                },
                restart_in: Some(Duration::from_millis(50)),
            },
            restarting(),
            // The last standby crash the policy allows: no standby follows, no restart.
            LifecycleEvent::StandbyCrashed {
                pid: 14,
                status: ExitStatusInfo {
                    code: Some(1),
                    signal: None,
                },
                restart_in: None,
            },
        ] {
            counted.extend(causes.on_event(&event));
        }
        assert_eq!(
            counted,
            [
                (WorkerRole::Active, RestartCause::Signal),
                (WorkerRole::Active, RestartCause::Unhealthy),
                (WorkerRole::Standby, RestartCause::Signal),
                (WorkerRole::Active, RestartCause::Exit)
            ]
        );
    }
}
