//! `mlx_sidecar.v1.Inference`, relayed to the supervised worker through the library's
//! [`Client`]: the library waits for a ready worker and retries a generation until its
//! first output (a restart before the first token is invisible to remote callers too),
//! the caller's `grpc-timeout` becomes the library deadline, and a caller that goes away
//! drops the library stream, which cancels the request in the worker. Each generation is
//! recorded through `metrics.start(Api::Grpc)`, the same [`crate::metrics::RequestObserver`]
//! the HTTP routes use, so both fronts count (and the `Status` rpc reports) the same way.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use mlx_sidecar::{Client, GenerateEvent};
use mlx_sidecar_proto::v1 as pb;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::convert;
use crate::{metrics::Api, state::AppState};

/// The relay; see the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    pub(crate) state: AppState,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

impl Relay {
    /// The client for one call, with the caller's deadline for unary calls.
    fn client_for(&self, metadata: &MetadataMap) -> Client {
        let client = self.state.client().clone();
        match grpc_timeout(metadata) {
            Some(timeout) => client.with_timeout(timeout),
            None => client,
        }
    }
}

#[tonic::async_trait]
impl pb::inference_server::Inference for Relay {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let mut generate = convert::generate_request(request.into_inner())?;
        if let Some(timeout) = timeout {
            generate = generate.deadline(timeout);
        }
        let observer = self.state.metrics().start(Api::Grpc);
        let stream = match self.state.client().generate(generate).await {
            Ok(stream) => stream,
            Err(e) => {
                observer.on_error(e.code());
                return Err(convert::status(e));
            }
        };
        // Dropped with the stream: a caller who goes away is counted as cancelled.
        let mut observer = Some(observer);
        let events = stream.map(move |event| {
            match &event {
                Ok(GenerateEvent::Token { token_ids, .. }) => {
                    if let Some(observer) = &mut observer {
                        observer.on_output(token_ids.len());
                    }
                }
                Ok(GenerateEvent::Finished(finished)) => {
                    if let Some(observer) = observer.take() {
                        observer.on_finished(finished);
                    }
                }
                Err(e) => {
                    if let Some(observer) = observer.take() {
                        observer.on_error(e.code());
                    }
                }
            }
            event
                .map(convert::generate_response)
                .map_err(convert::status)
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let client = self.client_for(request.metadata());
        let tokenize = convert::tokenize_request(request.into_inner())?;
        let tokenized = client.tokenize(tokenize).await.map_err(convert::status)?;
        Ok(Response::new(pb::TokenizeResponse {
            ids: tokenized.ids,
            text: tokenized.text,
        }))
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let client = self.client_for(request.metadata());
        let pb::DetokenizeRequest {
            ids,
            skip_special_tokens,
        } = request.into_inner();
        let text = client
            .detokenize(ids, skip_special_tokens)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::DetokenizeResponse { text }))
    }

    async fn model_info(
        &self,
        request: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        let client = self.client_for(request.metadata());
        let info = client.model_info().await.map_err(convert::status)?;
        Ok(Response::new(convert::model_info(info)))
    }
}

/// The call's deadline from its `grpc-timeout` header: digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), as the gRPC over HTTP/2 spec defines it.
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_spec() {
        let parse = |v: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", v.parse().expect("ascii"));
            grpc_timeout(&metadata)
        };
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
