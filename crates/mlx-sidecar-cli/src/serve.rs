//! `mlx-sidecar serve`: the shared daemon. Builds the daemon's configuration from the command
//! line (the same environment and worker options as `generate`, through
//! [`session::supervisor_config`]) and runs `mlx_sidecar_server::run` until SIGTERM or
//! SIGINT, after which in-flight requests get the grace period to finish.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mlx_sidecar_server::{ApiKey, ServeConfig};
use tokio::signal::unix::{SignalKind, signal};

use super::args::{GlobalArgs, ServeArgs};
use super::progress::StderrProgress;
use super::session;

/// Runs the daemon until a stop signal; exit 0 after a clean drain.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &ServeArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    let grace = Duration::try_from_secs_f64(args.grace)
        .context("--grace must be a non-negative number of seconds")?;
    let stall_timeout = Duration::try_from_secs_f64(args.stall_timeout)
        .context("--stall-timeout must be a non-negative number of seconds")?;
    // Install the handlers first: a signal during the environment check must still drain.
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut supervisor = session::supervisor_config(global, progress)
        .await?
        .with_replicas(usize::from(args.workers))
        .with_replica_devices(args.worker_devices.iter().map(|d| d.trim().to_owned()));
    supervisor.worker = supervisor
        .worker
        .with_args(args.worker_args.iter().cloned());
    let mut config = ServeConfig::new(supervisor)
        .with_grace(grace)
        .with_max_body_bytes(args.max_body_bytes)
        .with_stall_timeout(stall_timeout)
        .with_open_probes(args.open_probes)
        .with_on_listening(|listeners| {
            eprintln!("mlx-sidecar: listening on {}", listeners.join(", "));
        });
    if let Some(path) = &args.socket {
        config = config.with_socket_path(path);
    }
    if let Some(addr) = args.listen {
        config = config.with_listen(addr);
    }
    if let Some(file) = &args.api_key_file {
        config = config.with_api_key(ApiKey::from_file(file)?);
    }
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
            _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
        }
    };
    mlx_sidecar_server::run(config, stop).await?;
    Ok(ExitCode::SUCCESS)
}
