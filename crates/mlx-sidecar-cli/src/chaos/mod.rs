//! `mlx-sidecar chaos`: proves that a supervised worker loses nothing when it dies.
//!
//! It starts a supervised worker, runs each of the load's prompts once alone for its greedy
//! reference, then the same load without faults (the floor: how often streams differ from
//! the reference with no fault at all), then the load (`load`: N clients, one generation
//! after another, every completed stream compared with its reference), and meanwhile injects faults on a schedule (`plan` parses
//! `--faults`; `inject` applies them one at a time: SIGKILL, SIGSTOP for a while, removing
//! the socket file, a slow restart). Everything is stamped on one timeline (`observe`):
//! the supervisor's lifecycle events and every token's arrival. At the end the supervisor
//! shuts down and `leaks` checks what is left (processes, zombies, descriptors, socket
//! paths); `report` counts requests by outcome and the time to detect and to serve again
//! after each fault, with where a restart's time goes; `chart` draws throughput over time
//! with the faults marked.
//!
//! With `--standby` (a global option) the supervisor keeps a standby worker; the run starts
//! once it serves, faults still go to the active worker, and the report tells takeovers by
//! the standby from fresh starts.
//!
//! Exit code: 0 when nothing was lost, mismatched or leaked and service came back after
//! every fault;
//! 1 otherwise (so it can gate CI); 2 for bad arguments.

pub(crate) mod args;
mod chart;
mod inject;
mod leaks;
mod load;
mod observe;
mod plan;
mod report;

use std::{
    collections::BTreeSet,
    io::IsTerminal,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use mlx_sidecar::{LifecycleEvent, RestartPolicy, Supervisor, SupervisorConfig, env};

use super::{
    args::GlobalArgs,
    exit::UsageError,
    progress::StderrProgress,
    session::{env_options, worker_command},
};
use args::ChaosArgs;
use inject::Injector;
use observe::Timeline;
use plan::{FaultKind, FaultPlan};

/// How long the run lasts without --duration, --requests or --kill-cycles.
const DEFAULT_DURATION: Duration = Duration::from_secs(60);

/// Runs `chaos`.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &ChaosArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    let plans = fault_plans(args)?;
    if args.clients == 0 {
        return Err(UsageError("--clients must be at least 1".into()).into());
    }
    // The run ends after --duration, --requests, or once a finite fault schedule is done
    // (--kill-cycles, or every fault with a count=); else after a minute.
    let finite_faults = !plans.is_empty() && plans.iter().all(|p| p.count.is_some());
    let end_on_faults = args.kill_cycles.is_some()
        || (finite_faults && args.duration.is_none() && args.requests.is_none());
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, None) if !end_on_faults => Some(DEFAULT_DURATION),
        _ => None,
    };
    let startup_timeout = Duration::try_from_secs_f64(global.startup_timeout)
        .map_err(|_| UsageError("--startup-timeout must be a number of seconds".into()))?;

    let python_env = env::ensure(&env_options(global), progress)
        .await
        .context("preparing the worker's Python environment")?;
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let faults_file = scratch.path().join("worker-faults");
    let mut worker = worker_command(&python_env, global)
        .with_args(args.worker_arg.iter().cloned())
        .with_env("MLX_WORKER_FAULTS_FILE", faults_file.display().to_string());
    if let Some(existing) = std::env::var_os("MLX_WORKER_FAULTS") {
        worker = worker.with_env("MLX_WORKER_FAULTS", existing.to_string_lossy());
    }
    let mut config = SupervisorConfig::new(worker)
        .with_startup_timeout(startup_timeout)
        .with_health(args.health_interval, args.health_timeout, 3)
        .with_shutdown_grace(args.grace)
        .with_restart(RestartPolicy {
            initial_delay: args.restart_delay,
            max_delay: Duration::from_secs(5),
            factor: 2.0,
            jitter: true,
            reset_after: args.reset_after,
            max_restarts: args.max_restarts,
            within: args.restart_window,
            immediate_first_restart: !args.no_immediate_restart,
        })
        .with_standby(global.standby)
        .with_shadow_prefill(!global.no_shadow_prefill)
        .with_replicas(usize::from(args.workers));
    let socket_parent = global.socket_dir.clone().unwrap_or_else(std::env::temp_dir);
    config = config.with_socket_dir(&socket_parent);

    let fds_before = leaks::fd_count();
    let threads_before = leaks::thread_count();
    progress.spin("starting the worker");
    let supervisor = Supervisor::spawn(config)
        .await
        .context("starting the worker");
    let supervisor = match supervisor {
        Ok(s) => Arc::new(s),
        Err(e) => {
            progress.done(None);
            return Err(e);
        }
    };
    // Subscribed before anything is ready, so that the first standby's pid is seen too.
    let events = supervisor.subscribe();
    let mut standby_events = supervisor.subscribe();
    let ready = supervisor.wait_all_ready(startup_timeout).await;
    let ready = match ready {
        // With --standby the run starts once the standby serves too.
        Ok(()) if global.standby => {
            progress.spin("starting the standby worker");
            standby_ready(&mut standby_events, startup_timeout).await
        }
        other => other.map_err(anyhow::Error::from),
    };
    drop(standby_events);
    progress.done(None);
    ready.context("waiting for the worker to load the model")?;
    let client = supervisor.client();
    let info = client
        .model_info()
        .await
        .context("asking the worker about its model")?;
    let vocab = info.vocab_size.max(8);
    let prompts = load::prompt_set(
        args.seed,
        args.prompts as usize,
        args.prompt_tokens,
        (vocab / 4, vocab / 2),
    );
    let mut load = load::Load {
        requests: args.requests,
        max_tokens: args.max_tokens,
        timeout: args.request_timeout,
        prompts: Arc::new(prompts),
        reference: None,
        resume: !args.no_resume,
    };
    progress.spin("running each prompt's reference");
    let reference = load::reference(&client, &load).await;
    progress.done(None);
    load.reference = Some(Arc::new(
        reference.context("running the prompts' references without faults")?,
    ));
    progress.spin("running the load without faults");
    let floor = floor_pass(&client, &load, args.clients).await;
    progress.done(None);
    let load = Arc::new(load);
    let first_pid = supervisor.worker_pid();
    // Every replica's first worker, for the leak check (their `Starting` came before the load).
    let first_pids: Vec<u32> = supervisor.replicas().iter().filter_map(|r| r.pid).collect();
    let socket_path = supervisor.socket_path();
    let socket_dir = supervisor.socket_dir();
    if !args.json {
        let standby = supervisor
            .standby_pid()
            .map(|pid| format!(", standby pid {pid}"))
            .unwrap_or_default();
        eprintln!(
            "chaos: {} clients against {} (pid {}{standby}); faults: {}",
            args.clients,
            info.model_id,
            first_pid.unwrap_or_default(),
            describe(&plans)
        );
    }

    // The load and the faults; the timeline's zero is the start of the load.
    let timeline = Arc::new(Timeline::new());
    let recorder = tokio::spawn({
        let timeline = timeline.clone();
        async move { timeline.record(events).await }
    });
    let started = timeline.now();
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_faults = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..args.clients {
        clients.spawn(load::client_loop(
            id,
            client.clone(),
            load.clone(),
            timeline.clone(),
            stop_clients.clone(),
            issued.clone(),
        ));
    }
    let injector = Injector {
        supervisor: supervisor.clone(),
        timeline: timeline.clone(),
        faults_file: faults_file.clone(),
        pace_after_recovery: args.kill_cycles.map(|_| args.kill_every),
        recovery_timeout: startup_timeout + Duration::from_secs(30),
        seed: args.seed,
        target: args.fault_target,
        injected: Default::default(),
    };
    let mut injector = tokio::spawn(injector.run(plans.clone(), stop_faults.clone()));
    let mut interrupted = false;
    let mut fault_records = None;
    progress.spin("chaos");
    let tty = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    {
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let clients_done = async {
            while issued.load(Ordering::Relaxed) < args.requests.unwrap_or(u64::MAX) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(clients_done);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = &mut clients_done, if args.requests.is_some() => break,
                records = &mut injector, if fault_records.is_none() => {
                    fault_records = Some(records.unwrap_or_default());
                    // An injector that ends early (service did not come back) ends the run.
                    if end_on_faults || !finite_faults {
                        break;
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    interrupted = true;
                    break;
                }
                _ = ticker.tick() => {
                    let (served, crashes) = timeline.counts();
                    let secs = (timeline.now() - started) as u64;
                    let line = format!(
                        "{secs} s: {served} requests served a first token, {crashes} worker crashes"
                    );
                    if tty {
                        progress.detail(&line);
                    } else if secs > 0 && secs % 30 == 0 && !args.json {
                        eprintln!("chaos: {line}");
                    }
                }
            }
        }
    }
    // Let a fault in progress recover (the clients still run), then stop the clients; each
    // finishes the request it has in flight.
    stop_faults.store(true, Ordering::Relaxed);
    let faults = match fault_records {
        Some(records) => records,
        None => injector.await.unwrap_or_default(),
    };
    stop_clients.store(true, Ordering::Relaxed);
    let mut requests = Vec::new();
    while let Some(done) = clients.join_next().await {
        requests.extend(done.unwrap_or_default());
    }
    let run_time = timeline.now() - started;
    progress.done(None);

    // Stop and look at what is left.
    let supervisor = Arc::try_unwrap(supervisor)
        .map_err(|_| anyhow::anyhow!("the supervisor is still in use"))?;
    drop(client);
    if let Err(e) = supervisor.shutdown().await {
        tracing::warn!("stopping the worker: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), recorder).await;
    let marks = timeline.snapshot();
    let workers: BTreeSet<u32> = marks
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            LifecycleEvent::Starting { pid, .. } | LifecycleEvent::StandbyStarting { pid, .. } => {
                Some(*pid)
            }
            _ => None,
        })
        .chain(first_pid)
        .chain(first_pids)
        .collect();
    let final_state = settle_final_state(
        &workers,
        fds_before,
        threads_before,
        &socket_path,
        &socket_dir,
        &socket_parent,
    )
    .await;
    let settings = report::Settings {
        model: info.model_id.clone(),
        clients: args.clients,
        prompt_tokens: args.prompt_tokens,
        prompts: args.prompts,
        max_tokens: args.max_tokens,
        duration_s: run_time,
        faults: plans,
        standby: global.standby,
        resume: !args.no_resume,
        immediate_restart: !args.no_immediate_restart,
    };
    let report = report::build(settings, &requests, &floor, faults, &marks, final_state);
    if let Some(path) = &args.chart {
        let title = format!(
            "mlx-sidecar chaos: {} clients, {}; {} faults, {} lost",
            args.clients, info.model_id, report.faults.injected, report.verdict.lost
        );
        chart::draw(path, &title, run_time, &marks, &report.faults.records)?;
    }
    if let Some(path) = &args.json_file {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render(&report));
        if let Some(path) = &args.chart {
            println!("chart written to {}", path.display());
        }
    }
    Ok(if interrupted {
        ExitCode::from(super::exit::INTERRUPTED)
    } else if report.verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The same load without faults, before them: `clients` clients through every prompt once
/// (at least one request per client), each stream compared with its reference.
async fn floor_pass(
    client: &mlx_sidecar::Client,
    load: &load::Load,
    clients: usize,
) -> Vec<load::RequestRecord> {
    let load = Arc::new(load::Load {
        requests: Some(load.prompts.len().max(clients) as u64),
        ..load.clone()
    });
    let timeline = Arc::new(Timeline::new());
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..clients {
        tasks.spawn(load::client_loop(
            id,
            client.clone(),
            load.clone(),
            timeline.clone(),
            stop.clone(),
            issued.clone(),
        ));
    }
    let mut records = Vec::new();
    while let Some(done) = tasks.join_next().await {
        records.extend(done.unwrap_or_default());
    }
    records
}

/// Waits for the first standby worker to serve.
async fn standby_ready(
    events: &mut tokio::sync::broadcast::Receiver<LifecycleEvent>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(LifecycleEvent::StandbyReady { .. }) => return Ok(()),
                Ok(LifecycleEvent::StandbyCrashed {
                    restart_in: None, ..
                }) => anyhow::bail!("the standby worker crashed too often"),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    anyhow::bail!("the supervisor stopped")
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow::anyhow!("the standby worker was not ready within {timeout:?}"))?
}

/// The fault plans the arguments ask for.
fn fault_plans(args: &ChaosArgs) -> anyhow::Result<Vec<FaultPlan>> {
    if let Some(cycles) = args.kill_cycles {
        if cycles == 0 {
            return Err(UsageError("--kill-cycles must be at least 1".into()).into());
        }
        return Ok(vec![FaultPlan {
            kind: FaultKind::Kill,
            every: args.kill_every,
            after: args.kill_every,
            hold: Duration::ZERO,
            delay: Duration::ZERO,
            count: Some(cycles),
        }]);
    }
    Ok(match &args.faults {
        Some(list) => list.0.clone(),
        None => plan::parse_faults("kill:every=5s").map_err(UsageError)?,
    })
}

fn describe(plans: &[FaultPlan]) -> String {
    if plans.is_empty() {
        return "none".into();
    }
    plans
        .iter()
        .map(|p| {
            let count = p.count.map(|c| format!(" x{c}")).unwrap_or_default();
            format!("{} every {:?}{count}", p.kind, p.every)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks what is left, giving descriptors and processes a moment to go (connection
/// tasks close their sockets asynchronously).
async fn settle_final_state(
    workers: &BTreeSet<u32>,
    fds_before: usize,
    threads_before: usize,
    socket: &std::path::Path,
    dir: &std::path::Path,
    parent: &std::path::Path,
) -> leaks::FinalState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = leaks::FinalState {
            workers_started: workers.len(),
            leaked_processes: leaks::leaked_processes(workers),
            zombies: leaks::zombie_children(),
            fds_before,
            fds_after: leaks::fd_count(),
            threads_before,
            threads_after: leaks::thread_count(),
            leftover_paths: leaks::leftover_paths(socket, dir, parent),
        };
        if state.leaks() == 0 || tokio::time::Instant::now() >= deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
