//! [`RequestObserver`]: how one request is recorded, the same way for both fronts.
//!
//! A request counts as *waiting* from [`crate::Metrics::start`] until its first output,
//! then as *running* until it ends. It ends exactly once: [`RequestObserver::on_finished`],
//! [`RequestObserver::on_error`], or, when the observer is dropped without either (the
//! client went away, the handler was cancelled), as an error with code `cancelled`.

use std::time::Instant;

use mlx_sidecar::Finished;

use super::{Api, ApiLabels, ErrorLabels, FinishLabels, Metrics, code_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    Ended,
}

/// Records one request's progress into [`Metrics`].
///
/// The request counts as waiting from [`Metrics::start`] until its first output, then as
/// running until it ends. It ends exactly once: [`RequestObserver::on_finished`],
/// [`RequestObserver::on_error`], or, when the observer is dropped without either (the
/// client went away), as an error with code `cancelled`.
#[derive(Debug)]
pub(crate) struct RequestObserver {
    metrics: Metrics,
    labels: ApiLabels,
    started: Instant,
    last_output: Instant,
    phase: Phase,
}

impl RequestObserver {
    pub(super) fn new(metrics: Metrics, api: Api) -> Self {
        let labels = ApiLabels { api };
        metrics.inner.waiting.get_or_create(&labels).inc();
        let now = Instant::now();
        RequestObserver {
            metrics,
            labels,
            started: now,
            last_output: now,
            phase: Phase::Waiting,
        }
    }

    /// Output arrived: `tokens` tokens together. The first call records the time to first
    /// token and moves the request from waiting to running; later calls record the time
    /// per token since the previous output (once per token).
    pub(crate) fn on_output(&mut self, tokens: usize) {
        let now = Instant::now();
        let inner = &self.metrics.inner;
        inner
            .generation_tokens
            .get_or_create(&self.labels)
            .inc_by(tokens as u64);
        match self.phase {
            Phase::Waiting => {
                inner
                    .time_to_first_token
                    .get_or_create(&self.labels)
                    .observe(now.duration_since(self.started).as_secs_f64());
                inner.waiting.get_or_create(&self.labels).dec();
                inner.running.get_or_create(&self.labels).inc();
                self.phase = Phase::Running;
            }
            Phase::Running if tokens > 0 => {
                let per_token = now.duration_since(self.last_output).as_secs_f64() / tokens as f64;
                let histogram = inner.inter_token_latency.get_or_create(&self.labels);
                for _ in 0..tokens {
                    histogram.observe(per_token);
                }
            }
            Phase::Running | Phase::Ended => {}
        }
        self.last_output = now;
    }

    /// The request finished: counts it by finish reason, its prompt tokens, its end-to-end
    /// latency and the worker's queue wait.
    pub(crate) fn on_finished(mut self, finished: &Finished) {
        let inner = &self.metrics.inner;
        let api = self.labels.api;
        inner
            .requests
            .get_or_create(&FinishLabels {
                api,
                finish_reason: finished.finish_reason.into(),
            })
            .inc();
        inner
            .prompt_tokens
            .get_or_create(&self.labels)
            .inc_by(u64::from(finished.usage.prompt_tokens));
        inner
            .e2e_latency
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
        inner
            .queue_time
            .get_or_create(&self.labels)
            .observe(finished.timings.queue_wait_ms / 1000.0);
        self.end();
    }

    /// The request failed with `code` (counted under the code's lower-case name).
    pub(crate) fn on_error(mut self, code: tonic::Code) {
        self.metrics.record_error(self.labels.api, code);
        self.end();
    }

    /// Leaves the waiting or running gauge, once.
    fn end(&mut self) {
        let inner = &self.metrics.inner;
        match self.phase {
            Phase::Waiting => inner.waiting.get_or_create(&self.labels).dec(),
            Phase::Running => inner.running.get_or_create(&self.labels).dec(),
            Phase::Ended => return,
        };
        self.phase = Phase::Ended;
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        if self.phase != Phase::Ended {
            self.metrics
                .inner
                .errors
                .get_or_create(&ErrorLabels {
                    api: self.labels.api,
                    code: code_name(tonic::Code::Cancelled).to_owned(),
                })
                .inc();
            self.end();
        }
    }
}
