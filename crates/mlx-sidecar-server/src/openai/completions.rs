//! `POST /v1/completions`: validate, generate, answer in one JSON body or as
//! `text_completion` events.

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    response::{IntoResponse, Response},
};
use mlx_sidecar::Finished;

use super::{
    error::{ApiError, Endpoint},
    finish_reason,
    generation::{Generation, Step, Steps, TokenInfo},
    logprobs, new_request_id, sse,
    types::{Completion, CompletionChoice, UsageOut},
    unix_now, validation,
};
use crate::{metrics::Api, state::AppState};

/// The handler.
pub(crate) async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let observer = state.metrics().start(Api::Http);
    let limits = state.limits();
    let model_id = match state.served_model() {
        Ok(m) => m,
        Err(e) => return super::reject(observer, e),
    };
    let validated = validation::parse_body(body, limits.max_body_bytes)
        .and_then(|b| validation::completion(b, &model_id, limits.request_timeout));
    let validated = match validated {
        Ok(v) => v,
        Err(e) => return super::reject(observer, e),
    };
    let id = format!("cmpl-{}", new_request_id());
    let request = validated.request.request_id(id.clone());
    let generation = match Generation::start(
        state.client(),
        request,
        Endpoint::Completions,
        observer,
        limits.retry_after,
    )
    .await
    {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let writer = CompletionWriter {
        id,
        created: unix_now(),
        model: model_id,
        include_usage: validated.include_usage,
        logprobs: validated.logprobs,
        text_offset: 0,
    };
    if validated.stream {
        sse::respond(
            generation.into_steps(),
            writer,
            limits.stream_buffer,
            limits.stall_timeout,
        )
    } else {
        match collect(generation.into_steps(), writer).await {
            Ok(body) => Json(body).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Builds the chunks and the whole response of one request.
struct CompletionWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: bool,
    /// Characters of completion text so far (for `text_offset`).
    text_offset: usize,
}

impl CompletionWriter {
    fn body(&self, choices: Vec<CompletionChoice>, usage: Option<Option<UsageOut>>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<UsageOut>) -> String {
        sse::json(&self.body(choices, self.include_usage.then_some(usage)))
    }
}

impl sse::ChunkWriter for CompletionWriter {
    fn opening(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn output(&mut self, text: String, tokens: Vec<TokenInfo>) -> Vec<String> {
        // Tokens whose text the worker holds back (part of a UTF-8 character, a possible
        // stop string) arrive with empty text: nothing to say unless logprobs are wanted.
        if text.is_empty() && !self.logprobs {
            return Vec::new();
        }
        let logprobs = self.logprobs.then(|| {
            let (shape, end) = logprobs::completion(&tokens, self.text_offset);
            self.text_offset = end;
            shape
        });
        let choice = CompletionChoice {
            text,
            index: 0,
            logprobs,
            finish_reason: None,
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn finished(&mut self, finished: &Finished) -> Vec<String> {
        let last = CompletionChoice {
            text: String::new(),
            index: 0,
            logprobs: None,
            finish_reason: Some(finish_reason(finished.finish_reason)),
        };
        let mut chunks = vec![self.chunk(vec![last], None)];
        if self.include_usage {
            chunks.push(self.chunk(vec![], Some(finished.usage.into())));
        }
        chunks
    }
}

/// Reads the whole generation into one response body.
async fn collect(mut steps: Steps, writer: CompletionWriter) -> Result<Completion, ApiError> {
    use futures_util::StreamExt;
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(step) = steps.next().await {
        match step? {
            Step::Output { text: t, logprobs } => {
                text.push_str(&t);
                tokens.extend(logprobs);
            }
            Step::Finished(finished) => {
                let logprobs = writer.logprobs.then(|| logprobs::completion(&tokens, 0).0);
                let choice = CompletionChoice {
                    text,
                    index: 0,
                    logprobs,
                    finish_reason: Some(finish_reason(finished.finish_reason)),
                };
                return Ok(writer.body(vec![choice], Some(Some(finished.usage.into()))));
            }
        }
    }
    Err(ApiError::internal(
        "the generation ended without a final message",
    ))
}
