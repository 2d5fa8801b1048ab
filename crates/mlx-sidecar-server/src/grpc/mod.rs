//! The daemon's gRPC side, assembled into one axum router by [`routes`]:
//!
//! - `relay`: `mlx_sidecar.v1.Inference`, relayed to the supervised worker (`convert`
//!   turns wire types into the library's and back);
//! - `daemon`: `mlx_sidecar.v1.Daemon`'s `Status`;
//! - `health`: `grpc.health.v1`, driven by `crate::worker`;
//! - gRPC server reflection (v1 and v1alpha) from the proto crate's descriptors
//!   (inference and daemon) and health's, so generic tools can list and call the services.

mod convert;
pub(crate) mod daemon;
pub(crate) mod health;
pub(crate) mod relay;

use axum::{Router, body::Body, http::Request};
use mlx_sidecar_proto::{
    FILE_DESCRIPTOR_SET,
    v1::{daemon_server::DaemonServer, inference_server::InferenceServer},
};

use crate::ServeError;

/// The gRPC services as one router; unknown methods get `UNIMPLEMENTED`.
pub(crate) fn routes<H>(
    relay: relay::Relay,
    daemon: daemon::DaemonService,
    health: H,
) -> Result<Router, ServeError>
where
    H: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
        + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    H::Response: axum::response::IntoResponse,
    H::Future: Send + 'static,
{
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let routes = tonic::service::Routes::new(InferenceServer::new(relay))
        .add_service(DaemonServer::new(daemon))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .prepare();
    Ok(routes
        .into_axum_router()
        .fallback(|_: Request<Body>| async {
            tonic::Status::unimplemented("no such gRPC method on this daemon").into_http::<Body>()
        }))
}
