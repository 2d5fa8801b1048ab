//! The load: `clients` tasks, each sending one generation after another until told to stop,
//! and what became of every request.
//!
//! Each request asks for exactly `max_tokens` tokens (end-of-sequence ignored) after a
//! prompt of random token ids. It ends in one of three ways:
//! - *completed*: a finished message whose `completion_tokens` equals the tokens received
//!   and `max_tokens` (possibly after the client library resumed it on the next worker);
//! - *failed*: an error the caller saw, by reason (a worker that died mid-stream must hand
//!   back exactly the text that was streamed);
//! - *lost*: neither within the deadline plus a margin (a hang), or a "finished" whose
//!   counts disagree with what arrived (a silent truncation), or a worker-died error whose
//!   partial text is not what was streamed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use mlx_sidecar::{Client, Error, FinishReason, GenerateEvent, GenerateRequest};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use super::observe::Timeline;

const GAVE_UP: &str = "supervisor gave up";
const STOPPED: &str = "supervisor stopped";

/// Extra time past a request's own deadline before it counts as hung.
const HANG_MARGIN: Duration = Duration::from_secs(10);

/// What the clients send.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) requests: Option<u64>,
    pub(crate) prompt_tokens: usize,
    pub(crate) max_tokens: u32,
    pub(crate) timeout: Duration,
    pub(crate) seed: u64,
    /// Token ids are drawn from this range (ordinary tokens, no special ones).
    pub(crate) token_range: (u32, u32),
    /// Whether streams resume on the next worker (no --no-resume).
    pub(crate) resume: bool,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub(crate) enum Outcome {
    Completed,
    Failed(String),
    Lost(String),
}

/// One request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestRecord {
    pub(crate) client: usize,
    pub(crate) sent: f64,
    pub(crate) first_token: Option<f64>,
    pub(crate) ended: f64,
    pub(crate) tokens: u32,
    /// Times the client library sent it (more than 1: retried transparently).
    pub(crate) attempts: u32,
    /// Times the client library resumed its stream on the next worker.
    pub(crate) resumes: u32,
    pub(crate) outcome: Outcome,
    /// For failures: whether the error said a retry is safe.
    pub(crate) retry_safe: Option<bool>,
}

/// Runs client `id` until `stop` is set or the request budget in `issued` is spent.
pub(crate) async fn client_loop(
    id: usize,
    client: Client,
    load: Arc<Load>,
    timeline: Arc<Timeline>,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
) -> Vec<RequestRecord> {
    let mut rng = StdRng::seed_from_u64(load.seed.wrapping_add(id as u64));
    let mut records = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if load.requests.is_some_and(|max| n >= max) {
            break;
        }
        let (lo, hi) = load.token_range;
        let prompt: Vec<u32> = (0..load.prompt_tokens)
            .map(|_| rng.random_range(lo..hi))
            .collect();
        let record = one_request(id, n, prompt, &client, &load, &timeline).await;
        // No worker will come any more: every further request would fail at once.
        let terminal =
            matches!(&record.outcome, Outcome::Failed(r) if r == GAVE_UP || r == STOPPED);
        records.push(record);
        if terminal {
            break;
        }
    }
    records
}

struct Progress {
    tokens: u32,
    text: String,
    first_token: Option<f64>,
    attempts: u32,
    resumes: u32,
}

async fn one_request(
    id: usize,
    n: u64,
    prompt: Vec<u32>,
    client: &Client,
    load: &Load,
    timeline: &Timeline,
) -> RequestRecord {
    let sent = timeline.now();
    let request = GenerateRequest::tokens(prompt)
        .max_tokens(load.max_tokens)
        .ignore_eos(true)
        .deadline(load.timeout)
        .request_id(format!("chaos-{id}-{n}"));
    let request = if load.resume {
        request
    } else {
        request.no_resume()
    };
    let mut progress = Progress {
        tokens: 0,
        text: String::new(),
        first_token: None,
        attempts: 1,
        resumes: 0,
    };
    let run = run_stream(client, request, load.max_tokens, timeline, &mut progress);
    let (outcome, retry_safe) = match tokio::time::timeout(load.timeout + HANG_MARGIN, run).await {
        Ok(result) => result,
        Err(_) => (
            Outcome::Lost("hung: no finish and no error past the deadline".into()),
            None,
        ),
    };
    RequestRecord {
        client: id,
        sent,
        first_token: progress.first_token,
        ended: timeline.now(),
        tokens: progress.tokens,
        attempts: progress.attempts,
        resumes: progress.resumes,
        outcome,
        retry_safe,
    }
}

async fn run_stream(
    client: &Client,
    request: GenerateRequest,
    max_tokens: u32,
    timeline: &Timeline,
    progress: &mut Progress,
) -> (Outcome, Option<bool>) {
    let mut stream = match client.generate(request).await {
        Ok(stream) => stream,
        Err(e) => return failed(&e, progress),
    };
    progress.attempts = stream.attempts();
    loop {
        match stream.next_event().await {
            Some(Ok(GenerateEvent::Token {
                text, token_ids, ..
            })) => {
                let now = timeline.now();
                if progress.first_token.is_none() {
                    progress.first_token = Some(now);
                    timeline.first_token(now);
                }
                let count = u32::try_from(token_ids.len()).unwrap_or(u32::MAX);
                progress.tokens = progress.tokens.saturating_add(count);
                progress.text.push_str(&text);
                timeline.tokens(now, count);
            }
            Some(Ok(GenerateEvent::Finished(finished))) => {
                progress.resumes = finished.usage.resumes;
                let reported = finished.usage.completion_tokens;
                let outcome = if reported != progress.tokens {
                    Outcome::Lost(format!(
                        "truncated: finished with completion_tokens={reported} after {} received",
                        progress.tokens
                    ))
                } else if finished.finish_reason == FinishReason::Cancelled {
                    Outcome::Failed("cancelled by the worker".into())
                } else if progress.tokens != max_tokens {
                    Outcome::Lost(format!(
                        "truncated: finished ({:?}) after {} of {max_tokens} tokens",
                        finished.finish_reason, progress.tokens
                    ))
                } else {
                    Outcome::Completed
                };
                return (outcome, None);
            }
            Some(Err(e)) => {
                if let Error::WorkerDied { resumes, .. } = &e {
                    progress.resumes = *resumes;
                }
                return failed(&e, progress);
            }
            None => {
                return (
                    Outcome::Lost("stream ended without a finish or an error".into()),
                    None,
                );
            }
        }
    }
}

/// Classifies an error the caller saw; a worker-died error must carry what was streamed.
fn failed(e: &Error, progress: &Progress) -> (Outcome, Option<bool>) {
    let retry_safe = Some(e.is_retryable());
    let reason = match e {
        Error::WorkerDied {
            partial_text,
            tokens_received,
            ..
        } => {
            if *partial_text != progress.text || *tokens_received != progress.tokens as usize {
                return (
                    Outcome::Lost(format!(
                        "worker died, but the error holds {tokens_received} tokens / {} bytes \
                         where {} tokens / {} bytes were streamed",
                        partial_text.len(),
                        progress.tokens,
                        progress.text.len()
                    )),
                    retry_safe,
                );
            }
            "worker died mid-stream"
        }
        Error::Deadline { .. } => "deadline exceeded",
        Error::GaveUp { .. } => GAVE_UP,
        Error::NotReady { .. } => "worker not ready",
        Error::Stopped => STOPPED,
        Error::Protocol(_) => "protocol error",
        Error::Rpc { code, .. } => return (Outcome::Failed(format!("{code:?}")), retry_safe),
        _ => "other error",
    };
    (Outcome::Failed(reason.into()), retry_safe)
}
