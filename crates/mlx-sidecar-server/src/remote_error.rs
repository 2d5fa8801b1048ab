//! What the daemon tells remote callers about a library error, on both fronts (the gRPC
//! relay's statuses, the HTTP API's OpenAI-shaped errors): the error's own text, except
//! what belongs to the daemon's operator alone.

use mlx_sidecar::Error;

/// An error's text for a remote caller (see the [module docs](self)).
///
/// A supervisor that gave up keeps its worker's last log lines to the daemon's own log
/// (where the supervisor wrote them): they may name the host's paths and files, which
/// callers of a shared daemon need not see.
pub(crate) fn remote_message(error: &Error) -> String {
    match error {
        Error::GaveUp {
            reason,
            last_status,
            ..
        } => {
            // The library's own wording, without the lines.
            let told = Error::GaveUp {
                reason: reason.clone(),
                last_status: last_status.clone(),
                last_log: Vec::new(),
            };
            format!("{told} (the worker's last log lines are in the daemon's log)")
        }
        other => other.to_string(),
    }
}
