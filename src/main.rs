//! The `mlx-sidecar` command line: `generate`, `chat`, `doctor`, `setup`. See `src/cli/`.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use cli::args::Cli;
use cli::progress::StderrProgress;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = Arc::new(StderrProgress::new());
    cli::logging::init(cli.global.verbose, progress.clone());
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
    let result = runtime.block_on(cli::run(&cli, &progress));
    // A line reader may still block on stdin; don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => cli::exit::report(&err),
    }
}
