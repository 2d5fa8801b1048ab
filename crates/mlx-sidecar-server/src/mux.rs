//! One service per listener for both protocols: requests with `content-type:
//! application/grpc*` go to the tonic routes, everything else to the axum HTTP router
//! (the sshx-server pattern). [`serve`] runs it with `axum::serve`,
//! which speaks HTTP/1.1 and HTTP/2 without TLS (h2c, as gRPC clients use), on a Unix or
//! TCP listener until told to stop.
//!
//! Layers, outside in: the API key check (TCP listeners with a key, [`crate::auth`]), then
//! the drain's request count and refusal ([`crate::drain`]), then the steering.

use std::future::Future;

use axum::{
    Router,
    body::Body,
    http::{Request, header},
};
use tower::ServiceExt;

use crate::{
    ServeError,
    auth::{ApiKey, RequireApiKeyLayer},
    drain::DrainLayer,
    listen::Bound,
    state::AppState,
};

/// Whether `request` is a gRPC call (`content-type: application/grpc`, `+proto`, ...).
pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The router of one listener: gRPC and HTTP steered by content type, the drain layer,
/// and the key check when `key` is given (health probes exempt with `open_probes`).
pub(crate) fn service(
    http: Router,
    grpc: Router,
    state: &AppState,
    key: Option<ApiKey>,
    open_probes: bool,
) -> Router {
    // `tower::steer::Steer` would do, but it is not `Sync` (it holds a `PhantomData` of
    // the request), which axum requires.
    let steer = tower::service_fn(move |request: Request<Body>| {
        let target = if is_grpc(&request) {
            grpc.clone()
        } else {
            http.clone()
        };
        target.oneshot(request)
    });
    let router = Router::new()
        .fallback_service(steer)
        .layer(DrainLayer::new(state.clone()));
    match key {
        Some(key) => router.layer(RequireApiKeyLayer::new(
            key,
            state.metrics().clone(),
            open_probes,
        )),
        None => router,
    }
}

/// Serves `router` on `listener` until `stop` resolves; then stops accepting and waits
/// for open connections to finish (bounded by the caller).
pub(crate) async fn serve(
    listener: Bound,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let name = listener.info().to_string();
    let served = match listener {
        Bound::Unix { listener, .. } => {
            axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(stop)
                .await
        }
        Bound::Tcp { listener, .. } => {
            axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(stop)
                .await
        }
    };
    served.map_err(|source| ServeError::Serve {
        listener: name,
        source,
    })
}
