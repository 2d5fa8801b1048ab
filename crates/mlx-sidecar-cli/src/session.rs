//! Where `generate` and `chat` send requests: a running `mlx-sidecar serve` daemon (given
//! with `--connect`, or found on the default socket), or an own worker. For an own worker:
//! make sure the Python environment is there (building it on first use, with progress),
//! spawn the supervisor, wait until the worker serves, and shut it all down again.
//! [`supervisor_config`] is shared with `serve`, which hands it to the daemon.

use std::time::{Duration, Instant};

use anyhow::Context;
use mlx_sidecar::env::{self, EnvOptions, PythonEnv};
use mlx_sidecar::{Client, Endpoint, HealthStatus};
use mlx_sidecar::{PrefixCacheLimits, ShardGroup, Supervisor, SupervisorConfig, WorkerCommand};

use mlx_sidecar::LifecycleEvent;
use tokio::sync::broadcast;

use super::args::{DaemonArgs, GlobalArgs};
use super::exit::UsageError;
use super::explain;
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
    if global.test_model {
        worker = worker.with_test_model();
    }
    if let Some(cache) = &global.cache_dir {
        worker = worker.with_args(["--cache-dir".to_owned(), cache.display().to_string()]);
    }
    if let Some(group) = shard_group(global) {
        worker = worker.with_shard(group);
    }
    worker = worker.with_prefix_cache(PrefixCacheLimits {
        max_entries: global.prefix_cache_entries,
        max_bytes: global.prefix_cache_bytes,
    });
    // Info at least: the "listening" and "startup" messages tell the supervisor the worker is
    // up and feed the start-up spinner; what is shown is filtered on this side.
    let level = if global.verbose >= 2 { "debug" } else { "info" };
    worker.with_args(["--log-level", level])
}

/// The sharding the global arguments ask for, if any.
fn shard_group(global: &GlobalArgs) -> Option<ShardGroup> {
    let group = match (&global.shard_hostfile, global.shard_ranks) {
        (Some(hostfile), ranks) => ShardGroup {
            ranks,
            ..ShardGroup::from_hostfile(hostfile)
        },
        (None, Some(ranks)) => ShardGroup::new(ranks),
        (None, None) => return None,
    };
    Some(ShardGroup {
        port: global.shard_port,
        ssh: global.shard_ssh.clone(),
        ..group.with_backend(global.shard_backend.into())
    })
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
        .map(|p| format!(": {}", explain::worker_problem(&p)))
        .unwrap_or_default();
    anyhow::anyhow!(
        "the worker exited while starting ({status}){detail}\n(run with -v to see its log)"
    )
}

/// How long a failed request waits to learn how a worker died, or whether the daemon is
/// still there.
const DEATH_NOTICE: Duration = Duration::from_secs(2);

/// How long `generate` and `chat` wait for a daemon on the default socket before starting
/// their own worker.
const DAEMON_PROBE: Duration = Duration::from_millis(200);

/// The `--startup-timeout`.
fn startup_timeout(global: &GlobalArgs) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(global.startup_timeout)
        .context("--startup-timeout must be a non-negative number of seconds")
}

/// The supervisor's configuration from the global options: checks `--model`, ensures the
/// Python environment (building it on first use), and sets the worker's command line,
/// start-up timeout, socket directory and standby. Used by own-worker sessions and `serve`.
pub(crate) async fn supervisor_config(
    global: &GlobalArgs,
    progress: &StderrProgress,
) -> anyhow::Result<SupervisorConfig> {
    if let Some(model) = &global.model {
        if !model.exists() {
            return Err(UsageError(format!(
                "--model {}: no such file or directory",
                model.display()
            ))
            .into());
        }
    }
    let timeout = startup_timeout(global)?;
    let env = env::ensure(&env_options(global), progress)
        .await
        .context("preparing the worker's Python environment")?;
    tracing::debug!(python = %env.python.display(), "worker environment");
    let mut config = SupervisorConfig::new(worker_command(&env, global))
        .with_startup_timeout(timeout)
        .with_standby(global.standby)
        .with_shadow_prefill(!global.no_shadow_prefill);
    if let Some(dir) = &global.socket_dir {
        config = config.with_socket_dir(dir);
    }
    Ok(config)
}

/// The API key in `file` (surrounding whitespace trimmed).
pub(crate) fn read_api_key(file: &std::path::Path) -> anyhow::Result<String> {
    let key = std::fs::read_to_string(file)
        .with_context(|| format!("reading the API key file {}", file.display()))?;
    Ok(key.trim().to_owned())
}

/// Where requests go: an own, supervised worker, or a `mlx-sidecar serve` daemon.
pub(crate) enum Session {
    /// A worker this process started; stopped again at the end.
    Own(OwnWorker),
    /// A daemon's client; the daemon keeps running after this process.
    Daemon(Client),
}

impl Session {
    /// Connects to a daemon or starts an own worker. `--no-daemon` starts an own worker;
    /// `--connect` (or `MLX_SIDECAR_CONNECT`) must reach a daemon, else it is an error;
    /// otherwise a daemon that answers `SERVING` on the default socket within 200 ms is used,
    /// unless `--model` or `--test-model` asks for a model of this process's own.
    pub(crate) async fn start(
        global: &GlobalArgs,
        daemon: &DaemonArgs,
        progress: &StderrProgress,
    ) -> anyhow::Result<Self> {
        if daemon.no_daemon {
            return Ok(Session::Own(OwnWorker::start(global, progress).await?));
        }
        if let Some(address) = &daemon.connect {
            let endpoint: Endpoint = address
                .parse()
                .map_err(|e| UsageError(format!("--connect {address}: {e}")))?;
            let mut client = Client::connect(endpoint.clone())
                .await
                .map_err(|e| no_daemon_error(&endpoint, e))?;
            if let Some(file) = &daemon.api_key_file {
                client = client.with_api_key(&read_api_key(file)?)?;
            }
            tracing::info!(%endpoint, "using the daemon");
            return Ok(Session::Daemon(client));
        }
        if global.model.is_none() && !global.test_model {
            if let Some(client) = probe_default_daemon().await {
                return Ok(Session::Daemon(client));
            }
        }
        Ok(Session::Own(OwnWorker::start(global, progress).await?))
    }

    /// The client to send requests with.
    pub(crate) fn client(&self) -> &Client {
        match self {
            Session::Own(own) => &own.client,
            Session::Daemon(client) => client,
        }
    }

    /// Says what happened when a request failed, where that needs a look at the processes:
    /// a worker (own, or the daemon's) that died mid-answer, or a daemon that went away.
    /// Other errors are returned as they are (see `explain` for their wording).
    pub(crate) async fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        let Some(lib) = err
            .chain()
            .find_map(|c| c.downcast_ref::<mlx_sidecar::Error>())
        else {
            return err;
        };
        let tokens = match lib {
            mlx_sidecar::Error::WorkerDied {
                tokens_received, ..
            } => *tokens_received,
            mlx_sidecar::Error::Rpc {
                code: tonic::Code::Unknown | tonic::Code::Internal,
                message,
            } if matches!(self, Session::Daemon(_)) && message.contains("error reading") => 0,
            _ => return err,
        };
        let message = match self {
            Session::Own(own) => {
                let who = match own.exit_status(DEATH_NOTICE).await {
                    Some(s) if s.code.is_some() => format!("the worker process exited ({s})"),
                    Some(s) => format!("the worker process was {s}"),
                    None => "the worker process died".to_owned(),
                };
                format!(
                    "{}; a new one starts for the next request",
                    explain::cut_short(&who, tokens)
                )
            }
            Session::Daemon(client) => {
                let probe = client.clone().with_timeout(DEATH_NOTICE);
                match probe.daemon_status().await {
                    Ok(_) => format!(
                        "{}; the daemon starts a new one (`mlx-sidecar status` shows it)",
                        explain::cut_short("the daemon's worker process died", tokens)
                    ),
                    Err(_) => format!(
                        "{}; start it again with `mlx-sidecar serve`",
                        explain::cut_short(
                            "the daemon stopped answering (it exited or was killed)",
                            tokens
                        )
                    ),
                }
            }
        };
        explain::plain(err, message)
    }

    /// Stops an own worker (see [`OwnWorker::shutdown`]); leaves a daemon alone.
    pub(crate) async fn shutdown(self, interrupts: &mut Interrupts) {
        match self {
            Session::Own(own) => own.shutdown(interrupts).await,
            Session::Daemon(_) => {}
        }
    }
}

/// The error when no daemon answers on `endpoint` (a socket shown as its path), or, when
/// one answers but refuses the API key, that.
pub(crate) fn no_daemon_error(endpoint: &Endpoint, err: mlx_sidecar::Error) -> anyhow::Error {
    if matches!(
        err.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ) {
        return anyhow::Error::new(err);
    }
    let shown = match endpoint {
        Endpoint::Unix(path) => path.display().to_string(),
        Endpoint::Tcp { .. } => endpoint.to_string(),
    };
    let reason = explain::short_reason(&err.to_string());
    explain::plain(
        err,
        format!("no daemon answers on {shown} ({reason}); start one with `mlx-sidecar serve`"),
    )
}

/// A client of the daemon on the default socket, if one answers `SERVING` in time.
async fn probe_default_daemon() -> Option<Client> {
    let endpoint = Endpoint::default_daemon();
    let probe = async {
        let client = Client::connect(endpoint.clone()).await.ok()?;
        let client = client.with_timeout(DAEMON_PROBE);
        match client.health().await {
            Ok(HealthStatus::Serving) => Some(client.with_timeout(Duration::from_secs(30))),
            _ => None,
        }
    };
    let found = tokio::time::timeout(DAEMON_PROBE, probe)
        .await
        .ok()
        .flatten();
    match &found {
        Some(_) => tracing::info!(%endpoint, "using the daemon"),
        None => tracing::debug!(%endpoint, "no daemon serving; starting an own worker"),
    }
    found
}

/// A running, ready worker of this process.
pub(crate) struct OwnWorker {
    supervisor: Supervisor,
    client: Client,
}

impl OwnWorker {
    /// Ensures the environment, starts the worker and waits until it serves.
    async fn start(global: &GlobalArgs, progress: &StderrProgress) -> anyhow::Result<Self> {
        let config = supervisor_config(global, progress).await?;
        let timeout = startup_timeout(global)?;
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
            "worker ready"
        );
        let client = supervisor.client();
        Ok(OwnWorker { supervisor, client })
    }

    /// How the last worker process ended, waiting up to `wait` for the supervisor to notice
    /// (a broken stream can come a moment before the exit).
    async fn exit_status(&self, wait: Duration) -> Option<mlx_sidecar::ExitStatusInfo> {
        let until = Instant::now() + wait;
        loop {
            if let Some(status) = self.supervisor.last_exit() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the worker gracefully (it drains, then exits); errors are logged, not returned.
    /// Another Ctrl-C meanwhile stops it at once (dropping the supervisor kills the worker's
    /// process group).
    async fn shutdown(self, interrupts: &mut Interrupts) {
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
