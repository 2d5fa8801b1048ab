//! The daemon's Prometheus metrics: one [`Metrics`] (a `prometheus-client` registry of its
//! own, no global recorder, so tests may run several daemons in one process), served as
//! text at `GET /metrics`.
//!
//! Both fronts (the OpenAI routes and the gRPC relay) record each request through one
//! [`RequestObserver`] (`observer`), so they count the same way (and the `Status` rpc's
//! running and waiting counts are these gauges); the worker's lifecycle (up, standby ready,
//! restarts by cause) is set by the task that follows the supervisor (`crate::worker`).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `mlx_sidecar_time_to_first_token_seconds` | histogram | api | request arrival to first output |
//! | `mlx_sidecar_inter_token_latency_seconds` | histogram | api | time per token after the first |
//! | `mlx_sidecar_e2e_request_latency_seconds` | histogram | api | arrival to the final message |
//! | `mlx_sidecar_request_queue_time_seconds` | histogram | api | the worker's queue wait |
//! | `mlx_sidecar_requests_running` | gauge | api | requests that have output |
//! | `mlx_sidecar_requests_waiting` | gauge | api | requests sent, no output yet |
//! | `mlx_sidecar_worker_up` | gauge | | 1 while a worker is ready |
//! | `mlx_sidecar_standby_ready` | gauge | | 1 while a standby can take over |
//! | `mlx_sidecar_prompt_tokens_total` | counter | api | prompt tokens of finished requests |
//! | `mlx_sidecar_generation_tokens_total` | counter | api | tokens generated |
//! | `mlx_sidecar_requests_total` | counter | api, finish_reason | finished requests |
//! | `mlx_sidecar_request_errors_total` | counter | api, code | failed requests, by gRPC code name |
//! | `mlx_sidecar_worker_restarts_total` | counter | cause, worker | restarts of the active worker (`worker="active"`) and of the standby (`worker="standby"`) |
//! | `mlx_sidecar_replica_up` | gauge | replica | 1 while that replica's worker is ready |
//! | `mlx_sidecar_replica_requests_in_flight` | gauge | replica | requests on that replica |
//! | `mlx_sidecar_replica_restarts_total` | counter | replica | workers started in its place after the first |
//! | `mlx_sidecar_stream_resumes_total` | counter | | streams resumed on the next worker |
//! | `mlx_sidecar_shadow_prefills_total` | counter | | streams' prompts a standby prefilled ahead (`serve --standby`) |
//! | `mlx_sidecar_shard_ranks` | gauge | backend | processes of a sharded model's group (0 until a hostfile is read) |
//! | `mlx_sidecar_shard_rank_pid` | gauge | rank | each rank's process id while the group runs |
//!
//! The `replica` series (index from 0; one replica without `serve --workers`) are read
//! from the supervisor when the metrics are served, and at each lifecycle event. The
//! `shard_*` series exist only for a sharded model (`serve --shard-ranks N`).

mod observer;

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

pub(crate) use observer::RequestObserver;

/// Which front a request came through (the `api` label: `http` or `grpc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Api {
    /// The OpenAI-compatible HTTP routes.
    Http,
    /// The gRPC relay.
    Grpc,
}

/// Why the active worker was restarted (the `cause` label of `worker_restarts_total`:
/// `exit`, `signal` or `unhealthy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RestartCause {
    /// It exited by itself.
    Exit,
    /// A signal killed it (not the supervisor's health kill).
    Signal,
    /// The supervisor killed it after failed health checks or a start-up timeout.
    Unhealthy,
}

/// Which worker a restart replaced (the `worker` label of `worker_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WorkerRole {
    /// The worker serving requests.
    Active,
    /// The idle standby, ready to take over.
    Standby,
}

/// How a request finished (the `finish_reason` label), from [`mlx_sidecar::FinishReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FinishLabel {
    Stop,
    Length,
    Cancelled,
    Unspecified,
}

impl From<mlx_sidecar::FinishReason> for FinishLabel {
    fn from(reason: mlx_sidecar::FinishReason) -> Self {
        match reason {
            mlx_sidecar::FinishReason::Stop => FinishLabel::Stop,
            mlx_sidecar::FinishReason::Length => FinishLabel::Length,
            mlx_sidecar::FinishReason::Cancelled => FinishLabel::Cancelled,
            mlx_sidecar::FinishReason::Unspecified => FinishLabel::Unspecified,
        }
    }
}

/// Label values in lower case, as Prometheus conventions (and vLLM's metrics) have them.
macro_rules! lower_case_label_value {
    ($type:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(match self {
                    $(Self::$variant => $text),+
                })
            }
        }
    };
}

lower_case_label_value!(Api { Http => "http", Grpc => "grpc" });
lower_case_label_value!(RestartCause { Exit => "exit", Signal => "signal", Unhealthy => "unhealthy" });
lower_case_label_value!(WorkerRole { Active => "active", Standby => "standby" });
lower_case_label_value!(FinishLabel {
    Stop => "stop",
    Length => "length",
    Cancelled => "cancelled",
    Unspecified => "unspecified",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    api: Api,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FinishLabels {
    api: Api,
    finish_reason: FinishLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    api: Api,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ShardLabels {
    backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RankLabels {
    rank: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RestartLabels {
    cause: RestartCause,
    worker: WorkerRole,
}

type HistogramFamily = Family<ApiLabels, Histogram, fn() -> Histogram>;

// Buckets in seconds, in the spirit of vLLM's: fine where a local model's figures fall.
const TTFT_BUCKETS: [f64; 18] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0,
];
const ITL_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 1.0,
];
const E2E_BUCKETS: [f64; 17] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0,
    960.0,
];
const QUEUE_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS)
}
fn itl_histogram() -> Histogram {
    Histogram::new(ITL_BUCKETS)
}
fn e2e_histogram() -> Histogram {
    Histogram::new(E2E_BUCKETS)
}
fn queue_histogram() -> Histogram {
    Histogram::new(QUEUE_BUCKETS)
}

/// The daemon's metrics; cheap to clone (all clones share one registry).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    time_to_first_token: HistogramFamily,
    inter_token_latency: HistogramFamily,
    e2e_latency: HistogramFamily,
    queue_time: HistogramFamily,
    running: Family<ApiLabels, Gauge>,
    waiting: Family<ApiLabels, Gauge>,
    worker_up: Gauge,
    standby_ready: Gauge,
    prompt_tokens: Family<ApiLabels, Counter>,
    generation_tokens: Family<ApiLabels, Counter>,
    requests: Family<FinishLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    restarts: Family<RestartLabels, Counter>,
    replica_up: Family<ReplicaLabels, Gauge>,
    replica_in_flight: Family<ReplicaLabels, Gauge>,
    replica_restarts: Family<ReplicaLabels, Counter>,
    resumes: Counter,
    shadow_prefills: Counter,
    shard_ranks: Family<ShardLabels, Gauge>,
    shard_rank_pid: Family<RankLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (labelled series of both fronts
    /// start at zero, so they show before the first request).
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mlx_sidecar");
        let inner = Inner {
            time_to_first_token: Family::new_with_constructor(ttft_histogram as fn() -> Histogram),
            inter_token_latency: Family::new_with_constructor(itl_histogram as fn() -> Histogram),
            e2e_latency: Family::new_with_constructor(e2e_histogram as fn() -> Histogram),
            queue_time: Family::new_with_constructor(queue_histogram as fn() -> Histogram),
            running: Family::default(),
            waiting: Family::default(),
            worker_up: Gauge::default(),
            standby_ready: Gauge::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            requests: Family::default(),
            errors: Family::default(),
            restarts: Family::default(),
            replica_up: Family::default(),
            replica_in_flight: Family::default(),
            replica_restarts: Family::default(),
            resumes: Counter::default(),
            shadow_prefills: Counter::default(),
            shard_ranks: Family::default(),
            shard_rank_pid: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register_with_unit(
            "time_to_first_token",
            "Time from a request's arrival to its first output",
            Unit::Seconds,
            inner.time_to_first_token.clone(),
        );
        r.register_with_unit(
            "inter_token_latency",
            "Time per generated token after the first",
            Unit::Seconds,
            inner.inter_token_latency.clone(),
        );
        r.register_with_unit(
            "e2e_request_latency",
            "Time from a request's arrival to its final message",
            Unit::Seconds,
            inner.e2e_latency.clone(),
        );
        r.register_with_unit(
            "request_queue_time",
            "Time a request waited in the worker's queue before prefill",
            Unit::Seconds,
            inner.queue_time.clone(),
        );
        r.register(
            "requests_running",
            "Requests whose output has started",
            inner.running.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests sent to the worker without output yet",
            inner.waiting.clone(),
        );
        r.register(
            "worker_up",
            "1 while a worker is ready to serve",
            inner.worker_up.clone(),
        );
        r.register(
            "standby_ready",
            "1 while a loaded standby worker can take over",
            inner.standby_ready.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of finished requests",
            inner.prompt_tokens.clone(),
        );
        r.register(
            "generation_tokens",
            "Tokens generated",
            inner.generation_tokens.clone(),
        );
        r.register(
            "requests",
            "Requests that finished, by finish reason",
            inner.requests.clone(),
        );
        r.register(
            "request_errors",
            "Requests that failed, by gRPC status code name",
            inner.errors.clone(),
        );
        r.register(
            "worker_restarts",
            "Restarts of the active worker and of the standby, by cause",
            inner.restarts.clone(),
        );
        r.register(
            "replica_up",
            "1 while the replica's worker is ready to serve",
            inner.replica_up.clone(),
        );
        r.register(
            "replica_requests_in_flight",
            "Requests on the replica: sent, not finished",
            inner.replica_in_flight.clone(),
        );
        r.register(
            "replica_restarts",
            "Workers started in the replica's place after its first",
            inner.replica_restarts.clone(),
        );
        r.register(
            "stream_resumes",
            "Generation streams resumed on the next worker after their worker died",
            inner.resumes.clone(),
        );
        r.register(
            "shadow_prefills",
            "Streams' prompts (and tokens delivered so far) a standby prefilled ahead",
            inner.shadow_prefills.clone(),
        );
        r.register(
            "shard_ranks",
            "Processes of the sharded model's mx.distributed group, by backend",
            inner.shard_ranks.clone(),
        );
        r.register(
            "shard_rank_pid",
            "Process id of each rank of the sharded model's group while it runs",
            inner.shard_rank_pid.clone(),
        );
        for api in [Api::Http, Api::Grpc] {
            let labels = ApiLabels { api };
            let _ = inner.time_to_first_token.get_or_create(&labels);
            let _ = inner.inter_token_latency.get_or_create(&labels);
            let _ = inner.e2e_latency.get_or_create(&labels);
            let _ = inner.queue_time.get_or_create(&labels);
            let _ = inner.running.get_or_create(&labels);
            let _ = inner.waiting.get_or_create(&labels);
            let _ = inner.prompt_tokens.get_or_create(&labels);
            let _ = inner.generation_tokens.get_or_create(&labels);
            // The codes a client can cause or see, so their series start at zero.
            for code in [
                tonic::Code::InvalidArgument,
                tonic::Code::NotFound,
                tonic::Code::ResourceExhausted,
                tonic::Code::Unavailable,
                tonic::Code::DeadlineExceeded,
                tonic::Code::Cancelled,
                tonic::Code::Unauthenticated,
                tonic::Code::Internal,
            ] {
                let _ = inner.errors.get_or_create(&ErrorLabels {
                    api,
                    code: code_name(code).to_owned(),
                });
            }
            for finish_reason in [FinishLabel::Stop, FinishLabel::Length] {
                let _ = inner
                    .requests
                    .get_or_create(&FinishLabels { api, finish_reason });
            }
        }
        for cause in [
            RestartCause::Exit,
            RestartCause::Signal,
            RestartCause::Unhealthy,
        ] {
            for worker in [WorkerRole::Active, WorkerRole::Standby] {
                let _ = inner
                    .restarts
                    .get_or_create(&RestartLabels { cause, worker });
            }
        }
        let inner = Inner { registry, ..inner };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The metrics in the OpenMetrics text format (what `GET /metrics` serves).
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// The content type of [`Metrics::encode`]'s text.
    pub(crate) const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// The content type of [`Metrics::encode_prometheus`]'s text.
    pub(crate) const PROMETHEUS_CONTENT_TYPE: &'static str =
        "text/plain; version=0.0.4; charset=utf-8";

    /// The metrics in Prometheus' classic text format (0.0.4), for scrapers and parsers
    /// that do not ask for OpenMetrics: a counter's `# HELP`/`# TYPE` lines name its
    /// `_total` samples, and there are no `# UNIT` or `# EOF` lines. Without this a
    /// classic parser (such as `prometheus_client.parser` in Python) reads each counter's
    /// samples as an untyped metric.
    pub(crate) fn encode_prometheus(&self) -> Result<String, std::fmt::Error> {
        let open_metrics = self.encode()?;
        let counters: std::collections::HashSet<&str> = open_metrics
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut text = String::with_capacity(open_metrics.len());
        for line in open_metrics.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            match renamed {
                Some(renamed) => writeln!(text, "{renamed}")?,
                None => writeln!(text, "{line}")?,
            }
        }
        Ok(text)
    }

    /// Starts observing one request that is about to be sent to the worker: it counts as
    /// waiting until its first output.
    pub(crate) fn start(&self, api: Api) -> RequestObserver {
        RequestObserver::new(self.clone(), api)
    }

    /// Counts a request that failed before it had an observer (for example one refused by
    /// a middleware before its body was read).
    pub(crate) fn record_error(&self, api: Api, code: tonic::Code) {
        self.inner
            .errors
            .get_or_create(&ErrorLabels {
                api,
                code: code_name(code).to_owned(),
            })
            .inc();
    }

    /// Requests with output now, over both fronts (the `Status` rpc's `requests_running`).
    pub(crate) fn running(&self) -> u32 {
        sum_over_apis(&self.inner.running)
    }

    /// Requests sent without output yet, over both fronts (`Status`'s `requests_waiting`).
    pub(crate) fn waiting(&self) -> u32 {
        sum_over_apis(&self.inner.waiting)
    }

    /// Sets `mlx_sidecar_worker_up`.
    pub(crate) fn set_worker_up(&self, up: bool) {
        self.inner.worker_up.set(i64::from(up));
    }

    /// Sets `mlx_sidecar_standby_ready`.
    pub(crate) fn set_standby_ready(&self, ready: bool) {
        self.inner.standby_ready.set(i64::from(ready));
    }

    /// Sets the `replica` series from the supervisor's `replicas`.
    pub(crate) fn set_replicas(&self, replicas: &[mlx_sidecar::ReplicaStatus]) {
        for replica in replicas {
            let labels = ReplicaLabels {
                replica: replica.index.to_string(),
            };
            let ready = matches!(
                replica.state,
                mlx_sidecar::WorkerState::Ready | mlx_sidecar::WorkerState::Unhealthy
            ) && replica.pid.is_some();
            self.inner
                .replica_up
                .get_or_create(&labels)
                .set(i64::from(ready));
            self.inner
                .replica_in_flight
                .get_or_create(&labels)
                .set(i64::try_from(replica.in_flight).unwrap_or(i64::MAX));
            // The supervisor counts; the counter catches up with it.
            let restarts = self.inner.replica_restarts.get_or_create(&labels);
            let behind = replica.restarts.saturating_sub(restarts.get());
            if behind > 0 {
                restarts.inc_by(behind);
            }
        }
    }

    /// Catches the shadow prefill counter up with the supervisor's clients' count.
    pub(crate) fn set_shadow_prefills(&self, total: u64) {
        let behind = total.saturating_sub(self.inner.shadow_prefills.get());
        if behind > 0 {
            self.inner.shadow_prefills.inc_by(behind);
        }
    }

    /// Sets the `shard_*` series from the group the daemon shows (nothing when not sharded):
    /// a rank whose pid is not known now loses its `shard_rank_pid` series.
    pub(crate) fn set_shard(&self, shard: Option<&mlx_sidecar::ShardInfo>) {
        let Some(shard) = shard else { return };
        self.inner
            .shard_ranks
            .get_or_create(&ShardLabels {
                backend: shard.backend.clone(),
            })
            .set(i64::from(shard.ranks));
        let ranks = usize::try_from(shard.ranks).unwrap_or(usize::MAX);
        for rank in 0..ranks.max(shard.pids.len()) {
            let labels = RankLabels {
                rank: rank.to_string(),
            };
            match shard.pids.get(rank) {
                Some(pid) => {
                    self.inner
                        .shard_rank_pid
                        .get_or_create(&labels)
                        .set(i64::from(*pid));
                }
                None => {
                    self.inner.shard_rank_pid.remove(&labels);
                }
            }
        }
    }

    /// Counts one stream resumed on the next worker.
    pub(crate) fn count_resume(&self) {
        self.inner.resumes.inc();
    }

    /// Counts one restart of the active worker or of the standby.
    pub(crate) fn count_restart(&self, worker: WorkerRole, cause: RestartCause) {
        self.inner
            .restarts
            .get_or_create(&RestartLabels { cause, worker })
            .inc();
    }
}

/// A gauge's value summed over both fronts (never below 0).
fn sum_over_apis(family: &Family<ApiLabels, Gauge>) -> u32 {
    let sum: i64 = [Api::Http, Api::Grpc]
        .into_iter()
        .map(|api| family.get_or_create(&ApiLabels { api }).get())
        .sum();
    u32::try_from(sum.max(0)).unwrap_or(u32::MAX)
}

/// The lower-case name of a gRPC status code, as the `code` label spells it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mlx_sidecar::{FinishReason, Finished, Timings, Usage};

    use super::*;

    fn finished(reason: FinishReason, prompt: u32, completion: u32) -> Finished {
        Finished {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                ..Usage::default()
            },
            timings: Timings {
                queue_wait_ms: 3.0,
                ..Timings::default()
            },
            matched_stop: None,
            stop_token_id: None,
            request_id: "r".into(),
        }
    }

    /// The value of the sample whose line starts with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
    }

    #[test]
    fn every_metric_is_exposed_before_any_request() {
        let text = Metrics::new().encode().expect("encode");
        for name in [
            "mlx_sidecar_time_to_first_token_seconds",
            "mlx_sidecar_inter_token_latency_seconds",
            "mlx_sidecar_e2e_request_latency_seconds",
            "mlx_sidecar_request_queue_time_seconds",
            "mlx_sidecar_requests_running",
            "mlx_sidecar_requests_waiting",
            "mlx_sidecar_worker_up",
            "mlx_sidecar_standby_ready",
            "mlx_sidecar_prompt_tokens",
            "mlx_sidecar_generation_tokens",
            "mlx_sidecar_requests",
            "mlx_sidecar_request_errors",
            "mlx_sidecar_worker_restarts",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_requests_total{api=\"http\",finish_reason=\"stop\"}"
            ),
            0.0
        );
        assert!(
            text.contains(
                "mlx_sidecar_time_to_first_token_seconds_bucket{le=\"0.005\",api=\"http\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let metrics = Metrics::new();
        metrics.start(Api::Http).on_error(tonic::Code::Unavailable);
        let text = metrics.encode_prometheus().expect("encode");
        assert!(
            text.contains("# TYPE mlx_sidecar_request_errors_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP mlx_sidecar_request_errors_total Requests that failed"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mlx_sidecar_worker_up gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mlx_sidecar_time_to_first_token_seconds histogram\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_request_errors_total{api=\"http\",code=\"unavailable\"}"
            ),
            1.0
        );
    }

    #[test]
    fn an_observed_request_moves_gauges_counters_and_histograms() {
        let metrics = Metrics::new();
        let mut observer = metrics.start(Api::Http);
        let text = metrics.encode().expect("encode");
        assert_eq!(
            sample(&text, "mlx_sidecar_requests_waiting{api=\"http\"}"),
            1.0
        );
        assert_eq!(metrics.running() + metrics.waiting(), 1);
        observer.on_output(1);
        let text = metrics.encode().expect("encode");
        assert_eq!(
            sample(&text, "mlx_sidecar_requests_waiting{api=\"http\"}"),
            0.0
        );
        assert_eq!(
            sample(&text, "mlx_sidecar_requests_running{api=\"http\"}"),
            1.0
        );
        std::thread::sleep(Duration::from_millis(2));
        observer.on_output(3);
        observer.on_finished(&finished(FinishReason::Length, 7, 4));
        let text = metrics.encode().expect("encode");
        assert_eq!(
            sample(&text, "mlx_sidecar_requests_running{api=\"http\"}"),
            0.0
        );
        assert_eq!(metrics.running() + metrics.waiting(), 0);
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_requests_total{api=\"http\",finish_reason=\"length\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(&text, "mlx_sidecar_prompt_tokens_total{api=\"http\"}"),
            7.0
        );
        assert_eq!(
            sample(&text, "mlx_sidecar_generation_tokens_total{api=\"http\"}"),
            4.0
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_time_to_first_token_seconds_count{api=\"http\"}"
            ),
            1.0
        );
        // Three tokens after the first: three inter-token observations.
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_inter_token_latency_seconds_count{api=\"http\"}"
            ),
            3.0
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_request_queue_time_seconds_sum{api=\"http\"}"
            ),
            0.003
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_e2e_request_latency_seconds_count{api=\"grpc\"}"
            ),
            0.0
        );
    }

    #[test]
    fn errors_and_dropped_observers_are_counted_by_code() {
        let metrics = Metrics::new();
        metrics
            .start(Api::Grpc)
            .on_error(tonic::Code::InvalidArgument);
        let mut gone = metrics.start(Api::Http);
        gone.on_output(1);
        drop(gone);
        metrics.record_error(Api::Http, tonic::Code::ResourceExhausted);
        let text = metrics.encode().expect("encode");
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_request_errors_total{api=\"grpc\",code=\"invalid_argument\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_request_errors_total{api=\"http\",code=\"cancelled\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_request_errors_total{api=\"http\",code=\"resource_exhausted\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(&text, "mlx_sidecar_requests_running{api=\"http\"}"),
            0.0
        );
        assert_eq!(
            sample(&text, "mlx_sidecar_requests_waiting{api=\"grpc\"}"),
            0.0
        );
        assert_eq!(metrics.running() + metrics.waiting(), 0);
    }

    #[test]
    fn worker_gauges_and_restarts() {
        let metrics = Metrics::new();
        metrics.set_worker_up(true);
        metrics.set_standby_ready(true);
        metrics.count_restart(WorkerRole::Active, RestartCause::Signal);
        metrics.count_restart(WorkerRole::Standby, RestartCause::Exit);
        let text = metrics.encode().expect("encode");
        assert_eq!(sample(&text, "mlx_sidecar_worker_up "), 1.0);
        assert_eq!(sample(&text, "mlx_sidecar_standby_ready "), 1.0);
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_worker_restarts_total{cause=\"signal\",worker=\"active\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_worker_restarts_total{cause=\"exit\",worker=\"standby\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "mlx_sidecar_worker_restarts_total{cause=\"unhealthy\",worker=\"active\"}"
            ),
            0.0
        );
    }
}
