//! The gRPC health check of a worker: `grpc.health.v1.Health/Check` for the service
//! `mlx_sidecar.v1.Inference`, with a deadline. The supervisor probes with it; a client's
//! [`crate::Client::health`] asks with it.

use std::time::Duration;

use tonic::{metadata::AsciiMetadataValue, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The service whose health the supervisor checks.
pub(crate) const SERVICE: &str = "mlx_sidecar.v1.Inference";

/// Asks the worker once; `Ok(())` only for `SERVING`, else why not.
pub(crate) async fn probe(channel: &Channel, timeout: Duration) -> Result<(), String> {
    match check(channel, timeout, None).await {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("health is {}", other.as_str_name())),
        Err(status) => Err(format!(
            "health check failed: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// One health check with a deadline (sent as `grpc-timeout` and enforced locally), with
/// the `authorization` metadata a daemon's TCP listener may require. A failure keeps its
/// gRPC code (a missing deadline answer is `DEADLINE_EXCEEDED`).
pub(crate) async fn check(
    channel: &Channel,
    timeout: Duration,
    authorization: Option<&AsciiMetadataValue>,
) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: SERVICE.to_owned(),
    });
    request.set_timeout(timeout);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert(super::transport::AUTHORIZATION, value.clone());
    }
    match tokio::time::timeout(timeout, client.check(request)).await {
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no health answer within {timeout:?}"
        ))),
        Ok(Err(status)) => Err(status),
        Ok(Ok(response)) => {
            Ok(ServingStatus::try_from(response.into_inner().status)
                .unwrap_or(ServingStatus::Unknown))
        }
    }
}
