//! Catalogue faults about the worker *process* (see `catalogue` for the index): slow load
//! (6), a stalled engine (7), a long prefill (8), SIGTERM (12), 100 crash/restart cycles
//! (13), disk full and out of memory (18). The supervisor killed (9) is the CLI's test.

use std::{path::Path, process::Command, time::Duration};

use mlx_sidecar::{
    Error, FinishReason, GenerateEvent, GenerateRequest, LifecycleEvent, RestartPolicy, Supervisor,
    WorkerCommand,
};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::{
    catalogue::{self, fd_count, thread_count, zombie_children},
    support::{self, READY},
};

const NOT_SERVING: i32 = 2;

/// Reads a stream to its end: (tokens, text, how it ended).
async fn drain(
    stream: &mut mlx_sidecar::GenerateStream,
) -> (usize, String, Result<mlx_sidecar::Finished, Error>) {
    let (mut tokens, mut text) = (0, String::new());
    loop {
        match stream.next_event().await {
            Some(Ok(GenerateEvent::Token {
                token_ids, text: t, ..
            })) => {
                tokens += token_ids.len();
                text.push_str(&t);
            }
            Some(Ok(GenerateEvent::Finished(f))) => return (tokens, text, Ok(f)),
            Some(Err(e)) => return (tokens, text, Err(e)),
            None => {
                return (
                    tokens,
                    text,
                    Err(Error::Protocol("ended without finish".into())),
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_06_slow_model_load_is_allowed() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "startup_delay=3");
    let config =
        support::config(worker, sandbox.path()).with_startup_timeout(Duration::from_secs(30));
    let started = Instant::now();
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    // While it loads, the worker itself answers health: NOT_SERVING, not silence.
    let socket = supervisor.socket_path();
    support::wait_until(READY, "the worker to answer health while loading", || {
        let socket = socket.clone();
        async move { catalogue::worker_health(&socket).await.is_ok() }
    })
    .await;
    let early = catalogue::worker_health(&socket).await.expect("health");
    assert_eq!(early, NOT_SERVING, "loading worker says NOT_SERVING");
    let (ready, seen) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    let LifecycleEvent::Ready {
        load_time, startup, ..
    } = ready
    else {
        unreachable!()
    };
    assert!(load_time >= Duration::from_secs(3), "{load_time:?}");
    assert!(
        !seen.iter().any(|(_, e)| matches!(
            e,
            LifecycleEvent::Unhealthy { .. } | LifecycleEvent::Crashed { .. }
        )),
        "a slow load inside the start-up window is not a failure: {seen:?}"
    );
    let times = startup.expect("the worker's startup breakdown");
    assert!(
        times.process_to_ready >= Duration::from_secs(3),
        "{times:?}"
    );
    let ok = support::complete(
        &supervisor.client(),
        GenerateRequest::text("loaded").max_tokens(3),
    )
    .await;
    assert_eq!(ok.token_ids.len(), 3);
    eprintln!(
        "FIGURE fault 6: ready after {load_time:?} (3 s injected), startup {times:?}, total {:?}",
        started.elapsed()
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_07_stalled_engine_is_not_serving_and_replaced() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let faults = sandbox.path().join("faults");
    std::fs::write(&faults, "engine_stall_after_steps=6").expect("write faults");
    let worker = support::tiny_worker()
        .with_args(["--stall-seconds", "1"])
        .with_env("MLX_WORKER_FAULTS_FILE", faults.display().to_string());
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid().expect("pid");
    let mut events = supervisor.subscribe();
    let client = supervisor.client();
    let mut stream = client
        .generate(GenerateRequest::text("stall").max_tokens(500).no_resume())
        .await
        .expect("generate");
    let reader = tokio::spawn(async move { drain(&mut stream).await });
    let since = Instant::now();
    // The gRPC server still answers; its answer reflects the engine.
    let (unhealthy, _) = support::wait_event(&mut events, Duration::from_secs(15), |e| {
        matches!(e, LifecycleEvent::Unhealthy { .. })
    })
    .await;
    let detected = since.elapsed();
    match &unhealthy {
        LifecycleEvent::Unhealthy { reason, pid: p, .. } => {
            assert_eq!(*p, pid);
            assert!(
                reason.contains("NOT_SERVING"),
                "answered, not timed out: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&faults, "").expect("clear faults for the next worker");
    let (_, _) = support::wait_event(
        &mut events,
        Duration::from_secs(15),
        |e| matches!(e, LifecycleEvent::Crashed { pid: p, .. } if *p == pid),
    )
    .await;
    let replaced = since.elapsed();
    let (tokens, text, end) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stalled stream ends")
        .expect("join");
    match end {
        Err(Error::WorkerDied {
            partial_text,
            tokens_received,
            ..
        }) => {
            assert_eq!(partial_text, text);
            assert_eq!(tokens_received, tokens);
            assert!((1..500).contains(&tokens), "{tokens}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let (_, _) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Ready { .. })
    })
    .await;
    let ok = client
        .generate(GenerateRequest::text("again").max_tokens(20))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(ok.token_ids.len(), 20);
    assert!(support::process_gone(pid));
    assert!(
        detected < Duration::from_secs(5),
        "detected after {detected:?}"
    );
    eprintln!(
        "FIGURE fault 7: stalled engine reported NOT_SERVING {detected:?} after the request, worker replaced {replaced:?}"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_08_long_prefill_is_not_killed() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    // Prompts processed in one engine step each, all eight together: a long busy step.
    let worker = support::tiny_worker().with_args(["--prefill-step-size", "2048"]);
    let config = support::config(worker, sandbox.path()).with_health(
        Duration::from_millis(100),
        Duration::from_millis(500),
        3,
    );
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid();
    let mut events = supervisor.subscribe();
    let client = supervisor.client();
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..8u32 {
        let client = client.clone();
        let prompt: Vec<u32> = (0..2000).map(|j| 3 + (i * 7 + j) % 300).collect();
        calls.push(tokio::spawn(async move {
            client
                .generate(GenerateRequest::tokens(prompt).max_tokens(40))
                .await?
                .collect()
                .await
        }));
    }
    let mut prefill_ms: f64 = 0.0;
    for call in calls {
        let done = call.await.expect("join").expect("long prompt completes");
        assert_eq!(done.token_ids.len(), 40);
        prefill_ms = prefill_ms.max(done.finished.timings.prefill_ms);
    }
    let busy = started.elapsed();
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, LifecycleEvent::Crashed { .. })),
        "a busy worker must not be killed: {seen:?}"
    );
    assert_eq!(supervisor.worker_pid(), pid, "not restarted");
    // Probes ran all along (about 10 a second); a late answer under CPU contention is
    // allowed, three in a row are not.
    let late = seen
        .iter()
        .filter(|e| matches!(e, LifecycleEvent::Unhealthy { .. }))
        .count();
    assert!(
        busy > Duration::from_millis(500),
        "the prefill kept the engine busy across several probes: {busy:?}"
    );
    eprintln!(
        "FIGURE fault 8: 8 x 2000-token prompts, longest prefill {prefill_ms:.0} ms, busy {busy:?}, health probed every 100 ms with a 500 ms deadline: {late} late answer(s), not killed"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_12_sigterm_drains_or_cancels_and_exits_0() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    // (a) SIGTERM from outside: the request in flight finishes, the worker exits 0, and a
    // new one is started.
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let pid = supervisor.worker_pid().expect("pid");
    let mut events = supervisor.subscribe();
    let mut stream = client
        .generate(GenerateRequest::text("finish me").max_tokens(150))
        .await
        .expect("generate");
    support::signal(pid, Signal::SIGTERM);
    let (tokens, _, end) = drain(&mut stream).await;
    let finished = end.expect("the request in flight finishes during the drain");
    assert_eq!(tokens, 150);
    assert_eq!(finished.usage.completion_tokens, 150);
    assert_eq!(finished.finish_reason, FinishReason::Length);
    let (crashed, _) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await;
    assert!(
        matches!(crashed, LifecycleEvent::Crashed { pid: p, status } if p == pid && status.code == Some(0)),
        "{crashed:?}"
    );
    let ok = client
        .generate(GenerateRequest::text("after").max_tokens(3))
        .await
        .expect("a new worker serves")
        .collect()
        .await
        .expect("collect");
    assert_eq!(ok.token_ids.len(), 3);
    supervisor.shutdown().await.expect("shutdown");

    // (b) Graceful stop with a request longer than the grace: health turns NOT_SERVING at
    // once, the request ends CANCELLED (counts intact) at the grace, the worker exits 0.
    let worker = support::tiny_worker().with_args(["--grace-seconds", "1"]);
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid().expect("pid");
    let socket = supervisor.socket_path();
    let dir = supervisor.socket_dir();
    let mut events = supervisor.subscribe();
    let mut stream = supervisor
        .client()
        .generate(GenerateRequest::text("too long").max_tokens(1900))
        .await
        .expect("generate");
    let started = Instant::now();
    let shutdown = tokio::spawn(supervisor.shutdown());
    support::wait_until(Duration::from_secs(5), "NOT_SERVING while draining", || {
        let socket = socket.clone();
        async move { catalogue::worker_health(&socket).await.ok() == Some(NOT_SERVING) }
    })
    .await;
    let (tokens, _, end) = drain(&mut stream).await;
    let cancelled_after = started.elapsed();
    let finished = end.expect("a cancelled finish, not an error");
    assert_eq!(finished.finish_reason, FinishReason::Cancelled);
    assert_eq!(finished.usage.completion_tokens as usize, tokens);
    assert!(tokens < 1900);
    assert!(
        cancelled_after < Duration::from_secs(4),
        "cancelled at the 1 s grace, not later: {cancelled_after:?}"
    );
    shutdown.await.expect("join").expect("shutdown");
    let (_, seen) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::Stopped)
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, LifecycleEvent::Crashed { .. })),
        "a graceful stop is no crash: {seen:?}"
    );
    assert!(support::process_gone(pid));
    assert!(!dir.exists());
    eprintln!(
        "FIGURE fault 12: over-long request cancelled {cancelled_after:?} after shutdown began (grace 1 s)"
    );
}

/// Runs [`fault_13_inner`] alone in a child process, so that descriptor and thread counts
/// are this supervisor's alone (tests of this binary run in parallel threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_13_hundred_crash_restart_cycles_leak_nothing() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let _ = support::tiny_model(); // made here, shared through the environment
    let exe = std::env::current_exe().expect("test binary");
    let output = tokio::process::Command::new(exe)
        .args([
            "catalogue_process::fault_13_inner",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CATALOGUE_TINY_MODEL", support::tiny_model())
        .env("CATALOGUE_SANDBOX", sandbox.path())
        .output()
        .await
        .expect("run the inner test");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    for line in out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with("FIGURE"))
    {
        eprintln!("{line}");
    }
    assert!(
        output.status.success() && out.contains("1 passed"),
        "inner test failed:\n{out}\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by fault_13_hundred_crash_restart_cycles_leak_nothing in its own process"]
async fn fault_13_inner() {
    let sandbox_var = std::env::var_os("CATALOGUE_SANDBOX").expect("CATALOGUE_SANDBOX");
    let sandbox = Path::new(&sandbox_var);
    let model = std::env::var_os("CATALOGUE_TINY_MODEL").expect("CATALOGUE_TINY_MODEL");
    let faults = sandbox.join("faults");
    let worker = WorkerCommand::new(support::python(), support::worker_dir())
        .with_model(model)
        .with_args(["--grace-seconds", "1"])
        .with_env("MLX_WORKER_FAULTS_FILE", faults.display().to_string());
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        factor: 2.0,
        jitter: false,
        reset_after: Duration::from_secs(60),
        max_restarts: 1000,
        within: Duration::from_secs(600),
        immediate_first_restart: true,
    };
    let fds_at_start = fd_count();
    let supervisor = Supervisor::spawn(support::config(worker, sandbox).with_restart(policy))
        .await
        .expect("spawn");
    let mut events = supervisor.subscribe();
    supervisor.wait_ready(READY).await.expect("ready");
    let client = supervisor.client();
    let ask = || async {
        client
            .generate(GenerateRequest::text("cycle").max_tokens(2))
            .await
            .expect("generate")
            .collect()
            .await
            .expect("collect")
    };
    ask().await;
    let (fds, threads) = (fd_count(), thread_count());
    let me = std::process::id();
    let started = Instant::now();
    let mut pids = vec![supervisor.worker_pid().expect("pid")];
    let mut crashes = 0;

    // 95 crashes at start-up, right after a SIGKILL of the serving worker.
    const START_CRASHES: usize = 95;
    std::fs::write(&faults, "startup_exit=3").expect("faults");
    support::signal(pids[0], Signal::SIGKILL);
    while crashes < START_CRASHES + 1 {
        let (event, _) = support::wait_event(&mut events, Duration::from_secs(30), |e| {
            matches!(
                e,
                LifecycleEvent::Crashed { .. } | LifecycleEvent::Starting { .. }
            )
        })
        .await;
        match event {
            LifecycleEvent::Crashed { .. } => crashes += 1,
            LifecycleEvent::Starting { pid, .. } => pids.push(pid),
            _ => {}
        }
    }
    std::fs::write(&faults, "").expect("clear faults");
    // Then 5 kills of a worker that is serving.
    for _ in 0..5 {
        let pid = loop {
            let (event, _) = support::wait_event(&mut events, READY, |e| {
                matches!(
                    e,
                    LifecycleEvent::Ready { .. } | LifecycleEvent::Starting { .. }
                )
            })
            .await;
            match event {
                LifecycleEvent::Starting { pid, .. } => pids.push(pid),
                LifecycleEvent::Ready { pid, .. } => break pid,
                _ => {}
            }
        };
        ask().await;
        support::signal(pid, Signal::SIGKILL);
        crashes += 1;
    }
    supervisor
        .wait_ready(READY)
        .await
        .expect("ready after the last cycle");
    ask().await;
    let cycles_took = started.elapsed();
    pids.sort_unstable();
    pids.dedup();
    let current = supervisor.worker_pid().expect("pid");
    assert!(crashes >= 100, "{crashes} cycles");
    for &pid in &pids {
        assert!(
            pid == current || support::process_gone(pid),
            "worker {pid} left running"
        );
    }
    assert!(
        zombie_children(me).is_empty(),
        "zombies: {:?}",
        zombie_children(me)
    );
    support::wait_until(
        Duration::from_secs(5),
        "descriptors back to the level before the cycles",
        || async { fd_count() <= fds },
    )
    .await;
    let threads_after = thread_count();
    assert!(
        threads_after <= threads + 2,
        "threads {threads} -> {threads_after}"
    );
    let in_dir: Vec<_> = std::fs::read_dir(supervisor.socket_dir())
        .expect("socket dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(in_dir, ["worker.sock"], "only the live socket");
    let dir = supervisor.socket_dir();
    supervisor.shutdown().await.expect("shutdown");
    drop(client);
    assert!(!dir.exists());
    support::wait_until(
        Duration::from_secs(5),
        "descriptors back to the level before the supervisor",
        || async { fd_count() <= fds_at_start },
    )
    .await;
    assert!(zombie_children(me).is_empty());
    eprintln!(
        "FIGURE fault 13: {crashes} crash/restart cycles ({} worker processes) in {cycles_took:?}; fds {fds} -> {}, threads {threads} -> {threads_after}, zombies 0",
        pids.len(),
        fd_count()
    );
}

/// A wrapper interpreter that runs Python under a resource limit (`ulimit` flag and value).
fn limited_python(dir: &Path, flag: &str, value: u64) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("python-ulimit{flag}"));
    let script = format!(
        "#!/bin/sh\nulimit {flag} {value} || exit 97\nexec '{}' \"$@\"\n",
        support::python().display()
    );
    std::fs::write(&path, script).expect("write wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_18_disk_full_and_out_of_memory_back_off() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let gguf = sandbox.path().join("tiny.gguf");
    let status = Command::new(support::python())
        .args(["-m", "mlx_worker.testing.tiny_gguf"])
        .arg(&gguf)
        .env("PYTHONPATH", support::worker_dir())
        .status()
        .expect("make a GGUF");
    assert!(status.success());
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        factor: 2.0,
        jitter: false,
        reset_after: Duration::from_secs(60),
        max_restarts: 2,
        within: Duration::from_secs(60),
        // On, as by default: a worker that never served still backs off.
        immediate_first_restart: true,
    };
    // Disk full while converting the GGUF into the cache: writes past 64 KiB fail (EFBIG;
    // Python ignores SIGXFSZ). Out of memory: 600 MB of address space, far below what the
    // worker needs (about 1.5 GB), so loading fails wherever the first mapping fails.
    let cases = [
        ("-f", 64, "disk full", sandbox.path().join("cache-full")),
        (
            "-v",
            600_000,
            "out of memory",
            sandbox.path().join("cache-oom"),
        ),
    ];
    for (flag, limit, what, cache) in cases {
        let python = limited_python(sandbox.path(), flag, limit);
        let worker = WorkerCommand::new(python, support::worker_dir())
            .with_model(&gguf)
            .with_args(["--cache-dir".to_owned(), cache.display().to_string()]);
        let config = support::config(worker, sandbox.path()).with_restart(policy.clone());
        let supervisor = Supervisor::spawn(config).await.expect("spawn");
        let mut events = supervisor.subscribe();
        let started = Instant::now();
        let err = supervisor.wait_ready(READY).await.expect_err(what);
        let gave_up_after = started.elapsed();
        let Error::GaveUp {
            last_log,
            last_status,
            ..
        } = &err
        else {
            panic!("{what}: expected GaveUp, got {err:?}")
        };
        eprintln!("{what}: {err}");
        assert!(last_status.is_some(), "{what}: the exit status is reported");
        let log = last_log.join("\n");
        let clear = match what {
            "disk full" => log.contains("disk full") || log.contains("No space"),
            // Under an address-space limit the first allocation that fails varies: a
            // mapping of a library, a thread's stack (EAGAIN), an array.
            _ => {
                log.contains("critical")
                    && [
                        "memory",
                        "alloc",
                        "Resource temporarily unavailable",
                        "failed to map",
                    ]
                    .iter()
                    .any(|s| log.contains(s))
            }
        };
        assert!(clear, "{what}: the last log says why:\n{log}");
        // Restarts backed off instead of spinning.
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(event);
        }
        let delays: Vec<u128> = seen
            .iter()
            .filter_map(|e| match e {
                LifecycleEvent::Restarting { delay, .. } => Some(delay.as_millis()),
                _ => None,
            })
            .collect();
        assert_eq!(delays, [200, 400], "{what}: delays in ms: {seen:?}");
        let leftovers: Vec<_> = walk(&cache).into_iter().filter(|p| !p.is_dir()).collect();
        if what == "disk full" {
            assert!(leftovers.is_empty(), "no half-written model: {leftovers:?}");
        }
        eprintln!(
            "FIGURE fault 18 ({what}): gave up after {gave_up_after:?} and 2 backed-off restarts; files left in the cache: {leftovers:?}"
        );
        supervisor.shutdown().await.expect("shutdown");
    }
}

/// A load that fails for any other reason (the worker's `load_error` switch): the same
/// clear report, exit code 1, backed-off restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_18_failed_load_is_reported_with_its_cause() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "load_error");
    let policy = RestartPolicy {
        initial_delay: Duration::from_millis(100),
        max_restarts: 1,
        jitter: false,
        ..RestartPolicy::default()
    };
    let supervisor =
        Supervisor::spawn(support::config(worker, sandbox.path()).with_restart(policy))
            .await
            .expect("spawn");
    let err = supervisor.wait_ready(READY).await.expect_err("load fails");
    match &err {
        Error::GaveUp {
            last_status,
            last_log,
            ..
        } => {
            assert_eq!(last_status.as_deref(), Some("exit code 1"));
            assert!(
                last_log
                    .iter()
                    .any(|l| l.contains("model loading failed") && l.contains("load_error")),
                "{last_log:?}"
            );
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    let err = supervisor
        .client()
        .tokenize("x")
        .await
        .expect_err("gave up");
    assert!(
        err.to_string().contains("exit code 1"),
        "callers are told why: {err}"
    );
    supervisor.shutdown().await.expect("shutdown");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
