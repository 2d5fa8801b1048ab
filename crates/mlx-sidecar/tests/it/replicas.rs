//! Replicas (`SupervisorConfig::replicas`): several workers, each with its own socket and
//! restarts; calls go to the least loaded ready one, and a call that had not started when
//! its replica died finishes on another.

use std::{collections::HashSet, path::Path, time::Duration};

use mlx_sidecar::{GenerateRequest, Supervisor, WorkerState};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::support::{self, READY};

/// A supervisor of `count` tiny-model replicas, once every one serves.
async fn ready_replicas(sandbox: &Path, count: usize) -> Supervisor {
    let config = support::config(support::tiny_worker(), sandbox).with_replicas(count);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor
        .wait_all_ready(READY * 2)
        .await
        .expect("all replicas ready");
    supervisor
}

/// A generation long enough to still run while the test looks at the load.
fn long_request() -> GenerateRequest {
    GenerateRequest::text("Once upon a time")
        .max_tokens(2000)
        .ignore_eos(true)
}

/// A short greedy generation.
fn short_request() -> GenerateRequest {
    GenerateRequest::text("Hello")
        .max_tokens(8)
        .temperature(0.0)
        .ignore_eos(true)
}

/// Each replica has its own worker and socket and gets calls: sequential calls rotate over
/// idle replicas, concurrent ones go to the one with less in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_each_serve_and_share_the_load() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = ready_replicas(sandbox.path(), 2).await;
    let replicas = supervisor.replicas();
    assert_eq!(replicas.len(), 2);
    let pids: HashSet<u32> = replicas.iter().map(|r| r.pid.expect("pid")).collect();
    let sockets: HashSet<_> = replicas.iter().map(|r| r.socket.clone()).collect();
    assert_eq!(pids.len(), 2, "one worker per replica: {replicas:?}");
    assert_eq!(sockets.len(), 2, "one socket per replica: {replicas:?}");
    assert!(replicas.iter().all(|r| r.state == WorkerState::Ready));

    let client = supervisor.client();
    let mut answered = HashSet::new();
    for _ in 0..4 {
        answered.insert(client.model_info().await.expect("model info").worker_pid);
    }
    assert_eq!(answered, pids, "sequential calls reach both replicas");

    let mut first = client.generate(long_request()).await.expect("first");
    support::text_of_at_least(&mut first, 1).await;
    let mut second = client.generate(long_request()).await.expect("second");
    support::text_of_at_least(&mut second, 1).await;
    let loads: Vec<usize> = supervisor.replicas().iter().map(|r| r.in_flight).collect();
    assert_eq!(loads, [1, 1], "two streams, one on each replica");
    drop((first, second));
    support::wait_until(Duration::from_secs(5), "the load to drop", || async {
        supervisor.replicas().iter().all(|r| r.in_flight == 0)
    })
    .await;
    supervisor.shutdown().await.expect("shutdown");
}

/// Calls stuck on a frozen replica that has not answered yet go to the other replica as
/// soon as it is killed, and every call completes; killing both replicas together loses
/// nothing either: calls wait for the restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_not_started_move_to_another_replica_when_one_dies() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = ready_replicas(sandbox.path(), 2).await;
    let victim = supervisor.replicas()[0].pid.expect("pid");
    let survivor = supervisor.replicas()[1].pid.expect("pid");
    support::signal(victim, Signal::SIGSTOP);

    let client = supervisor.client();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { support::complete(&client, short_request()).await })
        })
        .collect();
    support::wait_until(
        Duration::from_secs(10),
        "a call stuck on the frozen replica",
        || async { supervisor.replicas()[0].in_flight > 0 },
    )
    .await;
    let killed = Instant::now();
    support::signal(victim, Signal::SIGKILL);
    for call in calls {
        let answer = call.await.expect("call task");
        assert_eq!(answer.token_ids.len(), 8, "{answer:?}");
    }
    let moved_in = killed.elapsed();
    assert!(
        moved_in < Duration::from_secs(5),
        "the stuck calls finished {moved_in:?} after the kill"
    );
    assert_eq!(
        supervisor.replicas()[1].pid,
        Some(survivor),
        "the other replica ran on"
    );

    // Both at once: calls sent now wait for the restarted workers and complete.
    supervisor
        .wait_all_ready(READY)
        .await
        .expect("replica 0 restarted");
    assert_eq!(supervisor.replicas()[0].restarts, 1);
    let pids: Vec<u32> = supervisor.replicas().iter().filter_map(|r| r.pid).collect();
    for pid in &pids {
        support::signal(*pid, Signal::SIGKILL);
    }
    let answers =
        futures_util::future::join_all((0..3).map(|_| support::complete(&client, short_request())))
            .await;
    assert_eq!(answers.len(), 3);
    let restarted: Vec<u32> = supervisor.replicas().iter().filter_map(|r| r.pid).collect();
    assert!(
        restarted.iter().all(|pid| !pids.contains(pid)),
        "new workers: {restarted:?}"
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// A stream whose replica dies mid-way resumes at once on the other, ready replica (not on
/// the dead one's replacement), with the tokens of an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_way_resumes_on_another_replica() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = ready_replicas(sandbox.path(), 2).await;
    let client = supervisor.client();
    let request = GenerateRequest::text("A long story:")
        .max_tokens(300)
        .temperature(0.0)
        .ignore_eos(true);
    let want = support::complete(&client, request.clone()).await;
    let mut events = supervisor.subscribe();
    let mut stream = client.generate(request).await.expect("generate");
    let mut ids = Vec::new();
    while ids.len() < 40 {
        match stream.next_event().await.expect("event").expect("ok") {
            mlx_sidecar::GenerateEvent::Token { token_ids, .. } => ids.extend(token_ids),
            mlx_sidecar::GenerateEvent::Finished(f) => panic!("finished early: {f:?}"),
        }
    }
    let replicas = supervisor.replicas();
    let serving = replicas
        .iter()
        .find(|r| r.in_flight == 1)
        .expect("the replica serving the stream");
    let victim = serving.pid.expect("pid");
    let survivor = replicas[1 - serving.index].pid.expect("pid");
    support::signal(victim, Signal::SIGKILL);
    let finished = loop {
        match stream.next_event().await.expect("event").expect("no error") {
            mlx_sidecar::GenerateEvent::Token { token_ids, .. } => ids.extend(token_ids),
            mlx_sidecar::GenerateEvent::Finished(f) => break f,
        }
    };
    assert_eq!(
        ids, want.token_ids,
        "the resumed stream is the uninterrupted one"
    );
    assert_eq!(finished.usage.resumes, 1);
    let (resumed, _) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, mlx_sidecar::LifecycleEvent::Resumed { .. })
    })
    .await;
    let mlx_sidecar::LifecycleEvent::Resumed { pid, stall, .. } = resumed else {
        unreachable!()
    };
    assert_eq!(pid, Some(survivor), "resumed on the other replica");
    eprintln!("FIGURE replicas resume: stall {stall:?}");
    supervisor.shutdown().await.expect("shutdown");
}
