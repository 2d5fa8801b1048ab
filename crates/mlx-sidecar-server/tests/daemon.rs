//! The daemon for real: `run()` in this process with a real supervised worker on the tiny
//! model, called over its Unix socket and TCP by the library's client, the generated gRPC
//! clients (tonic-health's, tonic-reflection's) and a plain HTTP/1 client. Each test has
//! its own temporary folder, socket and worker.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use mlx_sidecar::{Client, GenerateRequest, TokenizeRequest};
use mlx_sidecar_proto::v1::{self as pb, WorkerState};
use mlx_sidecar_server::{ApiKey, ServeError, run};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use support::{
    Daemon, READY,
    client_ext::{DaemonConnection, DaemonEndpoint},
    config, http_get, http_post,
};

fn text_request(max_tokens: u32) -> GenerateRequest {
    GenerateRequest::text("The daemon")
        .max_tokens(max_tokens)
        .ignore_eos(true)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_service_on_the_unix_socket_and_refuses_a_second_daemon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let socket = config.socket_path.clone().expect("socket");
    // A stale socket from a dead daemon: nothing answers on it.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(socket.parent().expect("parent"))
        .expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let daemon = Daemon::start(config.clone()).await;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().expect("parent")), 0o700);

    // The library's own client, over the daemon's socket.
    let client = Client::connect_uds(&socket).await.expect("library client");
    let completion = client
        .generate(text_request(8))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(completion.finished.usage.completion_tokens, 8);
    assert!(!completion.text.is_empty());
    let tokenized = client
        .tokenize(TokenizeRequest::text("hello"))
        .await
        .expect("tokenize");
    assert_eq!(
        client
            .detokenize(tokenized.ids.clone(), true)
            .await
            .expect("detokenize"),
        "hello"
    );
    let info = client.model_info().await.expect("model info");
    // The relayed generation was counted like an HTTP one, under api="grpc".
    let (code, _, metrics) = http_get(
        UnixStream::connect(&socket).await.expect("connect"),
        "/metrics",
        None,
    )
    .await;
    assert_eq!(code, 200);
    for (series, value) in [
        (
            "mlx_sidecar_requests_total{api=\"grpc\",finish_reason=\"length\"}",
            1.0,
        ),
        ("mlx_sidecar_generation_tokens_total{api=\"grpc\"}", 8.0),
        (
            "mlx_sidecar_time_to_first_token_seconds_count{api=\"grpc\"}",
            1.0,
        ),
        ("mlx_sidecar_requests_running{api=\"grpc\"}", 0.0),
        (
            "mlx_sidecar_requests_total{api=\"http\",finish_reason=\"length\"}",
            0.0,
        ),
    ] {
        assert_eq!(
            support::sample(&metrics, series),
            value,
            "{series} in {metrics}"
        );
    }

    let status = daemon.status().await;
    assert_eq!(status.worker_state(), WorkerState::Ready);
    assert_eq!(status.worker_pid, Some(info.worker_pid));
    assert_eq!(status.daemon_pid, std::process::id());
    // The library's Client::daemon_status reads the same.
    let library = client.daemon_status().await.expect("daemon_status");
    assert_eq!(library.worker_state, "ready");
    assert_eq!(library.worker_pid, Some(info.worker_pid));
    assert_eq!(library.model_id, info.model_id);
    assert_eq!(library.device, info.device);
    assert_eq!(library.daemon_pid, std::process::id());
    assert_eq!(library.listeners.len(), 1);
    assert_eq!(library.listeners[0].kind, "unix");
    assert_eq!(library.listeners[0].address, socket.display().to_string());
    assert_eq!(status.model_id, info.model_id);
    assert_eq!(status.model_path, info.model_path);
    let tiny = mlx_sidecar_testkit::tiny_model().display().to_string();
    assert_eq!(status.configured_model.as_deref(), Some(tiny.as_str()));
    assert_eq!(status.listeners.len(), 1);
    assert_eq!(status.listeners[0].kind, "unix");
    assert_eq!(status.listeners[0].address, socket.display().to_string());
    assert!(!status.draining);

    // Reflection lists every service, in both protocol versions, and serves descriptors.
    let channel = unix_channel(&socket);
    let expected = [
        "mlx_sidecar.v1.Inference",
        "mlx_sidecar.v1.Daemon",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    let services = reflection_v1_services(channel.clone()).await;
    for name in expected {
        assert!(
            services.iter().any(|s| s == name),
            "{name} missing from {services:?}"
        );
    }
    let alpha = reflection_v1alpha_services(channel.clone()).await;
    assert!(
        alpha.iter().any(|s| s == "mlx_sidecar.v1.Inference"),
        "{alpha:?}"
    );
    let files = reflection_v1_file_of(channel, "mlx_sidecar.v1.Daemon").await;
    assert!(!files.is_empty());

    // A method no service has: UNIMPLEMENTED, as gRPC servers answer.
    let mut grpc = tonic::client::Grpc::new(unix_channel(&socket));
    grpc.ready().await.expect("channel ready");
    let unknown = grpc
        .unary::<_, pb::ModelInfoResponse, _>(
            tonic::Request::new(pb::ModelInfoRequest {}),
            http::uri::PathAndQuery::from_static("/mlx_sidecar.v1.Nothing/Call"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    // The HTTP probes on the same socket.
    let (code, _, _) = http_get(
        UnixStream::connect(&socket).await.expect("connect"),
        "/ready",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (code, _, _) = http_get(
        UnixStream::connect(&socket).await.expect("connect"),
        "/health",
        None,
    )
    .await;
    assert_eq!(code, 200);

    // A second daemon on the same socket is refused, naming the path and this process.
    match run(config, std::future::pending()).await {
        Err(ServeError::AlreadyRunning { path, pid }) => {
            assert_eq!(path, socket);
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("a second daemon was not refused: {other:?}"),
    }
    assert_eq!(daemon.status().await.worker_state(), WorkerState::Ready);

    daemon.stop().await.expect("clean stop");
    assert!(!socket.exists(), "the socket is removed at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listeners_require_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = "test-key-4f1c9a";
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tell = told.clone();
    let config = config(dir.path())
        .with_listen("127.0.0.1:0".parse().expect("addr"))
        .with_api_key(ApiKey::new(key).expect("key"))
        .with_on_listening(move |names| tell.lock().expect("lock").extend_from_slice(names));
    let daemon = Daemon::start(config).await;
    let status = daemon.status().await;
    let tcp = status
        .listeners
        .iter()
        .find(|l| l.kind == "tcp")
        .expect("a TCP listener");
    assert!(tcp.requires_api_key);
    let addr = tcp.address.clone();
    // on_listening was told the port actually bound.
    assert!(
        told.lock().expect("lock").contains(&format!("tcp:{addr}")),
        "{told:?}"
    );
    let endpoint = DaemonEndpoint::Tcp(format!("http://{addr}"));

    // With the key: generation works over TCP.
    let good = DaemonConnection::connect(&endpoint, Some(key))
        .await
        .expect("connect");
    let request = pb::GenerateRequest {
        prompt: Some(pb::Prompt {
            input: Some(pb::prompt::Input::Text("over tcp".into())),
        }),
        max_tokens: Some(5),
        ..Default::default()
    };
    let mut stream = good
        .inference()
        .generate(request.clone())
        .await
        .expect("generate with the key")
        .into_inner();
    let mut tokens = 0;
    let mut finished = None;
    while let Some(message) = stream.message().await.expect("stream") {
        match message.event.expect("event") {
            pb::generate_response::Event::Chunk(chunk) => tokens += chunk.token_ids.len(),
            pb::generate_response::Event::Finished(f) => finished = Some(f),
        }
    }
    assert_eq!(tokens, 5);
    assert_eq!(
        finished.and_then(|f| f.usage).map(|u| u.completion_tokens),
        Some(5)
    );
    good.status().await.expect("status with the key");

    // Without it, or with a wrong one: UNAUTHENTICATED and nothing else.
    for wrong in [None, Some("test-key-4f1c9b"), Some("")] {
        let bad = DaemonConnection::connect(&endpoint, wrong)
            .await
            .expect("connect");
        let status = bad
            .inference()
            .generate(request.clone())
            .await
            .expect_err("generate without the key");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        let error = bad.status().await.expect_err("status without the key");
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    }

    // HTTP on TCP: 401 with a Bearer challenge and an OpenAI error body.
    for wrong in [None, Some("nope")] {
        let (code, headers, body) = http_get(
            TcpStream::connect(&addr).await.expect("tcp"),
            "/ready",
            wrong,
        )
        .await;
        assert_eq!(code, 401);
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let (code, _, _) = http_get(
        TcpStream::connect(&addr).await.expect("tcp"),
        "/ready",
        Some(key),
    )
    .await;
    assert_eq!(code, 200);
    // The Unix socket needs no key.
    let (code, _, _) = http_get(
        UnixStream::connect(&daemon.socket).await.expect("unix"),
        "/ready",
        None,
    )
    .await;
    assert_eq!(code, 200);

    daemon.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_non_loopback_address_without_a_key_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path()).with_listen("0.0.0.0:0".parse().expect("addr"));
    let socket = config.socket_path.clone().expect("socket");
    let error = run(config, std::future::pending())
        .await
        .expect_err("refused");
    assert!(
        matches!(error, ServeError::InsecureListen { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("0.0.0.0"), "{error}");
    assert!(!socket.exists(), "nothing was bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_invisible_to_callers_and_health_follows_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(config(dir.path())).await;
    let connection = daemon.connection().await;
    let mut watch = connection
        .health()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("watch").expect("first status");
    assert_eq!(first.status(), ServingStatus::Serving);
    let old_pid = daemon.status().await.worker_pid.expect("worker pid");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old_pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    // Sent right after the kill: it waits for the next worker and succeeds.
    let client = Client::connect_uds(&daemon.socket).await.expect("client");
    let completion = client
        .generate(text_request(6))
        .await
        .expect("generate across the restart")
        .collect()
        .await
        .expect("collect");
    assert_eq!(completion.finished.usage.completion_tokens, 6);

    // Health went NOT_SERVING while no worker was ready, then SERVING again.
    let mut seen = Vec::new();
    tokio::time::timeout(READY, async {
        while let Some(message) = watch.message().await.expect("watch") {
            seen.push(message.status());
            if seen.contains(&ServingStatus::NotServing)
                && seen.last() == Some(&ServingStatus::Serving)
            {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health did not go NOT_SERVING then SERVING: {seen:?}"));

    let status = daemon.status().await;
    assert_ne!(status.worker_pid, Some(old_pid));
    assert!(status.worker_pid.is_some());
    assert!(status.worker_restarts >= 1, "{status:?}");
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_requests_and_drains_the_stream_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(config(dir.path())).await;
    let socket = daemon.socket.clone();
    let worker_pid = daemon.status().await.worker_pid.expect("worker pid");

    // A caller who pauses reading: its stream stays in flight until it reads on.
    let slow = paused_reader_channel(&socket).await;
    let request = pb::GenerateRequest {
        prompt: Some(pb::Prompt {
            input: Some(pb::prompt::Input::Text("drain".into())),
        }),
        max_tokens: Some(300),
        ignore_eos: true,
        ..Default::default()
    };
    let mut stream = pb::inference_client::InferenceClient::new(slow)
        .generate(request.clone())
        .await
        .expect("generate")
        .into_inner();
    let first = stream.message().await.expect("first").expect("a message");
    assert!(matches!(
        first.event,
        Some(pb::generate_response::Event::Chunk(_))
    ));

    let mut daemon = daemon;
    let _ = daemon.stop.take().expect("stop").send(());
    // Draining: health NOT_SERVING, new inference refused as retryable, probes still answer.
    daemon.wait_health(ServingStatus::NotServing).await;
    let connection = daemon.connection().await;
    let refused = connection
        .inference()
        .generate(request)
        .await
        .expect_err("refused while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let status = connection.status().await.expect("status while draining");
    assert!(status.draining);
    assert_eq!(
        (status.requests_running, status.requests_waiting),
        (1, 0),
        "the paused stream is in flight"
    );
    let (code, headers, _) = http_get(
        UnixStream::connect(&socket).await.expect("unix"),
        "/ready",
        None,
    )
    .await;
    assert_eq!(code, 503);
    assert!(headers.contains_key("retry-after"));
    // HTTP generations are refused the same way (503, Retry-After, OpenAI's shape); the
    // model list, /health and /metrics answer on, and both refusals are counted.
    let (code, headers, body) = http_post(
        UnixStream::connect(&socket).await.expect("unix"),
        "/v1/completions",
        &serde_json::json!({"prompt": "late", "max_tokens": 2}),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"]["code"], "service_unavailable");
    for path in ["/v1/models", "/health"] {
        let (code, _, body) = http_get(
            UnixStream::connect(&socket).await.expect("unix"),
            path,
            None,
        )
        .await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (_, _, metrics) = http_get(
        UnixStream::connect(&socket).await.expect("unix"),
        "/metrics",
        None,
    )
    .await;
    for api in ["http", "grpc"] {
        let series =
            format!("mlx_sidecar_request_errors_total{{api=\"{api}\",code=\"unavailable\"}}");
        assert_eq!(
            support::sample(&metrics, &series),
            1.0,
            "{series} in {metrics}"
        );
    }
    assert!(
        !daemon.task.is_finished(),
        "run() waits for the stream in flight"
    );

    // The stream in flight runs to its end.
    let mut tokens = match first.event {
        Some(pb::generate_response::Event::Chunk(chunk)) => chunk.token_ids.len(),
        _ => 0,
    };
    let mut finished = None;
    while let Some(message) = stream
        .message()
        .await
        .expect("the stream survives the drain")
    {
        match message.event.expect("event") {
            pb::generate_response::Event::Chunk(chunk) => tokens += chunk.token_ids.len(),
            pb::generate_response::Event::Finished(f) => finished = Some(f),
        }
    }
    assert_eq!(tokens, 300);
    let finished = finished.expect("finished");
    assert_eq!(finished.finish_reason(), pb::FinishReason::Length);

    tokio::time::timeout(Duration::from_secs(30), &mut daemon.task)
        .await
        .expect("run() returns after the drain")
        .expect("no panic")
        .expect("run() returns Ok");
    assert!(!socket.exists(), "the socket is removed");
    let gone = std::fs::read_to_string(format!("/proc/{worker_pid}/stat"))
        .map_or(true, |stat| stat.contains(") Z"));
    assert!(gone, "the worker is stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(config(dir.path())).await;
    let request = pb::GenerateRequest {
        prompt: Some(pb::Prompt {
            input: Some(pb::prompt::Input::Text("gone".into())),
        }),
        max_tokens: Some(1500),
        ignore_eos: true,
        ..Default::default()
    };
    // It cannot finish by itself: the caller does not read.
    let channel = paused_reader_channel(&daemon.socket).await;
    let mut stream = pb::inference_client::InferenceClient::new(channel)
        .generate(request)
        .await
        .expect("generate")
        .into_inner();
    stream.message().await.expect("first").expect("a message");
    let status = daemon.status().await;
    assert_eq!(status.requests_running, 1, "{status:?}");
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = daemon.status().await;
        if status.requests_running == 0 && status.requests_waiting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped call is still counted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await.expect("clean stop");
}

/// A channel whose HTTP/2 windows are tiny: a stream the caller does not read stops in
/// the daemon after a few hundred bytes, until the caller reads on.
async fn paused_reader_channel(socket: &Path) -> tonic::transport::Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://daemon.sock")
        .initial_stream_window_size(Some(256))
        .initial_connection_window_size(Some(256))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .expect("channel")
}

fn unix_channel(socket: &Path) -> tonic::transport::Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://daemon.sock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        },
    ))
}

async fn reflection_v1_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn reflection_v1_file_of(channel: tonic::transport::Channel, symbol: &str) -> Vec<Vec<u8>> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    match response.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn reflection_v1alpha_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// `serve --workers 2`: `Status` and the metrics show each replica, calls spread over both,
/// and a killed replica restarts on its own while the other serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_show_each_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = support::with_tcp(config(dir.path()));
    config.supervisor = config.supervisor.with_replicas(2);
    let daemon = Daemon::start(config).await;
    let both_ready = |status: &pb::StatusResponse| {
        status.replicas.len() == 2
            && status
                .replicas
                .iter()
                .all(|r| r.state == i32::from(WorkerState::Ready) && r.worker_pid.is_some())
    };
    let deadline = tokio::time::Instant::now() + READY;
    let mut status = daemon.status().await;
    while !both_ready(&status) {
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = daemon.status().await;
    }
    let indexes: Vec<u32> = status.replicas.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [0, 1]);
    let victim = status.replicas[0].worker_pid.expect("pid");
    assert_ne!(Some(victim), status.replicas[1].worker_pid);

    // Two long streams through the daemon: one on each replica.
    let client = Client::connect_uds(&daemon.socket).await.expect("client");
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = client.generate(text_request(2000)).await.expect("generate");
        stream.next_event().await.expect("event").expect("token");
        streams.push(stream);
    }
    let loads: Vec<u32> = daemon
        .status()
        .await
        .replicas
        .iter()
        .map(|r| r.in_flight)
        .collect();
    assert_eq!(loads, [1, 1]);
    let base = daemon.base().await;
    let metrics = support::metrics_text(&base).await;
    for replica in ["0", "1"] {
        let series = |name: &str| format!("mlx_sidecar_{name}{{replica=\"{replica}\"}}");
        assert_eq!(support::sample(&metrics, &series("replica_up")), 1.0);
        assert_eq!(
            support::sample(&metrics, &series("replica_requests_in_flight")),
            1.0,
            "{metrics}"
        );
    }
    drop(streams);

    // Replica 0's worker dies: it restarts, replica 1 keeps its worker, calls keep working.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let answer = client
        .generate(text_request(4))
        .await
        .expect("generate after the kill")
        .collect()
        .await
        .expect("collect");
    assert_eq!(answer.token_ids.len(), 4);
    let deadline = tokio::time::Instant::now() + READY;
    let mut status = daemon.status().await;
    while !(both_ready(&status) && status.replicas[0].restarts == 1) {
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = daemon.status().await;
    }
    assert_ne!(status.replicas[0].worker_pid, Some(victim));
    assert_eq!(status.replicas[1].restarts, 0);
    let metrics = support::metrics_text(&base).await;
    assert_eq!(
        support::sample(
            &metrics,
            "mlx_sidecar_replica_restarts_total{replica=\"0\"}"
        ),
        1.0,
        "{metrics}"
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_is_the_deadline_in_the_daemon_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(config(dir.path())).await;
    let connection = daemon.connection().await;
    // 1500 tokens take about 2 s here; the caller allows 400 ms. The generated client only
    // sends `grpc-timeout` (it keeps no timer of its own), so the daemon must end the call.
    let mut request = tonic::Request::new(pb::GenerateRequest {
        prompt: Some(pb::Prompt {
            input: Some(pb::prompt::Input::Text("deadline".into())),
        }),
        max_tokens: Some(1500),
        ignore_eos: true,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(400));
    let sent = tokio::time::Instant::now();
    let outcome = async {
        let mut stream = connection.inference().generate(request).await?.into_inner();
        let mut tokens = 0;
        while let Some(message) = stream.message().await? {
            if let Some(pb::generate_response::Event::Chunk(chunk)) = message.event {
                tokens += chunk.token_ids.len();
            }
        }
        Ok::<usize, tonic::Status>(tokens)
    }
    .await;
    let took = sent.elapsed();
    let status = outcome.expect_err("the deadline ends the call");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        took < Duration::from_millis(1400),
        "ended at the 400 ms deadline, not by finishing: {took:?}"
    );
    // The relay dropped its stream, which cancels the generation in the worker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = daemon.status().await;
        if status.requests_running == 0 && status.requests_waiting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timed-out call is still counted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the worker serves on.
    let client = Client::connect_uds(&daemon.socket).await.expect("client");
    let done = client
        .generate(text_request(3))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(done.finished.usage.completion_tokens, 3);
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_stay_down_after_the_supervisor_gives_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = support::with_tcp(config(dir.path()));
    // No restart allowed: the first crash is past the intensity limit.
    config.supervisor.restart = mlx_sidecar::RestartPolicy {
        max_restarts: 0,
        ..mlx_sidecar_testkit::quick_restarts()
    };
    let daemon = Daemon::start(config).await;
    let base = daemon.base().await;
    let ready = || async {
        support::http()
            .get(format!("{base}/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready().await, 200);
    let pid = daemon.status().await.worker_pid.expect("worker pid");
    mlx_sidecar_testkit::signal(pid, nix::sys::signal::Signal::SIGKILL);
    mlx_sidecar_testkit::wait_until(READY, "the supervisor to give up", || async {
        daemon.status().await.worker_state() == WorkerState::GaveUp
    })
    .await;
    // It stays down: watched for 2 s, far past the policy's 50 ms restart delay.
    let watched = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watched {
        assert_eq!(daemon.health().await, Some(ServingStatus::NotServing));
        assert_eq!(ready().await, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = daemon.status().await;
    assert_eq!(status.worker_pid, None, "{status:?}");
    // Requests get a clear refusal at once rather than waiting: HTTP 503, and over gRPC
    // FAILED_PRECONDITION (UNAVAILABLE would have callers retry until their deadline).
    let response = support::http()
        .post(format!("{base}/v1/completions"))
        .json(&serde_json::json!({"prompt": "anyone?", "max_tokens": 2}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 503);
    // The worker's log lines stay in the daemon's log; callers are told where they are.
    let body: serde_json::Value = response.json().await.expect("an OpenAI error body");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("in the daemon's log"), "{body}");
    assert!(!message.contains("last log:"), "{body}");
    let client = Client::connect_uds(&daemon.socket)
        .await
        .expect("client")
        .with_generate_timeout(Duration::from_secs(60));
    let asked = tokio::time::Instant::now();
    let Err(error) = client.generate(text_request(2)).await else {
        panic!("no worker to serve it, yet generate started");
    };
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error}");
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("in the daemon's log"), "{error}");
    assert!(!error.to_string().contains("last log:"), "{error}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "refused at once, not retried: {:?}",
        asked.elapsed()
    );
    let _ = daemon.stop().await;
}

/// While its workers are still loading, `Status` names the configured model and says that
/// every replica is starting; once one is ready, the model it loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_configured_model_while_the_workers_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The workers never finish starting: the daemon stays in its starting state.
    let worker = support::tiny_worker_with(&[]).with_env("MLX_WORKER_FAULTS", "startup_hang");
    let mut config = support::config_for(worker, dir.path());
    config.supervisor = config.supervisor.with_replicas(2);
    let daemon = Daemon::start_without_waiting(config);
    let first = daemon.wait_status().await;
    let tiny = mlx_sidecar_testkit::tiny_model().display().to_string();
    assert_eq!(first.configured_model.as_deref(), Some(tiny.as_str()));
    // Both replicas' workers run (they have pids) and load.
    mlx_sidecar_testkit::wait_until(READY, "both replicas' workers to run", || async {
        let status = daemon.status().await;
        status.replicas.len() == 2 && status.replicas.iter().all(|r| r.worker_pid.is_some())
    })
    .await;
    let status = daemon.status().await;
    assert_eq!(status.worker_state(), WorkerState::Starting, "{status:?}");
    for replica in &status.replicas {
        assert_eq!(replica.state(), WorkerState::Starting, "{replica:?}");
    }
    assert_eq!(status.model_id, "", "no worker has described its model");
    assert_eq!(status.configured_model.as_deref(), Some(tiny.as_str()));
    // The library's DaemonStatus (what `mlx-sidecar status` prints) carries it too.
    let client = Client::connect_uds(&daemon.socket).await.expect("client");
    let library = client.daemon_status().await.expect("daemon_status");
    assert_eq!(library.worker_state, "starting");
    assert_eq!(library.configured_model.as_deref(), Some(tiny.as_str()));
    assert!(library.replicas.iter().all(|r| r.state == "starting"));
    daemon.stop().await.expect("clean stop");
}

/// `serve --shard-ranks 2`: `Status` and the metrics name the group's size and backend from
/// the start, and each rank's pid while the group runs, also after it was restarted whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_show_a_sharded_groups_ranks() {
    use mlx_sidecar_testkit::procfs::children_running;
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = support::tiny_worker_with(&[]).with_shard(mlx_sidecar::ShardGroup::new(2));
    let daemon =
        Daemon::start_without_waiting(support::with_tcp(support::config_for(worker, dir.path())));
    let first = daemon
        .wait_status()
        .await
        .shard
        .expect("a shard from the start");
    assert_eq!((first.ranks, first.backend.as_str()), (2, "ring"));
    assert!(first.pids.is_empty() || first.pids.len() == 2, "{first:?}");
    daemon.wait_health(ServingStatus::Serving).await;
    let base = daemon.base().await;

    // The group's pids, rank 0 (the worker) first, in Status, the library's view and metrics.
    let group = |rank0: u32| {
        let followers = children_running(rank0, "mlx_worker.shard.follower");
        assert_eq!(followers.len(), 1, "one follower of rank 0 ({rank0})");
        vec![rank0, followers[0]]
    };
    let status = daemon.status().await;
    let pids = group(status.worker_pid.expect("worker pid"));
    assert_eq!(status.shard.expect("shard").pids, pids);
    let client = Client::connect_uds(&daemon.socket).await.expect("client");
    let library = client.daemon_status().await.expect("daemon_status");
    let shard = library.shard.expect("shard");
    assert_eq!((shard.ranks, shard.backend.as_str()), (2, "ring"));
    assert_eq!(shard.pids, pids);
    let assert_metrics = |metrics: String, pids: &[u32]| {
        assert_eq!(
            support::sample(&metrics, "mlx_sidecar_shard_ranks{backend=\"ring\"}"),
            2.0,
            "{metrics}"
        );
        for (rank, pid) in pids.iter().enumerate() {
            let series = format!("mlx_sidecar_shard_rank_pid{{rank=\"{rank}\"}}");
            assert_eq!(support::sample(&metrics, &series), f64::from(*pid));
        }
    };
    assert_metrics(support::metrics_text(&base).await, &pids);

    // A rank dies: the group restarts whole, and the new ranks' pids replace the old.
    mlx_sidecar_testkit::signal(pids[1], nix::sys::signal::Signal::SIGKILL);
    mlx_sidecar_testkit::wait_until(READY, "a new group, ready", || async {
        let status = daemon.status().await;
        status.worker_state() == WorkerState::Ready
            && status
                .shard
                .is_some_and(|s| s.pids.len() == 2 && s.pids[0] != pids[0])
    })
    .await;
    let status = daemon.status().await;
    let restarted = group(status.worker_pid.expect("worker pid"));
    assert_eq!(status.shard.expect("shard").pids, restarted);
    assert_metrics(support::metrics_text(&base).await, &restarted);
    daemon.stop().await.expect("clean stop");
}

/// A remote caller's resume limit holds across the two layers that resume: the daemon's
/// relay resumes a stream cut by a worker kill, and when a second kill passes the limit
/// its `WorkerDied` tells the caller's library how many resumes were made
/// (`RESUMES_METADATA`), so the library does not resume it once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resume_limit_counts_the_relays_resumes_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(config(dir.path())).await;
    let client = Client::connect_uds(&daemon.socket).await.expect("client");
    let mut stream = client
        .generate(text_request(600).max_resumes(1))
        .await
        .expect("generate");
    let (mut tokens, mut killed) = (0usize, Vec::<u32>::new());
    let ended = tokio::time::timeout(READY, async {
        while let Some(event) = stream.next_event().await {
            match event {
                Ok(mlx_sidecar::GenerateEvent::Token { token_ids, .. }) => {
                    tokens += token_ids.len();
                }
                other => return other,
            }
            // Kill the worker at 40 tokens, and its successor at 80.
            if tokens >= 40 * (killed.len() + 1) && killed.len() < 2 {
                let pid = daemon.status().await.worker_pid.expect("worker pid");
                if !killed.contains(&pid) {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .expect("kill the worker");
                    killed.push(pid);
                }
            }
        }
        panic!("the stream ended without a finish or an error");
    })
    .await
    .expect("the stream ends");
    assert_eq!(killed.len(), 2, "two workers killed under the stream");
    match ended {
        Err(mlx_sidecar::Error::WorkerDied {
            resumes,
            tokens_received,
            ..
        }) => {
            assert_eq!(resumes, 1, "the relay's resume counts");
            assert_eq!(tokens_received, tokens);
        }
        other => panic!("want WorkerDied past the limit of 1, got {other:?}"),
    }
}
