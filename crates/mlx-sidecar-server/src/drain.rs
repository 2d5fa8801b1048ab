//! Shutdown without losing a request, the same way for both protocols: [`Drain`] knows
//! whether the daemon is draining and how many inference requests are in flight;
//! [`DrainLayer`] (in front of the steering, see [`crate::mux`]) keeps that count and, once
//! draining, refuses new inference requests with a retryable error: gRPC `UNAVAILABLE`, or
//! HTTP 503 with `Retry-After` and an OpenAI error body ([`ApiError::unavailable`]),
//! counted in `request_errors_total{code="unavailable"}`.
//!
//! An inference request is a call of `mlx_sidecar.v1.Inference` or an HTTP `POST` under
//! `/v1/` (the generation routes: what needs the worker). It counts as in flight from its
//! arrival until its response body is finished or dropped (a stream that ends, or a client
//! that goes away), so a drain waits for streams too. Health, reflection, `Status`,
//! `/v1/models`, `/health`, `/ready` and `/metrics` keep answering while draining, and are
//! not counted (a health `Watch` would never end).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Method, Request, Response},
    response::IntoResponse,
};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, Ready, ready};
use http_body::{Frame, SizeHint};
use tokio::sync::watch;
use tower::{Layer, Service};

use crate::{metrics::Api, mux::is_grpc, openai::error::ApiError, state::AppState};

/// The gRPC path prefix of the relayed inference service.
const INFERENCE_PREFIX: &str = "/mlx_sidecar.v1.Inference/";
/// The path prefix of the OpenAI-compatible routes.
const OPENAI_PREFIX: &str = "/v1/";

/// Whether the daemon drains, and its inference requests in flight. Shared as an `Arc`.
#[derive(Debug)]
pub(crate) struct Drain {
    draining: watch::Sender<bool>,
    in_flight: watch::Sender<usize>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: watch::channel(false).0,
            in_flight: watch::channel(0).0,
        }
    }
}

impl Drain {
    /// Starts draining: new inference requests are refused from now on.
    pub(crate) fn start(&self) {
        self.draining.send_replace(true);
    }

    /// Whether the daemon drains.
    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Inference requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Waits until no inference request is in flight, at most `grace`; returns how many
    /// were still running when it gave up (0 when all finished).
    pub(crate) async fn wait_idle(&self, grace: Duration) -> usize {
        let mut in_flight = self.in_flight.subscribe();
        let _ = tokio::time::timeout(grace, in_flight.wait_for(|n| *n == 0)).await;
        self.in_flight()
    }

    /// Counts one request in flight until the guard is dropped.
    pub(crate) fn track(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.send_modify(|n| *n += 1);
        InFlightGuard {
            drain: self.clone(),
        }
    }
}

/// One request in flight; dropping it ends the count.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    drain: Arc<Drain>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.drain
            .in_flight
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Counts inference requests and refuses new ones while draining; see the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct DrainLayer {
    state: AppState,
}

impl DrainLayer {
    /// A layer reporting to the state's [`Drain`] and metrics.
    pub(crate) fn new(state: AppState) -> Self {
        DrainLayer { state }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`DrainLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct DrainService<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request<Body>> for DrainService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        BoxFuture<'static, Result<Response<Body>, Infallible>>,
        Ready<Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !is_inference(&request) {
            return Either::Left(Box::pin(self.inner.call(request)));
        }
        let drain = self.state.drain();
        if drain.is_draining() {
            return Either::Right(ready(Ok(self.refusal(is_grpc(&request)))));
        }
        let guard = drain.track();
        let response = self.inner.call(request);
        Either::Left(Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        }))
    }
}

/// Whether `request` needs the worker: an `Inference` call, or a generation route.
fn is_inference<B>(request: &Request<B>) -> bool {
    let path = request.uri().path();
    path.starts_with(INFERENCE_PREFIX)
        || (request.method() == Method::POST && path.starts_with(OPENAI_PREFIX))
}

impl<S> DrainService<S> {
    /// The answer to an inference request that arrives while draining.
    fn refusal(&self, grpc: bool) -> Response<Body> {
        let message = "the daemon is shutting down; retry on another or after it restarts";
        let api = if grpc { Api::Grpc } else { Api::Http };
        self.state
            .metrics()
            .record_error(api, tonic::Code::Unavailable);
        if grpc {
            return tonic::Status::unavailable(message).into_http();
        }
        ApiError::unavailable(message, self.state.limits().retry_after).into_response()
    }
}

/// A response body that holds its request's [`InFlightGuard`] until it is done or dropped.
struct GuardedBody {
    inner: Body,
    _guard: InFlightGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
