//! The OpenAI-compatible routes.
//!
//! A request flows through: `validation` (JSON body → checked library
//! [`mlx_sidecar::GenerateRequest`], or a 400 naming the parameter) → `generation` (the
//! library stream as steps, token texts for log-probabilities, metrics through the
//! request's [`crate::RequestObserver`]) → `chat` / `completions` (the response body, or
//! chunks that `sse` streams). Every error body comes from [`error`]; the serde types are
//! in [`types`]; `logprobs` has OpenAI's two log-probability shapes; `models` lists the
//! served model.

mod chat;
mod completions;
pub(crate) mod error;
mod generation;
mod logprobs;
mod models;
mod sse;
pub(crate) mod types;
mod validation;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use mlx_sidecar::FinishReason;

use crate::{metrics::RequestObserver, state::AppState};
use error::ApiError;

/// The generation routes (`POST`), which a draining daemon refuses.
pub(crate) fn generation_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
}

/// The model routes.
pub(crate) fn model_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
}

/// Answers with `error`, counting it as the request's end.
fn reject(observer: RequestObserver, error: ApiError) -> Response {
    observer.on_error(error.code());
    error.into_response()
}

/// OpenAI's `finish_reason`: `length`, else `stop` (also where the worker did not say). A
/// generation the worker cancelled never gets here: it is answered as an error (see
/// `generation::cancelled`).
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled | FinishReason::Unspecified => "stop",
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A request id unique within this process and unlikely to repeat across restarts: the
/// start time in microseconds and a counter.
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!(
        "{micros:x}{:06x}",
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
    )
}
