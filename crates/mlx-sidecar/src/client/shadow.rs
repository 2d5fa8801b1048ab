//! Shadow prefill: a supervised stream's prompt, computed ahead on its replica's idle
//! standby, so that a stream resumed there prefills only the tokens delivered since.
//!
//! A [`Shadow`] is a task beside one [`GenerateStream`](super::GenerateStream). Whenever
//! the replica publishes a standby that serves and that this stream has not shadowed on
//! yet (see `WorkerView::standby_channel`: as the stream starts, and once the standby
//! that started after a takeover is ready), it sends the standby the stream's request
//! with `prefill_only` set and a continuation holding the tokens delivered so far; the
//! standby (given the normal priority once ready, see `supervisor::standby`) stores their
//! KV cache in its prefix cache and answers without output. A shadow whose standby is taken over (or gone) meanwhile is dropped,
//! which cancels it there, so a promoted worker never prefills a shadow ahead of the
//! continuations it must serve. Every failure is only logged: a shadow is an
//! optimisation, never a condition of the stream.

use std::sync::{Arc, Mutex, atomic::Ordering};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::transport::Channel;

use mlx_sidecar_proto::v1::{self as pb, inference_client::InferenceClient};

use super::StreamCounts;
use crate::worker::WorkerView;

/// The shadow task of one stream; dropping it stops the task (and cancels its call).
pub(crate) struct Shadow {
    delivered: Arc<Mutex<Vec<u32>>>,
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
    /// `counts`.
    pub(crate) fn start(
        view: watch::Receiver<WorkerView>,
        request: &pb::GenerateRequest,
        delivered: &[u32],
        deadline_at: Instant,
        counts: Arc<StreamCounts>,
    ) -> Self {
        let delivered = Arc::new(Mutex::new(delivered.to_vec()));
        let request = shadow_request(request);
        let shared = delivered.clone();
        let task = tokio::spawn(run(view, request, shared, deadline_at, counts));
        Shadow { delivered, task }
    }

    /// Records tokens handed to the caller, for the next shadow.
    pub(crate) fn delivered(&self, ids: &[u32]) {
        if let Ok(mut delivered) = self.delivered.lock() {
            delivered.extend_from_slice(ids);
        }
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

async fn run(
    mut view: watch::Receiver<WorkerView>,
    request: pb::GenerateRequest,
    delivered: Arc<Mutex<Vec<u32>>>,
    deadline_at: Instant,
    counts: Arc<StreamCounts>,
) {
    let mut shadowed: Option<u32> = None;
    loop {
        let standby = async {
            let v = view
                .wait_for(|v| {
                    v.standby_channel.is_some()
                        && v.standby_pid.is_some()
                        && v.standby_pid != shadowed
                })
                .await
                .ok()?;
            Some((v.standby_pid?, v.standby_channel.clone()?))
        };
        let Ok(Some((pid, channel))) = tokio::time::timeout_at(deadline_at, standby).await else {
            return; // the deadline passed, or the supervisor is gone
        };
        shadowed = Some(pid);
        let ids = delivered.lock().map(|d| d.clone()).unwrap_or_default();
        let call = prefill(channel, continued(&request, ids), deadline_at);
        let gone = view.wait_for(|v| v.standby_pid != Some(pid));
        tokio::select! {
            result = call => match result {
                Ok(()) => {
                    counts.shadow_prefills.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(pid, request_id = %request.request_id, "shadow prefilled on the standby");
                }
                Err(status) => tracing::debug!(pid, code = ?status.code(), message = status.message(), "shadow prefill failed"),
            },
            _ = gone => tracing::trace!(pid, "standby taken over or gone: shadow dropped"),
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
