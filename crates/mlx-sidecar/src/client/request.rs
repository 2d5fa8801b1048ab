//! The requests a caller builds: [`GenerateRequest`], [`TokenizeRequest`] and
//! [`ChatMessage`], in the crate's own types, turned into the wire types on sending.

use std::{collections::HashMap, time::Duration};

use mlx_sidecar_proto::v1 as pb;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant", or another role the model's chat template knows.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

impl From<ChatMessage> for pb::ChatMessage {
    fn from(m: ChatMessage) -> Self {
        pb::ChatMessage {
            role: m.role,
            content: m.content,
        }
    }
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text, tokenized as it is.
    Text(String),
    /// A conversation rendered with the model's chat template (with the assistant's
    /// generation prompt appended, unless a request's `add_generation_prompt(false)` says
    /// otherwise).
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A JSON Schema, as JSON text (built from a `&str`, a `String` or a
/// [`serde_json::Value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSchema(String);

impl JsonSchema {
    /// The schema's JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for JsonSchema {
    fn from(text: &str) -> Self {
        JsonSchema(text.to_owned())
    }
}

impl From<String> for JsonSchema {
    fn from(text: String) -> Self {
        JsonSchema(text)
    }
}

impl From<serde_json::Value> for JsonSchema {
    fn from(value: serde_json::Value) -> Self {
        JsonSchema(value.to_string())
    }
}

impl From<&serde_json::Value> for JsonSchema {
    fn from(value: &serde_json::Value) -> Self {
        JsonSchema(value.to_string())
    }
}

/// The shape a generation's output must take: the worker masks, at each step, the tokens
/// that would break it, and ends the generation (finish reason `Stop`) once the JSON is
/// complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against this schema (the JSON Schema subset llguidance
    /// supports; the worker answers `INVALID_ARGUMENT` naming
    /// `response_format.json_schema` for an invalid or unsupported one).
    JsonSchema(JsonSchema),
}

impl ResponseFormat {
    fn to_proto(&self) -> pb::ResponseFormat {
        let format = match self {
            ResponseFormat::JsonObject => {
                pb::response_format::Format::JsonObject(pb::JsonObjectFormat {})
            }
            ResponseFormat::JsonSchema(schema) => {
                pb::response_format::Format::JsonSchema(schema.0.clone())
            }
        };
        pb::ResponseFormat {
            format: Some(format),
        }
    }
}

/// A text generation request. Build with [`GenerateRequest::text`],
/// [`GenerateRequest::chat`] or [`GenerateRequest::tokens`], then the setters; unset
/// options take the worker's defaults (greedy decoding, 256 tokens at most).
///
/// The worker validates every value and answers `INVALID_ARGUMENT` naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    prompt: Prompt,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    repetition_context_size: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    penalty_context_size: Option<u32>,
    logit_bias: HashMap<u32, f32>,
    seed: Option<u64>,
    stop: Vec<String>,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    logprobs: Option<u32>,
    add_generation_prompt: Option<bool>,
    response_format: Option<ResponseFormat>,
    deadline: Option<Duration>,
    request_id: String,
    max_resumes: Option<u32>,
    continuation: Option<Continuation>,
}

/// How many times a stream is resumed on the next worker when
/// [`GenerateRequest::max_resumes`] is not set.
pub const DEFAULT_MAX_RESUMES: u32 = 3;

/// The state of a stream cut by a worker's death, as sent to the next worker: what the
/// caller already received. The client library makes these itself when it resumes a
/// stream; a relay that receives one from its own caller passes it on with
/// [`GenerateRequest::continuation`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Continuation {
    /// Every token id the caller received so far, in order.
    pub delivered_token_ids: Vec<u32>,
    /// The UTF-8 byte length of the text the caller received so far.
    pub delivered_text_bytes: u32,
    /// How many times the stream has been resumed, this continuation included (>= 1).
    pub resume_count: u32,
}

impl From<&Continuation> for pb::Continuation {
    fn from(c: &Continuation) -> Self {
        pb::Continuation {
            delivered_token_ids: c.delivered_token_ids.clone(),
            delivered_text_bytes: c.delivered_text_bytes,
            resume_count: c.resume_count,
        }
    }
}

impl From<pb::Continuation> for Continuation {
    fn from(c: pb::Continuation) -> Self {
        Continuation {
            delivered_token_ids: c.delivered_token_ids,
            delivered_text_bytes: c.delivered_text_bytes,
            resume_count: c.resume_count,
        }
    }
}

impl GenerateRequest {
    fn new(prompt: Prompt) -> Self {
        GenerateRequest {
            prompt,
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            repetition_context_size: None,
            presence_penalty: None,
            frequency_penalty: None,
            penalty_context_size: None,
            logit_bias: HashMap::new(),
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            add_generation_prompt: None,
            response_format: None,
            deadline: None,
            request_id: String::new(),
            max_resumes: None,
            continuation: None,
        }
    }

    /// Continues plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Prompt::Text(text.into()))
    }

    /// Answers a conversation (the model's chat template is applied).
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Prompt::Chat(messages))
    }

    /// Continues token ids.
    pub fn tokens(ids: Vec<u32>) -> Self {
        Self::new(Prompt::Tokens(ids))
    }

    /// The prompt.
    pub fn prompt(&self) -> &Prompt {
        &self.prompt
    }

    /// Most tokens to generate (the worker requires at least 1).
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sampling temperature (0 is greedy).
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Nucleus sampling threshold, in (0, 1].
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sample among the `k` most likely tokens (0 is off).
    pub fn top_k(mut self, k: u32) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Minimum probability relative to the most likely token, in [0, 1).
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = Some(p);
        self
    }

    /// Repetition penalty (> 0; 1 is off).
    pub fn repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = Some(penalty);
        self
    }

    /// How many recent tokens the repetition penalty looks at (>= 1; the worker's
    /// default is 20).
    pub fn repetition_context_size(mut self, tokens: u32) -> Self {
        self.repetition_context_size = Some(tokens);
        self
    }

    /// Presence penalty (0 is off).
    pub fn presence_penalty(mut self, penalty: f32) -> Self {
        self.presence_penalty = Some(penalty);
        self
    }

    /// Frequency penalty (0 is off).
    pub fn frequency_penalty(mut self, penalty: f32) -> Self {
        self.frequency_penalty = Some(penalty);
        self
    }

    /// How many recent tokens the presence and frequency penalties look at (>= 1; the
    /// worker's default is 64).
    pub fn penalty_context_size(mut self, tokens: u32) -> Self {
        self.penalty_context_size = Some(tokens);
        self
    }

    /// Adds `bias` to the logit of `token_id`.
    pub fn logit_bias(mut self, token_id: u32, bias: f32) -> Self {
        self.logit_bias.insert(token_id, bias);
        self
    }

    /// Seed of the request's random generator (same seed, same tokens).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Stops before this string (may be given up to 16 times).
    pub fn stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// Extra token ids that end generation.
    pub fn stop_token_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.stop_token_ids.extend(ids);
        self
    }

    /// Keep generating past end-of-sequence tokens.
    pub fn ignore_eos(mut self, ignore: bool) -> Self {
        self.ignore_eos = ignore;
        self
    }

    /// Report each token's log-probability (with its text and bytes) and the `top_n`
    /// most likely alternatives (0 to 20; 0 reports the token's own only).
    pub fn logprobs(mut self, top_n: u32) -> Self {
        self.logprobs = Some(top_n);
        self
    }

    /// For a chat prompt: whether the chat template appends the start of the assistant's
    /// turn (default true). `false` renders the conversation as it is, for example to
    /// continue an assistant message. Ignored for text and token prompts.
    pub fn add_generation_prompt(mut self, add: bool) -> Self {
        self.add_generation_prompt = Some(add);
        self
    }

    /// The output must be a JSON object (OpenAI's `response_format: json_object`).
    pub fn json_object(self) -> Self {
        self.response_format(ResponseFormat::JsonObject)
    }

    /// The output must be JSON that validates against `schema` (JSON text or a
    /// [`serde_json::Value`]).
    pub fn json_schema(self, schema: impl Into<JsonSchema>) -> Self {
        self.response_format(ResponseFormat::JsonSchema(schema.into()))
    }

    /// Constrains the output's shape (see [`ResponseFormat`]).
    pub fn response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// The output's required shape, if any.
    pub fn format(&self) -> Option<&ResponseFormat> {
        self.response_format.as_ref()
    }

    /// Deadline of the whole call: waiting for the worker, retries and the stream
    /// (default: the client's generate timeout).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// An id for the worker's logs (it makes one when empty).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    /// How many times the stream may be resumed on the next ready worker (restarted or
    /// standby) when the worker serving it dies after output began (default
    /// [`DEFAULT_MAX_RESUMES`], 3). The next worker gets the original request plus the
    /// token ids already delivered and continues with the next token, so the caller's
    /// stream goes on with no event repeated or missing; greedy and seeded streams give
    /// the tokens of an uninterrupted run. Resuming happens within the request's deadline;
    /// past the limit or the deadline the stream ends with [`crate::Error::WorkerDied`].
    /// 0 turns resuming off (see [`GenerateRequest::no_resume`]).
    pub fn max_resumes(mut self, n: u32) -> Self {
        self.max_resumes = Some(n);
        self
    }

    /// Never resume this stream on another worker: a worker's death after output began
    /// ends it with [`crate::Error::WorkerDied`] (the same as `max_resumes(0)`).
    pub fn no_resume(self) -> Self {
        self.max_resumes(0)
    }

    /// Continues a stream cut earlier: the next worker treats `continuation`'s tokens as
    /// already generated and sends only what follows them. For relays (such as the
    /// `mlx-sidecar serve` daemon) that pass on a continuation their own caller sent;
    /// resumes this client makes count on from `continuation.resume_count`.
    pub fn continuation(mut self, continuation: Continuation) -> Self {
        self.continuation = Some(continuation);
        self
    }

    /// The resume limit in effect: [`GenerateRequest::max_resumes`] or the default.
    pub(crate) fn resume_limit(&self) -> u32 {
        self.max_resumes.unwrap_or(DEFAULT_MAX_RESUMES)
    }

    /// The continuation this request starts from, if any.
    pub(crate) fn initial_continuation(&self) -> Option<&Continuation> {
        self.continuation.as_ref()
    }

    pub(crate) fn deadline_or(&self, default: Duration) -> Duration {
        self.deadline.unwrap_or(default)
    }

    pub(crate) fn to_proto(&self) -> pb::GenerateRequest {
        let input = match &self.prompt {
            Prompt::Text(text) => pb::prompt::Input::Text(text.clone()),
            Prompt::Chat(messages) => {
                pb::prompt::Input::Chat(chat_prompt(messages, self.add_generation_prompt))
            }
            Prompt::Tokens(ids) => pb::prompt::Input::Tokens(pb::TokenIds { ids: ids.clone() }),
        };
        pb::GenerateRequest {
            prompt: Some(pb::Prompt { input: Some(input) }),
            sampling: Some(pb::SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k.map(saturating_i32),
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                repetition_context_size: self.repetition_context_size.map(saturating_i32),
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                penalty_context_size: self.penalty_context_size.map(saturating_i32),
                logit_bias: self.logit_bias.clone(),
                seed: self.seed,
            }),
            max_tokens: self.max_tokens.map(saturating_i32),
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs.map(|top_n| pb::LogprobsOptions {
                enabled: true,
                top_n: saturating_i32(top_n),
            }),
            request_id: self.request_id.clone(),
            continuation: self.continuation.as_ref().map(Into::into),
            max_resumes: self.max_resumes,
            response_format: self.response_format.as_ref().map(ResponseFormat::to_proto),
            prefill_only: None,
        }
    }
}

fn saturating_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn chat_prompt(messages: &[ChatMessage], add_generation_prompt: Option<bool>) -> pb::ChatPrompt {
    pb::ChatPrompt {
        messages: messages.iter().cloned().map(Into::into).collect(),
        add_generation_prompt,
    }
}

/// A tokenization request: plain text or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeRequest {
    input: Prompt,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

impl TokenizeRequest {
    /// Tokenizes plain text (with the tokenizer's special tokens such as BOS, unless
    /// turned off with [`TokenizeRequest::add_special_tokens`]).
    pub fn text(text: impl Into<String>) -> Self {
        TokenizeRequest {
            input: Prompt::Text(text.into()),
            add_special_tokens: None,
            add_generation_prompt: None,
        }
    }

    /// Renders a conversation with the model's chat template, then tokenizes it.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        TokenizeRequest {
            input: Prompt::Chat(messages),
            add_special_tokens: None,
            add_generation_prompt: None,
        }
    }

    /// Whether to add special tokens to plain text (default true; ignored for chat,
    /// whose template decides).
    pub fn add_special_tokens(mut self, add: bool) -> Self {
        self.add_special_tokens = Some(add);
        self
    }

    /// For a conversation: whether the chat template appends the start of the
    /// assistant's turn (default true). Ignored for plain text.
    pub fn add_generation_prompt(mut self, add: bool) -> Self {
        self.add_generation_prompt = Some(add);
        self
    }

    pub(crate) fn to_proto(&self) -> pb::TokenizeRequest {
        let input = match &self.input {
            Prompt::Text(text) => Some(pb::tokenize_request::Input::Text(text.clone())),
            Prompt::Chat(messages) => Some(pb::tokenize_request::Input::Chat(chat_prompt(
                messages,
                self.add_generation_prompt,
            ))),
            // Not constructible through the public API.
            Prompt::Tokens(_) => None,
        };
        pb::TokenizeRequest {
            input,
            add_special_tokens: self.add_special_tokens,
        }
    }
}

impl From<&str> for TokenizeRequest {
    fn from(text: &str) -> Self {
        TokenizeRequest::text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_of(request: &GenerateRequest) -> Option<pb::response_format::Format> {
        request.to_proto().response_format.and_then(|f| f.format)
    }

    #[test]
    fn response_format_goes_on_the_wire() {
        assert_eq!(format_of(&GenerateRequest::text("x")), None);
        assert_eq!(
            format_of(&GenerateRequest::text("x").json_object()),
            Some(pb::response_format::Format::JsonObject(
                pb::JsonObjectFormat {}
            ))
        );
        let schema = serde_json::json!({"type": "object", "required": ["a"]});
        let from_value = GenerateRequest::text("x").json_schema(&schema);
        let from_text = GenerateRequest::text("x").json_schema(schema.to_string().as_str());
        let Some(pb::response_format::Format::JsonSchema(text)) = format_of(&from_value) else {
            panic!("no json_schema on the wire");
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).ok(),
            Some(schema)
        );
        assert_eq!(format_of(&from_text), format_of(&from_value));
        assert_eq!(
            from_value.format(),
            Some(&ResponseFormat::JsonSchema(JsonSchema(text)))
        );
    }
}
