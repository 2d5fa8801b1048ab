//! The request body limit: bodies over [`crate::Limits::max_body_bytes`] get 413 in
//! OpenAI's shape, and the client gets to read it.
//!
//! tower-http's `RequestBodyLimitLayer` answers 413 at once and leaves the body unread;
//! hyper then closes the connection while the client is still sending, and a client
//! without `Expect: 100-continue` (reqwest, httpx, the `openai` package) sees a broken
//! pipe or a reset instead of the 413. So this middleware reads the body itself: within
//! the limit it is handed on; over it, the rest is read and thrown away (nothing is kept,
//! as nginx's lingering close does) up to [`DRAIN_CAP`] bytes, then 413 with
//! `Connection: close`. A `Content-Length` beyond the cap is refused without reading. A
//! body that stalls longer than [`crate::Limits::stall_timeout`] between two pieces gets
//! 408.

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;

use crate::{metrics::Api, openai::error::ApiError, state::AppState};

/// The most bytes of an oversized body read (and discarded) so that the client can read
/// the 413; beyond it the connection is closed on a client still sending.
pub(crate) const DRAIN_CAP: usize = 64 * 1024 * 1024;

/// See the [module docs](self).
pub(crate) async fn limit_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.limits().max_body_bytes;
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let cap = DRAIN_CAP.max(limit);
    if declared.is_some_and(|n| n > cap) {
        return too_large(&state);
    }
    let mut over = declared.is_some_and(|n| n > limit);
    let mut kept = Vec::new();
    let mut seen = 0usize;
    let mut frames = body.into_data_stream();
    let stall = state.limits().stall_timeout;
    loop {
        let frame = match tokio::time::timeout(stall, frames.next()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return ApiError::for_status(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("The request body stalled for more than {stall:?}."),
                )
                .into_response();
            }
        };
        let chunk = match frame {
            Ok(chunk) => chunk,
            Err(e) => {
                return ApiError::invalid_request(
                    format!("Could not read the request body: {e}"),
                    None,
                )
                .into_response();
            }
        };
        seen += chunk.len();
        if seen > cap {
            over = true;
            break;
        }
        if seen > limit {
            over = true;
            kept = Vec::new();
        } else if !over {
            kept.extend_from_slice(&chunk);
        }
    }
    if over {
        return too_large(&state);
    }
    let request = Request::from_parts(parts, Body::from(Bytes::from(kept)));
    next.run(request).await
}

fn too_large(state: &AppState) -> Response {
    state
        .metrics()
        .record_error(Api::Http, tonic::Code::ResourceExhausted);
    let mut response = ApiError::payload_too_large(state.limits().max_body_bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
