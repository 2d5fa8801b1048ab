//! The load: `clients` tasks, each sending one generation after another until told to stop,
//! and what became of every request.
//!
//! Each request asks for exactly `max_tokens` greedy tokens (end-of-sequence ignored) after
//! one of a fixed set of prompts of random token ids (`prompt_set`), taken in turn. Before
//! any fault, `reference` runs each prompt once alone; every completed stream is then
//! compared with its prompt's reference, token id by token id. A request ends in one of
//! four ways:
//! - *completed*: a finished message whose `completion_tokens` equals the tokens received
//!   and `max_tokens` (possibly after the client library resumed it on the next worker),
//!   with the reference's token ids;
//! - *mismatched*: completed, but its token ids differ from the reference's;
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

use anyhow::bail;
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
    pub(crate) max_tokens: u32,
    pub(crate) timeout: Duration,
    /// The prompts, taken in turn by request number.
    pub(crate) prompts: Arc<Vec<Vec<u32>>>,
    /// Each prompt's greedy token ids from an uninterrupted run, once known.
    pub(crate) reference: Option<Arc<Vec<Vec<u32>>>>,
    /// Whether streams resume on the next worker (no --no-resume).
    pub(crate) resume: bool,
}

/// `count` distinct prompts of `len` token ids drawn from `range` (ordinary tokens, no
/// special ones), the same for the same seed.
pub(crate) fn prompt_set(seed: u64, count: usize, len: usize, range: (u32, u32)) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(range.0..range.1))
                .collect()
        })
        .collect()
}

/// Runs each prompt once, alone and without faults, and returns its token ids: the
/// reference every later stream of that prompt must equal.
pub(crate) async fn reference(client: &Client, load: &Load) -> anyhow::Result<Vec<Vec<u32>>> {
    let timeline = Timeline::new();
    let mut ids = Vec::with_capacity(load.prompts.len());
    for (n, prompt) in load.prompts.iter().enumerate() {
        let (record, tokens) = one_request(
            usize::MAX,
            n as u64,
            prompt.clone(),
            client,
            load,
            &timeline,
        )
        .await;
        if record.outcome != Outcome::Completed {
            bail!(
                "the reference run of prompt {n} did not complete: {:?}",
                record.outcome
            );
        }
        ids.push(tokens);
    }
    Ok(ids)
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub(crate) enum Outcome {
    Completed,
    /// Completed with other token ids than the reference (where they first differ).
    Mismatched(String),
    Failed(String),
    Lost(String),
}

/// One request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestRecord {
    pub(crate) client: usize,
    /// Which of the prompts it sent.
    pub(crate) prompt: usize,
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
    /// For a resumed stream that finished: the last worker's queue wait and prefill, where
    /// most of the resume stall goes (`None` otherwise).
    pub(crate) resumed_segment: Option<ResumedSegment>,
}

/// Where a resumed stream's last worker spent the time before its first new token.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ResumedSegment {
    /// From the continuation's arrival to the start of its prefill.
    pub(crate) queue_wait_ms: f64,
    /// Prefill of the prompt and the delivered tokens, until the first new token.
    pub(crate) prefill_ms: f64,
    /// The prompt's tokens, and how many of them, and of the delivered tokens, that worker
    /// found in its prefix cache (shadowed on it while it was the standby).
    pub(crate) prompt_tokens: u32,
    pub(crate) cached_prompt_tokens: u32,
    pub(crate) cached_delivered_tokens: u32,
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
    let mut records = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if load.requests.is_some_and(|max| n >= max) {
            break;
        }
        let prompt = load.prompts[n as usize % load.prompts.len()].clone();
        let (record, _) = one_request(id, n, prompt, &client, &load, &timeline).await;
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
    token_ids: Vec<u32>,
    text: String,
    first_token: Option<f64>,
    attempts: u32,
    resumes: u32,
    resumed_segment: Option<ResumedSegment>,
}

/// Sends request `n` of client `id`; returns its record and the token ids it received.
async fn one_request(
    id: usize,
    n: u64,
    prompt: Vec<u32>,
    client: &Client,
    load: &Load,
    timeline: &Timeline,
) -> (RequestRecord, Vec<u32>) {
    let sent = timeline.now();
    let prompt_index = n as usize % load.prompts.len();
    // Greedy, so that every run of a prompt must give the same token ids.
    let request = GenerateRequest::tokens(prompt)
        .max_tokens(load.max_tokens)
        .temperature(0.0)
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
        token_ids: Vec::new(),
        text: String::new(),
        first_token: None,
        attempts: 1,
        resumes: 0,
        resumed_segment: None,
    };
    let run = run_stream(client, request, load.max_tokens, timeline, &mut progress);
    let (outcome, retry_safe) = match tokio::time::timeout(load.timeout + HANG_MARGIN, run).await {
        Ok(result) => result,
        Err(_) => (
            Outcome::Lost("hung: no finish and no error past the deadline".into()),
            None,
        ),
    };
    let outcome = match (&outcome, &load.reference) {
        (Outcome::Completed, Some(reference)) => {
            compare(&progress.token_ids, &reference[prompt_index]).unwrap_or(outcome)
        }
        _ => outcome,
    };
    let record = RequestRecord {
        client: id,
        prompt: prompt_index,
        sent,
        first_token: progress.first_token,
        ended: timeline.now(),
        tokens: progress.tokens,
        attempts: progress.attempts,
        resumes: progress.resumes,
        outcome,
        retry_safe,
        resumed_segment: progress.resumed_segment,
    };
    (record, progress.token_ids)
}

/// `Some(Mismatched)` where `got` differs from `reference`, saying where.
fn compare(got: &[u32], reference: &[u32]) -> Option<Outcome> {
    if got == reference {
        return None;
    }
    let at = got
        .iter()
        .zip(reference)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(reference.len()));
    Some(Outcome::Mismatched(format!(
        "token {at} of {}: {:?} where the reference has {:?}",
        got.len(),
        got.get(at),
        reference.get(at)
    )))
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
                progress.token_ids.extend_from_slice(&token_ids);
                progress.text.push_str(&text);
                timeline.tokens(now, count);
            }
            Some(Ok(GenerateEvent::Finished(finished))) => {
                progress.resumes = finished.usage.resumes;
                if finished.usage.resumes > 0 {
                    progress.resumed_segment = Some(ResumedSegment {
                        queue_wait_ms: finished.timings.queue_wait_ms,
                        prefill_ms: finished.timings.prefill_ms,
                        prompt_tokens: finished.usage.prompt_tokens,
                        cached_prompt_tokens: finished.usage.cached_prompt_tokens,
                        cached_delivered_tokens: finished.usage.cached_delivered_tokens,
                    });
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_matches_only_its_reference_token_for_token() {
        assert_eq!(compare(&[1, 2, 3], &[1, 2, 3]), None);
        let at = |got: &[u32], reference: &[u32]| match compare(got, reference) {
            Some(Outcome::Mismatched(detail)) => detail,
            other => panic!("{other:?}"),
        };
        assert!(at(&[1, 9, 3], &[1, 2, 3]).starts_with("token 1 of 3"));
        assert!(at(&[1, 2], &[1, 2, 3]).starts_with("token 2 of 2"));
    }

    #[test]
    fn the_prompt_set_is_distinct_and_the_same_for_a_seed() {
        let set = prompt_set(7, 16, 32, (100, 200));
        assert_eq!(set, prompt_set(7, 16, 32, (100, 200)));
        assert_ne!(set, prompt_set(8, 16, 32, (100, 200)));
        let distinct: std::collections::BTreeSet<_> = set.iter().collect();
        assert_eq!(distinct.len(), 16);
        assert!(set.iter().flatten().all(|t| (100..200).contains(t)));
    }
}
