//! A supervised worker serving real requests: streaming, concurrency, tokenization, model
//! info, invalid parameters, graceful shutdown, and the real default model answering.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mlx_sidecar::{
    ChatMessage, Error, FinishReason, GenerateEvent, GenerateRequest, HealthStatus, LifecycleEvent,
    Supervisor, SupervisorConfig, TokenizeRequest, WorkerCommand, WorkerState,
};

use crate::support::{self, READY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_tokens_then_finished() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    assert_eq!(supervisor.state(), WorkerState::Ready);
    let client = supervisor.client();

    let mut stream = client
        .generate(
            GenerateRequest::text("Hello")
                .max_tokens(12)
                .ignore_eos(true),
        )
        .await
        .expect("generate");
    let mut chunks = 0;
    let mut tokens = 0;
    let mut text = String::new();
    let finished = loop {
        match stream
            .next()
            .await
            .expect("stream ended early")
            .expect("event")
        {
            GenerateEvent::Token {
                text: t, token_ids, ..
            } => {
                chunks += 1;
                tokens += token_ids.len();
                text.push_str(&t);
            }
            GenerateEvent::Finished(finished) => break finished,
        }
    };
    assert!(stream.next().await.is_none(), "nothing after finished");
    assert!(chunks >= 1);
    assert_eq!(tokens, 12);
    assert_eq!(finished.usage.completion_tokens, 12);
    assert_eq!(finished.finish_reason, FinishReason::Length);
    assert!(!text.is_empty());

    // The same tokens detokenize to the same text; tokenize/detokenize round-trip.
    let tokenized = client
        .tokenize(TokenizeRequest::text("Paris is nice").add_special_tokens(false))
        .await
        .expect("tokenize");
    assert!(!tokenized.ids.is_empty());
    let back = client
        .detokenize(tokenized.ids.clone(), false)
        .await
        .expect("detokenize");
    assert_eq!(back, "Paris is nice");

    let info = client.model_info().await.expect("model_info");
    assert_eq!(Some(info.worker_pid), supervisor.worker_pid());
    assert_eq!(info.architecture, "llama");
    assert_eq!(
        client.health().await.expect("health"),
        HealthStatus::Serving
    );

    supervisor.shutdown().await.expect("shutdown");
}

/// The worker's `--stream-interval-ms`, given through `WorkerCommand::with_args`: the same
/// tokens and text in fewer events (at most one per interval), the first token at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_interval_gives_the_same_tokens_in_fewer_events() {
    let request = || {
        GenerateRequest::text("Hello")
            .max_tokens(300)
            .ignore_eos(true)
    };
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let plain = support::ready_tiny_supervisor(plain_dir.path()).await;
    let reference = support::complete(&plain.client(), request()).await;
    plain.shutdown().await.expect("shutdown");

    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_args(["--stream-interval-ms", "50"]);
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let mut stream = supervisor
        .client()
        .generate(request())
        .await
        .expect("generate");
    let mut events: Vec<Vec<u32>> = Vec::new();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            GenerateEvent::Token {
                text: t, token_ids, ..
            } => {
                first_at.get_or_insert_with(Instant::now);
                text.push_str(&t);
                events.push(token_ids);
            }
            GenerateEvent::Finished(finished) => {
                assert_eq!(finished.usage.completion_tokens, 300);
            }
        }
    }
    let span = first_at.expect("tokens came").elapsed().as_secs_f64();
    assert_eq!(events.concat(), reference.token_ids);
    assert_eq!(text, reference.text);
    assert_eq!(events[0].len(), 1, "the first token is not held back");
    assert!(
        (events.len() - 1) as f64 <= span / 0.05 + 2.0,
        "{} events in {span:.3} s",
        events.len()
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_all_complete() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = Supervisor::spawn(support::config(support::tiny_worker(), sandbox.path()))
        .await
        .expect("spawn");
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let client = supervisor.client();
            tokio::spawn(async move {
                client
                    .generate(
                        GenerateRequest::text(format!("Request {i}:"))
                            .max_tokens(16 + i)
                            .deadline(Duration::from_secs(90)),
                    )
                    .await?
                    .collect()
                    .await
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let completion = call.await.expect("join").expect("generation");
        assert_eq!(completion.token_ids.len(), 16 + i);
        assert_eq!(completion.finished.usage.completion_tokens, 16 + i as u32);
    }
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_are_invalid_argument() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = Supervisor::spawn(support::config(support::tiny_worker(), sandbox.path()))
        .await
        .expect("spawn");
    let client = supervisor.client();
    let cases = [
        (GenerateRequest::text("x").top_p(1.5), "top_p"),
        (
            GenerateRequest::text("x").temperature(f32::NAN),
            "temperature",
        ),
        (GenerateRequest::text("x").max_tokens(0), "max_tokens"),
    ];
    for (request, field) in cases {
        let err = client.generate(request).await.expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(!err.is_retryable());
        match &err {
            Error::Rpc { message, .. } => assert!(message.contains(field), "{message}"),
            other => panic!("expected Error::Rpc, got {other:?}"),
        }
    }
    // The worker keeps serving.
    let pid = supervisor.worker_pid();
    let ok = client
        .generate(GenerateRequest::text("x").max_tokens(3))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(ok.token_ids.len(), 3);
    assert_eq!(supervisor.worker_pid(), pid);
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_cleans_up() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let pid = supervisor.worker_pid().expect("pid");
    let dir = supervisor.socket_dir();
    assert!(supervisor.socket_path().starts_with(&dir));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&dir).expect("socket dir").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "private socket directory");

    // A generation in flight when shutdown starts still completes (the worker drains).
    let mut stream = client
        .generate(GenerateRequest::text("Drain me").max_tokens(200))
        .await
        .expect("generate");
    let mut events = supervisor.subscribe();
    let shutdown = tokio::spawn(supervisor.shutdown());
    let mut tokens = 0;
    let finished = loop {
        match stream
            .next_event()
            .await
            .expect("event")
            .expect("no error while draining")
        {
            GenerateEvent::Token { token_ids, .. } => tokens += token_ids.len(),
            GenerateEvent::Finished(f) => break f,
        }
    };
    assert_eq!(tokens, 200);
    assert_eq!(finished.finish_reason, FinishReason::Length);
    shutdown.await.expect("join").expect("shutdown");
    let (_, seen) = support::wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::Stopped)
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, LifecycleEvent::Crashed { .. })),
        "a graceful stop is no crash: {seen:?}"
    );
    assert!(support::process_gone(pid));
    assert!(!dir.exists(), "socket directory removed");
    // Calls after shutdown fail at once.
    let err = client.tokenize("x").await.expect_err("stopped");
    assert!(matches!(err, Error::Stopped), "{err:?}");
}

/// The real default model (SmolLM2-135M-Instruct, GGUF) answers a real question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_model_knows_the_capital_of_france() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let mut worker = WorkerCommand::new(support::python(), support::worker_dir());
    // The GGUF is converted once into the cache: a shared one when the developer set
    // MLX_SIDECAR_CACHE_DIR (passed through to the worker), else this test's own.
    if std::env::var_os("MLX_SIDECAR_CACHE_DIR").is_none() {
        let cache = sandbox.path().join("cache");
        worker = worker.with_args(["--cache-dir".to_owned(), cache.display().to_string()]);
    }
    let config = support::config(worker, sandbox.path())
        .with_startup_timeout(Duration::from_secs(300))
        .with_health(Duration::from_secs(1), Duration::from_secs(2), 5);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor
        .wait_ready(Duration::from_secs(300))
        .await
        .expect("ready");
    let answer = supervisor
        .client()
        .generate(
            GenerateRequest::chat(vec![ChatMessage::user("What is the capital of France?")])
                .max_tokens(24),
        )
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert!(answer.text.contains("Paris"), "answer: {:?}", answer.text);
    let info = supervisor.client().model_info().await.expect("model_info");
    assert!(info.model_id.contains("SmolLM2"), "{info:?}");
    supervisor.shutdown().await.expect("shutdown");
}

/// Configuration mistakes fail `spawn` at once with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_interpreter_fails_spawn() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = WorkerCommand::new(sandbox.path().join("no-such-python"), support::worker_dir());
    let err = Supervisor::spawn(SupervisorConfig::new(worker).with_socket_dir(sandbox.path()))
        .await
        .expect_err("no interpreter");
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-python"), "{err}");
    let left: Vec<_> = std::fs::read_dir(sandbox.path())
        .expect("sandbox")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "socket directory removed: {left:?}");
}

/// The worker gets a clean, explicit environment and its own process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_has_a_clean_environment_and_its_own_group() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_env("MLX_SIDECAR_TEST_MARK", "yes");
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let pid = supervisor.worker_pid().expect("pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let names: Vec<&str> = vars.iter().filter_map(|v| v.split('=').next()).collect();
    assert!(
        vars.contains(&"MLX_SIDECAR_TEST_MARK=yes".to_owned()),
        "{vars:?}"
    );
    assert!(
        vars.contains(&format!("PYTHONPATH={}", support::worker_dir().display())),
        "{vars:?}"
    );
    // cargo sets these for the test process; the worker must not inherit them.
    assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{names:?}");
    assert!(!names.contains(&"RUST_TEST_THREADS") && !names.contains(&"CARGO_PKG_NAME"));
    for name in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "LANG",
                "TMPDIR",
                "XDG_CACHE_HOME",
                "MLX_SIDECAR_CACHE_DIR",
                "PYTHONPATH",
                "PYTHONUNBUFFERED",
                "MLX_SIDECAR_TEST_MARK",
            ]
            .contains(name),
            "unexpected variable {name} in {names:?}"
        );
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state, ppid, pgrp, ...
    assert_eq!(
        fields.get(2),
        Some(&pid.to_string().as_str()),
        "own process group"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_deadline_is_deadline_exceeded_and_worker_carries_on() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let started = tokio::time::Instant::now();
    let result = match client
        .generate(
            GenerateRequest::text("Never finishes in time")
                .max_tokens(1900)
                .deadline(Duration::from_millis(300)),
        )
        .await
    {
        Ok(stream) => stream.collect().await,
        Err(e) => Err(e),
    };
    let err = result.expect_err("deadline");
    assert!(matches!(err, Error::Deadline { .. }), "{err:?}");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let ok = client
        .generate(GenerateRequest::text("x").max_tokens(2))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(ok.token_ids.len(), 2);
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupervised_client_over_a_socket_path() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let missing = mlx_sidecar::Client::connect_uds(sandbox.path().join("none.sock"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(missing, Error::Socket { .. }), "{missing:?}");

    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = mlx_sidecar::Client::connect_uds(supervisor.socket_path())
        .await
        .expect("connect");
    assert_eq!(
        client.health().await.expect("health"),
        HealthStatus::Serving
    );
    let info = client.model_info().await.expect("model_info");
    assert_eq!(Some(info.worker_pid), supervisor.worker_pid());
    let completion = client
        .generate(GenerateRequest::chat(vec![ChatMessage::user("hi")]).max_tokens(5))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(completion.token_ids.len(), 5);
    supervisor.shutdown().await.expect("shutdown");
}

/// Everything also works on a current-thread runtime (the default of `#[tokio::test]`).
#[tokio::test]
async fn works_on_a_current_thread_runtime() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let first = supervisor.worker_pid().expect("pid");
    support::signal(first, nix::sys::signal::Signal::SIGKILL);
    let completion = client
        .generate(GenerateRequest::text("x").max_tokens(3))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(completion.token_ids.len(), 3);
    assert_ne!(supervisor.worker_pid(), Some(first));
    supervisor.shutdown().await.expect("shutdown");
}

/// Every request option reaches the worker: the chat template's generation prompt can be
/// left out (tokenize and generate agree), the penalty context sizes are sent (the worker
/// names them when invalid), and each logprob carries its token's text and raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_options_penalty_windows_and_logprob_bytes_reach_the_worker() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let messages = vec![ChatMessage::user("Hi there")];

    let with = client
        .tokenize(TokenizeRequest::chat(messages.clone()))
        .await
        .expect("tokenize");
    let without = client
        .tokenize(TokenizeRequest::chat(messages.clone()).add_generation_prompt(false))
        .await
        .expect("tokenize");
    assert_eq!(
        with.text,
        format!("{}<|im_start|>assistant\n", without.text)
    );
    assert!(without.ids.len() < with.ids.len() && with.ids.starts_with(&without.ids));
    for (add, expected) in [(true, with.ids.len()), (false, without.ids.len())] {
        let request = GenerateRequest::chat(messages.clone())
            .add_generation_prompt(add)
            .max_tokens(1);
        let completion = support::complete(&client, request).await;
        assert_eq!(
            completion.finished.usage.prompt_tokens as usize, expected,
            "{add}"
        );
    }

    for request in [
        GenerateRequest::text("x")
            .repetition_penalty(1.2)
            .repetition_context_size(0),
        GenerateRequest::text("x")
            .presence_penalty(0.5)
            .penalty_context_size(0),
    ] {
        let err = client
            .generate(request)
            .await
            .map(|_| ())
            .expect_err("size 0 is invalid");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains("context_size"), "{err}");
    }
    let windows = GenerateRequest::text("Hello")
        .repetition_penalty(1.3)
        .repetition_context_size(4)
        .frequency_penalty(0.5)
        .penalty_context_size(8)
        .max_tokens(4);
    assert_eq!(support::complete(&client, windows).await.token_ids.len(), 4);

    // Sampled text from the tiny model splits many characters across tokens.
    let mut stream = client
        .generate(
            GenerateRequest::text("日本語のテキスト 🙂🚀")
                .temperature(1.0)
                .seed(3)
                .max_tokens(40)
                .logprobs(2),
        )
        .await
        .expect("generate");
    let (mut text, mut ids, mut entries) = (String::new(), Vec::new(), Vec::new());
    while let Some(event) = stream.next().await {
        if let GenerateEvent::Token {
            text: t,
            token_ids,
            logprobs,
        } = event.expect("event")
        {
            text.push_str(&t);
            ids.extend(token_ids);
            entries.extend(logprobs);
        }
    }
    assert_eq!(entries.iter().map(|e| e.token_id).collect::<Vec<_>>(), ids);
    for entry in &entries {
        assert!(!entry.bytes.is_empty(), "{entry:?}");
        assert_eq!(
            String::from_utf8_lossy(&entry.bytes),
            entry.text,
            "{entry:?}"
        );
        assert_eq!(entry.top.len(), 2);
    }
    let joined: Vec<u8> = entries.iter().flat_map(|e| e.bytes.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&joined), text);
    assert!(
        entries.iter().any(|e| e.text.contains('\u{fffd}')),
        "no token split a character: the byte check proves little"
    );
    supervisor.shutdown().await.expect("shutdown");
}
