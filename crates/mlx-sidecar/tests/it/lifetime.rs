//! Process lifetime across the supervisor's own death, and over many crash cycles. Both run
//! in a child process of this test binary (an ignored test, started by its parent test),
//! so that they can be killed, or count file descriptors and threads, without disturbing
//! the other tests.

use std::{path::PathBuf, process::Stdio, time::Duration};

use mlx_sidecar::{LifecycleEvent, RestartPolicy, Supervisor};
use nix::sys::signal::Signal;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    time::Instant,
};

use crate::support::{self, READY};

/// Set in a child test process; names the sandbox directory to use.
const CHILD_ENV: &str = "MLX_SIDECAR_TEST_CHILD_SANDBOX";

/// Starts the ignored test `name` alone in a child process.
fn start_child(name: &str, sandbox: &std::path::Path) -> tokio::process::Child {
    // /proc/self/exe still runs this binary after cargo relinked the file (shared target dir).
    let exe = if cfg!(target_os = "linux") {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().expect("test binary")
    };
    tokio::process::Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, sandbox)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child test")
}

fn child_sandbox() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// Child: runs a supervisor, reports its worker, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by supervisor_killed_takes_its_worker_along"]
async fn child_holds_a_supervisor() {
    let Some(sandbox) = child_sandbox() else {
        return;
    };
    let supervisor = Supervisor::spawn(support::config(support::tiny_worker(), &sandbox))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    println!(
        "WORKER pid={} dir={}",
        supervisor.worker_pid().expect("pid"),
        supervisor.socket_dir().display()
    );
    // Parked until the parent kills this process (bounded, in case it never does); the
    // supervisor's events (a health probe's, say) do not end the wait.
    let mut events = supervisor.subscribe();
    let parked = async {
        while !matches!(
            events.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(120), parked).await;
    panic!("not killed by the parent test");
}

/// SIGKILL the supervisor's process: its worker exits (parent-death signal on Linux,
/// stdin EOF everywhere), and the next supervisor cleans up the dead one's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_killed_takes_its_worker_along() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let mut child = start_child("lifetime::child_holds_a_supervisor", sandbox.path());
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.starts_with("WORKER ") {
                return line;
            }
        }
        panic!("the child ended without reporting its worker");
    })
    .await
    .expect("child reports its worker");
    let mut pid = None;
    let mut dir = None;
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("pid=") {
            pid = v.parse::<u32>().ok();
        } else if let Some(v) = part.strip_prefix("dir=") {
            dir = Some(PathBuf::from(v));
        }
    }
    let (pid, dir) = (pid.expect("pid"), dir.expect("dir"));
    assert!(!support::process_gone(pid));

    let killed_at = Instant::now();
    support::signal(child.id().expect("child pid"), Signal::SIGKILL);
    child.wait().await.expect("reap the child");
    support::wait_until(
        Duration::from_secs(5),
        "the orphaned worker to exit",
        || async { support::process_gone(pid) },
    )
    .await;
    eprintln!(
        "FIGURE supervisor SIGKILLed: worker gone {:?} later",
        killed_at.elapsed()
    );
    assert!(dir.exists(), "a killed supervisor cannot clean up");

    // The next supervisor on the same parent directory removes the dead one's directory.
    let next = Supervisor::spawn(support::config(support::tiny_worker(), sandbox.path()))
        .await
        .expect("spawn");
    assert!(!dir.exists(), "stale socket directory removed");
    next.wait_ready(READY).await.expect("ready");
    next.shutdown().await.expect("shutdown");
}

fn count_entries(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Child processes of this process not yet reaped (zombies included).
fn children() -> Vec<String> {
    let mut all = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            all.extend(list.split_whitespace().map(str::to_owned));
        }
    }
    all
}

const CYCLES: u32 = 40;

/// Child: many crash/restart cycles leave no zombies, file descriptors or threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by crash_cycles_leak_nothing"]
async fn child_crash_cycles() {
    let Some(sandbox) = child_sandbox() else {
        return;
    };
    let crashing = support::tiny_worker().with_env("MLX_WORKER_FAULTS", "startup_exit=3");
    let run = async |restarts: u32| {
        let policy = RestartPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            factor: 1.0,
            jitter: false,
            reset_after: Duration::from_secs(3600),
            max_restarts: restarts,
            within: Duration::from_secs(3600),
            immediate_first_restart: true,
        };
        let config = support::config(crashing.clone(), &sandbox).with_restart(policy);
        let supervisor = Supervisor::spawn(config).await.expect("spawn");
        let mut events = supervisor.subscribe();
        let (_, seen) = support::wait_event(&mut events, Duration::from_secs(300), |e| {
            matches!(e, LifecycleEvent::GaveUp { .. })
        })
        .await;
        supervisor.shutdown().await.expect("shutdown");
        seen.iter()
            .filter(|(_, e)| matches!(e, LifecycleEvent::Crashed { .. }))
            .count()
    };
    // Warm up (the spawner thread, tokio's child-exit machinery), then measure.
    run(0).await;
    let fds = count_entries("/proc/self/fd");
    let threads = count_entries("/proc/self/task");
    let started = Instant::now();
    let crashes = run(CYCLES).await;
    assert!(crashes >= CYCLES as usize, "{crashes} crashes");
    assert_eq!(
        children(),
        Vec::<String>::new(),
        "no zombie or stray children"
    );
    assert_eq!(
        count_entries("/proc/self/fd"),
        fds,
        "no leaked file descriptors"
    );
    assert!(
        count_entries("/proc/self/task") <= threads,
        "no leaked threads"
    );
    assert_eq!(
        std::fs::read_dir(&sandbox).expect("sandbox").count(),
        0,
        "no socket directories left"
    );
    println!(
        "FIGURE {CYCLES} crash/restart cycles in {:?}, nothing leaked",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_cycles_leak_nothing() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let child = start_child("lifetime::child_crash_cycles", sandbox.path());
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("child finishes")
        .expect("child output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}");
    assert!(stdout.contains("1 passed"), "the child test ran:\n{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("FIGURE")) {
        eprintln!("{line}");
    }
}
