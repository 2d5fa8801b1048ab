//! Shadow prefill: a supervised stream's prompt, computed ahead on its replica's idle
//! standby, so that a stream resumed there prefills only the tokens delivered since.
//!
//! A [`Shadow`] is a task beside one [`GenerateStream`](super::GenerateStream). Whenever
//! the replica publishes a standby that serves and that this stream has not shadowed on
//! yet (see `WorkerView::standby_channel`: as the stream starts, and once the standby
//! that started after a takeover is ready), it sends the standby the stream's request
//! with `prefill_only` set and a continuation holding the tokens delivered so far; the
//! standby (given the normal priority once ready, see `supervisor::standby`) stores their
//! KV cache in its prefix cache and answers without output. With
//! `SupervisorConfig::shadow_follow` the stream shadows again on the same standby each
//! time that many more tokens have been delivered since its last shadow finished (the
//! standby's prefix cache then prefills only those). A shadow whose standby is taken over
//! (or gone) meanwhile is dropped, which cancels it there, so a promoted worker never
//! prefills a shadow ahead of the continuations it must serve. Every failure is only
//! logged (and not repeated on that standby): a shadow is an optimisation, never a
//! condition of the stream.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::transport::Channel;

use mlx_sidecar_proto::v1::{self as pb, inference_client::InferenceClient};

use crate::worker::WorkerView;

/// The shadow task of one stream; dropping it stops the task (and cancels its call).
pub(crate) struct Shadow {
    delivered: watch::Sender<Vec<u32>>,
    task: JoinHandle<()>,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shadow {
    /// Starts shadowing `request` (with `delivered`, the tokens its caller has) on the
    /// standbys `view` publishes, until `deadline_at`, counting completed prefills in
    /// `completed`.
    pub(crate) fn start(
        view: watch::Receiver<WorkerView>,
        request: &pb::GenerateRequest,
        delivered: &[u32],
        deadline_at: Instant,
        completed: Arc<AtomicU64>,
    ) -> Self {
        let follow = view.borrow().shadow_follow;
        let (sender, receiver) = watch::channel(delivered.to_vec());
        let request = shadow_request(request);
        let task = tokio::spawn(run(view, request, receiver, follow, deadline_at, completed));
        Shadow {
            delivered: sender,
            task,
        }
    }

    /// Records tokens handed to the caller, for the next shadow.
    pub(crate) fn delivered(&self, ids: &[u32]) {
        self.delivered
            .send_modify(|delivered| delivered.extend_from_slice(ids));
    }
}

/// The request a standby prefills: the stream's prompt and limits as sent (so that its
/// tokens and the continuation's checks are those of the stream), without what only
/// shapes output.
fn shadow_request(request: &pb::GenerateRequest) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prefill_only: Some(true),
        stop: Vec::new(),
        logprobs: None,
        response_format: None,
        continuation: None,
        request_id: format!("{}-shadow", request.request_id),
        ..request.clone()
    }
}

/// The standby a stream last shadowed on.
#[derive(Debug, Clone, Copy)]
struct Shadowed {
    pid: u32,
    /// How many delivered tokens that shadow held, when it finished (so it may follow
    /// from there); `None` after a failure, which is not repeated on that standby.
    tokens: Option<usize>,
}

async fn run(
    mut view: watch::Receiver<WorkerView>,
    request: pb::GenerateRequest,
    mut delivered: watch::Receiver<Vec<u32>>,
    follow: Option<NonZeroU32>,
    deadline_at: Instant,
    completed: Arc<AtomicU64>,
) {
    let mut shadowed: Option<Shadowed> = None;
    loop {
        let due = next_due(&mut view, &mut delivered, shadowed, follow);
        let Ok(Some((pid, channel))) = tokio::time::timeout_at(deadline_at, due).await else {
            return; // the deadline passed, or the supervisor is gone
        };
        let ids = delivered.borrow_and_update().clone();
        let tokens = ids.len();
        let call = prefill(channel, continued(&request, ids), deadline_at);
        let gone = view.wait_for(|v| v.standby_pid != Some(pid));
        shadowed = Some(Shadowed { pid, tokens: None });
        tokio::select! {
            result = call => match result {
                Ok(()) => {
                    completed.fetch_add(1, Ordering::Relaxed);
                    shadowed = Some(Shadowed { pid, tokens: Some(tokens) });
                    tracing::trace!(pid, tokens, request_id = %request.request_id, "shadow prefilled on the standby");
                }
                Err(status) => tracing::debug!(pid, code = ?status.code(), message = status.message(), "shadow prefill failed"),
            },
            _ = gone => tracing::trace!(pid, "standby taken over or gone: shadow dropped"),
        }
    }
}

/// Waits until a shadow is due: on a serving standby this stream has not shadowed on, or
/// (with `follow`) on the same one once `follow` more tokens have been delivered. Gives
/// the standby; `None` once the supervisor is gone.
async fn next_due(
    view: &mut watch::Receiver<WorkerView>,
    delivered: &mut watch::Receiver<Vec<u32>>,
    shadowed: Option<Shadowed>,
    follow: Option<NonZeroU32>,
) -> Option<(u32, Channel)> {
    loop {
        {
            let v = view.borrow_and_update();
            if let (Some(pid), Some(channel)) = (v.standby_pid, &v.standby_channel) {
                let delivered_now = delivered.borrow_and_update().len();
                let due = match shadowed {
                    Some(last) if last.pid == pid => match (last.tokens, follow) {
                        (Some(tokens), Some(follow)) => {
                            delivered_now >= tokens.saturating_add(follow.get() as usize)
                        }
                        _ => false,
                    },
                    _ => true,
                };
                if due {
                    return Some((pid, channel.clone()));
                }
            }
        }
        tokio::select! {
            // Either one closed: the supervisor, or the stream's `Shadow`, is gone.
            changed = view.changed() => changed.ok()?,
            changed = delivered.changed(), if follow.is_some() => changed.ok()?,
        }
    }
}

/// `request` continuing after `ids` (none: the prompt alone).
fn continued(request: &pb::GenerateRequest, ids: Vec<u32>) -> pb::GenerateRequest {
    let mut request = request.clone();
    if !ids.is_empty() {
        request.continuation = Some(pb::Continuation {
            delivered_token_ids: ids,
            // The text only matters to what is sent, and a shadow sends nothing.
            delivered_text_bytes: 0,
            resume_count: 1,
        });
    }
    request
}

/// Sends one prefill-only request and waits for its end.
async fn prefill(
    channel: Channel,
    request: pb::GenerateRequest,
    deadline_at: Instant,
) -> Result<(), tonic::Status> {
    let mut call = tonic::Request::new(request);
    call.set_timeout(deadline_at.saturating_duration_since(Instant::now()));
    let mut stream = InferenceClient::new(channel)
        .generate(call)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}
