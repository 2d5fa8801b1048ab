//! Faults of the catalogue (see the index in `crates/mlx-sidecar/tests/it/catalogue.rs`)
//! provoked through the `mlx-sidecar` binary: the supervisor killed (9), and kills and the
//! other fault kinds under concurrent load through the `chaos` command (17).

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use mlx_sidecar::{GenerateRequest, Supervisor};
use mlx_sidecar_testkit::{self as support, READY, procfs::children_running, raw::worker_health};
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// The worker's health answer for `SERVING`.
const SERVING: i32 = 1;

/// The supervisor is the CLI binary, streaming a generation; SIGKILL it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_09_sigkill_supervisor_takes_the_worker_along() {
    support::init_tracing();
    let sandbox = tempfile::tempdir().expect("tempdir");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_mlx-sidecar"))
        .arg("--python")
        .arg(support::python())
        .arg("--env-dir")
        .arg(sandbox.path().join("env"))
        .arg("--model")
        .arg(support::tiny_model())
        .arg("--socket-dir")
        .arg(sandbox.path())
        .args(["generate", "--raw", "--max-tokens", "1900", "A long story:"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the CLI");
    let cli_pid = cli.id();
    let mut stdout = cli.stdout.take().expect("stdout");
    // Wait until text streams: the worker is up and generating.
    let mut first = [0u8; 16];
    let read = tokio::task::spawn_blocking(move || stdout.read_exact(&mut first).map(|()| stdout));
    let stdout = tokio::time::timeout(READY, read)
        .await
        .expect("the CLI streams text")
        .expect("join")
        .expect("read");
    let workers = children_running(cli_pid, "mlx_worker");
    assert_eq!(workers.len(), 1, "one worker under the CLI: {workers:?}");
    let worker = workers[0];
    let prefix = format!("mlx-sidecar-{cli_pid}-");
    let stale_dir = std::fs::read_dir(sandbox.path())
        .expect("read sandbox")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .expect("the CLI's socket directory");

    let killed_at = Instant::now();
    support::signal(cli_pid, Signal::SIGKILL);
    let status = cli.wait().expect("reap the CLI");
    drop(stdout);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    support::wait_until(
        Duration::from_secs(3),
        "the worker to die with its supervisor",
        || async { support::process_gone(worker) },
    )
    .await;
    let worker_gone = killed_at.elapsed();
    assert!(stale_dir.exists(), "a killed supervisor cannot clean up");

    // Without the parent-death signal, EOF on stdin alone stops a worker too.
    let socket = sandbox.path().join("eof.sock");
    let mut bare = Command::new(support::python())
        .args(["-m", "mlx_worker", "--socket"])
        .arg(&socket)
        .arg("--model")
        .arg(support::tiny_model())
        .env("PYTHONPATH", support::worker_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a bare worker");
    support::wait_until(READY, "the bare worker to serve", || {
        let socket = socket.clone();
        async move { worker_health(&socket).await.ok() == Some(SERVING) }
    })
    .await;
    let closed_at = Instant::now();
    drop(bare.stdin.take());
    let bare_pid = bare.id();
    support::wait_until(
        Duration::from_secs(5),
        "the worker to exit at stdin EOF",
        || async { support::process_gone(bare_pid) },
    )
    .await;
    let eof_exit = closed_at.elapsed();
    let status = bare.wait().expect("reap");
    assert!(status.success(), "exits cleanly at EOF: {status}");
    assert!(
        !socket.exists(),
        "the worker removes its socket on the way out"
    );

    // The next supervisor starts cleanly and clears the dead one's directory.
    let supervisor = Supervisor::spawn(support::config(support::tiny_worker(), sandbox.path()))
        .await
        .expect("spawn");
    assert!(
        !stale_dir.exists(),
        "the dead supervisor's socket directory is removed"
    );
    supervisor.wait_ready(READY).await.expect("ready");
    let ok = support::complete(
        &supervisor.client(),
        GenerateRequest::text("next").max_tokens(3),
    )
    .await;
    assert_eq!(ok.token_ids.len(), 3);
    eprintln!(
        "FIGURE fault 9: worker gone {worker_gone:?} after SIGKILL of its supervisor; a bare worker exits {eof_exit:?} after stdin EOF"
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// Kills under load, through the `chaos` command: every request completes or gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_17_kills_under_load_lose_nothing() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let chart = sandbox.path().join("chaos.svg");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlx-sidecar"))
        .arg("--python")
        .arg(support::python())
        .arg("--env-dir")
        .arg(sandbox.path().join("env"))
        .arg("--model")
        .arg(support::tiny_model())
        .arg("--socket-dir")
        .arg(sandbox.path())
        .args([
            "chaos",
            "--clients",
            "4",
            "--kill-cycles",
            "4",
            "--kill-every",
            "300ms",
            "--max-tokens",
            "48",
            "--json",
            "--chart",
        ])
        .arg(&chart)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "chaos --json: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let n = |path: &str| {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::MAX)
    };
    assert_eq!(n("/requests/lost"), 0, "{report:#}");
    // Every completed stream, resumed or not, has its prompt's greedy reference token ids;
    // so do the streams of the same load without faults.
    assert_eq!(n("/requests/mismatched"), 0, "{:#}", report["requests"]);
    assert_eq!(n("/verdict/mismatched"), 0);
    assert_eq!(n("/floor/mismatched"), 0, "{:#}", report["floor"]);
    assert_eq!(n("/floor/not_completed"), 0, "{:#}", report["floor"]);
    assert!(
        n("/floor/total") >= 16,
        "every prompt once: {:#}",
        report["floor"]
    );
    assert_eq!(
        n("/requests/total"),
        n("/requests/completed") + n("/requests/failed"),
        "every request completed or got an error"
    );
    assert!(n("/requests/completed") > 0);
    assert_eq!(n("/faults/injected"), 4);
    assert_eq!(n("/faults/recovered"), 4);
    assert_eq!(n("/verdict/leaked"), 0, "{:#}", report["final_state"]);
    assert_eq!(report["verdict"]["ok"], true);
    assert!(output.status.success(), "exit code 0 when nothing is lost");
    let failed = report["requests"]["failed_by_reason"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for reason in failed.keys() {
        assert_eq!(reason, "worker died mid-stream", "{failed:?}");
    }
    // Streams cut by a kill go on on the next worker (4 clients always streaming: at least
    // one kill lands mid-stream).
    assert!(n("/requests/resumed") >= 1, "{:#}", report["requests"]);
    assert!(n("/requests/resumes") >= n("/requests/resumed"));
    let detect = report
        .pointer("/faults/by_kind/kill/time_to_detect_ms/max")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::MAX);
    assert!(
        detect < 1000.0,
        "a kill is noticed from the exit: {detect} ms"
    );
    assert!(std::fs::read_to_string(&chart).is_ok_and(|svg| svg.contains("<svg")));
    eprintln!(
        "FIGURE fault 17: {} requests under 4 kills: {} completed ({} retried transparently, {} resumed mid-stream), {} failed with an error, 0 lost, 0 mismatched with the greedy reference (floor: 0 of {}); serve again p50 {} ms",
        n("/requests/total"),
        n("/requests/completed"),
        n("/requests/retried_transparently"),
        n("/requests/resumed"),
        n("/requests/failed"),
        n("/floor/total"),
        report
            .pointer("/faults/by_kind/kill/time_to_serve_again_ms/p50")
            .unwrap_or(&serde_json::Value::Null)
    );
}

/// The `chaos` command's other faults: SIGSTOP (long enough to be replaced, and short),
/// a removed socket file, a slow restart; all recovered, nothing lost or leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_injects_every_fault_kind() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlx-sidecar"))
        .arg("--python")
        .arg(support::python())
        .arg("--env-dir")
        .arg(sandbox.path().join("env"))
        .arg("--model")
        .arg(support::tiny_model())
        .arg("--socket-dir")
        .arg(sandbox.path())
        .args([
            "chaos",
            "--clients",
            "3",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "300ms",
            "--faults",
            "stop:every=1s:for=4s:count=1,stop:every=1s:for=100ms:count=1,\
             delete-socket:every=1s:count=1,slow-start:every=1s:delay=1500ms:count=1",
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "chaos --json: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let n = |path: &str| {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    assert_eq!(report["verdict"]["ok"], true, "{report:#}");
    assert!(output.status.success());
    assert_eq!(n("/faults/injected"), 4.0);
    assert_eq!(n("/faults/recovered"), 4.0);
    assert_eq!(n("/requests/lost"), 0.0);
    // The long stop and the removed socket were each noticed by the health probe and the
    // worker replaced; the slow restart took at least its extra delay.
    assert!(
        n("/faults/by_kind/stop/time_to_detect_ms/max") < 3000.0,
        "{report:#}"
    );
    assert!(n("/faults/by_kind/delete-socket/time_to_detect_ms/max") < 2000.0);
    assert!(n("/faults/by_kind/slow-start/time_to_serve_again_ms/max") >= 1500.0);
    assert!(
        n("/restarts") >= 3.0,
        "long stop, removed socket, slow start: {report:#}"
    );
    eprintln!(
        "FIGURE chaos fault kinds: stop detected {:.0} ms, removed socket detected {:.0} ms and served again {:.0} ms, slow start served again {:.0} ms",
        n("/faults/by_kind/stop/time_to_detect_ms/max"),
        n("/faults/by_kind/delete-socket/time_to_detect_ms/max"),
        n("/faults/by_kind/delete-socket/time_to_serve_again_ms/max"),
        n("/faults/by_kind/slow-start/time_to_serve_again_ms/max"),
    );
}
