//! Talking to a worker below the typed client: a tonic channel to its socket, the generated
//! client on it (to send wire messages the typed client never would), raw bytes as a
//! request, and the worker's own health answer.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use mlx_sidecar_proto::v1::inference_client::InferenceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A tonic channel to the worker listening on `path` (no supervisor in between).
pub fn uds_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://worker.sock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

/// The generated client on that channel (sends exactly the wire message given).
pub fn raw_client(path: &Path) -> InferenceClient<Channel> {
    InferenceClient::new(uds_channel(path))
}

/// The worker's own health answer for the inference service.
pub async fn worker_health(path: &Path) -> Result<i32, tonic::Status> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(uds_channel(path));
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "mlx_sidecar.v1.Inference".into(),
    });
    request.set_timeout(Duration::from_secs(2));
    Ok(client.check(request).await?.into_inner().status)
}

/// Sends raw bytes as the request of `method` (e.g. `Tokenize`) and returns the raw
/// response messages, or the status.
pub async fn raw_call(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
    streaming: bool,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = format!("/mlx_sidecar.v1.Inference/{method}")
        .parse()
        .map_err(|_| tonic::Status::internal("bad path"))?;
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(30));
    if streaming {
        let mut stream = grpc
            .server_streaming(request, path, BytesCodec)
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(message) = stream.message().await? {
            out.push(message);
        }
        Ok(out)
    } else {
        Ok(vec![
            grpc.unary(request, path, BytesCodec).await?.into_inner(),
        ])
    }
}

/// A codec that passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}
