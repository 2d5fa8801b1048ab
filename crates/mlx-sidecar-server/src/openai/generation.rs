//! One generation as the OpenAI routes see it: the library stream turned into [`Step`]s,
//! with each token's log-probability given its text, and every step recorded through the
//! request's [`RequestObserver`].
//!
//! The worker reports each generated token's own text with its log-probability. A worker
//! older than that field sends none: the text is then taken from the alternatives when
//! the token is among them, else from the chunk's text when the chunk holds that one token,
//! else asked of the worker (`Detokenize`, one id).

use std::time::Duration;

use futures_util::stream::BoxStream;
use mlx_sidecar::{
    Client, FinishReason, Finished, GenerateEvent, GenerateRequest, GenerateStream, TokenLogprob,
};

use super::error::{ApiError, Endpoint};
use crate::metrics::RequestObserver;

/// A generated token with its text, log-probability and alternatives (text, logprob),
/// best first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenInfo {
    pub(crate) text: String,
    /// The token's raw bytes (part of a UTF-8 character, where the text has U+FFFD).
    pub(crate) bytes: Vec<u8>,
    pub(crate) logprob: f32,
    pub(crate) top: Vec<(String, f32)>,
}

/// What a generation yields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// New text (and, when asked for, one [`TokenInfo`] per token).
    Output {
        text: String,
        logprobs: Vec<TokenInfo>,
    },
    /// The end.
    Finished(Finished),
}

/// The steps of a generation, ending after [`Step::Finished`] or an error.
pub(crate) type Steps = BoxStream<'static, Result<Step, ApiError>>;

/// A running generation; see the [module docs](self). Dropping it cancels the request
/// in the worker and counts it as cancelled, unless it had ended.
pub(crate) struct Generation {
    stream: GenerateStream,
    observer: Option<RequestObserver>,
    client: Client,
    endpoint: Endpoint,
    retry_after: Duration,
}

impl Generation {
    /// Sends `request`; returns once its first output arrived (the library retries an
    /// unavailable worker until then), or the error to answer with.
    pub(crate) async fn start(
        client: &Client,
        request: GenerateRequest,
        endpoint: Endpoint,
        observer: RequestObserver,
        retry_after: Duration,
    ) -> Result<Generation, ApiError> {
        match client.generate(request).await {
            Ok(stream) => Ok(Generation {
                stream,
                observer: Some(observer),
                client: client.clone(),
                endpoint,
                retry_after,
            }),
            Err(e) => {
                let error = ApiError::from_library(&e, endpoint, retry_after);
                tracing::debug!(error = %e, "generation refused");
                observer.on_error(e.code());
                Err(error)
            }
        }
    }

    /// The next step, or `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Result<Step, ApiError>> {
        let event = self.stream.next_event().await?;
        Some(match event {
            Ok(GenerateEvent::Token {
                text,
                token_ids,
                logprobs,
            }) => {
                if let Some(observer) = &mut self.observer {
                    observer.on_output(token_ids.len());
                }
                let logprobs = token_infos(&self.client, &text, logprobs).await;
                Ok(Step::Output { text, logprobs })
            }
            Ok(GenerateEvent::Finished(finished)) => {
                if let Some(observer) = self.observer.take() {
                    observer.on_finished(&finished);
                }
                if finished.finish_reason == FinishReason::Cancelled {
                    return Some(Err(cancelled(&finished, self.retry_after)));
                }
                Ok(Step::Finished(finished))
            }
            Err(e) => {
                tracing::debug!(error = %e, "generation failed");
                if let Some(observer) = self.observer.take() {
                    observer.on_error(e.code());
                }
                Err(ApiError::from_library(&e, self.endpoint, self.retry_after))
            }
        })
    }

    /// The generation as a stream of steps.
    pub(crate) fn into_steps(self) -> Steps {
        Box::pin(futures_util::stream::unfold(self, |mut g| async move {
            let step = g.next().await?;
            Some((step, g))
        }))
    }
}

/// The answer to a generation the worker cancelled (it was stopping and its grace ran out).
///
/// OpenAI's `finish_reason` has no value for that (`stop`, `length`, `tool_calls`,
/// `content_filter`, `function_call`; typed clients reject others), and the output is cut
/// short, so it is answered as OpenAI answers a generation that fails on the server: a 503
/// `server_error` with `Retry-After` (nothing was delivered yet, so retrying is safe), or in
/// a stream an `error` event after the text so far (the official client raises on it). The
/// metrics still count the request under `finish_reason="cancelled"`.
fn cancelled(finished: &Finished, retry_after: Duration) -> ApiError {
    ApiError::unavailable(
        format!(
            "the generation was cancelled after {} tokens: the worker was stopping; retry",
            finished.usage.completion_tokens
        ),
        retry_after,
    )
}

/// Gives each token's log-probability its text (see the [module docs](self)).
async fn token_infos(
    client: &Client,
    chunk_text: &str,
    logprobs: Vec<TokenLogprob>,
) -> Vec<TokenInfo> {
    let single = logprobs.len() == 1;
    let mut infos = Vec::with_capacity(logprobs.len());
    for lp in logprobs {
        let own = (!lp.text.is_empty() || !lp.bytes.is_empty()).then(|| lp.text.clone());
        let known = own.or_else(|| {
            lp.top
                .iter()
                .find(|t| t.token_id == lp.token_id)
                .map(|t| t.text.clone())
                .or_else(|| single.then(|| chunk_text.to_owned()))
        });
        let text = match known {
            Some(text) => text,
            None => client
                .detokenize(vec![lp.token_id], false)
                .await
                .unwrap_or_default(),
        };
        let bytes = if lp.bytes.is_empty() {
            text.as_bytes().to_vec()
        } else {
            lp.bytes
        };
        infos.push(TokenInfo {
            text,
            bytes,
            logprob: lp.logprob,
            top: lp.top.into_iter().map(|t| (t.text, t.logprob)).collect(),
        });
    }
    infos
}

/// Keeps [`Steps`] honest about its item type for tests that build one by hand.
#[cfg(test)]
pub(crate) fn steps_of(
    s: impl futures_util::Stream<Item = Result<Step, ApiError>> + Send + 'static,
) -> Steps {
    Box::pin(s)
}
