//! Errors said in the user's terms: what happened, to which process, and what to do, with
//! the technical chain (gRPC codes, transport errors, Python exception names) kept for
//! `-v`.
//!
//! [`Plain`] is a message already written for the user, attached as context on top of the
//! technical error it explains; [`describe`] turns any error chain into the line to print:
//! the top `Plain` when there is one, else a plain wording of the library's
//! [`mlx_sidecar::Error`] in the chain, else the chain itself (our own messages, such as bad
//! arguments, are plain already). The session adds the wording that needs a process to
//! look at (a worker that died mid-answer: how it died, or whether the daemon is still
//! there) with `Session::explain`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use mlx_sidecar::Error;
use tonic::Code;

/// A message written for the user; the error it sits on is the detail (shown with `-v`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Plain(pub(crate) String);

/// Wraps `err` in a plain message.
pub(crate) fn plain(err: impl Into<anyhow::Error>, message: impl Into<String>) -> anyhow::Error {
    err.into().context(Plain(message.into()))
}

/// Whether `-v` was given (set once, by `main`).
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Records whether `-v` was given: [`describe_now`] then shows the technical detail.
pub(crate) fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// [`describe`] with the `-v` of this run.
pub(crate) fn describe_now(err: &anyhow::Error) -> String {
    describe(err, VERBOSE.load(Ordering::Relaxed))
}

/// What to print for `err`: the plain message and, when `verbose`, the technical chain
/// under it (when it says more).
pub(crate) fn describe(err: &anyhow::Error, verbose: bool) -> String {
    let full = chain_text(err);
    let mut text = headline(err).unwrap_or_else(|| full.clone());
    if verbose && text != full {
        let _ = write!(text, "\n  detail: {full}");
    }
    text
}

/// The chain joined with ": ", leaving out a cause its parent already quoted (many errors
/// print their source in their own message too).
fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn headline(err: &anyhow::Error) -> Option<String> {
    // anyhow finds a context of this type at any depth (`chain()` would give its wrapper).
    if let Some(plain) = err.downcast_ref::<Plain>() {
        return Some(plain.0.clone());
    }
    err.chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .map(library_error)
}

/// The library's errors, worded for a person using the command line.
pub(crate) fn library_error(e: &Error) -> String {
    match e {
        Error::Rpc { code, message } => rpc_error(*code, message),
        Error::WorkerDied {
            tokens_received, ..
        } => cut_short("the worker stopped answering", *tokens_received),
        Error::NotReady { waited, state } => format!(
            "the worker was not ready after {:.1} s (it is {state}); a large model may need a \
             longer --startup-timeout",
            waited.as_secs_f64()
        ),
        Error::GaveUp {
            reason,
            last_status,
            ..
        } => format!(
            "the worker keeps crashing, so it is not started again ({reason}{}); run with -v \
             to see its last log lines",
            last_status
                .as_deref()
                .map(|s| format!("; it last ended with {s}"))
                .unwrap_or_default()
        ),
        Error::Deadline { deadline, .. } => format!(
            "no complete answer within {:.0} s; the request was cancelled",
            deadline.as_secs_f64()
        ),
        Error::Spawn { python, source } => format!(
            "cannot run the Python interpreter {}: {source}",
            python.display()
        ),
        Error::Connect { endpoint, reason } => {
            format!("nothing answers at {endpoint} ({})", short_reason(reason))
        }
        other => other.to_string(),
    }
}

/// A worker's answer other than OK.
fn rpc_error(code: Code, message: &str) -> String {
    match code {
        Code::InvalidArgument => format!("the request was refused: {message}"),
        Code::ResourceExhausted => {
            if let Some(rest) = message.strip_prefix("prompt: ") {
                format!("the prompt is too long for the model: {rest}")
            } else if let Some(rest) = message.strip_prefix("max_tokens: ") {
                format!("--max-tokens is too large for the model: {rest}")
            } else {
                format!("the worker is too busy to take the request ({message}); try again shortly")
            }
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            "the daemon refused the API key (missing or wrong): pass the file with the key the \
             daemon was started with, with --api-key-file FILE"
                .to_owned()
        }
        Code::Unavailable => {
            format!("the worker cannot take requests now ({message}); try again shortly")
        }
        Code::Cancelled => format!("the worker cancelled the request ({message})"),
        Code::DeadlineExceeded => "no answer in time; the request was cancelled".to_owned(),
        Code::Unimplemented => format!(
            "the other side does not know this call ({message}); is it an mlx-sidecar daemon of \
             the same version?"
        ),
        _ => format!("the worker failed the request: {message}"),
    }
}

/// "`who` mid-answer, after N tokens (the text above is incomplete)".
pub(crate) fn cut_short(who: &str, tokens: usize) -> String {
    if tokens == 0 {
        format!("{who} before the answer began")
    } else {
        format!(
            "{who} mid-answer, after {tokens} token{}: the text above is incomplete",
            if tokens == 1 { "" } else { "s" }
        )
    }
}

/// A connection failure's reason in a few words ("no socket there", "connection refused").
pub(crate) fn short_reason(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("no such file") {
        "no socket there"
    } else if lower.contains("connection refused") {
        "connection refused"
    } else if lower.contains("permission denied") {
        "permission denied"
    } else if lower.contains("timed out") || lower.contains("deadline") {
        "no answer in time"
    } else if lower.contains("not a socket") {
        "the path is not a socket"
    } else {
        "it does not accept connections"
    }
}

/// The worker's last problem, without Python's exception class names
/// ("model loading failed: mlx_worker.model.errors.UnsupportedModelError: X" → "it could
/// not load the model: X").
pub(crate) fn worker_problem(problem: &str) -> String {
    let parts: Vec<&str> = problem
        .split(": ")
        .filter(|part| !is_exception_name(part))
        .collect();
    let text = parts.join(": ");
    match text.strip_prefix("model loading failed") {
        Some(rest) => format!("it could not load the model{rest}"),
        None => text,
    }
}

/// "mlx_worker.model.errors.UnsupportedModelError", "ValueError", "OSError".
fn is_exception_name(part: &str) -> bool {
    let name = part.rsplit('.').next().unwrap_or(part);
    !part.contains(' ')
        && (name.ends_with("Error") || name.ends_with("Exception"))
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_exception_names_are_dropped() {
        assert_eq!(
            worker_problem(
                "model loading failed: mlx_worker.model.errors.UnsupportedModelError: /x is \
                 neither a GGUF file nor an mlx-lm model directory"
            ),
            "it could not load the model: /x is neither a GGUF file nor an mlx-lm model directory"
        );
        assert_eq!(
            worker_problem("bind failed: OSError: in use"),
            "bind failed: in use"
        );
    }

    #[test]
    fn plain_message_on_top_and_detail_with_verbose() {
        let err = plain(
            Error::Rpc {
                code: Code::Unknown,
                message: "h2 protocol error: error reading a body from connection".into(),
            },
            "the daemon stopped answering",
        );
        assert_eq!(describe(&err, false), "the daemon stopped answering");
        let verbose = describe(&err, true);
        assert!(
            verbose.contains("detail:") && verbose.contains("h2 protocol error"),
            "{verbose}"
        );
    }

    #[test]
    fn context_errors_are_worded_for_people() {
        let long = anyhow::Error::new(Error::Rpc {
            code: Code::ResourceExhausted,
            message: "prompt: 21011 tokens leave no room in the context of 2048 tokens".into(),
        })
        .context("generating");
        assert_eq!(
            describe(&long, false),
            "the prompt is too long for the model: 21011 tokens leave no room in the context of \
             2048 tokens"
        );
        let key = anyhow::Error::new(Error::Rpc {
            code: Code::Unauthenticated,
            message: "missing or wrong API key".into(),
        });
        assert!(describe(&key, false).contains("--api-key-file"));
    }
}
