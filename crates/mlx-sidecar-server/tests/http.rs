//! The HTTP front of a real daemon (`run()` with a TCP listener, a real supervised worker
//! on the tiny model), through a real HTTP client: chat and completions, streaming and not,
//! log-probabilities, errors in OpenAI's shape (and the worker serving on after each),
//! metrics, readiness, cancellation on disconnect, a full queue, and the lifecycle metrics
//! following a worker kill. The drain is tested in `daemon.rs`.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use mlx_sidecar_proto::v1 as pb;
use mlx_sidecar_testkit::wait_until;
use serde_json::{Value, json};
use support::{
    Daemon, config, config_for, http, metrics_text, sample, shared as daemon, sse_data,
    tiny_worker_with, with_tcp,
};
use tonic_health::pb::health_check_response::ServingStatus;

async fn post(url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, String) {
    let response = http().post(url).json(body).send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

/// The status `GET /ready` answers (0 when nothing answers).
async fn ready_status(base: &str) -> u16 {
    http()
        .get(format!("{base}/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts an OpenAI error body and returns its `error` object.
fn openai_error(status: u16, expected: u16, text: &str) -> Value {
    assert_eq!(status, expected, "{text}");
    let body = parse(text);
    let error = body["error"].clone();
    assert!(error["message"].is_string(), "{text}");
    assert!(error["type"].is_string(), "{text}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{text}"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_answers_in_openai_shape() {
    let d = daemon();
    let (status, _, text) = post(
        format!("{}/v1/chat/completions", d.base),
        &json!({"model": d.model_id, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8, "temperature": 0, "user": "unknown fields are fine"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(body["model"], d.model_id.as_str());
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(
        choice["message"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(choice["finish_reason"], "length");
    assert!(choice["logprobs"].is_null());
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().expect("prompt tokens") + 8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_matches_the_whole_answer_and_ends_with_usage_and_done() {
    let d = daemon();
    let request = json!({"messages": [{"role": "user", "content": "Tell me"}],
                         "max_completion_tokens": 12, "temperature": 0});
    let (_, _, whole) = post(format!("{}/v1/chat/completions", d.base), &request).await;
    let whole = parse(&whole);
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let response = http()
        .post(format!("{}/v1/chat/completions", d.base))
        .json(&streaming)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(&response.text().await.expect("body"));
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| parse(e))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = &chunks[0]["id"];
    let mut text = String::new();
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id);
        assert!(
            chunk["usage"].is_null() && chunk.get("usage").is_some(),
            "{chunk}"
        );
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    let (mut usage, mut whole_usage) = (usage_chunk["usage"].clone(), whole["usage"].clone());
    // The second time, the prompt comes from the worker's prefix cache, all but the last token
    // (which is fed to get the first output token's logits).
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert_eq!(cached.map(|c| c + 1), usage["prompt_tokens"].as_u64());
    // The first time, at most the chat template's opening tokens (other tests' prompts).
    let first_cached = whole_usage["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert!(first_cached < cached, "{first_cached:?} {cached:?}");
    for u in [&mut usage, &mut whole_usage] {
        u.as_object_mut().map(|o| o.remove("prompt_tokens_details"));
    }
    assert_eq!(usage, whole_usage);
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_stream_or_not_with_logprobs_in_the_legacy_shape() {
    let d = daemon();
    let request = json!({"prompt": "The capital of France is", "max_tokens": 6,
                         "temperature": 0, "logprobs": 2});
    let (status, _, text) = post(format!("{}/v1/completions", d.base), &request).await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    let completion = choice["text"].as_str().expect("text");
    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("token text"))
        .collect();
    assert_eq!(tokens.len(), 6);
    // Greedy decoding picks the most likely token, so each token's text is exact, except
    // that a token holding part of a UTF-8 character reads U+FFFD (as does the text).
    let clean = |s: &str| s.replace('\u{FFFD}', "");
    assert_eq!(clean(&tokens.concat()), clean(completion));
    assert_eq!(logprobs["token_logprobs"].as_array().map(Vec::len), Some(6));
    for top in logprobs["top_logprobs"].as_array().expect("top") {
        assert_eq!(top.as_object().map(|o| o.len()), Some(2), "{top}");
    }
    let offsets: Vec<u64> = logprobs["text_offset"]
        .as_array()
        .expect("offsets")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let response = http()
        .post(format!("{}/v1/completions", d.base))
        .json(&streaming)
        .send()
        .await
        .expect("send");
    let events = sse_data(&response.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = String::new();
    let mut streamed_tokens = Vec::new();
    for event in &events[..events.len() - 1] {
        let chunk = parse(event);
        assert_eq!(chunk["object"], "text_completion");
        assert!(
            chunk.get("usage").is_none(),
            "no usage unless asked: {chunk}"
        );
        streamed.push_str(chunk["choices"][0]["text"].as_str().expect("text"));
        if let Some(ts) = chunk["choices"][0]["logprobs"]["tokens"].as_array() {
            streamed_tokens.extend(ts.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    assert_eq!(streamed, completion);
    assert_eq!(clean(&streamed_tokens.concat()), clean(completion));
    let last = parse(&events[events.len() - 2]);
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_have_tokens_bytes_and_alternatives() {
    let d = daemon();
    let (status, _, text) = post(
        format!("{}/v1/chat/completions", d.base),
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content");
    assert_eq!(content.len(), 5);
    let mut joined = String::new();
    let mut all_bytes = Vec::new();
    for entry in content {
        let token = entry["token"].as_str().expect("token");
        joined.push_str(token);
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .expect("bytes")
            .iter()
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect();
        // The token's raw bytes: a piece of a split character is not valid UTF-8 alone, and
        // its text shows U+FFFD in its place.
        match std::str::from_utf8(&bytes) {
            Ok(text) => assert_eq!(text, token),
            Err(_) => assert!(token.contains('\u{fffd}'), "{token:?} {bytes:?}"),
        }
        all_bytes.extend(&bytes);
        assert!(entry["logprob"].as_f64().is_some_and(|l| l <= 0.0));
        assert_eq!(entry["top_logprobs"].as_array().map(Vec::len), Some(3));
    }
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    // The tokens' bytes make the text; their texts do too unless a character was split.
    assert_eq!(String::from_utf8_lossy(&all_bytes), content);
    if !joined.contains('\u{fffd}') {
        assert_eq!(joined, content);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_worker_serves_on() {
    let d = daemon();
    let chat = format!("{}/v1/chat/completions", d.base);
    let completions = format!("{}/v1/completions", d.base);
    let before = metrics_text(&d.base).await;

    // Malformed JSON: 400, no param.
    let response = http()
        .post(&chat)
        .header("content-type", "application/json")
        .body(r#"{"messages": [{"role": "user", "content": "hi"}"#)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let error = openai_error(status, 400, &response.text().await.expect("body"));
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["param"].is_null());
    d.assert_still_serving().await;

    // A wrong type names the field.
    let (status, _, text) = post(
        chat.clone(),
        &json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
    )
    .await;
    assert_eq!(openai_error(status, 400, &text)["param"], "temperature");
    let (status, _, text) = post(completions.clone(), &json!({"prompt": {"a": 1}})).await;
    assert_eq!(openai_error(status, 400, &text)["param"], "prompt");
    d.assert_still_serving().await;

    // A value out of range, checked by the worker, mapped back to the OpenAI name.
    let (status, _, text) = post(
        chat.clone(),
        &json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}),
    )
    .await;
    let error = openai_error(status, 400, &text);
    assert_eq!(error["param"], "top_p", "{text}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("1.5")),
        "{text}"
    );
    let (status, _, text) = post(
        completions.clone(),
        &json!({"prompt": "hi", "logit_bias": {"999999": 5}}),
    )
    .await;
    assert_eq!(openai_error(status, 400, &text)["param"], "logit_bias");
    d.assert_still_serving().await;

    // Beyond the context: 400 context_length_exceeded.
    let (status, _, text) = post(
        completions.clone(),
        &json!({"prompt": "hi", "max_tokens": 5000}),
    )
    .await;
    let error = openai_error(status, 400, &text);
    assert_eq!(error["code"], "context_length_exceeded", "{text}");
    assert_eq!(error["param"], "max_tokens");

    // Unknown model: 404 model_not_found; n > 1: 400.
    let (status, _, text) = post(
        chat.clone(),
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let error = openai_error(status, 404, &text);
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    let (status, _, text) = post(
        chat.clone(),
        &json!({"n": 2, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(openai_error(status, 400, &text)["param"], "n");
    d.assert_still_serving().await;

    // A 10 MB body, with a Content-Length and chunked: 413.
    let big = format!(
        r#"{{"prompt": "{}", "max_tokens": 1}}"#,
        "a".repeat(10 * 1024 * 1024)
    );
    let response = http()
        .post(&completions)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let error = openai_error(status, 413, &response.text().await.expect("body"));
    assert_eq!(error["code"], "request_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let response = http()
        .post(&completions)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    openai_error(status, 413, &response.text().await.expect("body"));
    d.assert_still_serving().await;

    // An unknown route and a wrong method, in the same shape.
    let response = http()
        .get(format!("{}/v1/nothing", d.base))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    openai_error(status, 404, &response.text().await.expect("body"));
    let response = http().get(&chat).send().await.expect("send");
    let status = response.status().as_u16();
    openai_error(status, 405, &response.text().await.expect("body"));

    let after = metrics_text(&d.base).await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(
        moved("mlx_sidecar_request_errors_total{api=\"http\",code=\"invalid_argument\"}") >= 6.0,
        "{after}"
    );
    assert!(moved("mlx_sidecar_request_errors_total{api=\"http\",code=\"not_found\"}") >= 1.0);
    assert!(
        moved("mlx_sidecar_request_errors_total{api=\"http\",code=\"resource_exhausted\"}") >= 3.0,
        "{after}"
    );
    d.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_served_requests() {
    let d = daemon();
    let before = metrics_text(&d.base).await;
    for text in [&before] {
        for name in [
            "time_to_first_token_seconds",
            "inter_token_latency_seconds",
            "e2e_request_latency_seconds",
            "request_queue_time_seconds",
            "requests_running",
            "requests_waiting",
            "worker_up",
            "standby_ready",
            "prompt_tokens_total",
            "generation_tokens_total",
            "requests_total",
            "request_errors_total",
            "worker_restarts_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE mlx_sidecar_{name} ")),
                "{name}"
            );
        }
    }
    assert_eq!(sample(&before, "mlx_sidecar_worker_up"), 1.0);
    // Classic text by default; OpenMetrics to a scraper that asks for it.
    let classic = http()
        .get(format!("{}/metrics", d.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(
        classic.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        classic
            .text()
            .await
            .expect("text")
            .contains("# TYPE mlx_sidecar_requests_total counter")
    );
    let open_metrics = http()
        .get(format!("{}/metrics", d.base))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("metrics");
    assert!(
        open_metrics.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text"))
    );
    assert!(
        open_metrics
            .text()
            .await
            .expect("text")
            .ends_with("# EOF\n")
    );
    let (status, _, text) = post(
        format!("{}/v1/completions", d.base),
        &json!({"prompt": "Count", "max_tokens": 8, "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let after = metrics_text(&d.base).await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(moved("mlx_sidecar_requests_total{api=\"http\",finish_reason=\"length\"}") >= 1.0);
    assert!(moved("mlx_sidecar_generation_tokens_total{api=\"http\"}") >= 4.0);
    assert!(moved("mlx_sidecar_prompt_tokens_total{api=\"http\"}") >= 1.0);
    assert!(moved("mlx_sidecar_time_to_first_token_seconds_count{api=\"http\"}") >= 1.0);
    // Tokens that arrive in one chunk with the first have no inter-token time; the worker
    // may send a few together when it is busy, so only "some" is certain.
    assert!(moved("mlx_sidecar_inter_token_latency_seconds_count{api=\"http\"}") >= 1.0);
    assert!(moved("mlx_sidecar_e2e_request_latency_seconds_count{api=\"http\"}") >= 1.0);
    assert!(moved("mlx_sidecar_request_queue_time_seconds_count{api=\"http\"}") >= 1.0);
    assert_eq!(
        sample(
            &after,
            "mlx_sidecar_worker_restarts_total{cause=\"signal\",worker=\"active\"}"
        ),
        0.0
    );
}

/// `/ready` 200 (and health `SERVING`) means requests are served: while the new worker's
/// model description is held back (a fault), the worker runs but the daemon is not ready;
/// a request sent the moment `/ready` turns 200 is answered, not refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_the_moment_ready_turns_200_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = tiny_worker_with(&[]).with_env("MLX_WORKER_FAULTS", "model_info_delay=5");
    let own = Daemon::start_without_waiting(with_tcp(config_for(worker, dir.path())));
    own.wait_status().await;
    let base = own.base().await;
    let ready = || ready_status(&base);
    wait_until(support::READY, "the worker to run", || async {
        own.status().await.worker_state() == pb::WorkerState::Ready
    })
    .await;
    // The daemon is still asking the worker for its model (5 s).
    assert_eq!(ready().await, 503);
    assert_ne!(own.health().await, Some(ServingStatus::Serving));
    let status = own.status().await;
    assert_eq!(status.model_id, "", "{status:?}");

    wait_until(support::READY, "GET /ready to answer 200", || async {
        ready().await == 200
    })
    .await;
    let (code, _, text) = post(
        format!("{base}/v1/completions"),
        &json!({"prompt": "Hello", "max_tokens": 2}),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(own.health().await, Some(ServingStatus::Serving));
    own.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_models() {
    let d = daemon();
    let get = |path: &str| http().get(format!("{}{path}", d.base)).send();
    assert_eq!(get("/health").await.expect("health").status(), 200);
    assert_eq!(get("/ready").await.expect("ready").status(), 200);
    let models: Value = get("/v1/models")
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], d.model_id.as_str());
    assert_eq!(models["data"][0]["object"], "model");
    let one = get(&format!("/v1/models/{}", d.model_id))
        .await
        .expect("model");
    assert_eq!(one.status(), 200);
    let response = get("/v1/models/other").await.expect("model");
    let status = response.status().as_u16();
    let error = openai_error(status, 404, &response.text().await.expect("body"));
    assert_eq!(error["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_generation() {
    // A daemon of its own, so that its counts are this test's.
    let dir = tempfile::tempdir().expect("temp dir");
    let own = Daemon::start(with_tcp(config(dir.path()))).await;
    let base = own.base().await;
    let first_pid = own.status().await.worker_pid;
    let long = |stream: bool| {
        json!({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true,
               "stream": stream})
    };

    // Streaming: read the first event, then drop the connection.
    let response = http()
        .post(format!("{base}/v1/completions"))
        .json(&long(true))
        .send()
        .await
        .expect("send");
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("an event").expect("bytes");
    assert!(first.starts_with(b"data: "));
    drop(body);
    wait_until(
        Duration::from_secs(5),
        "the stream to be cancelled",
        || async { own.in_flight().await == 0 },
    )
    .await;

    // Not streaming: give up waiting for the whole answer.
    let pending = http()
        .post(format!("{base}/v1/completions"))
        .json(&long(false))
        .send();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), pending)
            .await
            .is_err(),
        "1500 tokens take longer than 0.5 s"
    );
    wait_until(
        Duration::from_secs(5),
        "the request to be cancelled",
        || async { own.in_flight().await == 0 },
    )
    .await;

    let text = metrics_text(&base).await;
    assert_eq!(
        sample(
            &text,
            "mlx_sidecar_request_errors_total{api=\"http\",code=\"cancelled\"}"
        ),
        2.0,
        "{text}"
    );
    // Neither ran to its end.
    assert_eq!(
        sample(
            &text,
            "mlx_sidecar_requests_total{api=\"http\",finish_reason=\"length\"}"
        ),
        0.0,
        "{text}"
    );
    // The worker was not replaced and serves on.
    assert_eq!(own.status().await.worker_pid, first_pid);
    let (code, _, text) = post(
        format!("{base}/v1/completions"),
        &json!({"prompt": "Hello", "max_tokens": 2}),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    own.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_and_readiness_follow_a_worker_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let own = Daemon::start(with_tcp(config(dir.path()))).await;
    let base = own.base().await;
    let ready = || ready_status(&base);
    assert_eq!(ready().await, 200);
    let text = metrics_text(&base).await;
    assert_eq!(sample(&text, "mlx_sidecar_worker_up"), 1.0);

    let pid = own.status().await.worker_pid.expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_until(support::READY, "the restart to be counted", || async {
        sample(
            &metrics_text(&base).await,
            "mlx_sidecar_worker_restarts_total{cause=\"signal\",worker=\"active\"}",
        ) == 1.0
    })
    .await;
    wait_until(support::READY, "a new worker to be ready", || async {
        ready().await == 200
    })
    .await;
    let status = own.status().await;
    assert_ne!(status.worker_pid, Some(pid));
    assert_eq!(status.worker_restarts, 1);
    assert_eq!(
        sample(&metrics_text(&base).await, "mlx_sidecar_worker_up"),
        1.0
    );
    let (code, _, text) = post(
        format!("{base}/v1/completions"),
        &json!({"prompt": "again", "max_tokens": 2}),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    own.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_queue_is_429_with_retry_after() {
    // One sequence at a time and no queue: a second request at once is refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = tiny_worker_with(&["--max-batch", "1", "--max-queue", "0"]);
    let own = Daemon::start(with_tcp(config_for(worker, dir.path()))).await;
    let base = own.base().await;

    let busy = http()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "Busy", "max_tokens": 2000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .expect("send");
    let mut busy = busy.bytes_stream();
    assert!(busy.next().await.is_some(), "the first request runs");
    let (code, headers, text) = post(
        format!("{base}/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "me too"}]}),
    )
    .await;
    let error = openai_error(code, 429, &text);
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(headers["retry-after"], "1");
    // Hanging up cancels the generation in the worker, which frees its one slot: 2000
    // tokens take about 3 s here (1500 took 2.2 s), so a slot free within 2 s of the
    // hang-up was freed by the cancellation, not by the end of the generation.
    let hung_up = std::time::Instant::now();
    drop(busy);
    let again = json!({"prompt": "now", "max_tokens": 2});
    wait_until(
        Duration::from_secs(2),
        "the worker to accept again",
        || async { post(format!("{base}/v1/completions"), &again).await.0 == 200 },
    )
    .await;
    eprintln!(
        "the worker accepted again {:?} after the hang-up",
        hung_up.elapsed()
    );
    wait_until(Duration::from_secs(5), "nothing in flight", || async {
        own.in_flight().await == 0
    })
    .await;
    own.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_parameters_reach_the_worker() {
    let d = daemon();
    let url = format!("{}/v1/completions", d.base);
    let text_of = |body: &str| {
        let body = parse(body);
        (
            body["choices"][0]["text"]
                .as_str()
                .expect("text")
                .to_owned(),
            body["choices"][0]["finish_reason"]
                .as_str()
                .expect("reason")
                .to_owned(),
        )
    };

    // stop: the greedy answer cut before a stop string taken from it.
    let (_, _, body) = post(
        url.clone(),
        &json!({"prompt": "Stop", "max_tokens": 12, "temperature": 0}),
    )
    .await;
    let (greedy, _) = text_of(&body);
    let stop: String = greedy.chars().skip(3).take(2).collect();
    let (_, _, body) = post(
        url.clone(),
        &json!({"prompt": "Stop", "max_tokens": 12, "temperature": 0, "stop": [stop]}),
    )
    .await;
    let (cut, reason) = text_of(&body);
    assert_eq!(reason, "stop", "{body}");
    assert!(
        greedy.starts_with(&cut) && cut.len() < greedy.len(),
        "{cut:?} of {greedy:?}"
    );

    // seed: the same seed, the same sample.
    let seeded = json!({"prompt": "Dice", "max_tokens": 8, "temperature": 1.0, "seed": 7});
    let (_, _, a) = post(url.clone(), &seeded).await;
    let (_, _, b) = post(url.clone(), &seeded).await;
    assert_eq!(text_of(&a).0, text_of(&b).0);

    // logit_bias: a token pushed far up is all the model says.
    let (_, _, body) = post(
        url.clone(),
        &json!({"prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0,
                "logit_bias": {"65": 100}, "logprobs": 0}),
    )
    .await;
    let tokens = parse(&body)["choices"][0]["logprobs"]["tokens"].clone();
    let tokens: Vec<&str> = tokens
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tokens.len(), 4, "{body}");
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
}

/// The worker is killed mid-stream under a remote library client (gRPC through the relay)
/// and under an OpenAI SSE client: each sees one unbroken stream with the tokens and text
/// of an uninterrupted run, and `mlx_sidecar_stream_resumes_total` counts both resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_leaves_grpc_and_sse_callers_one_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let own = Daemon::start(with_tcp(config(dir.path()))).await;
    let base = own.base().await;
    let kill_worker = |pid: u32| {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
    };

    // A remote library client, through the daemon's gRPC relay.
    let remote = mlx_sidecar::Client::connect_uds(&own.socket)
        .await
        .expect("client");
    let request = mlx_sidecar::GenerateRequest::text("The daemon")
        .max_tokens(600)
        .ignore_eos(true);
    let want = remote
        .generate(request.clone())
        .await
        .expect("generate")
        .collect()
        .await
        .expect("reference");
    let mut stream = remote.generate(request).await.expect("generate");
    let (mut ids, mut text, mut finished) = (Vec::new(), String::new(), None);
    let mut killed = None;
    while let Some(event) = stream.next_event().await {
        match event.expect("no error across the kill") {
            mlx_sidecar::GenerateEvent::Token {
                text: t, token_ids, ..
            } => {
                text.push_str(&t);
                ids.extend(token_ids);
            }
            mlx_sidecar::GenerateEvent::Finished(f) => finished = Some(f),
        }
        if killed.is_none() && ids.len() >= 40 {
            let pid = own.status().await.worker_pid.expect("pid");
            kill_worker(pid);
            killed = Some(pid);
        }
    }
    let finished = finished.expect("finished");
    assert_eq!(
        ids, want.token_ids,
        "the same tokens as the uninterrupted run"
    );
    assert_eq!(text, want.text);
    assert_eq!(finished.usage.completion_tokens, 600);
    assert_eq!(finished.usage.resumes, 1, "{finished:?}");
    assert_ne!(own.status().await.worker_pid, killed);

    // An OpenAI SSE client.
    let body = json!({"prompt": "Once upon", "max_tokens": 600, "temperature": 0,
        "ignore_eos": true});
    let (status, _, whole) = post(format!("{base}/v1/completions"), &body).await;
    assert_eq!(status, 200, "{whole}");
    let whole = parse(&whole);
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let response = http()
        .post(format!("{base}/v1/completions"))
        .json(&streaming)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut bytes = response.bytes_stream();
    let mut raw = String::new();
    let mut killed = None;
    while let Some(piece) = bytes.next().await {
        raw.push_str(std::str::from_utf8(&piece.expect("body")).expect("utf-8"));
        if killed.is_none() && sse_data(&raw).len() >= 30 {
            let pid = own.status().await.worker_pid.expect("pid");
            kill_worker(pid);
            killed = Some(pid);
        }
    }
    assert!(killed.is_some(), "killed mid-stream");
    let events = sse_data(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{raw}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| parse(e))
        .collect();
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{raw}");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(
        streamed,
        whole["choices"][0]["text"].as_str().expect("text")
    );
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"], 600, "{usage}");
    assert_eq!(usage, &whole["usage"]);

    wait_until(
        Duration::from_secs(5),
        "both resumes to be counted",
        || async {
            sample(
                &metrics_text(&base).await,
                "mlx_sidecar_stream_resumes_total",
            ) == 2.0
        },
    )
    .await;
    own.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_the_worker_cancels_is_an_openai_error_not_a_finish_reason() {
    // A worker told to stop cancels what still runs after its 1 s grace.
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = tiny_worker_with(&["--grace-seconds", "1"]);
    let own = Daemon::start(with_tcp(config_for(worker, dir.path()))).await;
    let base = own.base().await;
    // 2000 tokens take about 3 s here: longer than the grace.
    // Not resumed on the next worker (the extension `max_resumes: 0`): this is about the end
    // an OpenAI client sees when a generation cannot go on.
    let long = |stream: bool| {
        json!({"prompt": "Long", "max_tokens": 2000, "ignore_eos": true, "stream": stream,
            "max_resumes": 0})
    };
    let streamed = http()
        .post(format!("{base}/v1/completions"))
        .json(&long(true))
        .send()
        .await
        .expect("send");
    assert_eq!(streamed.status(), 200);
    let whole = {
        let (url, body) = (format!("{base}/v1/completions"), long(false));
        tokio::spawn(async move { post(url, &body).await })
    };
    wait_until(support::READY, "both generations to run", || async {
        own.status().await.requests_running == 2
    })
    .await;
    let pid = own.status().await.worker_pid.expect("pid");
    mlx_sidecar_testkit::signal(pid, nix::sys::signal::Signal::SIGTERM);

    // Not streamed: a retryable 503 in OpenAI's shape, never a 200 cut short.
    let (code, headers, text) = whole.await.expect("join");
    let error = openai_error(code, 503, &text);
    assert_eq!(error["type"], "server_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled"),
        "{text}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // Streamed: the text so far, then an error event (the official client raises on it),
    // and no chunk with a finish_reason outside OpenAI's values.
    let body = streamed.text().await.expect("body");
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let error = parse(&events[events.len() - 2]);
    assert_eq!(error["error"]["type"], "server_error", "{body}");
    for event in &events[..events.len() - 2] {
        let chunk = parse(event);
        assert!(chunk.get("error").is_none(), "{event}");
        assert!(chunk["choices"][0]["finish_reason"].is_null(), "{event}");
    }
    // The metrics still say why they ended.
    let metrics = metrics_text(&base).await;
    assert_eq!(
        sample(
            &metrics,
            "mlx_sidecar_requests_total{api=\"http\",finish_reason=\"cancelled\"}"
        ),
        2.0,
        "{metrics}"
    );
    own.stop().await.expect("clean stop");
}

/// Also: a request served while the standby is ready is shadowed there, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_restarts_are_counted_by_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = with_tcp(config(dir.path()));
    config.supervisor = config.supervisor.with_standby(true);
    let own = Daemon::start(config).await;
    let base = own.base().await;
    wait_until(support::READY, "the standby to be ready", || async {
        sample(&metrics_text(&base).await, "mlx_sidecar_standby_ready") == 1.0
    })
    .await;
    let request = json!({"prompt": "Shadowed on the standby", "max_tokens": 1000,
                         "ignore_eos": true, "temperature": 0});
    let (status, _, text) = post(format!("{base}/v1/completions"), &request).await;
    assert_eq!(status, 200, "{text}");
    wait_until(support::READY, "the request's shadow prefill", || async {
        sample(
            &metrics_text(&base).await,
            "mlx_sidecar_shadow_prefills_total",
        ) >= 1.0
    })
    .await;
    let standby = own.status().await.standby_pid.expect("standby pid");
    mlx_sidecar_testkit::signal(standby, nix::sys::signal::Signal::SIGKILL);
    wait_until(
        support::READY,
        "the standby's restart to be counted",
        || async {
            sample(
                &metrics_text(&base).await,
                "mlx_sidecar_worker_restarts_total{cause=\"signal\",worker=\"standby\"}",
            ) == 1.0
        },
    )
    .await;
    let metrics = metrics_text(&base).await;
    for cause in ["exit", "signal", "unhealthy"] {
        let active =
            format!("mlx_sidecar_worker_restarts_total{{cause=\"{cause}\",worker=\"active\"}}");
        assert_eq!(sample(&metrics, &active), 0.0, "{metrics}");
    }
    wait_until(support::READY, "a new standby", || async {
        let status = own.status().await;
        status.standby_pid.is_some() && status.standby_pid != Some(standby)
    })
    .await;
    own.stop().await.expect("clean stop");
}
