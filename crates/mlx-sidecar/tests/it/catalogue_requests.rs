//! Catalogue faults about *requests* (see `catalogue` for the index): bad input (14),
//! cancel mid-stream and in prefill (15), short deadlines (16), a queued request across a
//! kill (17; kills under load through the `chaos` command are the CLI's test), fuzzed
//! protobuf (19).

use std::{collections::BTreeMap, time::Duration};

use mlx_sidecar::{Client, Error, GenerateEvent, GenerateRequest, LifecycleEvent, Supervisor};
use mlx_sidecar_proto::v1 as pb;
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::{
    catalogue::{self, raw_call, raw_client},
    support::{self, READY},
};

/// The worker's active MLX memory (bytes).
async fn active_memory(client: &Client) -> u64 {
    client
        .model_info()
        .await
        .expect("model_info")
        .active_memory_bytes
}

/// Waits until the worker's active memory is at most `limit`; returns how long it took.
async fn memory_falls_to(client: &Client, limit: u64, what: &str) -> Duration {
    let started = Instant::now();
    support::wait_until(Duration::from_secs(3), what, || async {
        active_memory(client).await <= limit
    })
    .await;
    started.elapsed()
}

/// A prompt of `n` ordinary token ids of the tiny model.
fn prompt(n: u32) -> Vec<u32> {
    (0..n).map(|j| 3 + (j * 13) % 300).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_14_bad_requests_get_precise_errors() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let pid = supervisor.worker_pid();
    let mut events = supervisor.subscribe();
    let client = supervisor.client();
    let socket = supervisor.socket_path();
    // Another request streams all along and must not notice.
    let bystander = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .generate(GenerateRequest::text("bystander").max_tokens(600))
                .await?
                .collect()
                .await
        }
    });

    // Oversize: more than gRPC's 4 MiB receive limit.
    let huge = "a".repeat(5 << 20);
    let err = client
        .generate(GenerateRequest::text(huge))
        .await
        .expect_err("oversize");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // Malformed bytes on every method.
    for (method, streaming) in [
        ("Generate", true),
        ("Tokenize", false),
        ("Detokenize", false),
        ("ModelInfo", false),
    ] {
        let channel = catalogue::uds_channel(&socket);
        let status = raw_call(channel, method, vec![0xff, 0xff, 0xff, 0x0f], streaming)
            .await
            .expect_err("malformed");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("not a valid"),
            "{method}: {}",
            status.message()
        );
    }

    // Invalid parameters, each named.
    let mut raw = raw_client(&socket);
    let text = |t: &str| {
        Some(pb::Prompt {
            input: Some(pb::prompt::Input::Text(t.into())),
        })
    };
    let tokens = |ids: Vec<u32>| {
        Some(pb::Prompt {
            input: Some(pb::prompt::Input::Tokens(pb::TokenIds { ids })),
        })
    };
    let sampling = |s: pb::SamplingParams| Some(s);
    let cases: Vec<(pb::GenerateRequest, &str)> = vec![
        (
            pb::GenerateRequest {
                prompt: text("x"),
                max_tokens: Some(-5),
                ..Default::default()
            },
            "max_tokens",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                sampling: sampling(pb::SamplingParams {
                    temperature: Some(f32::NAN),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "temperature",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                sampling: sampling(pb::SamplingParams {
                    top_p: Some(1.5),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "top_p",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                sampling: sampling(pb::SamplingParams {
                    top_k: Some(-1),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "top_k",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                sampling: sampling(pb::SamplingParams {
                    min_p: Some(1.0),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "min_p",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                sampling: sampling(pb::SamplingParams {
                    repetition_penalty: Some(f32::INFINITY),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                sampling: sampling(pb::SamplingParams {
                    logit_bias: [(1_000_000, 1.0)].into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "logit_bias",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                stop: vec!["s".into(); 17],
                ..Default::default()
            },
            "stop",
        ),
        (
            pb::GenerateRequest {
                prompt: text("x"),
                logprobs: Some(pb::LogprobsOptions {
                    enabled: true,
                    top_n: 21,
                }),
                ..Default::default()
            },
            "top_n",
        ),
        (
            pb::GenerateRequest {
                prompt: None,
                ..Default::default()
            },
            "prompt",
        ),
        (
            pb::GenerateRequest {
                prompt: tokens(vec![]),
                ..Default::default()
            },
            "prompt",
        ),
        (
            pb::GenerateRequest {
                prompt: tokens(vec![1_000_000]),
                ..Default::default()
            },
            "prompt",
        ),
        // Longer than the tiny model's 2048-token context.
        (
            pb::GenerateRequest {
                prompt: tokens(prompt(2100)),
                ..Default::default()
            },
            "prompt",
        ),
    ];
    for (request, field) in cases {
        let status = match raw.generate(request.clone()).await {
            Err(status) => status,
            Ok(response) => match response.into_inner().message().await {
                Err(status) => status,
                Ok(m) => panic!("{field}: accepted: {request:?} -> {m:?}"),
            },
        };
        // A prompt too long for the context is RESOURCE_EXHAUSTED; the rest INVALID_ARGUMENT.
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
            ),
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{field}: message names the field: {}",
            status.message()
        );
    }

    let done = bystander.await.expect("join").expect("bystander completes");
    assert_eq!(done.token_ids.len(), 600);
    assert_eq!(supervisor.worker_pid(), pid, "the worker kept serving");
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok()).any(|e| matches!(
            e,
            LifecycleEvent::Crashed { .. } | LifecycleEvent::Unhealthy { .. }
        )),
        "no crash, no failed probe"
    );
    supervisor.shutdown().await.expect("shutdown");

    // An unknown model is a worker argument, not a request field: a clear start-up error.
    let missing = sandbox.path().join("no-such-model");
    let worker = support::tiny_worker().with_model(&missing);
    let config =
        support::config(worker, sandbox.path()).with_restart(mlx_sidecar::RestartPolicy::never());
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let err = supervisor
        .wait_ready(READY)
        .await
        .expect_err("no such model");
    assert!(matches!(err, Error::GaveUp { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no-such-model"),
        "names the model: {err}"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_15_cancel_frees_the_sequence() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    // The prefix cache off: it keeps the finished bystander's KV cache on purpose, and this
    // fault is about what a cancelled sequence leaves (the cache's bounds have their tests).
    let worker = support::tiny_worker().with_args([
        "--prefill-step-size",
        "32",
        "--prefix-cache-entries",
        "0",
    ]);
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let client = supervisor.client();
    let pid = supervisor.worker_pid();
    let idle = active_memory(&client).await;

    // Mid-stream: a long sequence holds a large cache; another one streams beside it.
    let bystander = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .generate(GenerateRequest::text("beside").max_tokens(1200))
                .await?
                .collect()
                .await
        }
    });
    let mut long = client
        .generate(GenerateRequest::tokens(prompt(1800)).max_tokens(240))
        .await
        .expect("generate");
    let mut got = 0;
    while got < 10 {
        if let Some(Ok(GenerateEvent::Token { token_ids, .. })) = long.next_event().await {
            got += token_ids.len();
        }
    }
    let busy = active_memory(&client).await;
    assert!(
        busy > idle + (1 << 20),
        "the long sequence's cache shows: {idle} -> {busy}"
    );
    drop(long);
    // The bystander's own cache is small: back near idle means the long one is gone.
    let freed_mid_stream = memory_falls_to(
        &client,
        idle + (busy - idle) / 4,
        "the cancelled cache to be freed",
    )
    .await;

    // During prefill: 1800 tokens in 32-token chunks; give up before the first token.
    let in_prefill = tokio::time::timeout(
        Duration::from_millis(150),
        client.generate(GenerateRequest::tokens(prompt(1800)).max_tokens(5)),
    )
    .await;
    assert!(in_prefill.is_err(), "still in prefill when dropped");
    let freed_in_prefill = memory_falls_to(
        &client,
        idle + (busy - idle) / 4,
        "the prefill's cache to be freed",
    )
    .await;

    let done = bystander.await.expect("join").expect("bystander");
    assert_eq!(
        done.token_ids.len(),
        1200,
        "the other sequence is unaffected"
    );
    memory_falls_to(&client, idle + (64 << 10), "memory back to idle").await;
    assert_eq!(supervisor.worker_pid(), pid);
    eprintln!(
        "FIGURE fault 15: cache freed {freed_mid_stream:?} after a mid-stream cancel, {freed_in_prefill:?} after a cancel in prefill (idle {idle} B, busy {busy} B)"
    );
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_16_short_deadline_leaves_no_work() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    let idle = active_memory(&client).await;
    let started = Instant::now();
    let result = async {
        client
            .generate(
                GenerateRequest::tokens(prompt(1000))
                    .max_tokens(1000)
                    .deadline(Duration::from_millis(400)),
            )
            .await?
            .collect()
            .await
    }
    .await;
    let took = started.elapsed();
    let err = result.expect_err("the deadline passes first");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        took < Duration::from_millis(1500),
        "deadline kept: {took:?}"
    );
    let freed = memory_falls_to(
        &client,
        idle + (64 << 10),
        "the expired request's cache to go",
    )
    .await;
    // Nothing of it is still running: a new request gets the engine to itself at once.
    let next = client
        .generate(GenerateRequest::text("next").max_tokens(5))
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert!(
        next.finished.timings.queue_wait_ms < 200.0,
        "no expired work ahead of it: {:?}",
        next.finished.timings
    );
    // A deadline shorter than a restart: the caller gets DEADLINE_EXCEEDED, not a hang. The
    // tiny model's worker restarts in under 300 ms on a quiet machine (interpreter 90 ms,
    // imports 180 ms), so the deadline is well below the interpreter's start alone.
    let pid = supervisor.worker_pid().expect("pid");
    support::signal(pid, nix::sys::signal::Signal::SIGKILL);
    let started = Instant::now();
    let err = client
        .generate(
            GenerateRequest::text("hurry")
                .max_tokens(5)
                .deadline(Duration::from_millis(50)),
        )
        .await
        .expect_err("no worker within 50 ms");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
        ),
        "{err:?}"
    );
    eprintln!(
        "FIGURE fault 16: 400 ms deadline ended the call after {took:?}; its cache was freed {freed:?} later"
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// The heart of fault 17: a request the worker had not started when it died (queued behind
/// a full batch) is retried on the new worker without the caller doing anything, while the
/// one that was streaming (with resuming off) gets `WorkerDied` with its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_17_queued_request_is_retried_on_the_new_worker() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let worker = support::tiny_worker().with_args(["--max-batch", "1"]);
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let client = supervisor.client();
    let pid = supervisor.worker_pid().expect("pid");
    let mut streaming = client
        .generate(GenerateRequest::text("first").max_tokens(1900).no_resume())
        .await
        .expect("generate");
    let mut streamed = String::new();
    while streamed.len() < 8 {
        if let Some(Ok(GenerateEvent::Token { text, .. })) = streaming.next_event().await {
            streamed.push_str(&text);
        }
    }
    // The batch holds one sequence: this one waits in the worker's queue.
    let queued = tokio::spawn({
        let client = client.clone();
        async move {
            let stream = client
                .generate(GenerateRequest::text("second").max_tokens(12))
                .await?;
            let attempts = stream.attempts();
            stream.collect().await.map(|c| (attempts, c))
        }
    });
    // Give it time to reach the worker's queue (were it still on its way, it would be
    // re-sent all the same).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!queued.is_finished(), "still queued behind the long one");
    let killed_at = Instant::now();
    support::signal(pid, nix::sys::signal::Signal::SIGKILL);
    let err = loop {
        match streaming.next_event().await {
            Some(Ok(GenerateEvent::Token { text, .. })) => streamed.push_str(&text),
            Some(Ok(GenerateEvent::Finished(f))) => panic!("finished despite the kill: {f:?}"),
            Some(Err(e)) => break e,
            None => panic!("ended without an error"),
        }
    };
    match &err {
        Error::WorkerDied { partial_text, .. } => assert_eq!(partial_text, &streamed),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("not retried"), "{err}");
    let (attempts, completion) = tokio::time::timeout(READY, queued)
        .await
        .expect("the queued request completes")
        .expect("join")
        .expect("no error for the caller");
    assert_eq!(completion.token_ids.len(), 12);
    assert!(attempts >= 2, "it was re-sent: {attempts} attempt(s)");
    assert_ne!(supervisor.worker_pid(), Some(pid));
    eprintln!(
        "FIGURE fault 17: the queued request completed on the new worker {:?} after the kill, {attempts} attempts, caller saw no error",
        killed_at.elapsed()
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// A random wire request: structurally valid with random values, then maybe mutated, or
/// plain random bytes.
fn fuzz_input(rng: &mut StdRng, method: &str) -> Vec<u8> {
    let mode = rng.random_range(0..10);
    if mode == 0 {
        let len = rng.random_range(0..64);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut bytes = match method {
        "Generate" => random_generate(rng).encode_to_vec(),
        "Tokenize" => pb::TokenizeRequest {
            input: Some(pb::tokenize_request::Input::Text(random_text(rng))),
            add_special_tokens: rng.random_bool(0.5).then(|| rng.random()),
        }
        .encode_to_vec(),
        "Detokenize" => pb::DetokenizeRequest {
            ids: (0..rng.random_range(0..20))
                .map(|_| {
                    if rng.random_bool(0.9) {
                        rng.random_range(0..400)
                    } else {
                        rng.random()
                    }
                })
                .collect(),
            skip_special_tokens: rng.random(),
        }
        .encode_to_vec(),
        _ => Vec::new(),
    };
    // Mutate some of them: flip, insert, delete bytes, or truncate.
    if mode >= 6 && !bytes.is_empty() {
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..bytes.len().max(1));
            match rng.random_range(0..4) {
                0 if i < bytes.len() => bytes[i] ^= 1 << rng.random_range(0..8),
                1 => bytes.insert(i.min(bytes.len()), rng.random()),
                2 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
        }
    }
    bytes
}

fn random_text(rng: &mut StdRng) -> String {
    let pool = [
        "hello",
        " ",
        "é",
        "日本",
        "🙂",
        "<|im_end|>",
        "\u{0}",
        "\n",
        "x",
    ];
    (0..rng.random_range(0..8))
        .map(|_| pool[rng.random_range(0..pool.len())])
        .collect()
}

/// Mostly valid sampling values, sometimes NaN, infinite or negative.
fn random_float(rng: &mut StdRng) -> f32 {
    match rng.random_range(0..20) {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 | 3 => -rng.random::<f32>() * 10.0,
        4 => rng.random::<f32>() * 100.0,
        _ => rng.random::<f32>(),
    }
}

fn random_generate(rng: &mut StdRng) -> pb::GenerateRequest {
    let prompt = match rng.random_range(0..4) {
        0 => Some(pb::prompt::Input::Text(random_text(rng))),
        1 => Some(pb::prompt::Input::Chat(pb::ChatPrompt {
            messages: (0..rng.random_range(0..3))
                .map(|_| pb::ChatMessage {
                    role: ["user", "system", "assistant", "robot", ""][rng.random_range(0..5)]
                        .into(),
                    content: random_text(rng),
                })
                .collect(),
            add_generation_prompt: rng.random_bool(0.5).then(|| rng.random()),
        })),
        2 => Some(pb::prompt::Input::Tokens(pb::TokenIds {
            ids: (0..rng.random_range(0..12))
                .map(|_| {
                    if rng.random_bool(0.9) {
                        rng.random_range(0..400)
                    } else {
                        rng.random()
                    }
                })
                .collect(),
        })),
        _ => None,
    };
    let maybe = |rng: &mut StdRng| rng.random_bool(0.3);
    pb::GenerateRequest {
        prompt: Some(pb::Prompt { input: prompt }),
        sampling: rng.random_bool(0.7).then(|| pb::SamplingParams {
            temperature: maybe(rng).then(|| random_float(rng)),
            top_p: maybe(rng).then(|| random_float(rng)),
            top_k: maybe(rng).then(|| rng.random_range(-1..50)),
            min_p: maybe(rng).then(|| random_float(rng)),
            repetition_penalty: maybe(rng).then(|| random_float(rng)),
            repetition_context_size: maybe(rng).then(|| rng.random_range(-3..100)),
            presence_penalty: maybe(rng).then(|| random_float(rng)),
            frequency_penalty: maybe(rng).then(|| random_float(rng)),
            penalty_context_size: maybe(rng).then(|| rng.random_range(-3..100)),
            logit_bias: (0..rng.random_range(0..3))
                .map(|_| (rng.random_range(0..400), random_float(rng)))
                .collect(),
            seed: maybe(rng).then(|| rng.random()),
        }),
        max_tokens: rng.random_bool(0.9).then(|| rng.random_range(-1..12)),
        stop: (0..rng.random_range(0..3))
            .map(|_| random_text(rng))
            .collect(),
        stop_token_ids: (0..rng.random_range(0..3))
            .map(|_| rng.random_range(0..500))
            .collect(),
        ignore_eos: rng.random(),
        logprobs: rng.random_bool(0.3).then(|| pb::LogprobsOptions {
            enabled: rng.random(),
            top_n: rng.random_range(-2..25),
        }),
        request_id: if rng.random_bool(0.5) {
            random_text(rng)
        } else {
            String::new()
        },
        // The continuation and the response format join the fuzz with their features.
        ..Default::default()
    }
}

/// Fuzzes the live worker on every method; `CATALOGUE_FUZZ_RUNS` sets the number of
/// requests (default 400), `CATALOGUE_FUZZ_SEED` the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_19_fuzzed_requests_never_hurt_the_worker() {
    let runs: usize = std::env::var("CATALOGUE_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("CATALOGUE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(19);
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let pid = supervisor.worker_pid();
    let mut events = supervisor.subscribe();
    let socket = supervisor.socket_path();
    let channel = catalogue::uds_channel(&socket);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    let methods = [
        ("Generate", true),
        ("Tokenize", false),
        ("Detokenize", false),
        ("ModelInfo", false),
    ];
    for i in 0..runs {
        let (method, streaming) = methods[if i % 2 == 0 {
            0
        } else {
            rng.random_range(0..4)
        }];
        let body = fuzz_input(&mut rng, method);
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            raw_call(channel.clone(), method, body.clone(), streaming),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} hung on {body:?}"));
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        assert!(
            matches!(
                code,
                tonic::Code::Ok | tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
            ),
            "{method} on {body:?}: {result:?}"
        );
        if let (Ok(messages), "Generate") = (&result, method) {
            let last = messages
                .last()
                .map(|m| pb::GenerateResponse::decode(m.as_slice()));
            assert!(
                matches!(
                    last,
                    Some(Ok(pb::GenerateResponse {
                        event: Some(pb::generate_response::Event::Finished(_))
                    }))
                ),
                "an OK stream ends with finished: {body:?}"
            );
        }
        *by_code.entry(format!("{method} {code:?}")).or_insert(0) += 1;
    }
    assert_eq!(
        catalogue::worker_health(&socket).await.expect("health"),
        1,
        "still SERVING"
    );
    assert_eq!(supervisor.worker_pid(), pid, "the same worker");
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok()).any(|e| matches!(
            e,
            LifecycleEvent::Crashed { .. } | LifecycleEvent::Unhealthy { .. }
        )),
        "no crash, no failed probe"
    );
    eprintln!(
        "FIGURE fault 19: {runs} fuzzed requests (seed {seed}) in {:?}, crashes 0; answers {by_code:?}",
        started.elapsed()
    );
    supervisor.shutdown().await.expect("shutdown");
}
