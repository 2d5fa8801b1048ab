//! Conversions between the wire types of `mlx_sidecar.v1.Inference` and the library's
//! own, for the relay: requests in, events and answers out, errors as statuses.
//!
//! Requests convert without loss: every field is carried (a caller's `max_resumes` limits
//! the relay's own resumes; a caller's `continuation` goes on to the worker, and the
//! relay's resumes count on from it), and a value the library cannot represent (a
//! negative count) is refused with the worker's own `INVALID_ARGUMENT` wording rather
//! than dropped. `prefill_only` is refused: it fills one worker's own prefix cache (the
//! supervisor's shadows send it to a standby's socket).

use mlx_sidecar::{
    ChatMessage, Error, FinishReason, Finished, GenerateEvent, GenerateRequest, ModelInfo,
    ShardInfo, TokenizeRequest,
};
use mlx_sidecar_proto::v1 as pb;
use tonic::Status;

use crate::remote_error::remote_message;

/// Most alternatives per position the worker reports (its `MAX_TOP_LOGPROBS`).
const MAX_TOP_LOGPROBS: i32 = 20;

/// The library request for a wire request; see the [module docs](self).
pub(crate) fn generate_request(request: pb::GenerateRequest) -> Result<GenerateRequest, Status> {
    let input = request
        .prompt
        .and_then(|p| p.input)
        .ok_or_else(|| invalid("prompt", "must be set"))?;
    let mut out = match input {
        pb::prompt::Input::Text(text) => GenerateRequest::text(text),
        pb::prompt::Input::Chat(chat) => {
            let add = chat.add_generation_prompt;
            let out = GenerateRequest::chat(chat_messages(chat));
            match add {
                Some(add) => out.add_generation_prompt(add),
                None => out,
            }
        }
        pb::prompt::Input::Tokens(tokens) => GenerateRequest::tokens(tokens.ids),
    };
    if let Some(s) = request.sampling {
        if let Some(n) = s.repetition_context_size {
            out = out.repetition_context_size(count("sampling.repetition_context_size", n)?);
        }
        if let Some(n) = s.penalty_context_size {
            out = out.penalty_context_size(count("sampling.penalty_context_size", n)?);
        }
        if let Some(t) = s.temperature {
            out = out.temperature(t);
        }
        if let Some(p) = s.top_p {
            out = out.top_p(p);
        }
        if let Some(k) = s.top_k {
            let k = u32::try_from(k)
                .map_err(|_| invalid("sampling.top_k", &format!("must be >= 0, got {k}")))?;
            out = out.top_k(k);
        }
        if let Some(p) = s.min_p {
            out = out.min_p(p);
        }
        if let Some(p) = s.repetition_penalty {
            out = out.repetition_penalty(p);
        }
        if let Some(p) = s.presence_penalty {
            out = out.presence_penalty(p);
        }
        if let Some(p) = s.frequency_penalty {
            out = out.frequency_penalty(p);
        }
        for (token, bias) in s.logit_bias {
            out = out.logit_bias(token, bias);
        }
        if let Some(seed) = s.seed {
            out = out.seed(seed);
        }
    }
    if let Some(m) = request.max_tokens {
        let m = u32::try_from(m)
            .ok()
            .filter(|m| *m >= 1)
            .ok_or_else(|| invalid("max_tokens", &format!("must be >= 1, got {m}")))?;
        out = out.max_tokens(m);
    }
    for stop in request.stop {
        out = out.stop(stop);
    }
    out = out
        .stop_token_ids(request.stop_token_ids)
        .ignore_eos(request.ignore_eos)
        .request_id(request.request_id);
    if let Some(n) = request.max_resumes {
        out = out.max_resumes(n);
    }
    if let Some(continuation) = request.continuation {
        out = out.continuation(continuation.into());
    }
    if let Some(lp) = request.logprobs {
        if !(0..=MAX_TOP_LOGPROBS).contains(&lp.top_n) {
            return Err(invalid(
                "logprobs.top_n",
                &format!("must be in [0, {MAX_TOP_LOGPROBS}], got {}", lp.top_n),
            ));
        }
        match (lp.enabled, lp.top_n) {
            (true, n) => out = out.logprobs(n.unsigned_abs()),
            (false, 0) => {}
            (false, _) => return Err(invalid("logprobs.top_n", "needs logprobs.enabled")),
        }
    }
    if request.prefill_only == Some(true) {
        // It fills one worker's own prefix cache: the supervisor's shadows send it there.
        return Err(invalid(
            "prefill_only",
            "is for a worker's own socket, not the daemon",
        ));
    }
    if let Some(format) = request.response_format {
        out = match format.format {
            Some(pb::response_format::Format::JsonObject(_)) => out.json_object(),
            Some(pb::response_format::Format::JsonSchema(schema)) => out.json_schema(schema),
            None => {
                return Err(invalid(
                    "response_format",
                    "must be one of json_object or json_schema (none is set)",
                ));
            }
        };
    }
    Ok(out)
}

/// The library request for a wire tokenize request.
pub(crate) fn tokenize_request(request: pb::TokenizeRequest) -> Result<TokenizeRequest, Status> {
    let out = match request.input {
        Some(pb::tokenize_request::Input::Text(text)) => TokenizeRequest::text(text),
        Some(pb::tokenize_request::Input::Chat(chat)) => {
            let add = chat.add_generation_prompt;
            let out = TokenizeRequest::chat(chat_messages(chat));
            match add {
                Some(add) => out.add_generation_prompt(add),
                None => out,
            }
        }
        None => return Err(invalid("input", "must be set")),
    };
    Ok(match request.add_special_tokens {
        Some(add) => out.add_special_tokens(add),
        None => out,
    })
}

fn chat_messages(chat: pb::ChatPrompt) -> Vec<ChatMessage> {
    chat.messages
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect()
}

/// A count the wire carries signed, refused when negative.
fn count(field: &str, n: i32) -> Result<u32, Status> {
    u32::try_from(n).map_err(|_| invalid(field, &format!("must be >= 0, got {n}")))
}

fn invalid(field: &str, message: &str) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// The wire message for a library event.
pub(crate) fn generate_response(event: GenerateEvent) -> pb::GenerateResponse {
    let event = match event {
        GenerateEvent::Token {
            text,
            token_ids,
            logprobs,
        } => pb::generate_response::Event::Chunk(pb::GenerateChunk {
            text,
            token_ids,
            logprobs: logprobs
                .into_iter()
                .map(|l| pb::TokenLogprob {
                    token_id: l.token_id,
                    logprob: l.logprob,
                    text: l.text,
                    bytes: l.bytes,
                    top: l
                        .top
                        .into_iter()
                        .map(|t| pb::TopLogprob {
                            token_id: t.token_id,
                            logprob: t.logprob,
                            text: t.text,
                        })
                        .collect(),
                })
                .collect(),
        }),
        GenerateEvent::Finished(f) => pb::generate_response::Event::Finished(finished(f)),
    };
    pb::GenerateResponse { event: Some(event) }
}

fn finished(f: Finished) -> pb::GenerateFinished {
    let reason = match f.finish_reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
        FinishReason::Unspecified => pb::FinishReason::Unspecified,
    };
    let t = f.timings;
    pb::GenerateFinished {
        finish_reason: reason.into(),
        usage: Some(pb::Usage {
            prompt_tokens: f.usage.prompt_tokens,
            completion_tokens: f.usage.completion_tokens,
            cached_prompt_tokens: f.usage.cached_prompt_tokens,
            resumes: f.usage.resumes,
            cached_delivered_tokens: f.usage.cached_delivered_tokens,
        }),
        timings: Some(pb::Timings {
            queue_wait_ms: t.queue_wait_ms,
            prefill_ms: t.prefill_ms,
            decode_ms: t.decode_ms,
            decode_tokens_per_second: t.decode_tokens_per_second,
            prefill_tokens_per_second: t.prefill_tokens_per_second,
            time_to_first_token_ms: t.time_to_first_token_ms,
            total_ms: t.total_ms,
        }),
        matched_stop: f.matched_stop.unwrap_or_default(),
        stop_token_id: f.stop_token_id,
        request_id: f.request_id,
    }
}

/// The wire answer for the library's model info.
pub(crate) fn model_info(m: ModelInfo) -> pb::ModelInfoResponse {
    pb::ModelInfoResponse {
        model_id: m.model_id,
        model_path: m.model_path,
        architecture: m.architecture,
        quantization: Some(pb::Quantization {
            mode: m.quant_mode,
            bits: m.quant_bits,
            group_size: m.quant_group_size,
            dtype: m.dtype,
            source_format: m.source_format,
            dequantized: m.dequantized,
        }),
        context_length: m.context_length,
        vocab_size: m.vocab_size,
        device: device_kind(&m.device).into(),
        backend: backend(&m.backend).into(),
        device_name: m.device_name,
        mlx_version: m.mlx_version,
        mlx_lm_version: m.mlx_lm_version,
        active_memory_bytes: m.active_memory_bytes,
        peak_memory_bytes: m.peak_memory_bytes,
        cache_memory_bytes: m.cache_memory_bytes,
        worker_pid: m.worker_pid,
        worker_version: m.worker_version,
        python_version: m.python_version,
        eos_token_ids: m.eos_token_ids,
        has_chat_template: m.has_chat_template,
        max_batch_size: m.max_batch_size,
        load_seconds: m.load_seconds,
        parameter_count: m.parameter_count,
        cpu_blas: m.cpu_blas,
        shard: m.shard.as_ref().map(shard_info),
    }
}

/// The wire form of a sharded model's group.
pub(crate) fn shard_info(s: &ShardInfo) -> pb::ShardInfo {
    pb::ShardInfo {
        ranks: s.ranks,
        backend: s.backend.clone(),
        pids: s.pids.clone(),
    }
}

/// The wire enum for the library's device name ("cpu", "gpu").
pub(crate) fn device_kind(device: &str) -> pb::DeviceKind {
    match device {
        "cpu" => pb::DeviceKind::Cpu,
        "gpu" => pb::DeviceKind::Gpu,
        _ => pb::DeviceKind::Unspecified,
    }
}

/// The wire enum for the library's backend name ("cpu", "metal", "cuda").
pub(crate) fn backend(backend: &str) -> pb::Backend {
    match backend {
        "cpu" => pb::Backend::Cpu,
        "metal" => pb::Backend::Metal,
        "cuda" => pb::Backend::Cuda,
        _ => pb::Backend::Unspecified,
    }
}

/// The status for a library error: the worker's own code and message for its statuses,
/// else the error's code (`UNAVAILABLE` for a dead or unready worker, ...) and its text.
///
/// A supervisor that gave up is `FAILED_PRECONDITION`, not `UNAVAILABLE`: nothing changes
/// until the daemon is restarted, and callers (the library's client among them) retry
/// `UNAVAILABLE` until their deadline.
pub(crate) fn status(error: Error) -> Status {
    match error {
        Error::Rpc { code, message } => Status::new(code, message),
        Error::WorkerDied { resumes, .. } => {
            // The caller's library resumes it again only within what is left of the limit.
            let mut status = Status::new(error.code(), error.to_string());
            status
                .metadata_mut()
                .insert(mlx_sidecar::RESUMES_METADATA, resumes.into());
            status
        }
        gave_up @ Error::GaveUp { .. } => Status::failed_precondition(remote_message(&gave_up)),
        other => Status::new(other.code(), remote_message(&other)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use mlx_sidecar::Continuation;

    fn full_request() -> pb::GenerateRequest {
        pb::GenerateRequest {
            prompt: Some(pb::Prompt {
                input: Some(pb::prompt::Input::Chat(pb::ChatPrompt {
                    messages: vec![pb::ChatMessage {
                        role: "user".into(),
                        content: "hi".into(),
                    }],
                    add_generation_prompt: Some(true),
                })),
            }),
            sampling: Some(pb::SamplingParams {
                temperature: Some(0.5),
                top_p: Some(0.9),
                top_k: Some(40),
                min_p: Some(0.05),
                repetition_penalty: Some(1.1),
                repetition_context_size: Some(20),
                presence_penalty: Some(0.2),
                frequency_penalty: Some(0.3),
                penalty_context_size: Some(8),
                logit_bias: HashMap::from([(7, -1.5), (9, 2.0)]),
                seed: Some(42),
            }),
            max_tokens: Some(12),
            stop: vec!["\n\n".into(), "END".into()],
            stop_token_ids: vec![3, 4],
            ignore_eos: true,
            logprobs: Some(pb::LogprobsOptions {
                enabled: true,
                top_n: 5,
            }),
            request_id: "req-1".into(),
            continuation: Some(pb::Continuation {
                delivered_token_ids: vec![5, 6],
                delivered_text_bytes: 3,
                resume_count: 1,
            }),
            max_resumes: Some(2),
            response_format: Some(pb::ResponseFormat {
                format: Some(pb::response_format::Format::JsonSchema(
                    r#"{"type":"object"}"#.into(),
                )),
            }),
            prefill_only: None,
        }
    }

    #[test]
    fn every_field_reaches_the_library_request() {
        let converted = generate_request(full_request()).expect("valid");
        let expected = GenerateRequest::chat(vec![ChatMessage::user("hi")])
            .temperature(0.5)
            .top_p(0.9)
            .top_k(40)
            .min_p(0.05)
            .add_generation_prompt(true)
            .repetition_penalty(1.1)
            .repetition_context_size(20)
            .presence_penalty(0.2)
            .frequency_penalty(0.3)
            .penalty_context_size(8)
            .logit_bias(7, -1.5)
            .logit_bias(9, 2.0)
            .seed(42)
            .max_tokens(12)
            .stop("\n\n")
            .stop("END")
            .stop_token_ids([3, 4])
            .ignore_eos(true)
            .logprobs(5)
            .json_schema(r#"{"type":"object"}"#)
            .request_id("req-1")
            .max_resumes(2)
            .continuation(Continuation {
                delivered_token_ids: vec![5, 6],
                delivered_text_bytes: 3,
                resume_count: 1,
            });
        assert_eq!(converted, expected);
        let tokens = pb::GenerateRequest {
            prompt: Some(pb::Prompt {
                input: Some(pb::prompt::Input::Tokens(pb::TokenIds { ids: vec![1, 2] })),
            }),
            ..Default::default()
        };
        assert_eq!(
            generate_request(tokens).expect("valid"),
            GenerateRequest::tokens(vec![1, 2])
        );
    }

    #[test]
    fn unrepresentable_values_are_refused_not_dropped() {
        let code = |edit: fn(&mut pb::GenerateRequest)| {
            let mut request = full_request();
            edit(&mut request);
            generate_request(request)
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_owned()))
        };
        let (c, m) = code(|r| r.max_tokens = Some(0)).expect_err("max_tokens 0");
        assert_eq!(c, tonic::Code::InvalidArgument);
        assert!(m.starts_with("max_tokens:"), "{m}");
        let (c, m) =
            code(|r| r.sampling.get_or_insert_default().top_k = Some(-1)).expect_err("top_k");
        assert_eq!(c, tonic::Code::InvalidArgument);
        assert!(m.starts_with("sampling.top_k:"), "{m}");
        let (c, m) = code(|r| r.sampling.get_or_insert_default().penalty_context_size = Some(-8))
            .expect_err("penalty_context_size");
        assert_eq!(c, tonic::Code::InvalidArgument);
        assert!(m.starts_with("sampling.penalty_context_size:"), "{m}");
        let (c, _) = code(|r| {
            r.logprobs = Some(pb::LogprobsOptions {
                enabled: false,
                top_n: 2,
            });
        })
        .expect_err("top_n without enabled");
        assert_eq!(c, tonic::Code::InvalidArgument);
        let (c, m) = code(|r| r.response_format = Some(pb::ResponseFormat { format: None }))
            .expect_err("response_format without a format");
        assert_eq!(c, tonic::Code::InvalidArgument);
        assert!(m.starts_with("response_format:"), "{m}");
        let (c, m) = code(|r| r.prefill_only = Some(true)).expect_err("prefill_only");
        assert_eq!(c, tonic::Code::InvalidArgument);
        assert!(m.starts_with("prefill_only:"), "{m}");
        let (c, _) = code(|r| r.prompt = None).expect_err("no prompt");
        assert_eq!(c, tonic::Code::InvalidArgument);
        code(|r| {
            r.logprobs = Some(pb::LogprobsOptions {
                enabled: false,
                top_n: 0,
            })
        })
        .expect("disabled logprobs are the default");
    }

    #[test]
    fn errors_keep_the_workers_code_and_message() {
        let s = status(Error::Rpc {
            code: tonic::Code::InvalidArgument,
            message: "sampling.top_p: must be in (0, 1]".into(),
        });
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "sampling.top_p: must be in (0, 1]");
        assert_eq!(status(Error::Stopped).code(), tonic::Code::Cancelled);
        let gave_up = Error::GaveUp {
            reason: "too many crashes".into(),
            last_status: Some("exit code 1".into()),
            last_log: vec!["Traceback: /home/someone/model.gguf".into()],
        };
        let s = status(gave_up);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "supervisor gave up on the worker: too many crashes; last exit: exit code 1 \
             (the worker's last log lines are in the daemon's log)"
        );
    }
}
