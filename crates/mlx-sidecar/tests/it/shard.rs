//! A model sharded over two real worker processes (mx.distributed's ring backend on
//! loopback), supervised as one worker: a rank killed or hung restarts the whole group, and
//! no rank, zombie or listening port of the old group is left.

use std::{path::PathBuf, time::Duration};

use mlx_sidecar::{GenerateRequest, LifecycleEvent, ShardGroup, Supervisor};
use nix::sys::signal::Signal;

use crate::support::{self, READY};

/// The status rank 0 exits with when another rank of its group ended.
const EXIT_RANK_DIED: i32 = 3;
const FOLLOWER: &str = "mlx_worker.shard.follower";

fn sharded_worker() -> mlx_sidecar::WorkerCommand {
    support::tiny_worker()
        .with_shard(ShardGroup::new(2))
        .with_args(["--stall-seconds", "2"])
}

fn the_follower(rank0: u32) -> u32 {
    let followers = support::procfs::children_running(rank0, FOLLOWER);
    assert_eq!(followers.len(), 1, "rank 0 (pid {rank0}) has one follower");
    followers[0]
}

/// The ring's ports, from the hostfile rank 0 wrote next to its socket.
fn ring_ports(supervisor: &Supervisor) -> Vec<u16> {
    let socket = supervisor.socket_path();
    let name = socket.file_name().map(|n| n.to_string_lossy().into_owned());
    let ring: PathBuf = socket.with_file_name(format!(".{}.ring.json", name.unwrap_or_default()));
    let text = std::fs::read_to_string(&ring).expect("ring hostfile");
    let ranks: Vec<Vec<String>> = serde_json::from_str(&text).expect("ring hostfile JSON");
    ranks
        .iter()
        .flatten()
        .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect()
}

/// Whether something listens on 127.0.0.1:port (std's listener sets SO_REUSEADDR, so
/// TIME_WAIT leftovers of closed connections don't count).
fn listening(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

async fn greedy_ids(supervisor: &Supervisor) -> Vec<u32> {
    let request = GenerateRequest::text("The quick brown fox").max_tokens(16);
    support::complete(&supervisor.client(), request)
        .await
        .token_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_rank_restarts_the_whole_group() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = Supervisor::spawn(support::config(sharded_worker(), sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let before = greedy_ids(&supervisor).await;
    let rank0 = supervisor.worker_pid().expect("pid");
    let rank1 = the_follower(rank0);
    let ports = ring_ports(&supervisor);
    assert_eq!(ports.len(), 2);
    let mut events = supervisor.subscribe();

    support::signal(rank1, Signal::SIGKILL);
    let (crashed, _) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await;
    match crashed {
        LifecycleEvent::Crashed { pid, status } => {
            assert_eq!(pid, rank0, "the group's worker is rank 0");
            assert_eq!(status.code, Some(EXIT_RANK_DIED), "{status}");
        }
        other => panic!("{other:?}"),
    }
    supervisor.wait_ready(READY).await.expect("ready again");
    assert!(support::process_gone(rank0) && support::process_gone(rank1));
    assert!(support::procfs::zombie_children(std::process::id()).is_empty());
    // The new group picks free ports again and may get an old one: that one is its own.
    let new_ports = ring_ports(&supervisor);
    support::wait_until(
        Duration::from_secs(10),
        "the old ring's ports closed",
        || {
            let (ports, new_ports) = (ports.clone(), new_ports.clone());
            async move {
                ports
                    .iter()
                    .all(|p| !listening(*p) || new_ports.contains(p))
            }
        },
    )
    .await;

    let new_rank0 = supervisor.worker_pid().expect("new pid");
    assert_ne!(new_rank0, rank0);
    let new_rank1 = the_follower(new_rank0);
    assert_eq!(
        greedy_ids(&supervisor).await,
        before,
        "the new group answers alike"
    );

    supervisor.shutdown().await.expect("shutdown");
    support::wait_until(Duration::from_secs(10), "every rank gone", || async move {
        support::process_gone(new_rank0) && support::process_gone(new_rank1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_rank_turns_health_and_the_group_is_restarted() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = Supervisor::spawn(support::config(sharded_worker(), sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let rank0 = supervisor.worker_pid().expect("pid");
    let rank1 = the_follower(rank0);
    let mut events = supervisor.subscribe();

    // Idle: rank 0's once-a-second tick to the group blocks on the stopped rank, its engine
    // heartbeat stalls past --stall-seconds 2, health turns NOT_SERVING.
    support::signal(rank1, Signal::SIGSTOP);
    support::wait_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, LifecycleEvent::Unhealthy { .. })
    })
    .await;
    support::wait_event(
        &mut events,
        Duration::from_secs(20),
        |e| matches!(e, LifecycleEvent::Crashed { pid, .. } if *pid == rank0),
    )
    .await;
    supervisor.wait_ready(READY).await.expect("ready again");
    support::wait_until(
        Duration::from_secs(10),
        "the hung rank killed",
        || async move { support::process_gone(rank1) },
    )
    .await;
    assert_eq!(greedy_ids(&supervisor).await.len(), 16);
    supervisor.shutdown().await.expect("shutdown");
}
