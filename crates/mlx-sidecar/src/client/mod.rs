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
//! backoff (backon) — but a generation is retried only until its first output arrives.
//! After that, a dying worker ends the stream with [`Error::WorkerDied`], which carries the
//! text already received; death is noticed from the broken connection or the supervisor's
//! crash notification, whichever comes first (see [`GenerateStream`]).
//!
//! The parts: `request` (what callers send: [`GenerateRequest`], [`TokenizeRequest`] and
//! their wire form), `types` (what comes back, from the wire messages), `stream` (one
//! generation's events and how a dying worker ends them), `endpoint` (the addresses
//! [`Client::connect`] takes), `auth` (the API key's metadata); the connection itself and
//! the supervisor's published worker come from [`crate::worker`].

mod auth;
mod daemon_status;
mod endpoint;
mod request;
mod stream;
mod types;

use std::{future::Future, path::Path, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use tokio::{sync::watch, time::Instant};
use tonic::transport::Channel;

pub use daemon_status::{DaemonListener, DaemonStatus};
pub use endpoint::Endpoint;
pub use request::{
    ChatMessage, GenerateRequest, JsonSchema, Prompt, ResponseFormat, TokenizeRequest,
};
pub use stream::GenerateStream;
pub use types::{
    Completion, FinishReason, Finished, GenerateEvent, HealthStatus, ModelInfo, Timings,
    TokenLogprob, Tokenized, TopLogprob, Usage,
};

use mlx_sidecar_proto::v1::{
    self as pb, daemon_client::DaemonClient, inference_client::InferenceClient,
};

use crate::{
    Error,
    worker::{WorkerView, health, transport},
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
}

#[derive(Debug, Clone)]
enum Source {
    /// One endpoint (a daemon or a worker's socket), no supervisor.
    Direct { channel: Channel },
    /// Whatever worker the supervisor runs now.
    Supervised { view: watch::Receiver<WorkerView> },
}

/// The connection one call uses, and how to notice that its worker died.
pub(crate) struct Conn {
    channel: Channel,
    /// The supervisor's view and the worker generation this call talks to.
    watch: Option<(watch::Receiver<WorkerView>, u64)>,
}

impl Conn {
    /// Resolves when this call's worker has died, with its exit status when known;
    /// never for a direct connection.
    pub(crate) async fn died(&mut self) -> Option<String> {
        let Some((view, generation)) = &mut self.watch else {
            return std::future::pending().await;
        };
        let generation = *generation;
        match view
            .wait_for(|v| v.generation != generation || !v.alive)
            .await
        {
            Ok(v) => v.last_status.map(|s| s.to_string()),
            Err(_) => Some("the supervisor stopped".to_owned()),
        }
    }
}

impl Client {
    pub(crate) fn supervised(view: watch::Receiver<WorkerView>) -> Self {
        Client::with_source(Source::Supervised { view })
    }

    fn with_source(source: Source) -> Self {
        Client {
            source,
            bearer: None,
            timeout: DEFAULT_TIMEOUT,
            generate_timeout: DEFAULT_GENERATE_TIMEOUT,
        }
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
    /// the call is retried on `UNAVAILABLE` within its deadline).
    pub async fn generate(&self, request: GenerateRequest) -> Result<GenerateStream, Error> {
        let deadline = request.deadline_or(self.generate_timeout);
        let deadline_at = Instant::now() + deadline;
        let proto = request.to_proto();
        let proto = &proto;
        let this = self;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let attempts = &attempts;
        let attempt = move || async move {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut conn = this.connection(deadline_at).await?;
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
                status = conn.died() => Err(died_before_output(status)),
            };
            result.map(|(streaming, first)| (conn, streaming, first))
        };
        let (conn, streaming, first) = retry(attempt, deadline_at).await?;
        Ok(GenerateStream::new(
            conn,
            streaming,
            first,
            deadline,
            deadline_at,
            attempts.load(std::sync::atomic::Ordering::Relaxed),
        ))
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
            Source::Supervised { view } => {
                let view = view.borrow();
                if view.is_terminal() {
                    return Err(view.terminal_error());
                }
                match view.usable_channel() {
                    Some(channel) => channel.clone(),
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

    /// Waits (until `deadline_at`) for a worker to call and returns the connection to it.
    async fn connection(&self, deadline_at: Instant) -> Result<Conn, Error> {
        let view = match &self.source {
            Source::Direct { channel } => {
                return Ok(Conn {
                    channel: channel.clone(),
                    watch: None,
                });
            }
            Source::Supervised { view } => view,
        };
        let mut view = view.clone();
        let started = Instant::now();
        let found = {
            let waited = tokio::time::timeout_at(
                deadline_at,
                view.wait_for(|v| v.usable_channel().is_some() || v.is_terminal()),
            )
            .await;
            match waited {
                Err(_) => None,
                Ok(Err(_)) => return Err(Error::Stopped),
                Ok(Ok(v)) => Some(match v.usable_channel() {
                    Some(channel) => Ok((channel.clone(), v.generation)),
                    None => Err(v.terminal_error()),
                }),
            }
        };
        let Some(found) = found else {
            return Err(Error::NotReady {
                waited: started.elapsed(),
                state: view.borrow().state.to_string(),
            });
        };
        let (channel, generation) = found?;
        Ok(Conn {
            channel,
            watch: Some((view, generation)),
        })
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
            let mut conn = this.connection(deadline_at).await?;
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
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &Error| e.is_retryable() && Instant::now() < deadline_at)
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
