//! Liveness of a worker the supervisor runs: one probe of a running worker (its socket file,
//! then the health check), the periodic probe of a ready worker, and the wait for a
//! starting worker to serve.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::transport::Channel;

use crate::worker::health::probe;

/// One liveness probe of a running worker on `socket`: its socket file must still be
/// there (an open connection outlives the file, but nobody could connect anew), and the
/// check must answer `SERVING` within `timeout`.
pub(crate) async fn probe_worker(
    channel: &Channel,
    socket: &Path,
    timeout: Duration,
) -> Result<(), String> {
    if !socket.exists() {
        return Err(format!("socket file {} was removed", socket.display()));
    }
    probe(channel, timeout).await
}

/// The liveness probe of a ready worker (the active one or the standby): one
/// [`probe_worker`] per `interval`, the first one interval from now; a tick missed while a
/// probe was slow is not made up for.
pub(crate) struct Liveness {
    ticker: Interval,
    timeout: Duration,
}

impl Liveness {
    /// Probes every `interval`, each probe with the deadline `timeout`.
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Self {
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Liveness { ticker, timeout }
    }

    /// Waits for the next tick, then probes the worker (the channel and socket path are
    /// owned, so the caller may wait on the worker itself meanwhile).
    pub(crate) async fn next(&mut self, channel: Channel, socket: PathBuf) -> Result<(), String> {
        self.ticker.tick().await;
        probe_worker(&channel, &socket, self.timeout).await
    }
}

/// Resolves once the worker at `socket` reports `SERVING`. Probes when the worker logs
/// that it listens or is ready (`hint`), and otherwise at growing intervals (20 ms to 500 ms).
pub(crate) async fn wait_serving(
    channel: Channel,
    hint: Arc<Notify>,
    socket: std::path::PathBuf,
    timeout: Duration,
) {
    let mut pause = Duration::from_millis(20);
    loop {
        if socket.exists() && probe(&channel, timeout).await.is_ok() {
            return;
        }
        tokio::select! {
            () = hint.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
