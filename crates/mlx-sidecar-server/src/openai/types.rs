//! OpenAI's request and response bodies as serde types.
//!
//! Requests tolerate unknown fields (OpenAI clients send ones a local server does not
//! know, such as `user` or `tools`), and every optional field accepts `null`. The
//! parameters named here are the ones mlx-lm's server accepts, plus vLLM's `ignore_eos`
//! and `stop_token_ids` extensions; `validation` turns them into a library request.
//! Responses follow OpenAI's shapes field for field.

use serde::{Deserialize, Serialize, ser::SerializeMap};

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct StreamOptions {
    /// Adds a last chunk carrying the usage (and empty `choices`) before `[DONE]`.
    pub(crate) include_usage: Option<bool>,
}

/// A message's `content`: a string, or a list of parts of which only text parts are
/// supported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts such as `{"type": "text", "text": "..."}`.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ContentPart {
    /// `"text"` (others, such as `"image_url"`, are refused).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The text of a text part.
    pub(crate) text: Option<String>,
}

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ChatMessageIn {
    /// `system`, `user`, `assistant`, or another role the chat template knows.
    pub(crate) role: String,
    /// The content; `null` (an assistant message with tool calls) counts as empty.
    pub(crate) content: Option<MessageContent>,
}

/// `response_format`: `{"type": "text"}` (free text), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ResponseFormatIn {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// With `json_schema`: the schema and its name.
    pub(crate) json_schema: Option<JsonSchemaIn>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct JsonSchemaIn {
    /// The schema's name (OpenAI requires it; it changes nothing here).
    pub(crate) name: Option<String>,
    /// The JSON Schema the output must validate against.
    pub(crate) schema: Option<serde_json::Value>,
    /// OpenAI's strict mode; the schema is always enforced here, so it changes nothing.
    pub(crate) strict: Option<bool>,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    /// The model: the served model's id, `"default"`, or absent.
    pub(crate) model: Option<String>,
    /// The conversation.
    pub(crate) messages: Vec<ChatMessageIn>,
    /// Most tokens to generate (OpenAI's newer name; wins over `max_tokens`).
    pub(crate) max_completion_tokens: Option<i64>,
    /// Most tokens to generate.
    pub(crate) max_tokens: Option<i64>,
    /// Sampling temperature (0 is greedy).
    pub(crate) temperature: Option<f64>,
    /// Nucleus sampling threshold.
    pub(crate) top_p: Option<f64>,
    /// Sample among the k most likely tokens (0 or -1: off).
    pub(crate) top_k: Option<i64>,
    /// Minimum probability relative to the most likely token.
    pub(crate) min_p: Option<f64>,
    /// Presence penalty.
    pub(crate) presence_penalty: Option<f64>,
    /// Frequency penalty.
    pub(crate) frequency_penalty: Option<f64>,
    /// Repetition penalty (1 is off).
    pub(crate) repetition_penalty: Option<f64>,
    /// Token id (as a string) → bias added to its logit.
    pub(crate) logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    /// Seed of the request's random generator.
    pub(crate) seed: Option<i64>,
    /// Stop strings.
    pub(crate) stop: Option<Stop>,
    /// Extra token ids that end generation (vLLM's extension).
    pub(crate) stop_token_ids: Option<Vec<i64>>,
    /// Keep generating past end-of-sequence tokens (vLLM's extension).
    pub(crate) ignore_eos: Option<bool>,
    /// How many times a stream cut by a worker's death may resume (our extension; 0 opts out).
    pub(crate) max_resumes: Option<u32>,
    /// Number of choices: only 1.
    pub(crate) n: Option<i64>,
    /// Stream the answer as server-sent events.
    pub(crate) stream: Option<bool>,
    /// Streaming options.
    pub(crate) stream_options: Option<StreamOptions>,
    /// Return each generated token's log-probability.
    pub(crate) logprobs: Option<bool>,
    /// With `logprobs`: this many most likely alternatives per token.
    pub(crate) top_logprobs: Option<i64>,
    /// The output's shape: free text, any JSON object, or JSON following a schema.
    pub(crate) response_format: Option<ResponseFormatIn>,
}

/// `prompt` of a completion: text, or token ids; a list of one of either.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptIn {
    /// Text.
    Text(String),
    /// A batch of texts (only one is supported).
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A batch of token id lists (only one is supported).
    TokenLists(Vec<Vec<u32>>),
}

/// The body of `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct CompletionRequest {
    /// The model: the served model's id, `"default"`, or absent.
    pub(crate) model: Option<String>,
    /// The prompt.
    pub(crate) prompt: PromptIn,
    /// Most tokens to generate.
    pub(crate) max_tokens: Option<i64>,
    /// Sampling temperature (0 is greedy).
    pub(crate) temperature: Option<f64>,
    /// Nucleus sampling threshold.
    pub(crate) top_p: Option<f64>,
    /// Sample among the k most likely tokens (0 or -1: off).
    pub(crate) top_k: Option<i64>,
    /// Minimum probability relative to the most likely token.
    pub(crate) min_p: Option<f64>,
    /// Presence penalty.
    pub(crate) presence_penalty: Option<f64>,
    /// Frequency penalty.
    pub(crate) frequency_penalty: Option<f64>,
    /// Repetition penalty (1 is off).
    pub(crate) repetition_penalty: Option<f64>,
    /// Token id (as a string) → bias added to its logit.
    pub(crate) logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    /// Seed of the request's random generator.
    pub(crate) seed: Option<i64>,
    /// Stop strings.
    pub(crate) stop: Option<Stop>,
    /// Extra token ids that end generation (vLLM's extension).
    pub(crate) stop_token_ids: Option<Vec<i64>>,
    /// Keep generating past end-of-sequence tokens (vLLM's extension).
    pub(crate) ignore_eos: Option<bool>,
    /// How many times a stream cut by a worker's death may resume (our extension; 0 opts out).
    pub(crate) max_resumes: Option<u32>,
    /// Number of choices: only 1.
    pub(crate) n: Option<i64>,
    /// Server-side candidates: only 1.
    pub(crate) best_of: Option<i64>,
    /// Echo the prompt: not supported.
    pub(crate) echo: Option<bool>,
    /// Text after the completion: not supported.
    pub(crate) suffix: Option<String>,
    /// Stream the answer as server-sent events.
    pub(crate) stream: Option<bool>,
    /// Streaming options.
    pub(crate) stream_options: Option<StreamOptions>,
    /// Return log-probabilities with this many alternatives per token (0: only the
    /// generated token's).
    pub(crate) logprobs: Option<i64>,
    /// The output's shape: free text, any JSON object, or JSON following a schema.
    pub(crate) response_format: Option<ResponseFormatIn>,
}

/// Token counts of a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct UsageOut {
    /// Tokens in the prompt.
    pub(crate) prompt_tokens: u32,
    /// Tokens generated.
    pub(crate) completion_tokens: u32,
    /// Their sum.
    pub(crate) total_tokens: u32,
    /// Details of the prompt's tokens: how many came from the worker's prefix cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prompt_tokens_details: Option<PromptTokensDetails>,
}

impl From<mlx_sidecar::Usage> for UsageOut {
    fn from(u: mlx_sidecar::Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: u.cached_prompt_tokens,
            }),
        }
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PromptTokensDetails {
    /// Prompt tokens served from a cache.
    pub(crate) cached_tokens: u32,
}

/// An alternative token in chat's logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatTopLogprob {
    /// The token's text.
    pub(crate) token: String,
    /// Its log-probability.
    pub(crate) logprob: f32,
    /// The UTF-8 bytes of its text.
    pub(crate) bytes: Vec<u8>,
}

/// One generated token in chat's logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatTokenLogprob {
    /// The token's text.
    pub(crate) token: String,
    /// Its log-probability.
    pub(crate) logprob: f32,
    /// The UTF-8 bytes of its text.
    pub(crate) bytes: Vec<u8>,
    /// The most likely alternatives, best first.
    pub(crate) top_logprobs: Vec<ChatTopLogprob>,
}

/// `choices[].logprobs` of a chat response or chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatLogprobs {
    /// One entry per generated token.
    pub(crate) content: Vec<ChatTokenLogprob>,
    /// Always `null`: there are no refusals.
    pub(crate) refusal: Option<String>,
}

/// The assistant's message in a chat response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatMessageOut {
    /// Always `assistant`.
    pub(crate) role: &'static str,
    /// The generated text.
    pub(crate) content: String,
}

/// One choice of a chat response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatChoice {
    /// Always 0.
    pub(crate) index: u32,
    /// The answer.
    pub(crate) message: ChatMessageOut,
    /// Log-probabilities, when asked for.
    pub(crate) logprobs: Option<ChatLogprobs>,
    /// `stop` or `length` (a cancelled generation is answered as an error).
    pub(crate) finish_reason: &'static str,
}

/// The body of a non-streaming chat response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatCompletion {
    /// `chatcmpl-…`.
    pub(crate) id: String,
    /// Always `chat.completion`.
    pub(crate) object: &'static str,
    /// Unix time of the request, in seconds.
    pub(crate) created: u64,
    /// The served model's id.
    pub(crate) model: String,
    /// The one choice.
    pub(crate) choices: Vec<ChatChoice>,
    /// Token counts.
    pub(crate) usage: UsageOut,
}

/// The `delta` of a chat chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ChatDelta {
    /// `assistant` in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
}

/// One choice of a chat chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatChunkChoice {
    /// Always 0.
    pub(crate) index: u32,
    /// What is new.
    pub(crate) delta: ChatDelta,
    /// Log-probabilities of this chunk's tokens, when asked for.
    pub(crate) logprobs: Option<ChatLogprobs>,
    /// Set in the last chunk of the choice.
    pub(crate) finish_reason: Option<&'static str>,
}

/// One server-sent event of a streaming chat response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatCompletionChunk {
    /// The same id in every chunk.
    pub(crate) id: String,
    /// Always `chat.completion.chunk`.
    pub(crate) object: &'static str,
    /// Unix time of the request, in seconds.
    pub(crate) created: u64,
    /// The served model's id.
    pub(crate) model: String,
    /// One choice, or none in the usage chunk.
    pub(crate) choices: Vec<ChatChunkChoice>,
    /// With `include_usage`: `null` in every chunk but the last, which has the counts.
    /// Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<UsageOut>>,
}

/// Alternatives at one position in a completion's logprobs: token text → log-probability,
/// best first (a JSON object, in that order).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TopLogprobsMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobsMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

/// `choices[].logprobs` of a completion (OpenAI's legacy shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct CompletionLogprobs {
    /// Each generated token's text.
    pub(crate) tokens: Vec<String>,
    /// Each generated token's log-probability.
    pub(crate) token_logprobs: Vec<f32>,
    /// Each position's alternatives.
    pub(crate) top_logprobs: Vec<TopLogprobsMap>,
    /// Each token's character offset in the completion's text.
    pub(crate) text_offset: Vec<usize>,
}

/// One choice of a completion or a completion chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CompletionChoice {
    /// The generated text (in a chunk: the new text).
    pub(crate) text: String,
    /// Always 0.
    pub(crate) index: u32,
    /// Log-probabilities, when asked for.
    pub(crate) logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; `null` in chunks before the last.
    pub(crate) finish_reason: Option<&'static str>,
}

/// The body of a completion, and each event of a streaming one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Completion {
    /// `cmpl-…`.
    pub(crate) id: String,
    /// Always `text_completion`.
    pub(crate) object: &'static str,
    /// Unix time of the request, in seconds.
    pub(crate) created: u64,
    /// The served model's id.
    pub(crate) model: String,
    /// The one choice, or none in a streaming usage chunk.
    pub(crate) choices: Vec<CompletionChoice>,
    /// Always set in a non-streaming response; in chunks as for chat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<UsageOut>>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ModelCard {
    /// The model id requests name.
    pub(crate) id: String,
    /// Always `model`.
    pub(crate) object: &'static str,
    /// Unix time the daemon started serving it.
    pub(crate) created: u64,
    /// Always `mlx-sidecar`.
    pub(crate) owned_by: &'static str,
}

/// The body of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ModelList {
    /// Always `list`.
    pub(crate) object: &'static str,
    /// The served model.
    pub(crate) data: Vec<ModelCard>,
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    /// The error.
    pub(crate) error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    /// What went wrong, for a person.
    pub(crate) message: String,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`, …
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The request parameter at fault, when one is.
    pub(crate) param: Option<String>,
    /// A machine-readable code, such as `model_not_found` or `context_length_exceeded`.
    pub(crate) code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_tolerate_unknown_fields_and_nulls() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}],
            "user":"u","tools":[],"temperature":null,"stop":["a","b"],"stream_options":{"include_usage":true,"x":1}}"#;
        let req: ChatCompletionRequest = serde_json::from_str(body).expect("parse");
        assert_eq!(req.temperature, None);
        assert_eq!(req.stop, Some(Stop::Many(vec!["a".into(), "b".into()])));
        assert_eq!(req.stream_options.and_then(|o| o.include_usage), Some(true));
        let parts =
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"stop":"x"}"#;
        let req: ChatCompletionRequest = serde_json::from_str(parts).expect("parse");
        assert!(matches!(
            req.messages[0].content,
            Some(MessageContent::Parts(_))
        ));
        assert_eq!(req.stop, Some(Stop::One("x".into())));
    }

    #[test]
    fn completion_prompts_of_every_form_parse() {
        for (body, expected) in [
            (r#"{"prompt":"a"}"#, PromptIn::Text("a".into())),
            (r#"{"prompt":["a"]}"#, PromptIn::Texts(vec!["a".into()])),
            (r#"{"prompt":[1,2]}"#, PromptIn::Tokens(vec![1, 2])),
            (
                r#"{"prompt":[[1,2]]}"#,
                PromptIn::TokenLists(vec![vec![1, 2]]),
            ),
        ] {
            let req: CompletionRequest = serde_json::from_str(body).expect(body);
            assert_eq!(req.prompt, expected, "{body}");
        }
    }

    #[test]
    fn chunks_carry_usage_only_when_asked() {
        let mut chunk = ChatCompletionChunk {
            id: "c".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: None,
        };
        let json = serde_json::to_value(&chunk).expect("json");
        assert!(json.get("usage").is_none(), "{json}");
        chunk.usage = Some(None);
        let json = serde_json::to_value(&chunk).expect("json");
        assert!(
            json["usage"].is_null() && json.get("usage").is_some(),
            "{json}"
        );
    }

    #[test]
    fn top_logprobs_keep_their_order() {
        let map = TopLogprobsMap(vec![("b".into(), -0.5), ("a".into(), -1.0)]);
        assert_eq!(
            serde_json::to_string(&map).expect("json"),
            r#"{"b":-0.5,"a":-1.0}"#
        );
    }
}
