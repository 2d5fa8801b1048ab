//! The supervisor's replicas as clients see them, and how a call picks one.
//!
//! Each replica publishes its current worker on its own `watch` channel ([`WorkerView`]);
//! a [`Replicas`] holds all of them with one in-flight counter per replica, shared by every
//! client of the supervisor (and read by the supervisor's status). A call takes a
//! [`Picked`] replica: the ready one with the fewest calls in flight, ties broken
//! round-robin so that sequential calls spread too; the [`LoadGuard`] it carries counts
//! the call until it is dropped (for a generation: until its stream ends). A dead replica
//! is never ready, so the retry of a call that had not started lands on another one.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::watch;
use tonic::transport::Channel;

use super::{WorkerState, WorkerView};

/// One replica: its published worker and the calls in flight on it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) view: watch::Receiver<WorkerView>,
    pub(crate) in_flight: Arc<AtomicUsize>,
}

/// All replicas of one supervisor (one for the default single worker).
#[derive(Debug, Clone)]
pub(crate) struct Replicas {
    members: Arc<[Member]>,
    /// Where the next scan for a tie starts.
    next: Arc<AtomicUsize>,
}

/// One worker process of the pool: its replica and the replica's worker generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerId {
    pub(crate) replica: usize,
    pub(crate) generation: u64,
}

/// A replica chosen for one call.
#[derive(Debug)]
pub(crate) struct Picked {
    pub(crate) channel: Channel,
    pub(crate) view: watch::Receiver<WorkerView>,
    pub(crate) id: WorkerId,
    pub(crate) load: LoadGuard,
}

/// Counts one call in flight on a replica until dropped.
#[derive(Debug)]
pub(crate) struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Replicas {
    /// The replicas behind `members` (at least one).
    pub(crate) fn new(members: Vec<Member>) -> Self {
        Replicas {
            members: members.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The replicas, in order.
    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    /// Fresh receivers of every replica's view, for one call to wait on.
    pub(crate) fn watchers(&self) -> Vec<watch::Receiver<WorkerView>> {
        self.members.iter().map(|m| m.view.clone()).collect()
    }

    /// The ready replica with the fewest calls in flight (see the module doc), read from
    /// `watchers` (marking their values seen), or `None` when none is ready. The worker
    /// `avoid` (one that just died under a stream) is never picked.
    pub(crate) fn pick(
        &self,
        watchers: &mut [watch::Receiver<WorkerView>],
        avoid: Option<WorkerId>,
    ) -> Option<Picked> {
        let n = watchers.len().min(self.members.len());
        if n == 0 {
            return None;
        }
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let mut best: Option<(usize, usize, Channel, u64)> = None;
        for offset in 0..n {
            let index = (start + offset) % n;
            let view = watchers[index].borrow_and_update();
            let Some(channel) = view.usable_channel() else {
                continue;
            };
            if avoid.is_some_and(|a| a.replica == index && a.generation == view.generation) {
                continue;
            }
            let load = self.members[index].in_flight.load(Ordering::Relaxed);
            if best.as_ref().is_none_or(|(_, fewest, _, _)| load < *fewest) {
                best = Some((index, load, channel.clone(), view.generation));
            }
        }
        let (index, _, channel, generation) = best?;
        let member = &self.members[index];
        member.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            channel,
            view: watchers[index].clone(),
            id: WorkerId {
                replica: index,
                generation,
            },
            load: LoadGuard(member.in_flight.clone()),
        })
    }

    /// The error every call gets when no replica will serve any more (all stopped or gave
    /// up), else `None`.
    pub(crate) fn terminal_error(watchers: &[watch::Receiver<WorkerView>]) -> Option<crate::Error> {
        if watchers.iter().all(|w| w.borrow().is_terminal()) {
            watchers.first().map(|w| w.borrow().terminal_error())
        } else {
            None
        }
    }

    /// Resolves when any replica's view changes; fails when every supervisor task ended.
    pub(crate) async fn changed(
        watchers: &mut [watch::Receiver<WorkerView>],
    ) -> Result<(), watch::error::RecvError> {
        let waits = watchers.iter_mut().map(|w| Box::pin(w.changed()));
        let (result, _, _) = futures_util::future::select_all(waits).await;
        result
    }
}

/// The state of several replicas as one: the most serving one's (ready, then unhealthy,
/// starting, restarting, stopping, gave up, stopped), so the pool gives up only when
/// every replica has. One replica's state is its own.
pub(crate) fn pool_state(watchers: &[watch::Receiver<WorkerView>]) -> WorkerState {
    let rank = |state: &WorkerState| match state {
        WorkerState::Ready => 0,
        WorkerState::Unhealthy => 1,
        WorkerState::Starting => 2,
        WorkerState::Restarting { .. } => 3,
        WorkerState::Stopping => 4,
        WorkerState::GaveUp => 5,
        _ => 6,
    };
    watchers
        .iter()
        .map(|w| w.borrow().state.clone())
        .min_by_key(rank)
        .unwrap_or(WorkerState::Stopped)
}
