//! Streaming answers as server-sent events: `data: {chunk}` events, an error as
//! `data: {"error": …}`, and `data: [DONE]` at the end.
//!
//! A task (the *pump*) reads the generation's [`Steps`], has a [`ChunkWriter`] turn each
//! into JSON chunks, and sends them into a bounded channel that axum's [`Sse`] body reads.
//! So memory per stream is bounded by the channel, and:
//! - a client that closes its connection drops the body and its receiver; the pump
//!   notices (even while waiting for the next token), returns, and dropping the steps
//!   drops the library stream, which cancels the generation in the worker;
//! - a client that stops reading fills the channel; when a send waits longer than the
//!   stall timeout the pump gives up the same way.

use std::{convert::Infallible, time::Duration};

use axum::response::{
    IntoResponse, Response,
    sse::{Event, Sse},
};
use futures_util::StreamExt;
use mlx_sidecar::Finished;
use serde::Serialize;
use tokio::sync::mpsc::{self, error::SendTimeoutError};
use tokio_stream::wrappers::ReceiverStream;

use super::generation::{Step, Steps, TokenInfo};

/// Turns a generation's steps into the JSON of its chunks (chat and completions differ).
pub(crate) trait ChunkWriter: Send + 'static {
    /// Chunks before any output (chat: the assistant's role).
    fn opening(&mut self) -> Vec<String>;
    /// Chunks for new text.
    fn output(&mut self, text: String, logprobs: Vec<TokenInfo>) -> Vec<String>;
    /// Chunks for the end: the finish reason, then the usage chunk when asked for.
    fn finished(&mut self, finished: &Finished) -> Vec<String>;
}

/// JSON of a chunk; serializing our own types cannot fail, but if it did the client gets
/// an error event rather than a broken stream.
pub(crate) fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"message":"cannot encode a chunk: {e}","type":"server_error","param":null,"code":null}}}}"#)
    })
}

/// Starts the pump and answers with the event stream.
pub(crate) fn respond(
    steps: Steps,
    writer: impl ChunkWriter,
    buffer: usize,
    stall_timeout: Duration,
) -> Response {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    tokio::spawn(pump(steps, writer, tx, stall_timeout));
    let events = ReceiverStream::new(rx).map(Ok::<Event, Infallible>);
    Sse::new(events).into_response()
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// Every event and `[DONE]` were handed to the body.
    Done,
    /// The client went away.
    Closed,
    /// The client stopped reading for longer than the stall timeout.
    Stalled,
}

/// See the [module docs](self).
pub(crate) async fn pump(
    mut steps: Steps,
    mut writer: impl ChunkWriter,
    tx: mpsc::Sender<Event>,
    stall_timeout: Duration,
) -> PumpEnd {
    if let Err(end) = send_all(&tx, writer.opening(), stall_timeout).await {
        return end;
    }
    loop {
        let step = tokio::select! {
            biased;
            () = tx.closed() => {
                tracing::debug!("client closed the stream; cancelling the generation");
                return PumpEnd::Closed;
            }
            step = steps.next() => step,
        };
        let chunks = match step {
            None => break,
            Some(Ok(Step::Output { text, logprobs })) => writer.output(text, logprobs),
            Some(Ok(Step::Finished(finished))) => writer.finished(&finished),
            Some(Err(error)) => vec![json(&error.body())],
        };
        if let Err(end) = send_all(&tx, chunks, stall_timeout).await {
            return end;
        }
    }
    match send_all(&tx, vec!["[DONE]".to_owned()], stall_timeout).await {
        Ok(()) => PumpEnd::Done,
        Err(end) => end,
    }
}

async fn send_all(
    tx: &mpsc::Sender<Event>,
    chunks: Vec<String>,
    stall_timeout: Duration,
) -> Result<(), PumpEnd> {
    for chunk in chunks {
        match tx
            .send_timeout(Event::default().data(chunk), stall_timeout)
            .await
        {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::warn!(
                    ?stall_timeout,
                    "client stopped reading its stream; cancelling the generation"
                );
                return Err(PumpEnd::Stalled);
            }
            Err(SendTimeoutError::Closed(_)) => return Err(PumpEnd::Closed),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use axum::body::to_bytes;
    use mlx_sidecar::{FinishReason, Timings, Usage};

    use super::*;
    use crate::openai::{error::ApiError, generation::steps_of};

    /// Writes each step as a plain string, to see the framing around it.
    struct Plain;

    impl ChunkWriter for Plain {
        fn opening(&mut self) -> Vec<String> {
            vec!["open".into()]
        }
        fn output(&mut self, text: String, _: Vec<TokenInfo>) -> Vec<String> {
            vec![format!("out:{text}")]
        }
        fn finished(&mut self, f: &Finished) -> Vec<String> {
            vec![format!("end:{:?}", f.finish_reason), "usage".into()]
        }
    }

    fn output(text: &str) -> Result<Step, ApiError> {
        Ok(Step::Output {
            text: text.into(),
            logprobs: vec![],
        })
    }

    fn finished() -> Result<Step, ApiError> {
        Ok(Step::Finished(Finished {
            finish_reason: FinishReason::Length,
            usage: Usage::default(),
            timings: Timings::default(),
            matched_stop: None,
            stop_token_id: None,
            request_id: "r".into(),
        }))
    }

    async fn body_of(steps: Vec<Result<Step, ApiError>>) -> String {
        let response = respond(
            steps_of(futures_util::stream::iter(steps)),
            Plain,
            4,
            Duration::from_secs(5),
        );
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn events_are_framed_and_end_with_done() {
        let body = body_of(vec![output("a"), output("b\nc"), finished()]).await;
        assert_eq!(
            body,
            "data: open\n\ndata: out:a\n\ndata: out:b\ndata: c\n\ndata: end:Length\n\ndata: usage\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn an_error_becomes_an_error_event_before_done() {
        let error = ApiError::unavailable("the worker died", Duration::from_secs(1));
        let body = body_of(vec![output("a"), Err(error)]).await;
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{body}");
        let error: serde_json::Value =
            serde_json::from_str(events[2].trim_start_matches("data: ")).expect("json");
        assert_eq!(error["error"]["code"], "service_unavailable");
        assert_eq!(events[3], "data: [DONE]");
    }

    /// A stream of steps that never ends and records when it is dropped.
    fn endless(dropped: Arc<AtomicBool>) -> Steps {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped);
        steps_of(futures_util::stream::unfold(flag, |flag| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Some((output("x"), flag))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_is_cancelled_after_the_stall_timeout() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(8);
        let started = tokio::time::Instant::now();
        let end = pump(endless(dropped.clone()), Plain, tx, Duration::from_secs(2)).await;
        assert_eq!(end, PumpEnd::Stalled);
        assert!(dropped.load(Ordering::SeqCst), "the steps were dropped");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // The channel holds at most its capacity: memory stays bounded.
        assert_eq!(rx.len(), 8);
    }

    #[tokio::test]
    async fn a_closed_connection_drops_the_generation_while_it_waits() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let (tx, rx) = mpsc::channel(8);
        let pending = futures_util::stream::once(async { output("first") }).chain(
            futures_util::stream::unfold(flag, |flag| async move {
                let _keep = &flag;
                std::future::pending::<()>().await;
                Some((output("never"), flag))
            }),
        );
        let task = tokio::spawn(pump(steps_of(pending), Plain, tx, Duration::from_secs(60)));
        let mut rx = rx;
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_some());
        drop(rx);
        let end = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("pump ends")
            .expect("join");
        assert_eq!(end, PumpEnd::Closed);
    }
}
