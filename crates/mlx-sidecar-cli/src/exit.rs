//! Exit codes and how errors are printed: 0 success, 1 failure, 2 bad arguments (ours or
//! the worker's `INVALID_ARGUMENT`), 130 interrupted by Ctrl-C.

use std::process::ExitCode;

use super::request::option_for;

/// Exit code of a command interrupted by Ctrl-C (128 + SIGINT).
pub(crate) const INTERRUPTED: u8 = 130;
/// Exit code for bad arguments, as clap uses.
pub(crate) const USAGE: u8 = 2;

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// Stdout was closed by its reader (a broken pipe): the program ends quietly with the exit
/// code of a process killed by SIGPIPE.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub(crate) struct StdoutClosed;

/// Exit code when stdout was closed (128 + SIGPIPE).
const STDOUT_CLOSED: u8 = 141;

/// Prints `err` to stderr and returns its exit code.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    if err
        .chain()
        .any(|c| c.downcast_ref::<StdoutClosed>().is_some())
    {
        return ExitCode::from(STDOUT_CLOSED);
    }
    let mut code = 1;
    let mut hint = None;
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            code = USAGE;
        }
        if let Some(e) = cause.downcast_ref::<mlx_sidecar::Error>() {
            if e.code() == tonic::Code::InvalidArgument {
                code = USAGE;
                if let mlx_sidecar::Error::Rpc { message, .. } = e {
                    hint = option_for(message);
                }
            }
        }
    }
    eprintln!("mlx-sidecar: error: {}", super::explain::describe_now(err));
    if let Some(option) = hint {
        eprintln!("mlx-sidecar: check the value of {option}");
    }
    ExitCode::from(code)
}
