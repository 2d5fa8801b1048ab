//! A client of a daemon over a Unix socket or TCP with a key, for the tests: kept here until
//! the library's own `Client::connect` replaces it.
//!
//! - [`DaemonEndpoint`]: a Unix socket (`unix:/path` or a plain path) or TCP
//!   (`http://host:port`), parsed from the CLI's `--connect`;
//! - [`DaemonConnection`]: a connected channel plus the API key, sent as
//!   `authorization: Bearer KEY` metadata on every call ([`BearerAuth`]); it hands out the
//!   generated clients of the daemon's services and [`DaemonConnection::status`].
//!
//! Over a Unix socket the library's own `Client::connect_uds(path)` already works against a
//! daemon (the daemon serves the same `Inference` service as a worker).

use std::{path::PathBuf, str::FromStr, time::Duration};

use hyper_util::rt::TokioIo;
use mlx_sidecar::Error;
use mlx_sidecar_proto::v1::{
    StatusRequest, StatusResponse, daemon_client::DaemonClient, inference_client::InferenceClient,
};
use tokio::net::UnixStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint, Uri},
};
use tonic_health::pb::health_client::HealthClient;

/// Deadline of [`DaemonConnection::status`].
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DaemonEndpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address as an `http://HOST:PORT` URI.
    Tcp(String),
}

impl FromStr for DaemonEndpoint {
    type Err = Error;

    /// `unix:/path`, `http://host:port`, `host:port` (TCP) or a path (anything with a `/`).
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(DaemonEndpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with("http://") {
            return Ok(DaemonEndpoint::Tcp(s.to_owned()));
        }
        if s.starts_with("https://") {
            return Err(Error::Protocol(format!(
                "{s}: the daemon speaks plain HTTP/2 (put TLS in front of it, and connect to that)"
            )));
        }
        if s.contains('/') {
            return Ok(DaemonEndpoint::Unix(PathBuf::from(s)));
        }
        Ok(DaemonEndpoint::Tcp(format!("http://{s}")))
    }
}

impl std::fmt::Display for DaemonEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            DaemonEndpoint::Tcp(uri) => f.write_str(uri),
        }
    }
}

/// Adds `authorization: Bearer KEY` to every call, when there is a key.
#[derive(Clone, Default)]
pub(crate) struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("key", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl BearerAuth {
    /// Sends `key` (fails if it is not visible ASCII, which no header can carry).
    pub(crate) fn new(key: Option<&str>) -> Result<Self, Error> {
        let header = key
            .map(|key| {
                let mut value: MetadataValue<Ascii> = format!("Bearer {key}")
                    .parse()
                    .map_err(|_| Error::Protocol("the API key must be visible ASCII".into()))?;
                value.set_sensitive(true);
                Ok::<_, Error>(value)
            })
            .transpose()?;
        Ok(BearerAuth { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A channel through which every call carries the key.
pub(crate) type AuthChannel = InterceptedService<Channel, BearerAuth>;

/// A connection to a daemon: its channel and the key its calls carry. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct DaemonConnection {
    channel: Channel,
    auth: BearerAuth,
}

impl DaemonConnection {
    /// Connects to the daemon at `endpoint`, sending `api_key` (if any) with every call.
    /// Fails at once when nothing accepts connections there; later calls reconnect.
    pub(crate) async fn connect(
        endpoint: &DaemonEndpoint,
        api_key: Option<&str>,
    ) -> Result<Self, Error> {
        let auth = BearerAuth::new(api_key)?;
        let channel = match endpoint {
            DaemonEndpoint::Unix(path) => {
                UnixStream::connect(path).await.map_err(|e| Error::Socket {
                    path: path.clone(),
                    reason: format!("cannot connect: {e}"),
                })?;
                uds_channel(path.clone())
            }
            DaemonEndpoint::Tcp(uri) => Endpoint::from_shared(uri.clone())
                .map_err(|e| Error::Protocol(format!("{uri}: {e}")))?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| Error::Rpc {
                    code: tonic::Code::Unavailable,
                    message: format!("cannot connect to {uri}: {e}"),
                })?,
        };
        Ok(DaemonConnection { channel, auth })
    }

    /// A client of the daemon's `mlx_sidecar.v1.Inference` service.
    pub(crate) fn inference(&self) -> InferenceClient<AuthChannel> {
        InferenceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A client of the daemon's `mlx_sidecar.v1.Daemon` service.
    pub(crate) fn daemon(&self) -> DaemonClient<AuthChannel> {
        DaemonClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A client of the daemon's `grpc.health.v1.Health` service.
    pub(crate) fn health(&self) -> HealthClient<AuthChannel> {
        HealthClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// What the daemon runs: model, device, worker pid and uptime, restarts, load, standby.
    pub(crate) async fn status(&self) -> Result<StatusResponse, Error> {
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(STATUS_TIMEOUT);
        Ok(self.daemon().status(request).await?.into_inner())
    }
}

/// A lazily (re)connecting channel to the Unix socket at `path`.
fn uds_channel(path: PathBuf) -> Channel {
    // The URI is required by the HTTP/2 layer but never resolved.
    Endpoint::from_static("http://mlx-sidecar.sock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}
