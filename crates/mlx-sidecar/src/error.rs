//! The crate's one error type.
//!
//! Every failure a caller can see is an [`Error`]. Failures the worker reports keep their
//! gRPC status code ([`Error::Rpc`]), so a caller can tell `UNAVAILABLE` (try again) from
//! `INVALID_ARGUMENT` (fix the request); the supervisor's own failures carry the context
//! that explains them (the interpreter that failed to start, the socket path, the worker's
//! last exit status and log lines).

use std::{io, path::PathBuf, time::Duration};

/// What can go wrong when supervising the worker or calling it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The worker answered with a gRPC status other than OK.
    #[error("worker returned {code:?}: {message}")]
    Rpc {
        /// The status code, as the worker sent it.
        code: tonic::Code,
        /// The status message (for `INVALID_ARGUMENT` it starts with the field path).
        message: String,
    },

    /// The worker process died (or its connection broke) while a call was in flight,
    /// after part of the answer had arrived, and the stream could not be resumed on the
    /// next worker: resuming was turned off ([`crate::GenerateRequest::no_resume`]), the
    /// resume limit was reached, or no worker took over before the deadline. The call is
    /// not sent again from the start, because the text already sent cannot be taken back.
    #[error(
        "worker died mid-call{}; {tokens_received} token(s) had arrived{}; {}",
        status.as_deref().map(|s| format!(" ({s})")).unwrap_or_default(),
        if *resumes == 0 { String::new() } else { format!(" over {} resume(s)", resumes) },
        if *tokens_received == 0 { "safe to retry" } else { "not retried: a retry would repeat the text already delivered" }
    )]
    WorkerDied {
        /// How the worker ended or why the connection broke, when known.
        status: Option<String>,
        /// The text streamed before the worker died.
        partial_text: String,
        /// How many tokens had arrived before the worker died.
        tokens_received: usize,
        /// How many times the stream had been resumed on another worker before this death.
        resumes: u32,
    },

    /// The worker did not become ready (health `SERVING`) within the time the caller allowed.
    #[error("worker not ready after {waited:?} (state: {state})")]
    NotReady {
        /// How long the caller waited.
        waited: Duration,
        /// The supervisor's state when the wait ended.
        state: String,
    },

    /// The supervisor stopped restarting the worker: it crashed too often (the restart
    /// intensity limit) and every call now fails with this error.
    #[error("supervisor gave up on the worker: {reason}{}{}",
        last_status.as_deref().map(|s| format!("; last exit: {s}")).unwrap_or_default(),
        if last_log.is_empty() { String::new() } else { format!("; last log:\n  {}", last_log.join("\n  ")) })]
    GaveUp {
        /// Why the supervisor gave up.
        reason: String,
        /// The last worker's exit status (code or signal), when it had exited.
        last_status: Option<String>,
        /// The worker's last log lines (stderr), oldest first.
        last_log: Vec<String>,
    },

    /// The supervisor was shut down (or dropped); no worker will serve this call.
    #[error("the supervisor has stopped")]
    Stopped,

    /// The worker process could not be started.
    #[error("cannot start the worker with {python}: {source}")]
    Spawn {
        /// The Python interpreter that was run.
        python: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },

    /// The worker's Unix socket cannot be used.
    #[error("socket {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An endpoint string is neither a Unix socket (`unix:/path` or a path) nor a TCP
    /// address (`http://host:port` or `host:port`).
    #[error("invalid endpoint {input:?}: {reason}")]
    InvalidEndpoint {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Nothing accepted a TCP connection at a daemon's address.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The address, such as `http://127.0.0.1:8080`.
        endpoint: String,
        /// Why the connection failed.
        reason: String,
    },

    /// An API key cannot be sent as gRPC metadata (it must be visible ASCII). The key
    /// itself is not repeated.
    #[error(
        "the API key is not usable as a bearer token: only visible ASCII characters are allowed"
    )]
    InvalidApiKey,

    /// The call's deadline passed before it completed.
    #[error("deadline of {deadline:?} exceeded{}", if partial_text.is_empty() { String::new() } else { format!(" after {} byte(s) of text", partial_text.len()) })]
    Deadline {
        /// The deadline the call had.
        deadline: Duration,
        /// For `generate`: the text streamed before the deadline passed.
        partial_text: String,
    },

    /// The worker sent something the contract does not allow (a bug in the worker or a
    /// version mismatch).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The managed Python environment is missing or broken (see the `env` module).
    #[error("python environment: {message}")]
    Environment {
        /// What is wrong, and what to do about it.
        message: String,
        /// The underlying failure, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The gRPC status code that best describes this error.
    ///
    /// [`Error::Rpc`] gives the worker's own code. A dead, unready or given-up worker is
    /// `UNAVAILABLE`; a passed deadline is `DEADLINE_EXCEEDED`; a stopped supervisor is
    /// `CANCELLED`; the rest are `INTERNAL`.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Rpc { code, .. } => *code,
            Error::WorkerDied { .. }
            | Error::NotReady { .. }
            | Error::GaveUp { .. }
            | Error::Connect { .. } => tonic::Code::Unavailable,
            Error::InvalidEndpoint { .. } | Error::InvalidApiKey => tonic::Code::InvalidArgument,
            Error::Deadline { .. } => tonic::Code::DeadlineExceeded,
            Error::Stopped => tonic::Code::Cancelled,
            Error::Spawn { .. }
            | Error::Socket { .. }
            | Error::Protocol(_)
            | Error::Environment { .. }
            | Error::Io { .. } => tonic::Code::Internal,
        }
    }

    /// Whether sending the same request again may succeed: `UNAVAILABLE` from the worker,
    /// a worker that is not ready yet, one that died before sending anything, or a daemon
    /// that did not accept the connection.
    ///
    /// The client already retries such failures within each call's deadline; this tells a
    /// caller whose deadline ran out whether trying later makes sense.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Rpc { code, .. } => *code == tonic::Code::Unavailable,
            Error::WorkerDied {
                tokens_received, ..
            } => *tokens_received == 0,
            Error::NotReady { .. } | Error::Connect { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<crate::env::EnvError> for Error {
    fn from(e: crate::env::EnvError) -> Self {
        Error::Environment {
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_message() {
        let err = Error::from(tonic::Status::invalid_argument(
            "sampling.top_p: must be in (0, 1]",
        ));
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("sampling.top_p"));
        assert!(Error::from(tonic::Status::unavailable("draining")).is_retryable());
    }

    #[test]
    fn worker_died_says_whether_a_retry_is_safe() {
        let died = |tokens_received| Error::WorkerDied {
            status: Some("killed by signal 9 (SIGKILL)".into()),
            partial_text: "The capital".into(),
            tokens_received,
            resumes: 0,
        };
        let text = died(2).to_string();
        assert!(
            text.contains("SIGKILL") && text.contains("2 token(s)"),
            "{text}"
        );
        assert!(text.contains("not retried"), "{text}");
        assert!(!died(2).is_retryable());
        assert!(died(0).to_string().contains("safe to retry"));
        assert!(died(0).is_retryable());
        let resumed = Error::WorkerDied {
            status: None,
            partial_text: "The capital".into(),
            tokens_received: 2,
            resumes: 3,
        };
        assert!(
            resumed.to_string().contains("over 3 resume(s)"),
            "{resumed}"
        );
    }

    #[test]
    fn gave_up_reports_status_and_log() {
        let err = Error::GaveUp {
            reason: "6 restarts within 30s".into(),
            last_status: Some("exit code 3".into()),
            last_log: vec!["error: boom".into()],
        };
        let text = err.to_string();
        assert!(
            text.contains("exit code 3") && text.contains("error: boom"),
            "{text}"
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
