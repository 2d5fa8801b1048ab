//! The `mlx-sidecar` command line, built on the `mlx_sidecar` library (`anyhow` for errors
//! here, the library's typed errors underneath).
//!
//! - `args`: the clap types (every option documented for `--help`).
//! - `session`: the Python environment (via the library's `env` module) and a supervised,
//!   ready worker for `generate` and `chat`.
//! - `session`: also decides whether `generate` and `chat` use a running daemon.
//! - `serve`, `status`, `generate`, `chat`, `doctor`, `setup`, `models`, `chaos`, `bench`:
//!   one module per command (`serve` runs the `mlx_sidecar_server` daemon).
//! - `request`: sampling options → request; worker field errors → options.
//! - `stream`: printing a token stream (text or JSON lines) and Ctrl-C cancellation.
//! - `progress`: spinners (or plain lines) on stderr; `logging`: tracing setup.
//! - `exit`: exit codes (0, 1, 2 bad arguments, 130 interrupted) and error printing;
//!   `explain`: errors in the user's terms, the technical detail kept for `-v`.

mod args;
mod bench;
mod chaos;
mod chat;
mod doctor;
mod exit;
mod explain;
mod generate;
mod logging;
mod models;
mod progress;
mod request;
mod serve;
mod session;
mod setup;
mod status;
mod stream;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use args::{Cli, Command, LogFormat};
use progress::StderrProgress;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = Arc::new(StderrProgress::new());
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    logging::init(cli.global.verbose, format, progress.clone());
    explain::set_verbose(cli.global.verbose > 0);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mlx-sidecar: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&cli, &progress));
    // A line reader may still block on stdin; don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

/// Runs the parsed command.
async fn run(cli: &Cli, progress: &StderrProgress) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve(args) => serve::run(&cli.global, args, progress).await,
        Command::Status(args) => status::run(args).await,
        Command::Generate(args) => generate::run(&cli.global, args, progress).await,
        Command::Chat(args) => chat::run(&cli.global, args, progress).await,
        Command::Doctor(args) => doctor::run(&cli.global, args).await,
        Command::Setup(args) => setup::run(&cli.global, args, progress).await,
        Command::Models(args) => models::run(&cli.global, args),
        Command::Chaos(args) => chaos::run(&cli.global, args, progress).await,
        Command::Bench(args) => bench::run(&cli.global, args, progress).await,
    }
}
