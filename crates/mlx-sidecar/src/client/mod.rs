//! The typed client: [`Client`] calls the worker's `Inference` service.
//!
//! A client gets its connection from a *source*: a supervised client watches the
//! supervisor's current worker (a `watch` channel carrying one tonic channel per worker
//! generation), so it keeps working across restarts; [`Client::connect_uds`] talks to one
//! socket without a supervisor. Cloning is cheap.
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
//! generation's events and how a dying worker ends them); the connection itself and the
//! supervisor's published worker come from [`crate::worker`].

mod request;
mod stream;
mod types;

use std::{future::Future, path::Path, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use tokio::{sync::watch, time::Instant};
use tonic::transport::Channel;

pub use request::{ChatMessage, GenerateRequest, Prompt, TokenizeRequest};
pub use stream::GenerateStream;
pub use types::{
    Completion, FinishReason, Finished, GenerateEvent, HealthStatus, ModelInfo, Timings,
    TokenLogprob, Tokenized, TopLogprob, Usage,
};

use mlx_sidecar_proto::v1::{self as pb, inference_client::InferenceClient};

use crate::{
    Error,
    worker::{WorkerView, health, transport},
};

/// Default deadline of unary calls (tokenize, detokenize, model info, health).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline of a whole generation.
const DEFAULT_GENERATE_TIMEOUT: Duration = Duration::from_secs(600);

/// A client of the worker's `Inference` service. Cloning is cheap.
///
/// [`Supervisor::client`](crate::Supervisor::client) makes one that always talks to the
/// supervisor's current worker, across restarts; [`Client::connect_uds`] talks to one
/// socket without a supervisor.
///
/// Every call has a deadline (sent as `grpc-timeout` and enforced locally). Within it, a
/// call waits for a ready worker and retries `UNAVAILABLE` and broken connections with
/// backoff, but a generation only until its first output arrives. After that, a dying
/// worker ends the stream with [`Error::WorkerDied`], which carries the text already
/// received (see [`GenerateStream`]).
#[derive(Debug, Clone)]
pub struct Client {
    source: Source,
    timeout: Duration,
    generate_timeout: Duration,
}

#[derive(Debug, Clone)]
enum Source {
    /// One socket, no supervisor.
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
        Client {
            source: Source::Supervised { view },
            timeout: DEFAULT_TIMEOUT,
            generate_timeout: DEFAULT_GENERATE_TIMEOUT,
        }
    }

    /// A client of the worker listening on `path`, without a supervisor. Fails at once
    /// when nothing accepts connections there; later calls reconnect as needed.
    pub async fn connect_uds(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref().to_path_buf();
        tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| Error::Socket {
                path: path.clone(),
                reason: format!("cannot connect: {e}"),
            })?;
        Ok(Client {
            source: Source::Direct {
                channel: transport::uds_channel(path),
            },
            timeout: DEFAULT_TIMEOUT,
            generate_timeout: DEFAULT_GENERATE_TIMEOUT,
        })
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
            let mut req = tonic::Request::new(proto.clone());
            req.set_timeout(deadline_at.saturating_duration_since(Instant::now()));
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
                let mut req = tonic::Request::new(proto.clone());
                req.set_timeout(timeout);
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
                let mut req = tonic::Request::new(proto.clone());
                req.set_timeout(timeout);
                InferenceClient::new(channel).detokenize(req).await
            })
            .await?;
        Ok(response.text)
    }

    /// Describes the loaded model, the device and the worker's memory use.
    pub async fn model_info(&self) -> Result<ModelInfo, Error> {
        let response = self
            .unary(|channel, timeout| async move {
                let mut req = tonic::Request::new(pb::ModelInfoRequest {});
                req.set_timeout(timeout);
                InferenceClient::new(channel).model_info(req).await
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
        match health::check(&channel, self.timeout).await {
            Ok(ServingStatus::Serving) => Ok(HealthStatus::Serving),
            Ok(ServingStatus::NotServing) => Ok(HealthStatus::NotServing),
            Ok(_) => Ok(HealthStatus::Unknown),
            Err(reason) => Err(Error::Rpc {
                code: tonic::Code::Unavailable,
                message: reason,
            }),
        }
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
