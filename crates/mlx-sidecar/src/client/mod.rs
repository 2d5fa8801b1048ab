//! The typed client: [`Client`] calls the worker's `Inference` service.
//!
//! A client gets its connection from a *source*: a supervised client watches the
//! supervisor's current worker (a `watch` channel carrying one tonic channel per worker
//! generation), so it keeps working across restarts; [`Client::connect`] talks to one
//! [`Endpoint`] without a supervisor: a `mlx-sidecar serve` daemon over its Unix socket or
//! TCP (with an optional API key, [`Client::with_api_key`]), or a worker's own socket.
//! Cloning is cheap.
//!
//! Every call has a deadline (sent as `grpc-timeout` and enforced locally). Within it, a
//! call waits for a ready worker and retries `UNAVAILABLE` and broken connections with
//! backoff (backon) — but a generation is sent afresh only until its first output arrives.
//! After that, a dying worker's stream is *resumed*: the original request plus a
//! continuation (the token ids already delivered) goes to the next ready worker, which
//! carries on with the next token, so the caller sees one unbroken stream. Death is
//! noticed from the broken connection or the supervisor's crash notification, whichever
//! comes first. Past the request's resume limit (default 3) or its deadline, or with
//! resuming turned off, the stream ends with [`Error::WorkerDied`], which carries the text
//! already received (see [`GenerateStream`]).
//!
//! The parts: `request` (what callers send: [`GenerateRequest`], [`TokenizeRequest`] and
//! their wire form), `types` (what comes back, from the wire messages), `stream` (one
//! generation's events and how a dying worker ends them), `shadow` (a stream's prompt
//! prefilled ahead on the standby it would resume on), `endpoint` (the addresses
//! [`Client::connect`] takes), `auth` (the API key's metadata); the connection itself and
//! the supervisor's published worker come from [`crate::worker`].

mod auth;
mod daemon_status;
mod endpoint;
mod request;
mod shadow;
mod stream;
mod types;

use std::{
    future::Future,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};
use tonic::{Streaming, transport::Channel};

pub use daemon_status::{DaemonListener, DaemonReplica, DaemonStatus};
pub use endpoint::Endpoint;
pub use request::{
    ChatMessage, Continuation, DEFAULT_MAX_RESUMES, GenerateRequest, JsonSchema, Prompt,
    ResponseFormat, TokenizeRequest,
};
pub use stream::{GenerateStream, RESUMES_METADATA};
pub use types::{
    Completion, FinishReason, Finished, GenerateEvent, HealthStatus, ModelInfo, ShardInfo, Timings,
    TokenLogprob, Tokenized, TopLogprob, Usage,
};

use mlx_sidecar_proto::v1::{
    self as pb, daemon_client::DaemonClient, inference_client::InferenceClient,
};

use crate::{
    Error, LifecycleEvent,
    worker::{LoadGuard, Replicas, WorkerId, WorkerView, health, pool_state, transport},
};
use auth::BearerToken;

/// Default deadline of unary calls (tokenize, detokenize, model info, health).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline of a whole generation.
const DEFAULT_GENERATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long [`Client::connect`] waits for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the worker's `Inference` service. Cloning is cheap.
///
/// [`Supervisor::client`](crate::Supervisor::client) makes one that always talks to the
/// supervisor's current worker, across restarts; [`Client::connect`] talks to a
/// `mlx-sidecar serve` daemon (or a worker's socket) without a supervisor.
///
/// Every call has a deadline (sent as `grpc-timeout` and enforced locally). Within it, a
/// call waits for a ready worker and retries `UNAVAILABLE` and broken connections with
/// backoff, but a generation only until its first output arrives. After that, a dying
/// worker ends the stream with [`Error::WorkerDied`], which carries the text already
/// received (see [`GenerateStream`]).
#[derive(Debug, Clone)]
pub struct Client {
    source: Source,
    /// Sent as `authorization` metadata on every call, when set.
    bearer: Option<BearerToken>,
    timeout: Duration,
    generate_timeout: Duration,
    /// What these streams counted, shared by the clones of this client (and, for a
    /// supervised client, by every client of the same supervisor).
    counts: Arc<StreamCounts>,
}

/// What a client's streams count (see [`Client::resumes`], [`Client::shadow_prefills`]).
#[derive(Debug, Default)]
pub(crate) struct StreamCounts {
    /// Streams resumed on another worker.
    pub(crate) resumes: AtomicU64,
    /// Shadow prefills the standbys completed for these streams (see `shadow`).
    pub(crate) shadow_prefills: AtomicU64,
}

#[derive(Debug, Clone)]
enum Source {
    /// One endpoint (a daemon or a worker's socket), no supervisor.
    Direct { channel: Channel },
    /// Whatever workers the supervisor's replicas run now; resumes are announced on its
    /// events.
    Supervised {
        replicas: Replicas,
        events: broadcast::Sender<LifecycleEvent>,
    },
}

/// A generation whose first message has arrived: the connection, the response stream and
/// that first message.
pub(crate) struct Started {
    pub(crate) conn: Conn,
    pub(crate) streaming: Streaming<pb::GenerateResponse>,
    pub(crate) first: Option<pb::GenerateResponse>,
    /// How many times the request was sent until then.
    pub(crate) attempts: u32,
    /// How many of those attempts the supervisor saw the worker die under.
    pub(crate) deaths: u32,
}

/// The connection one call uses, and how to notice that its worker died.
pub(crate) struct Conn {
    channel: Channel,
    /// The supervisor's view of this call's replica and the worker it talks to.
    watch: Option<(watch::Receiver<WorkerView>, WorkerId)>,
    /// Counts this call in flight on its replica, for the least-loaded choice.
    _load: Option<LoadGuard>,
}

impl Conn {
    /// Resolves when this call's worker has died, with its exit status when known;
    /// never for a direct connection.
    pub(crate) async fn died(&mut self) -> Option<String> {
        let Some((view, id)) = &mut self.watch else {
            return std::future::pending().await;
        };
        let generation = id.generation;
        match view
            .wait_for(|v| v.generation != generation || !v.alive)
            .await
        {
            Ok(v) => v.last_status.map(|s| s.to_string()),
            Err(_) => Some("the supervisor stopped".to_owned()),
        }
    }

    /// Whether a supervisor keeps running workers: a worker that cancels its requests
    /// (shutting down) is then being replaced, not stopped with the rest.
    pub(crate) fn supervisor_carries_on(&self) -> bool {
        use crate::WorkerState;
        self.watch.as_ref().is_some_and(|(view, _)| {
            !matches!(
                view.borrow().state,
                WorkerState::Stopping | WorkerState::Stopped | WorkerState::GaveUp
            )
        })
    }

    /// The view of this call's replica, when its streams shadow their prompts on its
    /// standby (see `shadow`).
    pub(crate) fn shadow_view(&self) -> Option<watch::Receiver<WorkerView>> {
        let (view, _) = self.watch.as_ref()?;
        view.borrow().shadow_prefill.then(|| view.clone())
    }

    /// This call's worker (its replica and generation), when a supervisor runs it.
    pub(crate) fn generation(&self) -> Option<WorkerId> {
        self.watch.as_ref().map(|(_, id)| *id)
    }

    /// The process id of this call's worker, when a supervisor runs it.
    pub(crate) fn worker_pid(&self) -> Option<u32> {
        let (view, id) = self.watch.as_ref()?;
        let view = view.borrow();
        if view.generation == id.generation {
            view.pid
        } else {
            None
        }
    }
}

impl Client {
    pub(crate) fn supervised(
        replicas: Replicas,
        events: broadcast::Sender<LifecycleEvent>,
        counts: Arc<StreamCounts>,
    ) -> Self {
        Client {
            counts,
            ..Client::with_source(Source::Supervised { replicas, events })
        }
    }

    fn with_source(source: Source) -> Self {
        Client {
            source,
            bearer: None,
            timeout: DEFAULT_TIMEOUT,
            generate_timeout: DEFAULT_GENERATE_TIMEOUT,
            counts: Arc::default(),
        }
    }

    /// How many times a generation stream was resumed on another worker after the worker
    /// serving it died (see [`GenerateRequest::max_resumes`]). Counted across the clones
    /// of this client; for a client from [`crate::Supervisor::client`], across every
    /// client of that supervisor.
    pub fn resumes(&self) -> u64 {
        self.counts.resumes.load(Ordering::Relaxed)
    }

    /// How many times a standby finished prefilling a stream's prompt (and the tokens
    /// delivered by then) into its prefix cache, so that the stream would resume there
    /// without computing them again (see [`crate::SupervisorConfig::shadow_prefill`]).
    /// Counted like [`Client::resumes`].
    pub fn shadow_prefills(&self) -> u64 {
        self.counts.shadow_prefills.load(Ordering::Relaxed)
    }

    /// The counts a stream's shadow adds its completed prefills to.
    pub(crate) fn counts(&self) -> Arc<StreamCounts> {
        self.counts.clone()
    }

    /// A client of whatever serves the `mlx_sidecar.v1.Inference` service at `endpoint`,
    /// without a supervisor: usually a `mlx-sidecar serve` daemon, on its Unix socket
    /// ([`Endpoint::default_daemon`]) or on TCP; a worker's own socket works too.
    ///
    /// Fails at once when nothing accepts connections there ([`Error::Socket`] for a Unix
    /// socket, [`Error::Connect`] for TCP, within 10 s); later calls reconnect as needed
    /// and retry `UNAVAILABLE` within their deadlines, as with a supervised client (the
    /// daemon itself hides a worker restart before the first token). A daemon listening on
    /// TCP with a key needs [`Client::with_api_key`]; without it calls fail with
    /// `UNAUTHENTICATED`.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), mlx_sidecar::Error> {
    /// use mlx_sidecar::{Client, Endpoint, GenerateRequest};
    ///
    /// // The local daemon, on its default socket:
    /// let local = Client::connect(Endpoint::default_daemon()).await?;
    /// // A daemon on another machine, started with `--listen` and `--api-key-file`:
    /// let remote = Client::connect("http://gpu-box.lan:8080".parse()?)
    ///     .await?
    ///     .with_api_key(&std::env::var("MLX_SIDECAR_API_KEY").unwrap_or_default())?;
    /// let answer = remote.generate(GenerateRequest::text("Once upon")).await?.collect().await?;
    /// # drop((local, answer)); Ok(())
    /// # }
    /// ```
    pub async fn connect(endpoint: Endpoint) -> Result<Client, Error> {
        let channel = match endpoint {
            Endpoint::Unix(path) => {
                tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| Error::Socket {
                        path: path.clone(),
                        reason: format!("cannot connect: {e}"),
                    })?;
                transport::uds_channel(path)
            }
            Endpoint::Tcp { host, port } => {
                let uri = Endpoint::tcp_uri(&host, port);
                transport::tcp_channel(uri.clone(), CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| Error::Connect {
                        endpoint: uri,
                        reason: error_chain(&e),
                    })?
            }
        };
        Ok(Client::with_source(Source::Direct { channel }))
    }

    /// A client of the worker (or daemon) listening on the Unix socket `path`: the same as
    /// [`Client::connect`] with [`Endpoint::Unix`].
    pub async fn connect_uds(path: impl AsRef<Path>) -> Result<Client, Error> {
        Client::connect(Endpoint::Unix(path.as_ref().to_path_buf())).await
    }

    /// Sends `key` as `authorization: Bearer KEY` metadata on every call (generate,
    /// tokenize, detokenize, model info, health), as a daemon's TCP listener started with
    /// `--api-key-file` requires. Fails with [`Error::InvalidApiKey`] unless the key is
    /// non-empty visible ASCII. The key is never logged or shown by `Debug`.
    pub fn with_api_key(mut self, key: &str) -> Result<Self, Error> {
        self.bearer = Some(BearerToken::new(key)?);
        Ok(self)
    }

    /// Sets the deadline of unary calls (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the default deadline of a generation (default 600 s); a request's own
    /// [`GenerateRequest::deadline`] wins.
    pub fn with_generate_timeout(mut self, timeout: Duration) -> Self {
        self.generate_timeout = timeout;
        self
    }

    /// Generates text; the stream yields [`GenerateEvent`]s and ends after
    /// [`GenerateEvent::Finished`]. Returns once the first output has arrived (until then
    /// the call is retried on `UNAVAILABLE` within its deadline). When the worker dies
    /// after that, the stream is resumed on the next ready worker, up to
    /// [`GenerateRequest::max_resumes`] times within the deadline (see [`GenerateStream`]).
    pub async fn generate(&self, request: GenerateRequest) -> Result<GenerateStream, Error> {
        let deadline = request.deadline_or(self.generate_timeout);
        let deadline_at = Instant::now() + deadline;
        let proto = request.to_proto();
        let started = self
            .start(&proto, deadline, deadline_at, None, None)
            .await?;
        Ok(GenerateStream::new(
            self.clone(),
            proto,
            &request,
            started,
            deadline,
            deadline_at,
        ))
    }

    /// Sends `proto` until its first message arrives, retrying while that is retryable
    /// and `deadline_at` allows: a new generation, or a resumed one. With `max_deaths`,
    /// retrying stops once more workers than that died under the attempts (a continuation
    /// that kills every worker it reaches must not loop until the deadline). A worker of
    /// generation `avoid` (the one a resumed stream was cut by) is not called.
    pub(crate) async fn start(
        &self,
        proto: &pb::GenerateRequest,
        deadline: Duration,
        deadline_at: Instant,
        max_deaths: Option<u32>,
        avoid: Option<WorkerId>,
    ) -> Result<Started, Error> {
        let this = self;
        let attempts = AtomicU32::new(0);
        let attempts = &attempts;
        let deaths = AtomicU32::new(0);
        let deaths = &deaths;
        let attempt = move || async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            let mut conn = this.connection(deadline_at, avoid).await?;
            let req = this.request(
                proto.clone(),
                deadline_at.saturating_duration_since(Instant::now()),
            );
            let mut client = InferenceClient::new(conn.channel.clone());
            let started = async move {
                let mut streaming = client.generate(req).await?.into_inner();
                let first = streaming.message().await?;
                Ok::<_, tonic::Status>((streaming, first))
            };
            let result = tokio::select! {
                r = tokio::time::timeout_at(deadline_at, started) => match r {
                    Err(_) => Err(Error::Deadline { deadline, partial_text: String::new() }),
                    Ok(Ok(started)) => Ok(started),
                    Ok(Err(status)) => Err(status_error(status, deadline)),
                },
                status = conn.died() => {
                    deaths.fetch_add(1, Ordering::Relaxed);
                    Err(died_before_output(status))
                }
            };
            result.map(|(streaming, first)| (conn, streaming, first))
        };
        let may_retry = || max_deaths.is_none_or(|max| deaths.load(Ordering::Relaxed) <= max);
        let (conn, streaming, first) = retry_while(attempt, deadline_at, may_retry).await?;
        Ok(Started {
            conn,
            streaming,
            first,
            attempts: attempts.load(Ordering::Relaxed),
            deaths: deaths.load(Ordering::Relaxed),
        })
    }

    /// Counts a resumed stream, logs it and, for a supervised client, broadcasts it to the
    /// supervisor's subscribers.
    pub(crate) fn note_resumed(&self, event: LifecycleEvent) {
        self.counts.resumes.fetch_add(1, Ordering::Relaxed);
        if let LifecycleEvent::Resumed {
            pid,
            request_id,
            resume_count,
            delivered_tokens,
            stall,
            gap,
        } = &event
        {
            tracing::info!(?pid, %request_id, resume_count, delivered_tokens, ?stall, ?gap, "stream resumed on the next worker");
        }
        if let Source::Supervised { events, .. } = &self.source {
            // No subscriber is fine.
            let _ = events.send(event);
        }
    }

    /// Turns text (or a conversation, with the chat template applied) into token ids.
    pub async fn tokenize(&self, request: impl Into<TokenizeRequest>) -> Result<Tokenized, Error> {
        let proto = request.into().to_proto();
        let proto = &proto;
        let response = self
            .unary(move |channel, timeout| async move {
                let req = self.request(proto.clone(), timeout);
                InferenceClient::new(channel).tokenize(req).await
            })
            .await?;
        Ok(Tokenized {
            ids: response.ids,
            text: response.text,
        })
    }

    /// Turns token ids back into text.
    pub async fn detokenize(
        &self,
        ids: Vec<u32>,
        skip_special_tokens: bool,
    ) -> Result<String, Error> {
        let proto = pb::DetokenizeRequest {
            ids,
            skip_special_tokens,
        };
        let proto = &proto;
        let response = self
            .unary(move |channel, timeout| async move {
                let req = self.request(proto.clone(), timeout);
                InferenceClient::new(channel).detokenize(req).await
            })
            .await?;
        Ok(response.text)
    }

    /// Describes the loaded model, the device and the worker's memory use.
    pub async fn model_info(&self) -> Result<ModelInfo, Error> {
        let response = self
            .unary(|channel, timeout| async move {
                let req = self.request(pb::ModelInfoRequest {}, timeout);
                InferenceClient::new(channel).model_info(req).await
            })
            .await?;
        Ok(response.into())
    }

    /// Asks a `mlx-sidecar serve` daemon what it runs ([`DaemonStatus`]: model, device,
    /// worker pid and uptime, restarts, load, standby, listeners), through its
    /// `mlx_sidecar.v1.Daemon/Status` rpc. Answers also while the daemon has no ready
    /// worker. Only a client from [`Client::connect`] to a daemon can ask: a worker does
    /// not serve this rpc (`UNIMPLEMENTED`).
    pub async fn daemon_status(&self) -> Result<DaemonStatus, Error> {
        let response = self
            .unary(|channel, timeout| async move {
                let req = self.request(pb::StatusRequest {}, timeout);
                DaemonClient::new(channel).status(req).await
            })
            .await?;
        Ok(response.into())
    }

    /// Asks the worker for the health of its inference service, once (no waiting for
    /// readiness, no retry). A supervised client whose worker is starting or restarting
    /// gets [`HealthStatus::NotServing`].
    pub async fn health(&self) -> Result<HealthStatus, Error> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let channel = match &self.source {
            Source::Direct { channel } => channel.clone(),
            Source::Supervised { replicas, .. } => {
                let mut watchers = replicas.watchers();
                if let Some(error) = Replicas::terminal_error(&watchers) {
                    return Err(error);
                }
                match replicas.pick(&mut watchers, None) {
                    Some(picked) => picked.channel,
                    None => return Ok(HealthStatus::NotServing),
                }
            }
        };
        let bearer = self.bearer.as_ref().map(BearerToken::value);
        match health::check(&channel, self.timeout, bearer).await {
            Ok(ServingStatus::Serving) => Ok(HealthStatus::Serving),
            Ok(ServingStatus::NotServing) => Ok(HealthStatus::NotServing),
            Ok(_) => Ok(HealthStatus::Unknown),
            // A broken connection is retryable; an answer such as UNAUTHENTICATED keeps its code.
            Err(status) if transport::is_transport_failure(&status) => Err(Error::Rpc {
                code: tonic::Code::Unavailable,
                message: format!("health check failed: {}", status.message()),
            }),
            Err(status) => Err(Error::from(status)),
        }
    }

    /// A request carrying `message`, the deadline `timeout` (as `grpc-timeout`) and the
    /// API key, if any.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        if let Some(bearer) = &self.bearer {
            bearer.insert_into(request.metadata_mut());
        }
        request
    }

    /// Waits (until `deadline_at`) for a worker to call and returns the connection to it:
    /// with replicas, the ready one with the least work in flight (see `worker::pool`).
    /// With `avoid`, that worker (one that just died under a stream) is not used: the call
    /// goes to another ready replica, or waits for the next worker.
    async fn connection(
        &self,
        deadline_at: Instant,
        avoid: Option<WorkerId>,
    ) -> Result<Conn, Error> {
        let replicas = match &self.source {
            Source::Direct { channel } => {
                return Ok(Conn {
                    channel: channel.clone(),
                    watch: None,
                    _load: None,
                });
            }
            Source::Supervised { replicas, .. } => replicas,
        };
        let mut watchers = replicas.watchers();
        let started = Instant::now();
        loop {
            if let Some(picked) = replicas.pick(&mut watchers, avoid) {
                return Ok(Conn {
                    channel: picked.channel,
                    watch: Some((picked.view, picked.id)),
                    _load: Some(picked.load),
                });
            }
            if let Some(error) = Replicas::terminal_error(&watchers) {
                return Err(error);
            }
            match tokio::time::timeout_at(deadline_at, Replicas::changed(&mut watchers)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Stopped),
                Err(_) => {
                    return Err(Error::NotReady {
                        waited: started.elapsed(),
                        state: pool_state(&watchers).to_string(),
                    });
                }
            }
        }
    }

    /// Runs a unary call with the client's deadline, retrying while it is retryable.
    async fn unary<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = self.timeout;
        let deadline_at = Instant::now() + deadline;
        let call = &call;
        let this = self;
        let attempt = move || async move {
            let mut conn = this.connection(deadline_at, None).await?;
            let remaining = deadline_at.saturating_duration_since(Instant::now());
            tokio::select! {
                r = tokio::time::timeout_at(deadline_at, call(conn.channel.clone(), remaining)) => match r {
                    Err(_) => Err(Error::Deadline { deadline, partial_text: String::new() }),
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(status_error(status, deadline)),
                },
                status = conn.died() => Err(died_before_output(status)),
            }
        };
        retry(attempt, deadline_at).await
    }
}

/// Retries `attempt` with backoff while its error is retryable and the deadline allows.
async fn retry<T, F, Fut>(attempt: F, deadline_at: Instant) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    retry_while(attempt, deadline_at, || true).await
}

/// [`retry`], and only while `may_retry` also says so.
async fn retry_while<T, F, Fut>(
    attempt: F,
    deadline_at: Instant,
    may_retry: impl Fn() -> bool,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &Error| e.is_retryable() && Instant::now() < deadline_at && may_retry())
        .notify(|e: &Error, delay: Duration| {
            tracing::debug!(error = %e, ?delay, "retrying the call");
        })
        .await
}

/// The error for a status received before any output: a passed deadline is
/// [`Error::Deadline`], a broken connection is `UNAVAILABLE` (retryable), anything else
/// keeps the worker's code.
fn status_error(status: tonic::Status, deadline: Duration) -> Error {
    if transport::is_deadline(&status) {
        Error::Deadline {
            deadline,
            partial_text: String::new(),
        }
    } else if transport::is_transport_failure(&status) {
        Error::Rpc {
            code: tonic::Code::Unavailable,
            message: format!("connection to the worker failed: {}", status.message()),
        }
    } else {
        Error::from(status)
    }
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The error for a worker that died before sending anything (retryable).
fn died_before_output(status: Option<String>) -> Error {
    Error::Rpc {
        code: tonic::Code::Unavailable,
        message: match status {
            Some(status) => format!("the worker died ({status}) before answering"),
            None => "the worker died before answering".to_owned(),
        },
    }
}
