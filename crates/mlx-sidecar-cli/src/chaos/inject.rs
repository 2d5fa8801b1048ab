//! The injector: applies the fault schedule to the supervised worker, one fault at a time,
//! and measures each: when the supervisor noticed (its `Crashed` or `Unhealthy` event),
//! when a new worker was starting and ready, and when a request got its first token again.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use mlx_sidecar::{LifecycleEvent, StartupTimes, Supervisor, WorkerState};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use super::{
    args::FaultTarget,
    leaks::process_gone,
    observe::Timeline,
    plan::{FaultKind, FaultPlan},
};

/// How often the injector looks at the timeline while it waits.
const POLL: Duration = Duration::from_millis(5);

/// One injected fault and what followed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultRecord {
    pub(crate) kind: FaultKind,
    /// The worker that got it (with `--fault-target all`, the first replica's).
    pub(crate) pid: u32,
    /// The replica it hit (the first, with `--fault-target all`).
    pub(crate) replica: usize,
    /// With `--fault-target all`: the other replicas' workers that got it at the same time.
    pub(crate) also: Vec<u32>,
    /// Injection time (seconds since the load began).
    pub(crate) at: f64,
    /// `stop`: when SIGCONT was sent (if the worker was still there).
    pub(crate) resumed: Option<f64>,
    /// The supervisor's first `Crashed` or `Unhealthy` event for this worker.
    pub(crate) detected: Option<f64>,
    /// The worker's `Crashed` event (it was replaced).
    pub(crate) crashed: Option<f64>,
    /// The replacement's `Starting` event.
    pub(crate) starting: Option<f64>,
    /// `Some` when the standby took over (`Promoted`): whether it already served then.
    pub(crate) promoted: Option<bool>,
    /// The replacement's `Ready` event.
    pub(crate) ready: Option<f64>,
    /// Spawn to ready, as the supervisor measured it.
    pub(crate) load_time: Option<f64>,
    /// Where the replacement's start-up went, as the worker reported it.
    #[serde(skip)]
    pub(crate) startup: Option<StartupTimes>,
    /// The first token any request received after recovery.
    pub(crate) serving: Option<f64>,
}

impl FaultRecord {
    pub(crate) fn recovered(&self) -> bool {
        self.serving.is_some()
    }
}

/// The schedule's state for one plan.
struct Slot {
    plan: FaultPlan,
    next: f64,
    done: u32,
}

/// Runs the fault schedule.
pub(crate) struct Injector {
    pub(crate) supervisor: Arc<Supervisor>,
    pub(crate) timeline: Arc<Timeline>,
    /// The worker's `MLX_WORKER_FAULTS_FILE` (for slow starts).
    pub(crate) faults_file: PathBuf,
    /// With `--kill-cycles`: the mean pause between recovery and the next injection.
    pub(crate) pace_after_recovery: Option<Duration>,
    /// How long to wait for recovery before calling a fault unrecovered.
    pub(crate) recovery_timeout: Duration,
    pub(crate) seed: u64,
    /// One replica per fault, or all together.
    pub(crate) target: FaultTarget,
    /// Faults injected so far, to take the replicas in turn.
    pub(crate) injected: AtomicUsize,
}

impl Injector {
    /// Injects faults until `stop` is set or every plan has used up its `count`; the
    /// fault in progress when `stop` is set is still seen through to recovery.
    pub(crate) async fn run(
        self,
        plans: Vec<FaultPlan>,
        stop: Arc<AtomicBool>,
    ) -> Vec<FaultRecord> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed_fa17);
        let mut slots: Vec<Slot> = plans
            .into_iter()
            .map(|plan| Slot {
                next: plan.after.as_secs_f64(),
                plan,
                done: 0,
            })
            .collect();
        let mut records = Vec::new();
        while let Some(slot) = slots
            .iter_mut()
            .filter(|s| s.plan.count.is_none_or(|c| s.done < c))
            .min_by(|a, b| a.next.total_cmp(&b.next))
        {
            if !self.wait_until(slot.next, &stop).await || !self.wait_serving(&stop).await {
                break;
            }
            let record = self.inject(&slot.plan).await;
            let Some(mut record) = record else {
                // The worker vanished between the check and the signal; try again shortly.
                slot.next = self.timeline.now() + 0.05;
                continue;
            };
            self.await_recovery(&mut record).await;
            let recovered_at = record.serving.unwrap_or_else(|| self.timeline.now());
            slot.done += 1;
            slot.next = match self.pace_after_recovery {
                Some(mean) => recovered_at + mean.as_secs_f64() * rng.random_range(0.5..1.5),
                None => record.at + slot.plan.every.as_secs_f64(),
            };
            let unrecovered = !record.recovered();
            records.push(record);
            if unrecovered || self.supervisor.state() == WorkerState::GaveUp {
                tracing::error!("service did not come back after a fault; ending the run");
                break;
            }
        }
        records
    }

    /// Sleeps until timeline time `at`; false if told to stop first.
    async fn wait_until(&self, at: f64, stop: &AtomicBool) -> bool {
        while self.timeline.now() < at {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = (at - self.timeline.now()).clamp(0.0, 0.05);
            tokio::time::sleep(Duration::from_secs_f64(left)).await;
        }
        !stop.load(Ordering::Relaxed)
    }

    /// Waits until every replica's worker is ready; false if told to stop or a replica
    /// gave up.
    async fn wait_serving(&self, stop: &AtomicBool) -> bool {
        loop {
            let replicas = self.supervisor.replicas();
            if replicas
                .iter()
                .all(|r| r.state == WorkerState::Ready && r.pid.is_some())
            {
                return true;
            }
            if replicas.iter().any(|r| {
                matches!(
                    r.state,
                    WorkerState::GaveUp | WorkerState::Stopped | WorkerState::Stopping
                )
            }) {
                return false;
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn inject(&self, plan: &FaultPlan) -> Option<FaultRecord> {
        let replicas = self.supervisor.replicas();
        let turn = self.injected.fetch_add(1, Ordering::Relaxed) % replicas.len().max(1);
        let victims: Vec<_> = match self.target {
            FaultTarget::One => replicas.into_iter().skip(turn).take(1).collect(),
            FaultTarget::All => replicas,
        };
        let first = victims.first()?;
        let (pid, replica, socket) = (first.pid?, first.index, first.socket.clone());
        let also: Vec<u32> = victims.iter().skip(1).filter_map(|r| r.pid).collect();
        let mut record = FaultRecord {
            kind: plan.kind,
            pid,
            replica,
            also: also.clone(),
            at: self.timeline.now(),
            resumed: None,
            detected: None,
            crashed: None,
            starting: None,
            promoted: None,
            ready: None,
            load_time: None,
            startup: None,
            serving: None,
        };
        let signal_all = |sig| {
            for other in &also {
                let _ = signal(*other, sig);
            }
            signal(pid, sig)
        };
        match plan.kind {
            FaultKind::Kill => signal_all(Signal::SIGKILL)?,
            FaultKind::SlowStart => {
                let delay = plan.delay.as_secs_f64();
                if let Err(e) = std::fs::write(&self.faults_file, format!("startup_delay={delay}"))
                {
                    tracing::error!("cannot write {}: {e}", self.faults_file.display());
                }
                signal_all(Signal::SIGKILL)?;
            }
            FaultKind::Stop => {
                signal_all(Signal::SIGSTOP)?;
                tokio::time::sleep(plan.hold).await;
                // Resume each unless the supervisor already replaced it.
                let running: Vec<u32> = self
                    .supervisor
                    .replicas()
                    .iter()
                    .filter_map(|r| r.pid)
                    .collect();
                for other in &also {
                    if !process_gone(*other) && running.contains(other) {
                        let _ = signal(*other, Signal::SIGCONT);
                    }
                }
                if !process_gone(pid)
                    && running.contains(&pid)
                    && signal(pid, Signal::SIGCONT).is_some()
                {
                    record.resumed = Some(self.timeline.now());
                }
            }
            FaultKind::DeleteSocket => {
                if let Err(e) = remove_socket(&socket) {
                    tracing::error!("cannot remove the socket file: {e}");
                    return None;
                }
            }
        }
        record.at = match plan.kind {
            FaultKind::Stop => record.at,
            _ => self.timeline.now(),
        };
        Some(record)
    }

    /// Fills in detection, restart and recovery times, waiting for them (bounded).
    async fn await_recovery(&self, r: &mut FaultRecord) {
        let deadline = self.timeline.now() + self.recovery_timeout.as_secs_f64();
        let pid = r.pid;
        let tl = &self.timeline;
        while tl.now() < deadline {
            if r.detected.is_none() {
                r.detected = tl
                    .find_event(r.at, |e| {
                        matches!(e, LifecycleEvent::Crashed { pid: p, .. } | LifecycleEvent::Unhealthy { pid: p, .. } if *p == pid)
                    })
                    .map(|(t, _)| t);
            }
            if r.crashed.is_none() {
                r.crashed = tl
                    .find_event(
                        r.at,
                        |e| matches!(e, LifecycleEvent::Crashed { pid: p, .. } if *p == pid),
                    )
                    .map(|(t, _)| t);
            }
            if let Some(crashed) = r.crashed {
                if r.promoted.is_none() && r.ready.is_none() {
                    r.promoted = tl
                        .find_event(crashed, |e| matches!(e, LifecycleEvent::Promoted { .. }))
                        .and_then(|(_, e)| match e {
                            LifecycleEvent::Promoted { was_ready, .. } => Some(was_ready),
                            _ => None,
                        });
                }
                if r.starting.is_none() && r.promoted.is_none() {
                    r.starting = tl
                        .find_event(crashed, |e| matches!(e, LifecycleEvent::Starting { .. }))
                        .map(|(t, _)| t);
                }
                if r.ready.is_none() {
                    if let Some((
                        t,
                        LifecycleEvent::Ready {
                            load_time, startup, ..
                        },
                    )) = tl.find_event(crashed, |e| matches!(e, LifecycleEvent::Ready { .. }))
                    {
                        r.ready = Some(t);
                        // A promoted standby's start-up happened before the fault.
                        if r.promoted.is_none() {
                            r.load_time = Some(load_time.as_secs_f64());
                            r.startup = startup;
                        }
                        if r.kind == FaultKind::SlowStart {
                            let _ = std::fs::write(&self.faults_file, "");
                        }
                    }
                }
                if let Some(ready) = r.ready {
                    r.serving = tl.first_output_after(ready);
                }
            } else if r.kind == FaultKind::Stop {
                // A stop shorter than the health threshold: service resumes in place.
                if let Some(resumed) = r.resumed {
                    r.serving = tl.first_output_after(resumed);
                }
            }
            if r.serving.is_some() {
                return;
            }
            if self.supervisor.state() == WorkerState::GaveUp {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Sends `sig` to `pid`; `None` if the process is gone.
fn signal(pid: u32, sig: Signal) -> Option<()> {
    let raw = i32::try_from(pid).ok()?;
    kill(Pid::from_raw(raw), sig).ok()
}

fn remove_socket(path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path)
}
