//! gRPC over a Unix domain socket: a tonic [`Channel`] whose connector dials the socket
//! with tokio's `UnixStream` (wrapped for hyper by `TokioIo`); over TCP to a daemon, tonic's
//! own connector; and the test that tells a broken connection from a status the worker sent.

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The metadata key of an API key, sent as `Bearer KEY` (a daemon's TCP listener checks it).
pub(crate) const AUTHORIZATION: &str = "authorization";

/// A lazily connecting channel to the worker listening on `path`. It (re)connects on the
/// first call and after the connection breaks.
pub(crate) fn uds_channel(path: PathBuf) -> Channel {
    // The URI is required by the HTTP/2 layer but never resolved: the connector below
    // ignores it and dials the socket.
    Endpoint::from_static("http://mlx-worker.sock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

/// A channel to the TCP address `uri` (`http://host:port`), connected now so that a wrong
/// address fails at once; it reconnects by itself after the connection breaks.
pub(crate) async fn tcp_channel(
    uri: String,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(uri)?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
}

/// Whether `status` says the call's deadline passed: the worker's `DEADLINE_EXCEEDED`, or
/// tonic's own enforcement of the `grpc-timeout` the call carries (`TimeoutExpired`).
pub(crate) fn is_deadline(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::DeadlineExceeded {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether `status` came from a failed or broken connection rather than from the worker:
/// tonic attaches the transport error as the status's source; statuses the worker sent
/// have none.
pub(crate) fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_timeout_is_a_deadline_and_worker_statuses_are_not_transport_failures() {
        let timeout = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(is_deadline(&timeout));
        assert!(is_deadline(&tonic::Status::deadline_exceeded("late")));
        let from_worker = tonic::Status::unavailable("draining");
        assert!(!is_deadline(&from_worker));
        assert!(!is_transport_failure(&from_worker));
        let broken = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_transport_failure(&broken));
        assert!(!is_deadline(&broken));
    }
}
