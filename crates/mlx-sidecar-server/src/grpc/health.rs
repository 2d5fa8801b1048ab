//! `grpc.health.v1` of the daemon: `SERVING` for the whole server (`""`) and for
//! `mlx_sidecar.v1.Inference` and `mlx_sidecar.v1.Daemon` only while a worker is ready
//! and the daemon is not draining; `NOT_SERVING` otherwise (also before the first worker
//! is ready). [`crate::worker`] decides; this module only publishes.

use tonic_health::{ServingStatus, server::HealthReporter};

/// The service names whose health the daemon reports.
pub(crate) const SERVICES: [&str; 3] = ["", "mlx_sidecar.v1.Inference", "mlx_sidecar.v1.Daemon"];

/// Publishes the daemon's health to `grpc.health.v1` callers.
#[derive(Clone)]
pub(crate) struct HealthPublisher {
    reporter: HealthReporter,
}

impl HealthPublisher {
    /// The publisher and the health service it feeds, starting at `NOT_SERVING`.
    pub(crate) async fn new() -> (
        HealthPublisher,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let publisher = HealthPublisher { reporter };
        publisher.set(false).await;
        (publisher, service)
    }

    /// Sets every reported service to `SERVING` or `NOT_SERVING`.
    pub(crate) async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in SERVICES {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Forgets every service, which ends the `Watch` streams (they would otherwise keep
    /// their connections open past the shutdown).
    pub(crate) async fn close(&self) {
        let mut reporter = self.reporter.clone();
        for name in SERVICES {
            reporter.clear_service_status(name).await;
        }
    }
}
