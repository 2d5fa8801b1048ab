//! What calls return, in the crate's own types (converted from the wire types).

use mlx_sidecar_proto::v1 as pb;

/// One event of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    /// Output that became ready together (one or more tokens): one engine step's, or, with
    /// the worker's `--stream-interval-ms`, the tokens of up to one interval.
    Token {
        /// The text since the previous event (never a partial UTF-8 character or a
        /// possible stop string prefix).
        text: String,
        /// The tokens since the previous event.
        token_ids: Vec<u32>,
        /// One entry per token, when log-probabilities were asked for.
        logprobs: Vec<TokenLogprob>,
    },
    /// The last event: why generation ended, token counts and timings.
    Finished(Finished),
}

/// A generated token's log-probability and its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token_id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// Its text (a partial UTF-8 character comes out as U+FFFD); empty from a worker
    /// older than this field.
    pub text: String,
    /// Its raw bytes: the bytes of a generation's tokens, joined, are the bytes of its
    /// text, characters split across tokens included; empty from an older worker.
    pub bytes: Vec<u8>,
    /// The most likely alternatives, best first.
    pub top: Vec<TopLogprob>,
}

/// An alternative token at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    /// The token.
    pub token_id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// Its text.
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The worker cancelled the request (it is shutting down).
    Cancelled,
    /// The worker did not say (an older or newer worker).
    Unspecified,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (those delivered before a resume included).
    pub completion_tokens: u32,
    /// Prompt tokens whose KV cache was reused from an earlier request.
    pub cached_prompt_tokens: u32,
    /// How many times the stream was resumed on another worker after a worker died.
    pub resumes: u32,
    /// Of a resumed stream's delivered tokens, how many the last worker found in its
    /// prefix cache (shadowed on the standby) and did not prefill again.
    pub cached_delivered_tokens: u32,
}

/// Where a request's time went, measured in the worker (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// From arrival to the start of prompt processing.
    pub queue_wait_ms: f64,
    /// Prompt processing, until the first token was ready.
    pub prefill_ms: f64,
    /// From the first to the last generated token.
    pub decode_ms: f64,
    /// Generated tokens per second of decoding.
    pub decode_tokens_per_second: f64,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_second: f64,
    /// From arrival to the first generated token.
    pub time_to_first_token_ms: f64,
    /// From arrival to the final message.
    pub total_ms: f64,
}

/// The end of a successful generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
    /// The stop string that ended it, if one did.
    pub matched_stop: Option<String>,
    /// The token that ended it, if a stop or end-of-sequence token did.
    pub stop_token_id: Option<u32>,
    /// The request's id.
    pub request_id: String,
}

impl From<pb::GenerateFinished> for Finished {
    fn from(f: pb::GenerateFinished) -> Self {
        let finish_reason = match pb::FinishReason::try_from(f.finish_reason) {
            Ok(pb::FinishReason::Stop) => FinishReason::Stop,
            Ok(pb::FinishReason::Length) => FinishReason::Length,
            Ok(pb::FinishReason::Cancelled) => FinishReason::Cancelled,
            _ => FinishReason::Unspecified,
        };
        let usage = f.usage.map_or_else(Usage::default, |u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_prompt_tokens: u.cached_prompt_tokens,
            resumes: u.resumes,
            cached_delivered_tokens: u.cached_delivered_tokens,
        });
        let timings = f.timings.map_or_else(Timings::default, |t| Timings {
            queue_wait_ms: t.queue_wait_ms,
            prefill_ms: t.prefill_ms,
            decode_ms: t.decode_ms,
            decode_tokens_per_second: t.decode_tokens_per_second,
            prefill_tokens_per_second: t.prefill_tokens_per_second,
            time_to_first_token_ms: t.time_to_first_token_ms,
            total_ms: t.total_ms,
        });
        Finished {
            finish_reason,
            usage,
            timings,
            matched_stop: Some(f.matched_stop).filter(|s| !s.is_empty()),
            stop_token_id: f.stop_token_id,
            request_id: f.request_id,
        }
    }
}

impl From<pb::TokenLogprob> for TokenLogprob {
    fn from(l: pb::TokenLogprob) -> Self {
        TokenLogprob {
            token_id: l.token_id,
            logprob: l.logprob,
            text: l.text,
            bytes: l.bytes,
            top: l
                .top
                .into_iter()
                .map(|t| TopLogprob {
                    token_id: t.token_id,
                    logprob: t.logprob,
                    text: t.text,
                })
                .collect(),
        }
    }
}

/// A whole generation, as [`crate::GenerateStream::collect`] gathers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// All generated text.
    pub text: String,
    /// All generated tokens.
    pub token_ids: Vec<u32>,
    /// How it ended.
    pub finished: Finished,
}

/// The result of a tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The token ids.
    pub ids: Vec<u32>,
    /// The text that was tokenized (for chat: the rendered template).
    pub text: String,
}

/// The health of the worker's inference service (grpc.health.v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// It serves requests.
    Serving,
    /// It runs but does not serve (starting, draining, or its engine stopped).
    NotServing,
    /// The worker did not say.
    Unknown,
}

/// The loaded model, the device it runs on and the worker's memory use.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// A short name, such as "SmolLM2-135M-Instruct".
    pub model_id: String,
    /// The file or directory the model was loaded from.
    pub model_path: String,
    /// The architecture, such as "llama".
    pub architecture: String,
    /// "none" or MLX's quantization mode, such as "affine".
    pub quant_mode: String,
    /// Bits per weight when quantized, 0 when not.
    pub quant_bits: u32,
    /// Quantization group size, 0 when not quantized.
    pub quant_group_size: u32,
    /// The float data type ("float16", "bfloat16", "float32").
    pub dtype: String,
    /// Where the weights came from, such as "gguf:Q4_1".
    pub source_format: String,
    /// Whether quantized weights were expanded to floats at load time.
    pub dequantized: bool,
    /// Context length in tokens.
    pub context_length: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Number of parameters.
    pub parameter_count: u64,
    /// "cpu", "gpu" or "unspecified".
    pub device: String,
    /// "cpu", "metal", "cuda" or "unspecified".
    pub backend: String,
    /// Free-form device description.
    pub device_name: String,
    /// MLX's version.
    pub mlx_version: String,
    /// mlx-lm's version.
    pub mlx_lm_version: String,
    /// The worker's version.
    pub worker_version: String,
    /// The worker's Python version.
    pub python_version: String,
    /// MLX memory in use now.
    pub active_memory_bytes: u64,
    /// Peak MLX memory since start.
    pub peak_memory_bytes: u64,
    /// MLX's buffer cache.
    pub cache_memory_bytes: u64,
    /// The worker's process id.
    pub worker_pid: u32,
    /// Tokens that end generation by default.
    pub eos_token_ids: Vec<u32>,
    /// Whether the model has a chat template.
    pub has_chat_template: bool,
    /// Most sequences decoded together.
    pub max_batch_size: u32,
    /// Seconds the model took to load and warm up.
    pub load_seconds: f64,
    /// The CPU BLAS library in use, empty on GPU.
    pub cpu_blas: String,
    /// The sharded group this worker is rank 0 of; `None` when one process holds the model.
    pub shard: Option<ShardInfo>,
}

/// A model split over the processes of an `mx.distributed` group (see
/// [`ShardGroup`](crate::ShardGroup)), as a worker or a daemon describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardInfo {
    /// How many processes hold the model (0 while not known: a daemon whose ranks come
    /// from a hostfile no worker has read yet).
    pub ranks: u32,
    /// The `mx.distributed` backend: "ring" or "nccl".
    pub backend: String,
    /// Each rank's process id, by rank (rank 0 is the worker; a rank on another host, the
    /// ssh that runs it); empty while not known.
    pub pids: Vec<u32>,
}

impl From<pb::ShardInfo> for ShardInfo {
    fn from(s: pb::ShardInfo) -> Self {
        ShardInfo {
            ranks: s.ranks,
            backend: s.backend,
            pids: s.pids,
        }
    }
}

impl From<pb::ModelInfoResponse> for ModelInfo {
    fn from(m: pb::ModelInfoResponse) -> Self {
        let device = match pb::DeviceKind::try_from(m.device) {
            Ok(pb::DeviceKind::Cpu) => "cpu",
            Ok(pb::DeviceKind::Gpu) => "gpu",
            _ => "unspecified",
        };
        let backend = match pb::Backend::try_from(m.backend) {
            Ok(pb::Backend::Cpu) => "cpu",
            Ok(pb::Backend::Metal) => "metal",
            Ok(pb::Backend::Cuda) => "cuda",
            _ => "unspecified",
        };
        let q = m.quantization.unwrap_or_default();
        ModelInfo {
            model_id: m.model_id,
            model_path: m.model_path,
            architecture: m.architecture,
            quant_mode: q.mode,
            quant_bits: q.bits,
            quant_group_size: q.group_size,
            dtype: q.dtype,
            source_format: q.source_format,
            dequantized: q.dequantized,
            context_length: m.context_length,
            vocab_size: m.vocab_size,
            parameter_count: m.parameter_count,
            device: device.to_owned(),
            backend: backend.to_owned(),
            device_name: m.device_name,
            mlx_version: m.mlx_version,
            mlx_lm_version: m.mlx_lm_version,
            worker_version: m.worker_version,
            python_version: m.python_version,
            active_memory_bytes: m.active_memory_bytes,
            peak_memory_bytes: m.peak_memory_bytes,
            cache_memory_bytes: m.cache_memory_bytes,
            worker_pid: m.worker_pid,
            eos_token_ids: m.eos_token_ids,
            has_chat_template: m.has_chat_template,
            max_batch_size: m.max_batch_size,
            load_seconds: m.load_seconds,
            cpu_blas: m.cpu_blas,
            shard: m.shard.map(ShardInfo::from),
        }
    }
}
