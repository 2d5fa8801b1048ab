//! [`GenerateStream`]: the events of one generation, and how it survives a dying worker.
//!
//! Each step waits on three things at once: the next message, the supervisor's notice
//! that this call's worker generation died, and the call's deadline. When the notice comes
//! first, messages the connection already holds are still delivered (for a short grace).
//! Then (or on a broken connection, or `UNAVAILABLE` after output) the worker counts as
//! dead, and the stream is resumed: the original request goes to the next ready worker
//! with a continuation holding every token id delivered so far and the delivered text's
//! byte length, and that worker's first message continues the caller's stream. The
//! tokens a caller got are exactly those recorded here, so none is repeated or skipped.
//! Past the request's resume limit or its deadline the stream ends with
//! [`Error::WorkerDied`] carrying the text received so far; an answer the next worker
//! gives instead of output (a continuation that no longer fits the context) ends it with
//! that answer.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream::BoxStream};
use tokio::time::Instant;
use tonic::Streaming;

use super::{
    Client, Conn, Started,
    request::GenerateRequest,
    shadow::Shadow,
    types::{Completion, GenerateEvent},
};
use mlx_sidecar_proto::v1::{self as pb, GenerateResponse, generate_response::Event};

use crate::{Error, LifecycleEvent, worker::transport};

/// How long messages already in flight may still arrive after the worker was reported dead.
const DRAIN_AFTER_DEATH: Duration = Duration::from_millis(200);

/// Trailing metadata of a relayed stream that ended with [`Error::WorkerDied`]: the resumes
/// the relay (a `mlx-sidecar serve` daemon) already made, so that a caller resuming it
/// again counts them toward the same limit instead of starting over.
pub const RESUMES_METADATA: &str = "mlx-sidecar-resumes";

/// The events of one generation: zero or more [`GenerateEvent::Token`]s, then one
/// [`GenerateEvent::Finished`]; or an error, after which the stream ends.
///
/// When the worker serving it dies after output began, the stream is resumed on the next
/// ready worker (see [`GenerateRequest::max_resumes`]) and goes on as if nothing happened:
/// no token is repeated or missing, and with greedy decoding or a seed the tokens are
/// those of an uninterrupted run. [`Finished::usage`](super::Finished::usage) says how
/// many times it was resumed.
///
/// Dropping the stream cancels the request in the worker.
pub struct GenerateStream {
    inner: BoxStream<'static, Result<GenerateEvent, Error>>,
    attempts: u32,
}

impl std::fmt::Debug for GenerateStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateStream").finish_non_exhaustive()
    }
}

struct State {
    /// Sends the continuation when the worker dies.
    client: Client,
    /// The request as first sent (a caller's own continuation included).
    request: pb::GenerateRequest,
    conn: Conn,
    streaming: Streaming<GenerateResponse>,
    /// The first message of the current worker's stream, not yet handed out.
    first: Option<GenerateResponse>,
    deadline: Duration,
    deadline_at: Instant,
    /// Text this stream handed out.
    partial_text: String,
    /// Tokens this stream handed out.
    tokens_received: usize,
    /// Every token id the caller has, in order: a caller's own continuation's, then those
    /// this stream handed out. Sent as the next continuation.
    delivered_ids: Vec<u32>,
    /// Text bytes a caller's own continuation had delivered before this stream began.
    prior_text_bytes: u32,
    /// When the last chunk was handed out (the start of a seam's gap).
    last_chunk_at: Option<Instant>,
    /// Resumes so far (counting on from a caller's own continuation).
    resumes: u32,
    max_resumes: u32,
    /// The prompt and delivered tokens shadowed on the standby this stream would resume
    /// on (supervised streams that may still be resumed, with a standby).
    shadow: Option<Shadow>,
    done: bool,
}

impl GenerateStream {
    pub(crate) fn new(
        client: Client,
        proto: pb::GenerateRequest,
        request: &GenerateRequest,
        started: Started,
        deadline: Duration,
        deadline_at: Instant,
    ) -> Self {
        let prior = request.initial_continuation();
        let Started {
            conn,
            streaming,
            first,
            attempts,
            ..
        } = started;
        let mut state = State {
            client,
            request: proto,
            conn,
            streaming,
            first,
            deadline,
            deadline_at,
            partial_text: String::new(),
            tokens_received: 0,
            delivered_ids: prior
                .map(|c| c.delivered_token_ids.clone())
                .unwrap_or_default(),
            prior_text_bytes: prior.map_or(0, |c| c.delivered_text_bytes),
            last_chunk_at: None,
            resumes: prior.map_or(0, |c| c.resume_count),
            max_resumes: request.resume_limit(),
            shadow: None,
            done: false,
        };
        state.shadow_on_standby();
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        })
        .boxed();
        GenerateStream { inner, attempts }
    }

    /// How many times the request was sent before its first output arrived: 1, or more
    /// when the worker was unavailable, or died before answering, and the call was
    /// retried transparently.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next event, or `None` after the last one.
    pub async fn next_event(&mut self) -> Option<Result<GenerateEvent, Error>> {
        self.inner.next().await
    }

    /// Reads the whole stream: all text and tokens, and how it finished.
    pub async fn collect(mut self) -> Result<Completion, Error> {
        let mut text = String::new();
        let mut token_ids = Vec::new();
        while let Some(event) = self.next_event().await {
            match event? {
                GenerateEvent::Token {
                    text: t,
                    token_ids: ids,
                    ..
                } => {
                    text.push_str(&t);
                    token_ids.extend(ids);
                }
                GenerateEvent::Finished(finished) => {
                    return Ok(Completion {
                        text,
                        token_ids,
                        finished,
                    });
                }
            }
        }
        Err(Error::Protocol(
            "the generation stream ended without a finished message".into(),
        ))
    }
}

impl Stream for GenerateStream {
    type Item = Result<GenerateEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl State {
    async fn next_item(&mut self) -> Option<Result<GenerateEvent, Error>> {
        if self.done {
            return None;
        }
        let mut message = match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => match self.receive().await {
                Err(died @ Error::WorkerDied { .. }) => self.resume(died).await,
                other => other,
            },
        };
        // A worker the supervisor replaces (say, after failed health checks) cancels its
        // requests as it drains: that stream goes on on the next worker too.
        while let Ok(Some(GenerateResponse {
            event: Some(Event::Finished(finished)),
        })) = &message
            && finished.finish_reason == pb::FinishReason::Cancelled as i32
            && self.conn.supervisor_carries_on()
        {
            let died = self.worker_died(Some("the worker cancelled the request".to_owned()));
            match self.resume(died).await {
                Err(Error::WorkerDied { .. }) => break,
                resumed => message = resumed,
            }
        }
        let item = match message {
            Ok(Some(GenerateResponse {
                event: Some(Event::Chunk(chunk)),
            })) => {
                self.partial_text.push_str(&chunk.text);
                self.tokens_received += chunk.token_ids.len();
                self.delivered_ids.extend_from_slice(&chunk.token_ids);
                self.last_chunk_at = Some(Instant::now());
                if let Some(shadow) = &self.shadow {
                    shadow.delivered(&chunk.token_ids);
                }
                Ok(GenerateEvent::Token {
                    text: chunk.text,
                    token_ids: chunk.token_ids,
                    logprobs: chunk.logprobs.into_iter().map(Into::into).collect(),
                })
            }
            Ok(Some(GenerateResponse {
                event: Some(Event::Finished(finished)),
            })) => {
                self.done = true;
                let mut finished: super::Finished = finished.into();
                // The client knows best (a worker older than resuming reports 0).
                finished.usage.resumes = finished.usage.resumes.max(self.resumes);
                Ok(GenerateEvent::Finished(finished))
            }
            Ok(Some(GenerateResponse { event: None })) => Err(Error::Protocol(
                "a GenerateResponse without an event".into(),
            )),
            Ok(None) => Err(Error::Protocol(
                "the generation stream ended without a finished message".into(),
            )),
            Err(e) => Err(e),
        };
        if item.is_err() {
            self.done = true;
        }
        if self.done {
            self.shadow = None; // cancels a shadow still prefilling
        }
        Some(item)
    }

    /// Starts shadowing this stream on its replica's standby, when it has one and the
    /// stream may still be resumed (see `shadow`).
    fn shadow_on_standby(&mut self) {
        self.shadow = None;
        if self.resumes >= self.max_resumes {
            return;
        }
        if let Some(view) = self.conn.shadow_view() {
            self.shadow = Some(Shadow::start(
                view,
                &self.request,
                &self.delivered_ids,
                self.deadline_at,
                self.client.counts(),
            ));
        }
    }

    /// Sends the request with a continuation to the next ready worker after `died`, and
    /// returns that worker's first message; or `died` itself when the resume limit or the
    /// deadline does not allow it, or no worker took over in time.
    async fn resume(&mut self, died: Error) -> Result<Option<GenerateResponse>, Error> {
        // Every token was delivered and only the finish was lost: nothing to continue (a
        // worker refuses such a continuation), and the caller learns how it ended.
        let complete = self
            .request
            .max_tokens
            .and_then(|m| usize::try_from(m).ok())
            .is_some_and(|m| self.delivered_ids.len() >= m);
        if let Error::WorkerDied { resumes, .. } = &died {
            // A relay may have resumed it already (see RESUMES_METADATA).
            self.resumes = self.resumes.max(*resumes);
        }
        if complete || self.resumes >= self.max_resumes || Instant::now() >= self.deadline_at {
            return Err(died);
        }
        let noticed = Instant::now();
        let resume_count = self.resumes.saturating_add(1);
        let text_bytes = u32::try_from(self.partial_text.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.prior_text_bytes);
        let mut request = self.request.clone();
        request.continuation = Some(pb::Continuation {
            delivered_token_ids: self.delivered_ids.clone(),
            delivered_text_bytes: text_bytes,
            resume_count,
        });
        tracing::debug!(error = %died, resume_count, delivered = self.delivered_ids.len(), "resuming the stream on the next worker");
        // A worker that dies before the continuation's first output uses up a resume too.
        let spare = self.max_resumes.saturating_sub(resume_count);
        let started = match self
            .client
            .start(
                &request,
                self.deadline,
                self.deadline_at,
                Some(spare),
                self.conn.generation(),
            )
            .await
        {
            Ok(started) => started,
            // The next worker's own answer (say, the continuation no longer fits the
            // context) says more than the death.
            Err(e @ (Error::Rpc { .. } | Error::Protocol(_))) if !e.is_retryable() => {
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the stream could not be resumed");
                return Err(died);
            }
        };
        let resume_count = resume_count.saturating_add(started.deaths);
        self.resumes = resume_count;
        self.conn = started.conn;
        self.streaming = started.streaming;
        self.shadow_on_standby();
        let stall = noticed.elapsed();
        self.client.note_resumed(LifecycleEvent::Resumed {
            pid: self.conn.worker_pid(),
            request_id: self.request.request_id.clone(),
            resume_count,
            delivered_tokens: self.delivered_ids.len(),
            stall,
            gap: self.last_chunk_at.map_or(stall, |t| t.elapsed().max(stall)),
        });
        Ok(started.first)
    }

    async fn receive(&mut self) -> Result<Option<GenerateResponse>, Error> {
        tokio::select! {
            biased;
            message = self.streaming.message() => message.map_err(|status| self.status_error(status)),
            status = self.conn.died() => {
                match tokio::time::timeout(DRAIN_AFTER_DEATH, self.streaming.message()).await {
                    Ok(Ok(Some(message))) => Ok(Some(message)),
                    _ => {
                        tracing::debug!(?status, "generation cut short: the supervisor reported the worker dead");
                        Err(self.worker_died(status))
                    }
                }
            }
            () = tokio::time::sleep_until(self.deadline_at) => Err(Error::Deadline {
                deadline: self.deadline,
                partial_text: self.partial_text.clone(),
            }),
        }
    }

    /// A status after output: a passed deadline is [`Error::Deadline`] (with the text so
    /// far); a broken connection or `UNAVAILABLE` means the worker (or its engine) died;
    /// other codes are the worker's own answer.
    fn status_error(&self, status: tonic::Status) -> Error {
        if transport::is_deadline(&status) {
            Error::Deadline {
                deadline: self.deadline,
                partial_text: self.partial_text.clone(),
            }
        } else if transport::is_transport_failure(&status)
            || status.code() == tonic::Code::Unavailable
        {
            tracing::debug!(code = ?status.code(), message = status.message(), "generation cut short: connection or engine failed");
            let relayed = status
                .metadata()
                .get(RESUMES_METADATA)
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                .unwrap_or(0);
            let mut died =
                self.worker_died(Some(format!("{:?}: {}", status.code(), status.message())));
            if let Error::WorkerDied { resumes, .. } = &mut died {
                *resumes = (*resumes).max(relayed);
            }
            died
        } else {
            Error::from(status)
        }
    }

    fn worker_died(&self, status: Option<String>) -> Error {
        Error::WorkerDied {
            status,
            partial_text: self.partial_text.clone(),
            tokens_received: self.tokens_received,
            resumes: self.resumes,
        }
    }
}
