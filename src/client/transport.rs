//! gRPC over a Unix domain socket: a tonic [`Channel`] whose connector dials the socket
//! with tokio's `UnixStream` (wrapped for hyper by `TokioIo`), and the test that tells a
//! broken connection from a status the worker sent.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

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

/// Whether `status` came from a failed or broken connection rather than from the worker:
/// tonic attaches the transport error as the status's source; statuses the worker sent
/// have none.
pub(crate) fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}
