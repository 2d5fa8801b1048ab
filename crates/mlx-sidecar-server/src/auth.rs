//! The API key of TCP listeners, and the tower layer that checks it.
//!
//! With an API key, every request on a TCP listener must carry `authorization: Bearer KEY`
//! (an HTTP header, which is also how gRPC sends the metadata). The presented key and the
//! configured one are both hashed with SHA-256 and the digests compared in constant time
//! (`subtle`), so neither the key's content nor its length shows in the timing. A request
//! without the right key gets nothing but the refusal: HTTP 401 with
//! `WWW-Authenticate: Bearer` and an OpenAI-shaped error body ([`ApiError::unauthorized`]),
//! or for gRPC (`content-type: application/grpc*`) a trailers-only `UNAUTHENTICATED`
//! (status 16); either is counted in `request_errors_total{code="unauthenticated"}`.
//!
//! With `open_probes` ([`crate::ServeConfig::open_probes`]) the health probes pass without
//! the key: `GET /health`, `GET /ready` and the gRPC `grpc.health.v1.Health/Check`; they
//! tell only whether the daemon serves.
//!
//! The Unix socket needs no key: its folder is 0700 and the socket 0600, so only the
//! daemon's own user can connect (see `crate::listen`).

use std::{
    convert::Infallible,
    path::Path,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{Request, Response, header},
    response::IntoResponse,
};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::{
    ServeError,
    metrics::{Api, Metrics},
    mux::is_grpc,
    openai::error::ApiError,
};

/// An API key, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// A key from its text (surrounding whitespace removed); `None` when that leaves nothing.
    pub fn new(key: &str) -> Option<Self> {
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// Reads the key from `path` (the whole file, trimmed). An empty file is refused: it
    /// would make every TCP client's empty key valid.
    pub fn from_file(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::ApiKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        ApiKey::new(&text).ok_or_else(|| ServeError::ApiKey {
            path: path.to_path_buf(),
            reason: "the file is empty".to_owned(),
        })
    }

    /// Whether `presented` is this key, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.digest.ct_eq(&digest))
    }

    /// Whether `request` carries `authorization: Bearer KEY` with this key.
    fn authorizes<B>(&self, request: &Request<B>) -> bool {
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let scheme = b"bearer ";
        if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return false;
        }
        self.matches(value[scheme.len()..].trim_ascii())
    }
}

/// Requires the API key on every request of the wrapped service; see the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct RequireApiKeyLayer {
    key: Arc<ApiKey>,
    metrics: Metrics,
    open_probes: bool,
}

impl RequireApiKeyLayer {
    /// Checks requests against `key`, counting refusals in `metrics`; with `open_probes`
    /// the health probes pass without it.
    pub(crate) fn new(key: ApiKey, metrics: Metrics, open_probes: bool) -> Self {
        RequireApiKeyLayer {
            key: Arc::new(key),
            metrics,
            open_probes,
        }
    }
}

impl<S> Layer<S> for RequireApiKeyLayer {
    type Service = RequireApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireApiKey {
            inner,
            key: self.key.clone(),
            metrics: self.metrics.clone(),
            open_probes: self.open_probes,
        }
    }
}

/// The service [`RequireApiKeyLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct RequireApiKey<S> {
    inner: S,
    key: Arc<ApiKey>,
    metrics: Metrics,
    open_probes: bool,
}

impl<S> Service<Request<Body>> for RequireApiKey<S>
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
        if (self.open_probes && is_probe(&request)) || self.key.authorizes(&request) {
            Either::Left(Box::pin(self.inner.call(request)))
        } else {
            let grpc = is_grpc(&request);
            let api = if grpc { Api::Grpc } else { Api::Http };
            self.metrics.record_error(api, tonic::Code::Unauthenticated);
            Either::Right(ready(Ok(unauthorized(grpc))))
        }
    }
}

/// Whether `request` is a health probe: `GET /health`, `GET /ready`, or the gRPC health
/// check (not `Watch`, which would hold a stream open without the key).
fn is_probe<B>(request: &Request<B>) -> bool {
    let path = request.uri().path();
    if is_grpc(request) {
        path == "/grpc.health.v1.Health/Check"
    } else {
        request.method() == axum::http::Method::GET && matches!(path, "/health" | "/ready")
    }
}

/// The refusal: trailers-only `UNAUTHENTICATED` for gRPC, else 401 with an OpenAI error body.
fn unauthorized(grpc: bool) -> Response<Body> {
    if grpc {
        return tonic::Status::unauthenticated("missing or wrong API key").into_http();
    }
    ApiError::unauthorized().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri("/v1/models");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn only_the_exact_key_as_bearer_passes() {
        let key = ApiKey::new(" s3cret\n").expect("key");
        assert!(key.authorizes(&request(Some("Bearer s3cret"))));
        assert!(key.authorizes(&request(Some("bearer s3cret"))));
        assert!(!key.authorizes(&request(Some("Bearer s3cre"))));
        assert!(!key.authorizes(&request(Some("Bearer s3cretx"))));
        assert!(!key.authorizes(&request(Some("Basic s3cret"))));
        assert!(!key.authorizes(&request(Some("s3cret"))));
        assert!(!key.authorizes(&request(None)));
        assert!(ApiKey::new(" \n").is_none());
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn only_health_probes_are_probes() {
        let get = |path: &str| Request::builder().uri(path).body(()).expect("request");
        let grpc = |path: &str| {
            Request::builder()
                .method("POST")
                .uri(path)
                .header(header::CONTENT_TYPE, "application/grpc")
                .body(())
                .expect("request")
        };
        assert!(is_probe(&get("/ready")));
        assert!(is_probe(&get("/health")));
        assert!(is_probe(&grpc("/grpc.health.v1.Health/Check")));
        assert!(!is_probe(&grpc("/grpc.health.v1.Health/Watch")));
        assert!(!is_probe(&grpc("/mlx_sidecar.v1.Daemon/Status")));
        assert!(!is_probe(&get("/metrics")));
        assert!(!is_probe(&get("/v1/models")));
        let post_ready = Request::builder()
            .method("POST")
            .uri("/ready")
            .body(())
            .expect("request");
        assert!(!is_probe(&post_ready));
    }

    #[test]
    fn an_empty_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(ApiKey::from_file(&empty).is_err());
        let good = dir.path().join("key");
        std::fs::write(&good, "k\n").expect("write");
        assert!(ApiKey::from_file(&good).expect("key").matches(b"k"));
        assert!(ApiKey::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn refusals_say_nothing_but_unauthenticated() {
        let grpc = unauthorized(true);
        assert_eq!(grpc.status(), axum::http::StatusCode::OK);
        assert_eq!(
            grpc.headers()
                .get("grpc-status")
                .map(axum::http::HeaderValue::as_bytes),
            Some(&b"16"[..])
        );
        let http = unauthorized(false);
        assert_eq!(http.status(), axum::http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            http.headers()
                .get(header::WWW_AUTHENTICATE)
                .map(axum::http::HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
    }
}
