//! Printing a generation stream: text to stdout as it arrives (flushed per chunk) or one
//! JSON event per line; Ctrl-C (SIGINT) stops it, which drops the stream and so cancels the
//! call in the worker.

use std::io::Write;

use anyhow::{Context, bail};
use mlx_sidecar::{FinishReason, Finished, GenerateEvent, GenerateStream};
use serde::Serialize;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::exit::StdoutClosed;

/// How the stream is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Plain text, as it comes.
    Text,
    /// One JSON event per line.
    Json,
}

/// How a stream ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The worker finished it.
    Finished {
        /// The final event.
        finished: Finished,
        /// The whole text.
        text: String,
    },
    /// Ctrl-C stopped it (the stream was dropped, which cancels the call in the worker).
    Interrupted,
}

/// Ctrl-C, as a stream of signals (registered once, so a second Ctrl-C is seen as well).
pub(crate) struct Interrupts(Signal);

impl Interrupts {
    /// Starts catching SIGINT (from now on it no longer kills the process).
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Interrupts(
            signal(SignalKind::interrupt()).context("catching Ctrl-C")?,
        ))
    }

    /// Waits for the next Ctrl-C.
    pub(crate) async fn next(&mut self) {
        self.0.recv().await;
    }
}

/// Prints `stream` until it finishes, fails, or Ctrl-C comes.
pub(crate) async fn print(
    mut stream: GenerateStream,
    format: Format,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Ended> {
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            event = stream.next_event() => event,
            () = interrupts.next() => {
                drop(stream);
                end_line(&mut stdout, format, &text)?;
                return Ok(Ended::Interrupted);
            }
        };
        match event {
            Some(Ok(GenerateEvent::Token {
                text: chunk,
                token_ids,
                ..
            })) => {
                match format {
                    Format::Text => stdout.write_all(chunk.as_bytes()),
                    Format::Json => writeln!(stdout, "{}", chunk_json(&chunk, &token_ids)),
                }
                .and_then(|()| stdout.flush())
                .map_err(stdout_error)?;
                text.push_str(&chunk);
            }
            Some(Ok(GenerateEvent::Finished(finished))) => {
                match format {
                    Format::Text => end_line(&mut stdout, format, &text)?,
                    Format::Json => {
                        writeln!(stdout, "{}", finished_json(&finished))
                            .and_then(|()| stdout.flush())
                            .map_err(stdout_error)?;
                    }
                }
                return Ok(Ended::Finished { finished, text });
            }
            Some(Err(e)) => {
                end_line(&mut stdout, format, &text)?;
                return Err(e).context("generating");
            }
            None => {
                end_line(&mut stdout, format, &text)?;
                bail!("the worker ended the stream without its final message");
            }
        }
    }
}

/// Ends a line of text output that the model did not end itself.
fn end_line(out: &mut impl Write, format: Format, text: &str) -> anyhow::Result<()> {
    if format == Format::Text && !text.is_empty() && !text.ends_with('\n') {
        out.write_all(b"\n")
            .and_then(|()| out.flush())
            .map_err(stdout_error)?;
    }
    Ok(())
}

/// A failed write to stdout; a closed pipe (`mlx-sidecar generate ... | head -1`) becomes
/// [`StdoutClosed`], which ends the program quietly.
fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// A `chunk` event as one JSON line ("type" first, for people reading it).
fn chunk_json(text: &str, token_ids: &[u32]) -> String {
    #[derive(Serialize)]
    struct Chunk<'a> {
        r#type: &'static str,
        text: &'a str,
        token_ids: &'a [u32],
    }
    let chunk = Chunk {
        r#type: "chunk",
        text,
        token_ids,
    };
    serde_json::to_string(&chunk).unwrap_or_default()
}

/// The `finished` event as one JSON line.
pub(crate) fn finished_json(f: &Finished) -> String {
    #[derive(Serialize)]
    struct Event<'a> {
        r#type: &'static str,
        finish_reason: &'static str,
        usage: serde_json::Value,
        timings: serde_json::Value,
        matched_stop: Option<&'a str>,
        stop_token_id: Option<u32>,
        request_id: &'a str,
    }
    let t = &f.timings;
    let event = Event {
        r#type: "finished",
        finish_reason: finish_reason(f.finish_reason),
        usage: json!({
            "prompt_tokens": f.usage.prompt_tokens,
            "completion_tokens": f.usage.completion_tokens,
        }),
        timings: json!({
            "queue_wait_ms": t.queue_wait_ms,
            "prefill_ms": t.prefill_ms,
            "decode_ms": t.decode_ms,
            "decode_tokens_per_second": t.decode_tokens_per_second,
            "prefill_tokens_per_second": t.prefill_tokens_per_second,
            "time_to_first_token_ms": t.time_to_first_token_ms,
            "total_ms": t.total_ms,
        }),
        matched_stop: f.matched_stop.as_deref(),
        stop_token_id: f.stop_token_id,
        request_id: &f.request_id,
    };
    serde_json::to_string(&event).unwrap_or_default()
}

/// The wire name of a finish reason.
pub(crate) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Unspecified => "unspecified",
    }
}

/// A one-line summary of a finished generation for stderr (`-v`).
pub(crate) fn summary(f: &Finished) -> String {
    format!(
        "{} prompt + {} generated tokens, finish: {}, first token after {:.0} ms, {:.1} tok/s",
        f.usage.prompt_tokens,
        f.usage.completion_tokens,
        finish_reason(f.finish_reason),
        f.timings.time_to_first_token_ms,
        f.timings.decode_tokens_per_second
    )
}
