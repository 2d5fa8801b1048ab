//! Starting the worker for `generate` and `chat`: make sure the Python environment is there
//! (building it on first use, with progress), spawn the supervisor, wait until the worker
//! serves, and shut it all down again.

use std::time::{Duration, Instant};

use anyhow::Context;
use mlx_sidecar::Client;
use mlx_sidecar::env::{self, EnvOptions, PythonEnv};
use mlx_sidecar::{Supervisor, SupervisorConfig, WorkerCommand};

use mlx_sidecar::LifecycleEvent;
use tokio::sync::broadcast;

use super::args::GlobalArgs;
use super::exit::UsageError;
use super::logging;
use super::progress::StderrProgress;
use super::stream::Interrupts;

/// The environment options the global arguments name.
pub(crate) fn env_options(global: &GlobalArgs) -> EnvOptions {
    EnvOptions {
        root: global.env_dir.clone(),
        python: global.python.clone(),
        variant: global.variant.map(Into::into),
        dev: false,
        force_rebuild: false,
    }
}

/// The worker's command line for an environment and the global arguments.
pub(crate) fn worker_command(env: &PythonEnv, global: &GlobalArgs) -> WorkerCommand {
    let mut worker = WorkerCommand::new(&env.python, &env.worker_dir);
    if let Some(model) = &global.model {
        worker = worker.with_model(model);
    }
    if let Some(cache) = &global.cache_dir {
        worker = worker.with_args(["--cache-dir".to_owned(), cache.display().to_string()]);
    }
    // Info at least: the "listening" and "startup" messages tell the supervisor the worker is
    // up and feed the start-up spinner; what is shown is filtered on this side.
    let level = if global.verbose >= 2 { "debug" } else { "info" };
    worker.with_args(["--log-level", level])
}

/// Waits for the worker's first crash (forever, if it never crashes).
async fn first_crash(
    events: &mut broadcast::Receiver<LifecycleEvent>,
    supervisor: &Supervisor,
) -> String {
    if let Some(status) = supervisor.last_exit() {
        return status.to_string();
    }
    loop {
        match events.recv().await {
            Ok(LifecycleEvent::Crashed { status, .. }) => return status.to_string(),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

fn startup_crash(status: String) -> anyhow::Error {
    let detail = logging::last_worker_problem()
        .map(|p| format!(": {p}"))
        .unwrap_or_default();
    anyhow::anyhow!(
        "the worker exited while starting ({status}){detail}\n(run with -v to see its log)"
    )
}

/// A running, ready worker.
pub(crate) struct Session {
    supervisor: Supervisor,
    client: Client,
}

impl Session {
    /// Ensures the environment, starts the worker and waits until it serves.
    pub(crate) async fn start(
        global: &GlobalArgs,
        progress: &StderrProgress,
    ) -> anyhow::Result<Self> {
        if let Some(model) = &global.model {
            if !model.exists() {
                return Err(UsageError(format!(
                    "--model {}: no such file or directory",
                    model.display()
                ))
                .into());
            }
        }
        let env = env::ensure(&env_options(global), progress)
            .await
            .context("preparing the worker's Python environment")?;
        let timeout = Duration::try_from_secs_f64(global.startup_timeout)
            .context("--startup-timeout must be a non-negative number of seconds")?;
        let mut config = SupervisorConfig::new(worker_command(&env, global))
            .with_startup_timeout(timeout)
            .with_standby(global.standby);
        if let Some(dir) = &global.socket_dir {
            config = config.with_socket_dir(dir);
        }
        let started = Instant::now();
        progress.spin("starting the worker");
        let supervisor = match Supervisor::spawn(config).await {
            Ok(s) => s,
            Err(e) => {
                progress.done(None);
                return Err(e).context("starting the worker");
            }
        };
        // A worker that exits before it ever served will most likely do so again (a bad
        // model, a broken package): report it now instead of after the restart limit.
        let mut events = supervisor.subscribe();
        let ready = tokio::select! {
            ready = supervisor.wait_ready(timeout) => {
                ready.context("waiting for the worker to load the model")
            }
            status = first_crash(&mut events, &supervisor) => Err(startup_crash(status)),
        };
        progress.done(None);
        ready?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            python = %env.python.display(),
            "worker ready"
        );
        let client = supervisor.client();
        Ok(Session { supervisor, client })
    }

    /// The client of the worker.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Stops the worker gracefully (it drains, then exits); errors are logged, not returned.
    /// Another Ctrl-C meanwhile stops it at once (dropping the supervisor kills the worker's
    /// process group).
    pub(crate) async fn shutdown(self, interrupts: &mut Interrupts) {
        tokio::select! {
            result = self.supervisor.shutdown() => {
                if let Err(e) = result {
                    tracing::warn!("stopping the worker: {e}");
                }
            }
            () = interrupts.next() => eprintln!("mlx-sidecar: worker stopped without waiting"),
        }
    }
}
