//! The HTTP side of the daemon: [`router`] (the OpenAI routes, `GET /metrics`,
//! `GET /health`, `GET /ready`, with body limit, timeouts and error shaping) over the
//! shared [`AppState`]. `GET /metrics` answers OpenMetrics to a scraper that
//! asks for it (`Accept: application/openmetrics-text`, as Prometheus does) and
//! Prometheus' classic text format otherwise.
//!
//! Layers, outermost first: every error response that a handler did not build (a 413 from
//! the body limit, a timeout, an unknown route, a wrong method) is rewritten into OpenAI's
//! error shape; then tracing; the request timeout; the body limit and body stall timeout
//! (`body_limit`: a 413 the client can read).
//! While the daemon drains, the drain layer in front of both protocols
//! ([`crate::drain`]) refuses the generation routes with 503 and `Retry-After`; `/ready`
//! answers 503 then too; everything else keeps working.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    timeout::TimeoutLayer,
    trace::{DefaultOnFailure, TraceLayer},
};

use crate::{
    metrics::Metrics,
    openai::{self, error::ApiError},
    state::AppState,
};

/// The HTTP routes; see the [module docs](self).
pub(crate) fn router(state: AppState) -> Router {
    let limits = state.limits().clone();
    Router::new()
        .merge(openai::generation_routes())
        .merge(openai::model_routes())
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(unknown_route)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(state.clone(), shape_errors))
                // Error responses are answers (a 503 while the worker starts), not faults of the
                // daemon: they go to the debug log; faults are logged where they happen.
                .layer(
                    TraceLayer::new_for_http()
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                )
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::GATEWAY_TIMEOUT,
                    limits.request_timeout + Duration::from_secs(5),
                ))
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    crate::body_limit::limit_body,
                ))
                .layer(DefaultBodyLimit::disable()),
        )
        .with_state(state)
}

/// `GET /metrics`: OpenMetrics text when the scraper asks for it (Prometheus does), else
/// Prometheus' classic text format.
async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    state.metrics().set_replicas(&state.replicas());
    state
        .metrics()
        .set_shadow_prefills(state.client().shadow_prefills());
    let (content_type, text) = if open_metrics {
        (Metrics::CONTENT_TYPE, state.metrics().encode())
    } else {
        (
            Metrics::PROMETHEUS_CONTENT_TYPE,
            state.metrics().encode_prometheus(),
        )
    };
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => ApiError::internal(format!("cannot encode the metrics: {e}")).into_response(),
    }
}

/// `GET /health`: 200 while the daemon runs.
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: 200 while a worker is ready and the daemon is not draining, else 503.
async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        let why = if state.drain().is_draining() {
            "the daemon is shutting down"
        } else {
            "no worker is ready"
        };
        ApiError::unavailable(why, state.limits().retry_after).into_response()
    }
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_route(method.as_str(), uri.path())
}

/// Rewrites error responses that no handler shaped (see the [module docs](self)).
async fn shape_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response
            .extensions()
            .get::<openai::error::Shaped>()
            .is_some()
    {
        return response;
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(state.limits().max_body_bytes),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => {
            ApiError::timeout("the request took longer than the daemon's request timeout")
        }
        StatusCode::NOT_FOUND => ApiError::unknown_route(method.as_str(), &path),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::for_status(status, format!("{method} is not allowed on {path}."))
        }
        other => ApiError::for_status(
            other,
            other
                .canonical_reason()
                .unwrap_or("the request failed")
                .to_owned(),
        ),
    };
    let mut shaped = error.into_response();
    // Keep headers such as `Allow` that the original response set.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    shaped
}
