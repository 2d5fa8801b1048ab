//! Fast recovery: the immediate first restart after a served run, and the standby worker
//! that takes over at once when the active one dies (`SupervisorConfig::standby`).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use mlx_sidecar::{Error, GenerateRequest, LifecycleEvent, RestartPolicy, Supervisor};
use nix::sys::signal::Signal;
use tokio::{sync::broadcast, time::Instant};

use crate::support::{self, READY};

/// A supervisor of the tiny model with a standby, once the active worker and the standby
/// both serve. Returns it, its event receiver (subscribed before either was ready), and
/// the standby's pid.
async fn settled_standby_supervisor(
    sandbox: &Path,
    shadow_prefill: bool,
) -> (Supervisor, broadcast::Receiver<LifecycleEvent>, u32) {
    let config = support::config(support::tiny_worker(), sandbox)
        .with_standby(true)
        .with_shadow_prefill(shadow_prefill);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    supervisor.wait_ready(READY).await.expect("ready");
    let standby = wait_standby_ready(&mut events, &[]).await;
    (supervisor, events, standby)
}

/// Waits for a `StandbyReady` whose pid is not in `not`; returns the pid.
async fn wait_standby_ready(events: &mut broadcast::Receiver<LifecycleEvent>, not: &[u32]) -> u32 {
    let (ready, _) = support::wait_event(
        events,
        READY,
        |e| matches!(e, LifecycleEvent::StandbyReady { pid, .. } if !not.contains(pid)),
    )
    .await;
    let LifecycleEvent::StandbyReady { pid, .. } = ready else {
        unreachable!()
    };
    pid
}

/// The nice value of each thread of `pid` (field 19 of its tasks' `stat`).
fn thread_nices(pid: u32) -> Vec<i32> {
    let nice = |path: std::path::PathBuf| -> Option<i32> {
        let stat = std::fs::read_to_string(path).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(16)?
            .parse()
            .ok()
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| nice(t.ok()?.path().join("stat")))
                .collect()
        })
        .unwrap_or_default()
}

/// Every process gone, the socket files and the private directory removed.
async fn assert_nothing_left(pids: &[u32], dir: &Path) {
    support::wait_until(Duration::from_secs(5), "every worker to exit", || async {
        pids.iter().all(|&pid| support::process_gone(pid))
    })
    .await;
    assert!(!dir.exists(), "socket directory {} removed", dir.display());
}

/// The first restart after a worker that served crashes comes at once; a crash in a row
/// after it backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_restart_after_serving_is_immediate_then_backs_off() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let mut events = supervisor.subscribe();
    let mut delays = Vec::new();
    for _ in 0..2 {
        let pid = supervisor.worker_pid().expect("pid");
        support::signal(pid, Signal::SIGKILL);
        let (restarting, seen) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
            matches!(e, LifecycleEvent::Restarting { .. })
        })
        .await;
        assert!(
            seen.iter()
                .any(|(_, e)| matches!(e, LifecycleEvent::Crashed { pid: p, .. } if *p == pid)),
            "Crashed comes first: {seen:?}"
        );
        let LifecycleEvent::Restarting { delay, .. } = restarting else {
            unreachable!()
        };
        delays.push(delay);
        support::wait_event(&mut events, READY, |e| {
            matches!(e, LifecycleEvent::Ready { .. })
        })
        .await;
    }
    assert_eq!(delays[0], Duration::ZERO, "{delays:?}");
    // quick_restarts: 50 ms, jitter below one delay.
    assert!(
        delays[1] >= Duration::from_millis(50) && delays[1] < Duration::from_millis(100),
        "{delays:?}"
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// With a standby: two distinct live workers once settled; SIGKILL of the active one makes
/// the standby serve at once (the same process: calls go to the former standby's pid), and
/// a new standby comes; SIGKILL of the standby replaces it without disturbing calls to the
/// active worker; shutdown leaves no process, socket file or directory. Without shadow
/// prefill the ready standby stays at nice +10 where its priority can be given back (here:
/// as root), and every thread of the promoted worker has the supervisor's priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_at_once_and_is_replaced() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let (supervisor, mut events, standby) = settled_standby_supervisor(sandbox.path(), false).await;
    let client = supervisor.client();
    let active = supervisor.worker_pid().expect("active pid");
    assert_eq!(supervisor.standby_pid(), Some(standby));
    assert_ne!(active, standby);
    assert!(!support::process_gone(active) && !support::process_gone(standby));
    let dir = supervisor.socket_dir();
    let first_socket = supervisor.socket_path();
    assert!(first_socket.starts_with(&dir));
    let base = thread_nices(std::process::id())[0];
    let active_nices = thread_nices(active);
    assert!(active_nices.iter().all(|&n| n == base), "{active_nices:?}");
    let standby_nices = thread_nices(standby);
    let lowered = (base + 10).min(19); // 19: the lowest priority
    assert!(
        standby_nices.iter().all(|&n| n == lowered)
            || (!nix::unistd::geteuid().is_root() && standby_nices.iter().all(|&n| n == base)),
        "the standby's threads: {standby_nices:?}, ours {base}"
    );

    // The active worker dies: the standby takes over, with no start-up and no backoff.
    let killed_at = Instant::now();
    support::signal(active, Signal::SIGKILL);
    let (_, seen) = support::wait_event(
        &mut events,
        Duration::from_secs(5),
        |e| matches!(e, LifecycleEvent::Ready { pid, .. } if *pid == standby),
    )
    .await;
    let ready_after = killed_at.elapsed();
    let order: Vec<&LifecycleEvent> = seen
        .iter()
        .map(|(_, e)| e)
        .filter(|e| {
            matches!(
                e,
                LifecycleEvent::Crashed { .. }
                    | LifecycleEvent::Promoted { .. }
                    | LifecycleEvent::Restarting { .. }
                    | LifecycleEvent::Starting { .. }
            )
        })
        .collect();
    assert!(
        matches!(
            order.as_slice(),
            [
                LifecycleEvent::Crashed { pid: c, .. },
                LifecycleEvent::Promoted { pid: p, was_ready: true, attempt: 1 },
            ] if *c == active && *p == standby
        ),
        "Crashed, then Promoted, and nothing started: {seen:#?}"
    );
    let completion = support::complete(&client, GenerateRequest::text("again").max_tokens(4)).await;
    let served_after = killed_at.elapsed();
    assert_eq!(completion.token_ids.len(), 4);
    assert_eq!(
        supervisor.worker_pid(),
        Some(standby),
        "the former standby serves"
    );
    let info = client.model_info().await.expect("model_info");
    assert_eq!(info.worker_pid, standby);
    let promoted_nices = thread_nices(standby);
    assert!(
        !promoted_nices.is_empty() && promoted_nices.iter().all(|&n| n == base),
        "the promoted worker's threads have our priority back: {promoted_nices:?}"
    );
    assert_ne!(
        supervisor.socket_path(),
        first_socket,
        "it serves on its own socket"
    );
    assert!(
        ready_after < Duration::from_secs(1),
        "Ready {ready_after:?} after the kill"
    );
    eprintln!(
        "FIGURE standby takeover: Ready {ready_after:?}, a call served {served_after:?} after SIGKILL"
    );

    // A new standby comes, on the path the dead worker used.
    let second = wait_standby_ready(&mut events, &[active, standby]).await;
    assert_eq!(supervisor.standby_pid(), Some(second));
    assert!(!support::process_gone(second));
    assert!(
        first_socket.exists(),
        "the new standby binds the freed path"
    );

    // The standby dies: it is replaced, and the active worker serves throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    let load = tokio::spawn({
        let (client, stop, served) = (client.clone(), stop.clone(), served.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                support::complete(&client, GenerateRequest::text("steady").max_tokens(4)).await;
                served.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    support::signal(second, Signal::SIGKILL);
    let (crashed, _) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::StandbyCrashed { .. })
    })
    .await;
    assert!(
        matches!(crashed, LifecycleEvent::StandbyCrashed { pid, restart_in: Some(_), .. } if pid == second),
        "{crashed:?}"
    );
    let third = wait_standby_ready(&mut events, &[active, standby, second]).await;
    stop.store(true, Ordering::Relaxed);
    load.await
        .expect("no call failed while the standby was replaced");
    assert!(served.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        supervisor.worker_pid(),
        Some(standby),
        "the active worker is untouched"
    );
    assert_eq!(supervisor.standby_pid(), Some(third));

    supervisor.shutdown().await.expect("shutdown");
    assert_nothing_left(&[active, standby, second, third], &dir).await;
}

/// A stream on the active worker when it is killed, with resuming off, ends with `WorkerDied` and the
/// text already streamed; the next call is served by the promoted standby. Dropping the
/// supervisor kills both workers and removes the directory. With shadow prefill (the
/// default) the ready standby already runs at the supervisor's priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cut_by_a_kill_keeps_its_text_and_the_standby_serves_the_next_call() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let (supervisor, _events, standby) = settled_standby_supervisor(sandbox.path(), true).await;
    let base = thread_nices(std::process::id())[0];
    let standby_nices = thread_nices(standby);
    assert!(
        standby_nices.iter().all(|&n| n == base),
        "the shadowing standby's threads: {standby_nices:?}, ours {base}"
    );
    let client = supervisor.client();
    let active = supervisor.worker_pid().expect("pid");
    let dir = supervisor.socket_dir();

    let mut stream = client
        .generate(
            GenerateRequest::text("A long story:")
                .max_tokens(1900)
                .ignore_eos(true)
                .no_resume(),
        )
        .await
        .expect("generate");
    let mut received = support::text_of_at_least(&mut stream, 16).await;
    support::signal(active, Signal::SIGKILL);
    let err = support::error_after_kill(&mut stream, &mut received).await;
    match &err {
        Error::WorkerDied {
            partial_text,
            tokens_received,
            ..
        } => {
            assert_eq!(partial_text, &received, "partial text is what was streamed");
            assert!(*tokens_received >= 1 && *tokens_received < 1900);
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(!err.is_retryable());

    let next = support::complete(&client, GenerateRequest::text("next").max_tokens(4)).await;
    assert_eq!(next.token_ids.len(), 4);
    assert_eq!(
        client.model_info().await.expect("model_info").worker_pid,
        standby
    );

    // Wait for the next standby, so that Drop has two workers to kill.
    support::wait_until(READY, "a new standby", || async {
        supervisor
            .standby_pid()
            .is_some_and(|pid| pid != standby && pid != active)
    })
    .await;
    let replacement = supervisor.standby_pid().expect("standby");
    drop(supervisor);
    assert_nothing_left(&[active, standby, replacement], &dir).await;
}

/// A standby needs the private socket directory: a fixed `socket_path` is refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_with_a_fixed_socket_path_is_refused() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let config = support::config(support::tiny_worker(), sandbox.path())
        .with_socket_path(sandbox.path().join("w.sock"))
        .with_standby(true);
    let err = Supervisor::spawn(config).await.expect_err("refused");
    assert!(matches!(err, Error::Socket { .. }), "{err:?}");
    assert!(err.to_string().contains("standby"), "{err}");
}

/// A standby that cannot start backs off under its own restart limit, then the supervisor
/// runs without one; the active worker serves throughout, and its own crash is then
/// restarted the ordinary way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_crash_loop_backs_off_and_spares_the_active_worker() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let faults = sandbox.path().join("faults");
    std::fs::write(&faults, "").expect("faults file");
    let worker =
        support::tiny_worker().with_env("MLX_WORKER_FAULTS_FILE", faults.display().to_string());
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        factor: 2.0,
        jitter: false,
        reset_after: Duration::from_secs(60),
        max_restarts: 3,
        within: Duration::from_secs(60),
        immediate_first_restart: true,
    };
    let config = support::config(worker, sandbox.path())
        .with_restart(policy)
        .with_standby(true);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    supervisor.wait_ready(READY).await.expect("ready");
    let active = supervisor.worker_pid().expect("pid");
    let client = supervisor.client();

    // From now on every start fails; the standby that may have started already is killed.
    std::fs::write(&faults, "startup_exit=3").expect("write faults");
    support::wait_until(READY, "the first standby", || async {
        supervisor.standby_pid().is_some()
    })
    .await;
    if let Some(pid) = supervisor.standby_pid() {
        support::signal(pid, Signal::SIGKILL);
    }
    let (_, seen) = support::wait_event(&mut events, READY, |e| {
        matches!(
            e,
            LifecycleEvent::StandbyCrashed {
                restart_in: None,
                ..
            }
        )
    })
    .await;
    let delays: Vec<Duration> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            LifecycleEvent::StandbyCrashed {
                restart_in: Some(d),
                ..
            } => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 3, "3 standby restarts allowed: {seen:#?}");
    // The standbys that failed at start-up waited, growing; only the killed one, if it had
    // become ready, was restarted at once.
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert!(ms == [0, 50, 100] || ms == [50, 100, 200], "{delays:?}");
    assert!(
        !seen.iter().any(|(_, e)| matches!(
            e,
            LifecycleEvent::Crashed { .. } | LifecycleEvent::Restarting { .. }
        )),
        "the active worker is not touched: {seen:#?}"
    );
    assert_eq!(supervisor.worker_pid(), Some(active));
    assert_eq!(supervisor.standby_pid(), None);
    support::complete(&client, GenerateRequest::text("still here").max_tokens(4)).await;

    // Without a standby, the active worker's crash is restarted the ordinary way.
    std::fs::write(&faults, "").expect("clear faults");
    support::signal(active, Signal::SIGKILL);
    let (restarting, seen) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::Restarting { .. })
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, LifecycleEvent::Promoted { .. })),
        "{seen:#?}"
    );
    assert!(matches!(
        restarting,
        LifecycleEvent::Restarting { attempt: 1, .. }
    ));
    supervisor.wait_ready(READY).await.expect("ready again");
    support::complete(&client, GenerateRequest::text("again").max_tokens(4)).await;
    supervisor.shutdown().await.expect("shutdown");
}

/// A hung active worker that ignores SIGTERM: with a standby waiting, it gets one health
/// timeout to drain, not the whole shutdown grace, before the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_replaced_by_the_standby_without_waiting_out_the_grace() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let grace = Duration::from_secs(30);
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "ignore_sigterm");
    let config = support::config(worker, sandbox.path())
        .with_standby(true)
        .with_shutdown_grace(grace);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    supervisor.wait_ready(READY).await.expect("ready");
    let standby = wait_standby_ready(&mut events, &[]).await;
    let active = supervisor.worker_pid().expect("active pid");

    let stopped_at = Instant::now();
    support::signal(active, Signal::SIGSTOP);
    support::wait_event(
        &mut events,
        Duration::from_secs(20),
        |e| matches!(e, LifecycleEvent::Ready { pid, .. } if *pid == standby),
    )
    .await;
    let took_over = stopped_at.elapsed();
    // Detection (3 probes 250 ms apart, 1 s deadline each) plus one health timeout of
    // grace: seconds, where the 30 s grace would have been waited out before.
    assert!(
        took_over < grace / 3,
        "standby took over after {took_over:?}"
    );
    assert!(support::process_gone(active), "the hung worker was killed");
    let ok = support::complete(
        &supervisor.client(),
        GenerateRequest::text("awake").max_tokens(2),
    )
    .await;
    assert_eq!(ok.token_ids.len(), 2);
    // Drop, not shutdown: these workers ignore SIGTERM, so a drain would wait out the grace.
    let dir = supervisor.socket_dir();
    drop(supervisor);
    assert_nothing_left(&[active, standby], &dir).await;
}
