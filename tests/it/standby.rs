//! Fast recovery: the immediate first restart after a served run, and the standby worker
//! that takes over at once when the active one dies (`SupervisorConfig::standby`).

use std::time::Duration;

use mlx_sidecar::LifecycleEvent;
use nix::sys::signal::Signal;

use crate::support::{self, READY};

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
