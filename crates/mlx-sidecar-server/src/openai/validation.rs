//! OpenAI request bodies → library [`GenerateRequest`]s, or a 400 naming the parameter.
//!
//! Checks here are the ones only this front can make: JSON syntax and types (the path of
//! a wrongly typed field becomes `param`), the model name, `n`, OpenAI-only shapes
//! (content parts, prompt batches, `logit_bias` keys), and numbers that must fit the
//! library's unsigned types. Value ranges (`top_p` in (0, 1], `min_p` in [0, 1), stop
//! string lengths, token ids below the vocabulary size, …) are the worker's to check: it
//! answers `INVALID_ARGUMENT` with the field path, which [`super::error`] maps back.

use std::time::Duration;

use axum::{body::Bytes, extract::rejection::BytesRejection, http::StatusCode};
use mlx_sidecar::{ChatMessage, GenerateRequest};
use serde::de::DeserializeOwned;

use super::{
    error::ApiError,
    types::{
        ChatCompletionRequest, CompletionRequest, MessageContent, PromptIn, ResponseFormatIn, Stop,
    },
};

/// What a handler needs besides the library request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Validated {
    /// The request for the library.
    pub(crate) request: GenerateRequest,
    /// Answer with server-sent events.
    pub(crate) stream: bool,
    /// With `stream`: add a usage chunk before `[DONE]`.
    pub(crate) include_usage: bool,
    /// Report log-probabilities.
    pub(crate) logprobs: bool,
}

/// Parses a JSON body; a syntax error is a 400 without `param`, a wrongly typed or
/// missing field a 400 whose `param` is the field's path (`messages[0].content`).
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(max_body_bytes)
        } else {
            ApiError::invalid_request(
                format!("Could not read the request body: {}", rejection.body_text()),
                None,
            )
        }
    })?;
    let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::invalid_request(format!("The body is not valid JSON: {inner}"), None)
        } else {
            ApiError::invalid_request(format!("{path}: {inner}"), Some(&path))
        }
    })
}

/// A chat request, checked.
pub(crate) fn chat(
    body: ChatCompletionRequest,
    served_model: &str,
    deadline: Duration,
) -> Result<Validated, ApiError> {
    check_model(body.model.as_deref(), served_model)?;
    check_n(body.n)?;
    if body.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "messages: must not be empty",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        messages.push(ChatMessage::new(m.role, content_text(m.content, i)?));
    }
    let mut request = GenerateRequest::chat(messages);
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Some(n), _) => Some(("max_completion_tokens", n)),
        (None, Some(n)) => Some(("max_tokens", n)),
        (None, None) => None,
    };
    if let Some((name, n)) = max_tokens {
        request = request.max_tokens(at_least_one(name, n)?);
    }
    request = sampling(
        request,
        Sampling {
            temperature: body.temperature,
            top_p: body.top_p,
            top_k: body.top_k,
            min_p: body.min_p,
            presence_penalty: body.presence_penalty,
            frequency_penalty: body.frequency_penalty,
            repetition_penalty: body.repetition_penalty,
            logit_bias: body.logit_bias,
            seed: body.seed,
            stop: body.stop,
            stop_token_ids: body.stop_token_ids,
            ignore_eos: body.ignore_eos,
            max_resumes: body.max_resumes,
        },
    )?;
    let logprobs = body.logprobs.unwrap_or(false);
    match (logprobs, body.top_logprobs) {
        (false, Some(n)) if n > 0 => {
            return Err(ApiError::invalid_request(
                "top_logprobs: needs logprobs to be true",
                Some("top_logprobs"),
            ));
        }
        (true, top) => {
            let top = non_negative_u32("top_logprobs", top.unwrap_or(0))?;
            request = request.logprobs(top);
        }
        _ => {}
    }
    request = response_format(request, body.response_format)?;
    let stream = body.stream.unwrap_or(false);
    Ok(Validated {
        request: request.deadline(deadline),
        stream,
        include_usage: stream
            && body
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        logprobs,
    })
}

/// A completion request, checked.
pub(crate) fn completion(
    body: CompletionRequest,
    served_model: &str,
    deadline: Duration,
) -> Result<Validated, ApiError> {
    check_model(body.model.as_deref(), served_model)?;
    check_n(body.n)?;
    if body.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_request(
            "best_of: only 1 is supported",
            Some("best_of"),
        ));
    }
    if body.echo == Some(true) {
        return Err(ApiError::invalid_request(
            "echo: echoing the prompt is not supported",
            Some("echo"),
        ));
    }
    if body.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_request(
            "suffix: is not supported",
            Some("suffix"),
        ));
    }
    let one_prompt = || {
        ApiError::invalid_request(
            "prompt: exactly one prompt is supported per request",
            Some("prompt"),
        )
    };
    let mut request = match body.prompt {
        PromptIn::Text(text) => GenerateRequest::text(text),
        PromptIn::Tokens(ids) => GenerateRequest::tokens(ids),
        PromptIn::Texts(mut texts) if texts.len() == 1 => {
            GenerateRequest::text(texts.pop().unwrap_or_default())
        }
        PromptIn::TokenLists(mut lists) if lists.len() == 1 => {
            GenerateRequest::tokens(lists.pop().unwrap_or_default())
        }
        PromptIn::Texts(_) | PromptIn::TokenLists(_) => return Err(one_prompt()),
    };
    if let Some(n) = body.max_tokens {
        request = request.max_tokens(at_least_one("max_tokens", n)?);
    }
    request = sampling(
        request,
        Sampling {
            temperature: body.temperature,
            top_p: body.top_p,
            top_k: body.top_k,
            min_p: body.min_p,
            presence_penalty: body.presence_penalty,
            frequency_penalty: body.frequency_penalty,
            repetition_penalty: body.repetition_penalty,
            logit_bias: body.logit_bias,
            seed: body.seed,
            stop: body.stop,
            stop_token_ids: body.stop_token_ids,
            ignore_eos: body.ignore_eos,
            max_resumes: body.max_resumes,
        },
    )?;
    if let Some(top) = body.logprobs {
        request = request.logprobs(non_negative_u32("logprobs", top)?);
    }
    request = response_format(request, body.response_format)?;
    let stream = body.stream.unwrap_or(false);
    Ok(Validated {
        request: request.deadline(deadline),
        stream,
        include_usage: stream
            && body
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        logprobs: body.logprobs.is_some(),
    })
}

/// `response_format` onto the request: `text` is free text, `json_object` and
/// `json_schema` constrain the output; any other type is a 400 naming `response_format`.
/// The schema itself is the worker's to check (its message names
/// `response_format.json_schema`).
fn response_format(
    request: GenerateRequest,
    format: Option<ResponseFormatIn>,
) -> Result<GenerateRequest, ApiError> {
    let Some(format) = format else {
        return Ok(request);
    };
    match format.kind.as_str() {
        "text" => Ok(request),
        "json_object" => Ok(request.json_object()),
        "json_schema" => match format.json_schema.and_then(|s| s.schema) {
            Some(schema) => Ok(request.json_schema(schema)),
            None => Err(ApiError::invalid_request(
                "response_format.json_schema.schema: is required with type `json_schema`",
                Some("response_format.json_schema.schema"),
            )),
        },
        other => Err(ApiError::invalid_request(
            format!(
                "response_format.type: must be `text`, `json_object` or `json_schema`, got `{other}`"
            ),
            Some("response_format"),
        )),
    }
}

/// The model must be the served one, `"default"`, or absent.
pub(crate) fn check_model(requested: Option<&str>, served: &str) -> Result<(), ApiError> {
    match requested {
        None | Some("" | "default") => Ok(()),
        Some(m) if m == served => Ok(()),
        Some(m) => Err(ApiError::model_not_found(m, served)),
    }
}

fn check_n(n: Option<i64>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::invalid_request(
            format!("n: only 1 choice per request is supported, got {n}"),
            Some("n"),
        )),
    }
}

/// A message's text: a string, text parts joined, or empty for `null`.
fn content_text(content: Option<MessageContent>, index: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(text)) => Ok(text),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        let param = format!("messages[{index}].content[{j}]");
                        return Err(ApiError::invalid_request(
                            format!("{param}: only text parts are supported, got type `{kind}`"),
                            Some(&param),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

/// The sampling parameters both routes share.
struct Sampling {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    seed: Option<i64>,
    stop: Option<Stop>,
    stop_token_ids: Option<Vec<i64>>,
    ignore_eos: Option<bool>,
    max_resumes: Option<u32>,
}

fn sampling(mut request: GenerateRequest, s: Sampling) -> Result<GenerateRequest, ApiError> {
    // f64 → f32 as the worker takes them; its range checks see the same value.
    if let Some(t) = s.temperature {
        request = request.temperature(t as f32);
    }
    if let Some(p) = s.top_p {
        request = request.top_p(p as f32);
    }
    if let Some(k) = s.top_k {
        // -1 is vLLM's and mlx-lm's way to say "off", as 0 is.
        let k = match k {
            -1 | 0 => 0,
            k => u32::try_from(k).map_err(|_| {
                ApiError::invalid_request(
                    format!("top_k: must be -1, 0 (off) or a positive count, got {k}"),
                    Some("top_k"),
                )
            })?,
        };
        request = request.top_k(k);
    }
    if let Some(p) = s.min_p {
        request = request.min_p(p as f32);
    }
    if let Some(p) = s.presence_penalty {
        request = request.presence_penalty(p as f32);
    }
    if let Some(p) = s.frequency_penalty {
        request = request.frequency_penalty(p as f32);
    }
    if let Some(p) = s.repetition_penalty {
        request = request.repetition_penalty(p as f32);
    }
    for (key, bias) in s.logit_bias.unwrap_or_default() {
        let token_id: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid_request(
                format!("logit_bias: keys must be token ids, got `{key}`"),
                Some("logit_bias"),
            )
        })?;
        request = request.logit_bias(token_id, bias as f32);
    }
    if let Some(seed) = s.seed {
        let seed = u64::try_from(seed).map_err(|_| {
            ApiError::invalid_request(format!("seed: must be >= 0, got {seed}"), Some("seed"))
        })?;
        request = request.seed(seed);
    }
    match s.stop {
        None => {}
        Some(Stop::One(stop)) => request = request.stop(stop),
        Some(Stop::Many(stops)) => {
            for stop in stops {
                request = request.stop(stop);
            }
        }
    }
    if let Some(ids) = s.stop_token_ids {
        let ids = ids
            .into_iter()
            .map(u32::try_from)
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| {
                ApiError::invalid_request(
                    "stop_token_ids: token ids must be >= 0",
                    Some("stop_token_ids"),
                )
            })?;
        request = request.stop_token_ids(ids);
    }
    if let Some(ignore) = s.ignore_eos {
        request = request.ignore_eos(ignore);
    }
    if let Some(n) = s.max_resumes {
        request = request.max_resumes(n);
    }
    Ok(request)
}

fn at_least_one(name: &str, n: i64) -> Result<u32, ApiError> {
    u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
        ApiError::invalid_request(format!("{name}: must be >= 1, got {n}"), Some(name))
    })
}

fn non_negative_u32(name: &str, n: i64) -> Result<u32, ApiError> {
    u32::try_from(n).map_err(|_| {
        ApiError::invalid_request(format!("{name}: must be >= 0, got {n}"), Some(name))
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use mlx_sidecar::{Prompt, ResponseFormat};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn parse<T: DeserializeOwned>(json: &str) -> Result<T, ApiError> {
        parse_body(Ok(Bytes::copy_from_slice(json.as_bytes())), 1 << 20)
    }

    fn chat_of(json: &str) -> Result<Validated, ApiError> {
        chat(parse(json)?, "tiny", DEADLINE)
    }

    fn completion_of(json: &str) -> Result<Validated, ApiError> {
        completion(parse(json)?, "tiny", DEADLINE)
    }

    #[test]
    fn malformed_json_is_400_without_param() {
        let e = chat_of(r#"{"messages": [{"role": "user", "content": "hi"}"#).expect_err("refused");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.param(), None);
        assert!(e.body().error.message.contains("not valid JSON"), "{e:?}");
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let e =
            chat_of(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#)
                .expect_err("refused");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.param(), Some("temperature"));
        let e = chat_of(r#"{"messages": [{"role": "user", "content": 5}]}"#).expect_err("refused");
        assert_eq!(e.param(), Some("messages[0].content"));
        let e = chat_of(r#"{"model": "tiny"}"#).expect_err("refused");
        assert!(e.body().error.message.contains("messages"), "{e:?}");
    }

    #[test]
    fn every_parameter_reaches_the_library_request() {
        let v = chat_of(
            r#"{"model": "tiny", "messages": [{"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_completion_tokens": 9, "max_tokens": 3, "temperature": 0.5, "top_p": 0.9,
                "top_k": 40, "min_p": 0.05, "presence_penalty": 0.1, "frequency_penalty": 0.2,
                "repetition_penalty": 1.1, "logit_bias": {"17": -100, "4": 2.5}, "seed": 7,
                "stop": ["x", "y"], "stop_token_ids": [2], "ignore_eos": true, "n": 1,
                "logprobs": true, "top_logprobs": 3, "stream": true,
                "stream_options": {"include_usage": true}, "user": "ignored"}"#,
        )
        .expect("valid");
        let expected =
            GenerateRequest::chat(vec![ChatMessage::system("s"), ChatMessage::user("ab")])
                .max_tokens(9)
                .temperature(0.5)
                .top_p(0.9)
                .top_k(40)
                .min_p(0.05)
                .presence_penalty(0.1)
                .frequency_penalty(0.2)
                .repetition_penalty(1.1)
                .logit_bias(4, 2.5)
                .logit_bias(17, -100.0)
                .seed(7)
                .stop("x")
                .stop("y")
                .stop_token_ids([2])
                .ignore_eos(true)
                .logprobs(3)
                .deadline(DEADLINE);
        assert_eq!(v.request, expected);
        assert!(v.stream && v.include_usage && v.logprobs);
    }

    #[test]
    fn completions_take_text_or_tokens_and_logprobs_as_a_count() {
        let v =
            completion_of(r#"{"prompt": "Hello", "max_tokens": 4, "logprobs": 2, "stop": "."}"#)
                .expect("valid");
        assert_eq!(
            v.request,
            GenerateRequest::text("Hello")
                .max_tokens(4)
                .stop(".")
                .logprobs(2)
                .deadline(DEADLINE)
        );
        assert!(v.logprobs && !v.stream && !v.include_usage);
        let v = completion_of(r#"{"prompt": [[5, 6, 7]]}"#).expect("valid");
        assert_eq!(v.request.prompt(), &Prompt::Tokens(vec![5, 6, 7]));
        let e = completion_of(r#"{"prompt": ["a", "b"]}"#).expect_err("refused");
        assert_eq!(e.param(), Some("prompt"));
        let e = completion_of(r#"{"prompt": "a", "echo": true}"#).expect_err("refused");
        assert_eq!(e.param(), Some("echo"));
    }

    #[test]
    fn include_usage_needs_stream() {
        let v = chat_of(
            r#"{"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}"#,
        )
        .expect("valid");
        assert!(!v.stream && !v.include_usage);
    }

    #[test]
    fn refusals_name_the_openai_parameter() {
        let msg = r#""messages": [{"role": "user", "content": "hi"}]"#;
        for (extra, param, status) in [
            (r#""n": 2"#, "n", StatusCode::BAD_REQUEST),
            (r#""model": "gpt-4o""#, "model", StatusCode::NOT_FOUND),
            (r#""max_tokens": 0"#, "max_tokens", StatusCode::BAD_REQUEST),
            (
                r#""max_completion_tokens": -3"#,
                "max_completion_tokens",
                StatusCode::BAD_REQUEST,
            ),
            (r#""seed": -1"#, "seed", StatusCode::BAD_REQUEST),
            (r#""top_k": -5"#, "top_k", StatusCode::BAD_REQUEST),
            (
                r#""logit_bias": {"abc": 1}"#,
                "logit_bias",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#""top_logprobs": 2"#,
                "top_logprobs",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#""logprobs": true, "top_logprobs": -1"#,
                "top_logprobs",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#""stop_token_ids": [-1]"#,
                "stop_token_ids",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#""response_format": {"type": "xml"}"#,
                "response_format",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#""response_format": {"type": "json_schema", "json_schema": {"name": "x"}}"#,
                "response_format.json_schema.schema",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let e = chat_of(&format!("{{{msg}, {extra}}}")).expect_err("refused");
            assert_eq!(e.param(), Some(param), "{extra}: {e:?}");
            assert_eq!(e.status(), status, "{extra}");
        }
        let e = chat_of(r#"{"messages": []}"#).expect_err("refused");
        assert_eq!(e.param(), Some("messages"));
        let e = chat_of(r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#)
            .expect_err("refused");
        assert_eq!(e.param(), Some("messages[0].content[0]"));
    }

    #[test]
    fn model_may_be_absent_default_or_the_served_id() {
        for model in [None, Some("default"), Some("tiny"), Some("")] {
            assert!(check_model(model, "tiny").is_ok(), "{model:?}");
        }
        assert_eq!(
            check_model(Some("other"), "tiny")
                .expect_err("refused")
                .status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn response_format_maps_to_the_library_format() {
        let msg = r#""messages": [{"role": "user", "content": "hi"}]"#;
        let format_of = |extra: &str| {
            chat_of(&format!("{{{msg}, {extra}}}"))
                .expect("valid")
                .request
                .format()
                .cloned()
        };
        assert_eq!(format_of(r#""seed": 1"#), None);
        assert_eq!(format_of(r#""response_format": {"type": "text"}"#), None);
        assert_eq!(
            format_of(r#""response_format": {"type": "json_object"}"#),
            Some(ResponseFormat::JsonObject)
        );
        let schema = r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#;
        let Some(ResponseFormat::JsonSchema(text)) = format_of(&format!(
            r#""response_format": {{"type": "json_schema", "json_schema": {{"name": "a", "schema": {schema}, "strict": true}}}}"#
        )) else {
            panic!("no schema");
        };
        let parsed: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(schema).expect("JSON")
        );
        let completion =
            completion_of(r#"{"prompt": "x", "response_format": {"type": "json_object"}}"#)
                .expect("valid");
        assert_eq!(
            completion.request.format(),
            Some(&ResponseFormat::JsonObject)
        );
    }

    #[test]
    fn top_k_minus_one_means_off() {
        let v = chat_of(r#"{"messages": [{"role": "user", "content": "hi"}], "top_k": -1}"#)
            .expect("valid");
        assert_eq!(
            v.request,
            GenerateRequest::chat(vec![ChatMessage::user("hi")])
                .top_k(0)
                .deadline(DEADLINE)
        );
    }
}
