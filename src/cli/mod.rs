//! The `mlx-sidecar` command line (binary only; `anyhow` for errors here, the library's
//! typed errors underneath).
//!
//! - `args`: the clap types (every option documented for `--help`).
//! - `session`: the Python environment (via the library's `env` module) and a supervised,
//!   ready worker for `generate` and `chat`.
//! - `generate`, `chat`, `doctor`, `setup`, `chaos`, `bench`: one module per command.
//! - `request`: sampling options → request; worker field errors → options.
//! - `stream`: printing a token stream (text or JSON lines) and Ctrl-C cancellation.
//! - `progress`: spinners (or plain lines) on stderr; `logging`: tracing setup.
//! - `exit`: exit codes (0, 1, 2 bad arguments, 130 interrupted) and error printing.

pub(crate) mod args;
mod bench;
pub(crate) mod chaos;
mod chat;
mod doctor;
pub(crate) mod exit;
mod generate;
pub(crate) mod logging;
pub(crate) mod progress;
mod request;
mod session;
mod setup;
mod stream;

use std::process::ExitCode;

use args::{Cli, Command};
use progress::StderrProgress;

/// Runs the parsed command.
pub(crate) async fn run(cli: &Cli, progress: &StderrProgress) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Generate(args) => generate::run(&cli.global, args, progress).await,
        Command::Chat(args) => chat::run(&cli.global, args, progress).await,
        Command::Doctor(args) => doctor::run(&cli.global, args).await,
        Command::Setup(args) => setup::run(&cli.global, args, progress).await,
        Command::Chaos(args) => chaos::run(&cli.global, args, progress).await,
        Command::Bench(args) => bench::run(&cli.global, args, progress).await,
    }
}
