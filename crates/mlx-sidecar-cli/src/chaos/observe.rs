//! The run's timeline: what the supervisor announced and when tokens arrived, stamped in
//! seconds since the load began. Clients and the event recorder write it; the injector
//! polls it to wait for detection and recovery; the report and chart read it at the end.

use std::sync::{Mutex, MutexGuard};

use mlx_sidecar::LifecycleEvent;
use tokio::{sync::broadcast, time::Instant};

/// The shared timeline.
#[derive(Debug)]
pub(crate) struct Timeline {
    start: Instant,
    inner: Mutex<Marks>,
}

/// Everything stamped so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Marks {
    /// Supervisor lifecycle events.
    pub(crate) events: Vec<(f64, LifecycleEvent)>,
    /// When each request received its first token.
    pub(crate) first_tokens: Vec<f64>,
    /// Token arrivals: (time, tokens in the chunk).
    pub(crate) tokens: Vec<(f64, u32)>,
    /// Lifecycle events the recorder missed because it fell behind.
    pub(crate) events_missed: u64,
}

impl Timeline {
    pub(crate) fn new() -> Self {
        Timeline {
            start: Instant::now(),
            inner: Mutex::new(Marks::default()),
        }
    }

    /// Seconds since the load began.
    pub(crate) fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn marks(&self) -> MutexGuard<'_, Marks> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn first_token(&self, at: f64) {
        self.marks().first_tokens.push(at);
    }

    pub(crate) fn tokens(&self, at: f64, n: u32) {
        self.marks().tokens.push((at, n));
    }

    /// The first event at or after `since` that `pred` accepts.
    pub(crate) fn find_event(
        &self,
        since: f64,
        pred: impl Fn(&LifecycleEvent) -> bool,
    ) -> Option<(f64, LifecycleEvent)> {
        self.marks()
            .events
            .iter()
            .find(|(t, e)| *t >= since && pred(e))
            .cloned()
    }

    /// The first first-token time strictly after `since`.
    pub(crate) fn first_token_after(&self, since: f64) -> Option<f64> {
        self.marks()
            .first_tokens
            .iter()
            .copied()
            .filter(|t| *t > since)
            .reduce(f64::min)
    }

    /// The first output any caller got after `since`: a request's first token, or a
    /// resumed stream's first token after its seam (its `Resumed` event).
    pub(crate) fn first_output_after(&self, since: f64) -> Option<f64> {
        let resumed = self
            .find_event(since, |e| matches!(e, LifecycleEvent::Resumed { .. }))
            .map(|(t, _)| t)
            .filter(|t| *t > since);
        self.first_token_after(since)
            .into_iter()
            .chain(resumed)
            .reduce(f64::min)
    }

    /// For progress lines: requests that got a first token, and worker crashes, so far.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let marks = self.marks();
        let crashes = marks
            .events
            .iter()
            .filter(|(_, e)| matches!(e, LifecycleEvent::Crashed { .. }))
            .count();
        (marks.first_tokens.len(), crashes)
    }

    /// A copy of everything.
    pub(crate) fn snapshot(&self) -> Marks {
        self.marks().clone()
    }

    /// Records the supervisor's events until its channel closes.
    pub(crate) async fn record(&self, mut events: broadcast::Receiver<LifecycleEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => {
                    let at = self.now();
                    self.marks().events.push((at, event));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => self.marks().events_missed += n,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn resumed() -> LifecycleEvent {
        LifecycleEvent::Resumed {
            pid: Some(7),
            request_id: String::new(),
            resume_count: 1,
            delivered_tokens: 3,
            stall: Duration::from_millis(400),
            gap: Duration::from_millis(450),
        }
    }

    #[test]
    fn a_resumed_streams_token_counts_as_serving_again() {
        let timeline = Timeline::new();
        timeline.first_token(1.0);
        timeline.first_token(5.0);
        timeline.marks().events.push((3.0, resumed()));
        // The continuation's first token (at 3.0) came before any new request's (5.0).
        assert_eq!(timeline.first_output_after(2.0), Some(3.0));
        assert_eq!(timeline.first_output_after(3.0), Some(5.0));
        assert_eq!(timeline.first_output_after(0.5), Some(1.0));
        assert_eq!(timeline.first_output_after(6.0), None);
    }
}
