//! systemd's conventions, for real: the daemon takes the Unix socket handed over through
//! `LISTEN_FDS` instead of binding, tells `READY=1` on `NOTIFY_SOCKET` only once its worker
//! is ready, and `STOPPING=1` when it drains. A binary of its own: it sets the process's
//! environment, which nothing else may read at the same time.

mod support;

use std::{
    os::{fd::IntoRawFd, unix::net::UnixListener},
    time::Duration,
};

use mlx_sidecar_proto::v1::WorkerState;
use tokio::net::UnixDatagram;
use tonic_health::pb::health_check_response::ServingStatus;

use support::{Daemon, config};

/// Reads the next notification, failing the test after `timeout`.
async fn next_notification(socket: &UnixDatagram, timeout: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .expect("a notification in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn takes_the_activated_socket_and_notifies_readiness_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    let activated = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&activated).expect("activated socket");
    // Hand the listener over as systemd would: the daemon now owns the fd.
    let fd = listener.into_raw_fd();
    // SAFETY: no other thread runs yet (the runtime is built below); the test binary has
    // this one test.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &notify_path);
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS_FIRST_FD", fd.to_string());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        notify.set_nonblocking(true).expect("nonblocking");
        let notify = UnixDatagram::from_std(notify).expect("tokio datagram");
        // The configured path is not bound: the handed-over socket is used instead.
        let unused = dir.path().join("unused/daemon.sock");
        let config = config(dir.path())
            .with_socket_path(&activated)
            .with_socket_activation(true);
        let daemon = Daemon::start_without_waiting(config);

        // Before the worker is ready, systemd hears nothing.
        let status = daemon.wait_status().await;
        if status.worker_state() != WorkerState::Ready {
            let mut buf = [0u8; 64];
            assert!(
                notify.try_recv(&mut buf).is_err(),
                "READY=1 before the worker was ready"
            );
        }
        assert_eq!(status.listeners.len(), 1);
        assert!(status.listeners[0].activated);
        assert_eq!(status.listeners[0].address, activated.display().to_string());
        assert!(!unused.exists());

        daemon.wait_health(ServingStatus::Serving).await;
        let ready = next_notification(&notify, Duration::from_secs(10)).await;
        assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

        daemon.stop().await.expect("clean stop");
        let stopping = next_notification(&notify, Duration::from_secs(10)).await;
        assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
        // The socket belongs to systemd: left in place.
        assert!(activated.exists());
    });
}
