//! Faults the supervisor must survive, provoked for real (see /work/shared/FAULTS.md):
//! SIGKILL of an idle worker and mid-stream, a crash loop, a hung (SIGSTOPped) worker, a
//! start-up that never finishes, the supervisor dropped, stale and live sockets.

use std::{os::unix::net::UnixListener, time::Duration};

use futures_util::StreamExt;
use mlx_sidecar::{Error, GenerateRequest, LifecycleEvent, RestartPolicy, Supervisor, WorkerState};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::support::{self, READY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_idle_worker_is_restarted() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    // Health probes a minute apart: only the child's exit can reveal the crash in time.
    let config = support::config(support::tiny_worker(), sandbox.path()).with_health(
        Duration::from_secs(60),
        Duration::from_secs(1),
        3,
    );
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let client = supervisor.client();
    let old = supervisor.worker_pid().expect("pid");
    let mut events = supervisor.subscribe();

    let killed_at = Instant::now();
    support::signal(old, Signal::SIGKILL);
    let (crashed, _) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await;
    let detected = killed_at.elapsed();
    match crashed {
        LifecycleEvent::Crashed { pid, status } => {
            assert_eq!(pid, old);
            assert_eq!(status.signal, Some(9), "{status}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        detected < Duration::from_secs(2),
        "detected after {detected:?}"
    );

    // A call made now waits for the new worker instead of failing.
    let completion = client
        .generate(GenerateRequest::text("again").max_tokens(4))
        .await
        .expect("generate after restart")
        .collect()
        .await
        .expect("collect");
    let serving_again = killed_at.elapsed();
    assert_eq!(completion.token_ids.len(), 4);
    let new = supervisor.worker_pid().expect("new pid");
    assert_ne!(new, old);
    assert!(support::process_gone(old));
    eprintln!(
        "FIGURE sigkill idle: crash detected in {detected:?}, next call served {serving_again:?} after the kill"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_ends_the_stream_with_partial_output() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let pid = supervisor.worker_pid().expect("pid");

    let mut stream = client
        .generate(
            GenerateRequest::text("A long story:")
                .max_tokens(1900)
                .no_resume(),
        )
        .await
        .expect("generate");
    // Kill once some text has arrived, so there is partial output to keep.
    let mut received = support::text_of_at_least(&mut stream, 16).await;
    let killed_at = Instant::now();
    support::signal(pid, Signal::SIGKILL);
    let err = support::error_after_kill(&mut stream, &mut received).await;
    let ended_after = killed_at.elapsed();
    match &err {
        Error::WorkerDied {
            partial_text,
            tokens_received,
            resumes,
            ..
        } => {
            assert_eq!(*resumes, 0, "resuming is off");
            assert_eq!(partial_text, &received, "partial text is what was streamed");
            assert!(*tokens_received >= 1);
            assert!(*tokens_received < 1900);
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(!err.is_retryable(), "output was already sent");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );

    let next = client
        .generate(GenerateRequest::text("next").max_tokens(4))
        .await
        .expect("next call")
        .collect()
        .await
        .expect("collect");
    assert_eq!(next.token_ids.len(), 4);
    eprintln!(
        "FIGURE sigkill mid-stream: stream ended {ended_after:?} after the kill with {} bytes kept; next call ok {:?} after the kill",
        received.len(),
        killed_at.elapsed()
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_then_gives_up() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "startup_exit=3");
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        factor: 2.0,
        jitter: true,
        reset_after: Duration::from_secs(60),
        max_restarts: 4,
        within: Duration::from_secs(60),
        // On, as by default: a worker that never served still backs off.
        immediate_first_restart: true,
    };
    let config = support::config(worker, sandbox.path()).with_restart(policy);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    let client = supervisor.client();
    // A call made during the crash loop fails once the supervisor gives up (not at its deadline).
    let waiting_call = tokio::spawn({
        let client = client.clone();
        async move { client.tokenize("x").await }
    });

    let (gave_up, seen) = support::wait_event(&mut events, Duration::from_secs(30), |e| {
        matches!(e, LifecycleEvent::GaveUp { .. })
    })
    .await;

    let delays: Vec<Duration> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            LifecycleEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 4, "4 restarts allowed: {seen:#?}");
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "delays grow (factor 2, jitter below one delay): {delays:?}"
    );
    assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
    // Each restart starts no sooner than its delay after the crash.
    let mut crashed_at = None;
    let mut gaps = Vec::new();
    for (at, event) in &seen {
        match event {
            LifecycleEvent::Crashed { status, .. } => {
                assert_eq!(status.code, Some(3), "{status}");
                crashed_at = Some(*at);
            }
            LifecycleEvent::Starting { .. } => {
                if let Some(crashed) = crashed_at.take() {
                    gaps.push(at.duration_since(crashed));
                }
            }
            _ => {}
        }
    }
    assert_eq!(gaps.len(), 4);
    // The times are when this test received the events: a `Crashed` received a little late
    // (this task scheduled late on a busy machine) shortens the gap by that much, so allow a
    // few milliseconds; a restart that ignored its delay (100 ms to over a second) still
    // fails. Seen once: a 710.2 ms gap for a 711.7 ms delay.
    let slack = Duration::from_millis(25);
    for (gap, delay) in gaps.iter().zip(&delays) {
        assert!(
            *gap + slack >= *delay,
            "gap {gap:?} shorter than delay {delay:?}"
        );
    }
    match gave_up {
        LifecycleEvent::GaveUp {
            reason,
            last_status,
            last_log,
        } => {
            assert!(reason.contains("restart"), "{reason}");
            assert_eq!(last_status.and_then(|s| s.code), Some(3));
            assert!(
                last_log.iter().any(|l| l.contains("startup_exit")),
                "last log says why: {last_log:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(supervisor.state(), WorkerState::GaveUp);

    // Every caller gets the reason: the one that was waiting, and new ones.
    let waited = waiting_call.await.expect("join").expect_err("gave up");
    for err in [waited, client.tokenize("x").await.expect_err("gave up")] {
        match &err {
            Error::GaveUp {
                last_status,
                last_log,
                ..
            } => {
                assert_eq!(last_status.as_deref(), Some("exit code 3"));
                assert!(!last_log.is_empty());
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert!(err.to_string().contains("exit code 3"), "{err}");
    }
    let err = supervisor.wait_ready(READY).await.expect_err("gave up");
    assert!(matches!(err, Error::GaveUp { .. }));
    eprintln!("FIGURE crash loop: restart delays {delays:?}, actual gaps {gaps:?}");
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_worker_is_detected_and_restarted() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let config = support::config(support::tiny_worker(), sandbox.path()).with_health(
        Duration::from_millis(250),
        Duration::from_millis(400),
        3,
    );
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid().expect("pid");
    let mut events = supervisor.subscribe();

    let stopped_at = Instant::now();
    support::signal(pid, Signal::SIGSTOP);
    let (_, _) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Unhealthy { failures: 1, .. })
    })
    .await;
    let first_failure = stopped_at.elapsed();
    let (crashed, seen) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await;
    let killed = stopped_at.elapsed();
    assert!(matches!(crashed, LifecycleEvent::Crashed { pid: p, .. } if p == pid));
    let failures = seen
        .iter()
        .filter(|(_, e)| matches!(e, LifecycleEvent::Unhealthy { .. }))
        .count();
    assert_eq!(failures, 2, "killed at the third failure: {seen:?}");
    let (_, _) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    let serving = stopped_at.elapsed();
    assert!(support::process_gone(pid));
    assert_ne!(supervisor.worker_pid(), Some(pid));
    let ok = support::complete(
        &supervisor.client(),
        GenerateRequest::text("awake").max_tokens(2),
    )
    .await;
    assert_eq!(ok.token_ids.len(), 2);
    eprintln!(
        "FIGURE sigstop: first failed probe {first_failure:?}, killed {killed:?}, serving again {serving:?} after SIGSTOP"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_that_never_finishes_fails_in_bounded_time() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "startup_hang");
    let config = support::config(worker, sandbox.path())
        .with_startup_timeout(Duration::from_secs(3))
        .with_restart(RestartPolicy::never());
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let started = Instant::now();
    let err = supervisor
        .wait_ready(Duration::from_secs(30))
        .await
        .expect_err("never ready");
    match &err {
        Error::GaveUp { last_log, .. } => {
            assert!(
                last_log.iter().any(|l| l.contains("startup_hang")),
                "{last_log:?}"
            );
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_supervisor_leaves_nothing_behind() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let pid = supervisor.worker_pid().expect("pid");
    let dir = supervisor.socket_dir();
    assert!(dir.exists());
    let client = supervisor.client();

    drop(supervisor);
    assert!(!dir.exists(), "socket directory removed by Drop");
    support::wait_until(
        Duration::from_secs(5),
        "the worker process to be gone",
        || async { support::process_gone(pid) },
    )
    .await;
    let err = client.tokenize("x").await.expect_err("no supervisor");
    assert!(matches!(err, Error::Stopped), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_file_is_replaced() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let path = sandbox.path().join("w.sock");
    drop(UnixListener::bind(&path).expect("bind")); // a socket file nobody answers on
    assert!(path.exists());
    let config = support::config(support::tiny_worker(), sandbox.path()).with_socket_path(&path);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    assert_eq!(supervisor.socket_path(), path);
    let info = supervisor.client().model_info().await.expect("model_info");
    assert_eq!(Some(info.worker_pid), supervisor.worker_pid());
    supervisor.shutdown().await.expect("shutdown");
    assert!(!path.exists(), "socket removed at shutdown");
    assert!(
        sandbox.path().exists(),
        "a caller's directory is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_socket_is_not_taken_over() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let path = sandbox.path().join("w.sock");
    let live = UnixListener::bind(&path).expect("bind");
    let config = support::config(support::tiny_worker(), sandbox.path()).with_socket_path(&path);
    let err = Supervisor::spawn(config).await.expect_err("socket in use");
    match &err {
        Error::Socket { path: p, reason } => {
            assert_eq!(p, &path);
            assert!(reason.contains("live process"), "{reason}");
        }
        other => panic!("expected Error::Socket, got {other:?}"),
    }
    // The owner's socket still works.
    let _conn = std::os::unix::net::UnixStream::connect(&path).expect("still live");
    live.accept().expect("accept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_socket_path_is_refused_clearly() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let deep = sandbox.path().join("d".repeat(100));
    std::fs::create_dir_all(&deep).expect("mkdir");
    let err = Supervisor::spawn(support::config(support::tiny_worker(), &deep))
        .await
        .expect_err("path too long");
    assert!(matches!(err, Error::Socket { .. }), "{err:?}");
    assert!(err.to_string().contains("bytes long"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_engine_is_not_serving_and_gets_restarted() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    // The engine thread dies after 40 steps while gRPC still answers: health must say so.
    let worker = support::tiny_worker()
        .with_env("MLX_WORKER_FAULTS", "engine_crash_after_steps=40")
        .with_args(["--stall-seconds", "2"]);
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid().expect("pid");
    let client = supervisor.client();
    let mut events = supervisor.subscribe();

    let result = client
        .generate(
            GenerateRequest::text("Crash the engine")
                .max_tokens(500)
                .no_resume(),
        )
        .await
        .expect("generate")
        .collect()
        .await;
    let err = result.expect_err("the engine died mid-generation");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    let (unhealthy, _) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Unhealthy { .. })
    })
    .await;
    assert!(
        matches!(&unhealthy, LifecycleEvent::Unhealthy { reason, .. } if reason.contains("NOT_SERVING")),
        "{unhealthy:?}"
    );
    let (_, seen) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    assert!(
        seen.iter()
            .any(|(_, e)| matches!(e, LifecycleEvent::Crashed { pid: p, .. } if *p == pid)),
        "{seen:?}"
    );
    let ok = client
        .generate(GenerateRequest::text("short").max_tokens(3))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(ok.token_ids.len(), 3);
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_socket_file_gets_the_worker_restarted() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let pid = supervisor.worker_pid().expect("pid");
    let mut events = supervisor.subscribe();
    std::fs::remove_file(supervisor.socket_path()).expect("remove the socket file");

    let (unhealthy, _) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Unhealthy { .. })
    })
    .await;
    assert!(
        matches!(&unhealthy, LifecycleEvent::Unhealthy { reason, .. } if reason.contains("removed")),
        "{unhealthy:?}"
    );
    support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    assert_ne!(supervisor.worker_pid(), Some(pid));
    assert!(supervisor.socket_path().exists());
    let info = supervisor.client().model_info().await.expect("model_info");
    assert_eq!(Some(info.worker_pid), supervisor.worker_pid());
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_resets_after_a_stable_period() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        factor: 4.0,
        jitter: false,
        reset_after: Duration::from_secs(1),
        max_restarts: 10,
        within: Duration::from_secs(60),
        // Off: the reset to initial_delay is under test (standby.rs tests the immediate restart).
        immediate_first_restart: false,
    };
    let config = support::config(support::tiny_worker(), sandbox.path()).with_restart(policy);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    supervisor.wait_ready(READY).await.expect("ready");
    let mut pid = supervisor.worker_pid().expect("pid");

    // (serve through the stable period first?, expected delay in ms)
    let rounds = [(false, 100), (false, 400), (true, 100)];
    for (stable, expected) in rounds {
        if stable {
            // The stable period is the condition under test: serve through it.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        support::signal(pid, Signal::SIGKILL);
        let (restarting, _) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
            matches!(e, LifecycleEvent::Restarting { .. })
        })
        .await;
        let LifecycleEvent::Restarting { delay, .. } = restarting else {
            unreachable!()
        };
        assert_eq!(delay.as_millis(), expected, "stable: {stable}");
        let (ready, _) = support::wait_event(&mut events, READY, |e| {
            matches!(e, LifecycleEvent::Ready { .. })
        })
        .await;
        let LifecycleEvent::Ready { pid: new, .. } = ready else {
            unreachable!()
        };
        pid = new;
    }
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ignoring_sigterm_is_killed_after_the_grace() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "ignore_sigterm");
    let config =
        support::config(worker, sandbox.path()).with_shutdown_grace(Duration::from_secs(1));
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid().expect("pid");
    let dir = supervisor.socket_dir();
    let mut events = supervisor.subscribe();
    let started = Instant::now();
    supervisor.shutdown().await.expect("shutdown");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "waited out the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "then killed it: {took:?}");
    assert!(support::process_gone(pid));
    assert!(!dir.exists());
    support::wait_event(&mut events, Duration::from_secs(1), |e| {
        matches!(e, LifecycleEvent::Stopped)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_within_the_window_is_fine() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "startup_delay=2");
    let config = support::config(worker, sandbox.path())
        .with_startup_timeout(Duration::from_secs(30))
        .with_restart(RestartPolicy::never());
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    // Meanwhile, callers with short deadlines are told it is not ready (and may retry).
    let err = supervisor
        .wait_ready(Duration::from_millis(300))
        .await
        .expect_err("still loading");
    assert!(
        matches!(&err, Error::NotReady { state, .. } if state == "starting"),
        "{err:?}"
    );
    let short = supervisor.client().with_timeout(Duration::from_millis(300));
    let err = short.tokenize("x").await.expect_err("still loading");
    assert!(matches!(err, Error::NotReady { .. }), "{err:?}");
    assert!(err.is_retryable());
    let (ready, seen) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, LifecycleEvent::Unhealthy { .. })),
        "NOT_SERVING while loading is no failure: {seen:?}"
    );
    match ready {
        LifecycleEvent::Ready { load_time, .. } => {
            assert!(load_time >= Duration::from_secs(2), "{load_time:?}");
        }
        other => panic!("{other:?}"),
    }
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restart_spawn_backs_off_and_recovers() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = tempfile::tempdir().expect("tempdir");
    // The interpreter, behind a wrapper script that can vanish and come back.
    let wrapper = sandbox.path().join("python");
    let script = format!("#!/bin/sh\nexec '{}' \"$@\"\n", support::python().display());
    let install = || {
        std::fs::write(&wrapper, &script).expect("write wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod wrapper");
    };
    install();
    let mut worker = support::tiny_worker();
    worker.python = wrapper.clone();
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(200),
        immediate_first_restart: false,
        ..support::quick_restarts()
    };
    let config = support::config(worker, sandbox.path()).with_restart(policy);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let mut events = supervisor.subscribe();

    std::fs::remove_file(&wrapper).expect("remove wrapper");
    support::signal(supervisor.worker_pid().expect("pid"), Signal::SIGKILL);
    // Restart 1 cannot spawn; restart 2 is scheduled with a longer delay instead of giving up.
    let (second, seen) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Restarting { attempt: 2, .. })
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, LifecycleEvent::Starting { .. })),
        "{seen:?}"
    );
    assert!(
        matches!(second, LifecycleEvent::Restarting { delay, .. } if delay >= Duration::from_millis(400))
    );
    install();
    support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    let info = supervisor.client().model_info().await.expect("model_info");
    assert_eq!(Some(info.worker_pid), supervisor.worker_pid());
    supervisor.shutdown().await.expect("shutdown");
}
