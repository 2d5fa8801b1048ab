//! `Client::connect` without a supervisor: endpoints given as strings, the real worker
//! reached through a `unix:` endpoint, and the API key over TCP.
//!
//! The worker binds a Unix socket only, so the key is checked by a small tonic server on
//! TCP in this file (a test double: the daemon that checks keys for real is tested in its
//! own crate). It answers every `Inference` call and `grpc.health.v1` check, but only with
//! the right `authorization` metadata, and records what each call carried.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use futures_util::{Stream, stream};
use mlx_sidecar::{
    ChatMessage, Client, Endpoint, Error, GenerateRequest, HealthStatus, TokenizeRequest,
};
use mlx_sidecar_proto::v1::{self as pb, inference_server};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, service::Interceptor, transport::Server};

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_endpoint_reaches_the_real_worker() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let socket = supervisor.socket_path().to_path_buf();
    let endpoint: Endpoint = format!("unix:{}", socket.display()).parse().expect("parse");
    assert_eq!(endpoint, Endpoint::Unix(socket.clone()));
    let client = Client::connect(endpoint).await.expect("connect");
    assert_eq!(
        client.health().await.expect("health"),
        HealthStatus::Serving
    );
    let completion = support::complete(
        &client,
        GenerateRequest::chat(vec![ChatMessage::user("hi")]).max_tokens(4),
    )
    .await;
    assert_eq!(completion.token_ids.len(), 4);
    // A plain path is a Unix endpoint too.
    let by_path = Client::connect(socket.display().to_string().parse().expect("parse"))
        .await
        .expect("connect by path");
    assert_eq!(
        by_path.model_info().await.expect("info").worker_pid,
        supervisor.worker_pid().expect("pid")
    );
    supervisor.shutdown().await.expect("shutdown");
}

const KEY: &str = "test-key-0123";

/// What the `authorization` metadata of each call was.
type Seen = Arc<Mutex<Vec<(&'static str, Option<String>)>>>;

/// Records each call's `authorization` and lets through only `Bearer KEY`.
#[derive(Clone)]
struct CheckKey {
    seen: Seen,
    call: &'static str,
}

impl Interceptor for CheckKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ok = value.as_deref() == Some(&format!("Bearer {KEY}"));
        self.seen.lock().expect("lock").push((self.call, value));
        if ok {
            Ok(request)
        } else {
            Err(Status::unauthenticated(""))
        }
    }
}

/// Answers every call with a fixed, recognizable reply.
struct FixedAnswers;

#[tonic::async_trait]
impl inference_server::Inference for FixedAnswers {
    type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

    async fn generate(
        &self,
        _: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let chunk = pb::GenerateResponse {
            event: Some(pb::generate_response::Event::Chunk(pb::GenerateChunk {
                text: "ok".into(),
                token_ids: vec![7],
                logprobs: vec![],
            })),
        };
        let finished = pb::GenerateResponse {
            event: Some(pb::generate_response::Event::Finished(
                pb::GenerateFinished {
                    finish_reason: pb::FinishReason::Length as i32,
                    ..Default::default()
                },
            )),
        };
        Ok(Response::new(Box::pin(stream::iter([
            Ok(chunk),
            Ok(finished),
        ]))))
    }

    async fn tokenize(
        &self,
        _: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        Ok(Response::new(pb::TokenizeResponse {
            ids: vec![1, 2],
            text: "ab".into(),
        }))
    }

    async fn detokenize(
        &self,
        _: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        Ok(Response::new(pb::DetokenizeResponse { text: "ab".into() }))
    }

    async fn model_info(
        &self,
        _: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        Ok(Response::new(pb::ModelInfoResponse {
            model_id: "double".into(),
            ..Default::default()
        }))
    }
}

/// Starts the key-checking server on a loopback port; returns its address and what it saw.
async fn key_checking_server() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let seen = Seen::default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<inference_server::InferenceServer<FixedAnswers>>()
        .await;
    let check = |call| CheckKey {
        seen: seen.clone(),
        call,
    };
    let router = Server::builder()
        .add_service(inference_server::InferenceServer::with_interceptor(
            FixedAnswers,
            check("inference"),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            health,
            check("health"),
        ));
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (address, seen)
}

#[tokio::test]
async fn every_call_over_tcp_carries_the_api_key() {
    let (address, seen) = key_checking_server().await;
    let endpoint: Endpoint = format!("http://{address}").parse().expect("parse");
    let client = Client::connect(endpoint).await.expect("connect");

    let without = client.tokenize("ab").await.expect_err("no key");
    assert_eq!(without.code(), tonic::Code::Unauthenticated, "{without:?}");
    let unhealthy = client.health().await.expect_err("no key: no health");
    assert_eq!(
        unhealthy.code(),
        tonic::Code::Unauthenticated,
        "{unhealthy:?}"
    );
    let wrong = client
        .clone()
        .with_api_key("not-the-key")
        .expect("valid key");
    let refused = wrong.model_info().await.expect_err("wrong key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    seen.lock().expect("lock").clear();

    // `host:port` without the scheme is the same endpoint.
    let client = Client::connect(address.parse().expect("parse"))
        .await
        .expect("connect")
        .with_api_key(KEY)
        .expect("valid key");
    let completion = support::complete(&client, GenerateRequest::text("x")).await;
    assert_eq!(completion.text, "ok");
    assert_eq!(
        client
            .tokenize(TokenizeRequest::text("ab"))
            .await
            .expect("tokenize")
            .ids,
        [1, 2]
    );
    assert_eq!(
        client
            .detokenize(vec![1, 2], false)
            .await
            .expect("detokenize"),
        "ab"
    );
    assert_eq!(client.model_info().await.expect("info").model_id, "double");
    assert_eq!(
        client.health().await.expect("health"),
        HealthStatus::Serving
    );

    let seen = seen.lock().expect("lock").clone();
    let bearer = Some(format!("Bearer {KEY}"));
    assert_eq!(
        seen,
        [
            ("inference", bearer.clone()),
            ("inference", bearer.clone()),
            ("inference", bearer.clone()),
            ("inference", bearer.clone()),
            ("health", bearer),
        ]
    );
}

#[tokio::test]
async fn nothing_listening_fails_at_connect() {
    // A port that was just free: bind, note it, close.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    };
    let err = Client::connect(Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port,
    })
    .await
    .expect_err("nothing listens");
    assert!(
        matches!(&err, Error::Connect { endpoint, .. } if endpoint.ends_with(&port.to_string())),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let sandbox = tempfile::tempdir().expect("tempdir");
    let missing = Client::connect(Endpoint::Unix(sandbox.path().join("none.sock")))
        .await
        .expect_err("no socket");
    assert!(matches!(missing, Error::Socket { .. }), "{missing:?}");
}
