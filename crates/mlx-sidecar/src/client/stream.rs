//! [`GenerateStream`]: the events of one generation, and how a dying worker ends it.
//!
//! Each step waits on three things at once: the next message, the supervisor's notice
//! that this call's worker generation died, and the call's deadline. When the notice comes
//! first, messages the connection already holds are still delivered (for a short grace)
//! before the stream ends with [`Error::WorkerDied`] carrying the text received so far.
//! A broken connection after output ends it the same way.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream::BoxStream};
use tokio::time::Instant;
use tonic::Streaming;

use super::{
    Conn,
    types::{Completion, GenerateEvent},
};
use mlx_sidecar_proto::v1::{GenerateResponse, generate_response::Event};

use crate::{Error, worker::transport};

/// How long messages already in flight may still arrive after the worker was reported dead.
const DRAIN_AFTER_DEATH: Duration = Duration::from_millis(200);

/// The events of one generation: zero or more [`GenerateEvent::Token`]s, then one
/// [`GenerateEvent::Finished`]; or an error, after which the stream ends.
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
    conn: Conn,
    streaming: Streaming<GenerateResponse>,
    /// The first message, received before the stream was handed out.
    first: Option<GenerateResponse>,
    deadline: Duration,
    deadline_at: Instant,
    partial_text: String,
    tokens_received: usize,
    done: bool,
}

impl GenerateStream {
    pub(crate) fn new(
        conn: Conn,
        streaming: Streaming<GenerateResponse>,
        first: Option<GenerateResponse>,
        deadline: Duration,
        deadline_at: Instant,
        attempts: u32,
    ) -> Self {
        let state = State {
            conn,
            streaming,
            first,
            deadline,
            deadline_at,
            partial_text: String::new(),
            tokens_received: 0,
            done: false,
        };
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
        let message = match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => self.receive().await,
        };
        let item = match message {
            Ok(Some(GenerateResponse {
                event: Some(Event::Chunk(chunk)),
            })) => {
                self.partial_text.push_str(&chunk.text);
                self.tokens_received += chunk.token_ids.len();
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
                Ok(GenerateEvent::Finished(finished.into()))
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
        Some(item)
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
            self.worker_died(Some(format!("{:?}: {}", status.code(), status.message())))
        } else {
            Error::from(status)
        }
    }

    fn worker_died(&self, status: Option<String>) -> Error {
        Error::WorkerDied {
            status,
            partial_text: self.partial_text.clone(),
            tokens_received: self.tokens_received,
        }
    }
}
