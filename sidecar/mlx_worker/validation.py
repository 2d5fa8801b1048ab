"""Request messages → validated parameters, or a RequestFailure naming the field at fault.

Every check here runs on the event loop before a request reaches the engine, so the engine
only ever sees well-formed work. Messages start with the field path, as the proto promises:
``sampling.top_p: must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from mlx_sidecar.v1 import inference_pb2 as pb

from .continuation import check_continuation, resume_output
from .errors import RequestFailure, invalid
from .params import GenerateParams, SamplingSettings

if TYPE_CHECKING:
    from .grammar import GrammarState

MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256
MAX_TOP_LOGPROBS = 20
MAX_REQUEST_ID_CHARS = 256
MAX_STOP_TOKEN_IDS = 1024


@dataclass(frozen=True)
class ModelLimits:
    """What validation needs to know about the loaded model."""

    tokenizer: Any  # mlx_worker.model Tokenizer
    vocab_size: int  # rows of the model's output layer: token ids must be below this
    context_length: int
    eos_token_ids: frozenset[int]
    default_max_tokens: int = 256


def _fmt(value: float) -> str:
    return f"{value:g}"


def _finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise invalid(field, f"must be finite, got {_fmt(value)}")
    return float(value)


def _token_ids(field: str, ids: Iterable[int], vocab_size: int) -> list[int]:
    out = list(ids)
    for i, t in enumerate(out):
        if t >= vocab_size:
            raise invalid(
                f"{field}[{i}]", f"token id {t} is out of range (vocabulary size {vocab_size})"
            )
    return out


def render_chat(field: str, chat: pb.ChatPrompt, tokenizer: Any) -> str:
    """The chat template applied to ``chat``'s messages."""
    if not chat.messages:
        raise invalid(f"{field}.messages", "must not be empty")
    for i, m in enumerate(chat.messages):
        if not m.role:
            raise invalid(f"{field}.messages[{i}].role", "must not be empty")
    if not tokenizer.has_chat_template:
        raise invalid(field, "the model has no chat template")
    messages = [{"role": m.role, "content": m.content} for m in chat.messages]
    add_gen = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_gen)
    except Exception as e:  # the template rejected these messages (jinja raise_exception)
        raise invalid(field, f"the chat template failed: {e}") from None


def prompt_token_ids(prompt: pb.Prompt, limits: ModelLimits) -> list[int]:
    """Token ids of the prompt (text tokenized, chat rendered and tokenized, ids checked)."""
    kind = prompt.WhichOneof("input")
    tok = limits.tokenizer
    if kind == "text":
        if not prompt.text:
            raise invalid("prompt.text", "must not be empty")
        ids = tok.encode(prompt.text, add_special_tokens=True)
        if not ids:
            raise invalid("prompt.text", "tokenizes to no tokens")
        return list(ids)
    if kind == "chat":
        text = render_chat("prompt.chat", prompt.chat, tok)
        ids = tok.encode(text, add_special_tokens=False)
        if not ids:
            raise invalid("prompt.chat", "renders to no tokens")
        return list(ids)
    if kind == "tokens":
        if not prompt.tokens.ids:
            raise invalid("prompt.tokens.ids", "must not be empty")
        return _token_ids("prompt.tokens.ids", prompt.tokens.ids, limits.vocab_size)
    raise invalid("prompt", "must be one of text, chat or tokens (none known is set)")


def sampling_settings(s: pb.SamplingParams, vocab_size: int) -> SamplingSettings:
    """Checks every sampling field; unset fields take their documented defaults."""
    kw: dict[str, Any] = {}
    if s.HasField("temperature"):
        t = _finite("sampling.temperature", s.temperature)
        if t < 0:
            raise invalid("sampling.temperature", f"must be >= 0, got {_fmt(t)}")
        kw["temperature"] = t
    if s.HasField("top_p"):
        p = s.top_p
        if not (math.isfinite(p) and 0 < p <= 1):
            raise invalid("sampling.top_p", f"must be in (0, 1], got {_fmt(p)}")
        kw["top_p"] = float(p)
    if s.HasField("top_k"):
        if s.top_k < 0:
            raise invalid("sampling.top_k", f"must be >= 0, got {s.top_k}")
        kw["top_k"] = s.top_k
    if s.HasField("min_p"):
        p = s.min_p
        if not (math.isfinite(p) and 0 <= p < 1):
            raise invalid("sampling.min_p", f"must be in [0, 1), got {_fmt(p)}")
        kw["min_p"] = float(p)
    if s.HasField("repetition_penalty"):
        r = _finite("sampling.repetition_penalty", s.repetition_penalty)
        if r <= 0:
            raise invalid("sampling.repetition_penalty", f"must be > 0, got {_fmt(r)}")
        kw["repetition_penalty"] = r
    for name in ("repetition_context_size", "penalty_context_size"):
        if s.HasField(name):
            n = getattr(s, name)
            if n < 1:
                raise invalid(f"sampling.{name}", f"must be >= 1, got {n}")
            kw[name] = n
    for name in ("presence_penalty", "frequency_penalty"):
        if s.HasField(name):
            kw[name] = _finite(f"sampling.{name}", getattr(s, name))
    if s.logit_bias:
        bias: dict[int, float] = {}
        for token_id in sorted(s.logit_bias):
            field = f"sampling.logit_bias[{token_id}]"
            if token_id >= vocab_size:
                raise invalid(
                    field, f"token id {token_id} is out of range (vocabulary size {vocab_size})"
                )
            bias[token_id] = _finite(field, s.logit_bias[token_id])
        kw["logit_bias"] = bias
    if s.HasField("seed"):
        kw["seed"] = s.seed
    return SamplingSettings(**kw)


def _stop_strings(stops: Sequence[str]) -> tuple[str, ...]:
    if len(stops) > MAX_STOP_STRINGS:
        raise invalid("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    for i, s in enumerate(stops):
        n = len(s.encode("utf-8"))
        if not 1 <= n <= MAX_STOP_BYTES:
            raise invalid(f"stop[{i}]", f"must be 1 to {MAX_STOP_BYTES} bytes, got {n}")
    return tuple(stops)


def _max_tokens(request: pb.GenerateRequest, prompt_len: int, limits: ModelLimits) -> int:
    room = limits.context_length - prompt_len
    if room < 1:
        raise RequestFailure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"prompt: {prompt_len} tokens leave no room in the context of "
            f"{limits.context_length} tokens",
        )
    if not request.HasField("max_tokens"):
        return min(limits.default_max_tokens, room)
    m = request.max_tokens
    if m < 1:
        raise invalid("max_tokens", f"must be >= 1, got {m}")
    if m > room:
        raise RequestFailure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"max_tokens: {prompt_len} prompt tokens + {m} max_tokens exceed the context of "
            f"{limits.context_length} tokens",
        )
    return m


def validate_generate(request: pb.GenerateRequest, limits: ModelLimits) -> GenerateParams:
    """A checked, tokenized Generate request (raises RequestFailure)."""
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        raise invalid(
            "request_id",
            f"must be at most {MAX_REQUEST_ID_CHARS} characters, got {len(request.request_id)}",
        )
    request_id = request.request_id or uuid.uuid4().hex
    # Cheap checks first, the prompt (tokenization) last.
    if request.HasField("max_tokens") and request.max_tokens < 1:
        raise invalid("max_tokens", f"must be >= 1, got {request.max_tokens}")
    sampling = sampling_settings(request.sampling, limits.vocab_size)
    stops = _stop_strings(request.stop)
    if len(request.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise invalid(
            "stop_token_ids",
            f"at most {MAX_STOP_TOKEN_IDS} ids, got {len(request.stop_token_ids)}",
        )
    extra_stops = _token_ids("stop_token_ids", request.stop_token_ids, limits.vocab_size)
    lp = request.logprobs
    if not 0 <= lp.top_n <= MAX_TOP_LOGPROBS:
        raise invalid("logprobs.top_n", f"must be in [0, {MAX_TOP_LOGPROBS}], got {lp.top_n}")
    if lp.top_n and not lp.enabled:
        raise invalid("logprobs.top_n", "needs logprobs.enabled")
    if not request.HasField("prompt"):
        raise invalid("prompt", "must be set")
    prompt_ids = prompt_token_ids(request.prompt, limits)
    max_tokens = _max_tokens(request, len(prompt_ids), limits)
    stop_ids = frozenset(extra_stops)
    if not request.ignore_eos:
        stop_ids |= limits.eos_token_ids
    continuation = None
    if request.HasField("continuation"):
        continuation = check_continuation(
            request.continuation,
            prompt_len=len(prompt_ids),
            max_tokens=max_tokens,
            context_length=limits.context_length,
            vocab_size=limits.vocab_size,
            stop_token_ids=stop_ids,
        )
        resume_output(limits.tokenizer, prompt_ids, stops, continuation)  # checks the text
    grammar = _grammar(request, limits) if request.HasField("response_format") else None
    return GenerateParams(
        request_id=request_id,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        sampling=sampling,
        stop_strings=stops,
        stop_token_ids=stop_ids,
        logprobs=lp.enabled,
        top_logprobs=lp.top_n,
        continuation=continuation,
        grammar=grammar,
        prefill_only=request.prefill_only,
    )


def _grammar(request: pb.GenerateRequest, limits: ModelLimits) -> GrammarState:
    """The response_format compiled; for a continued stream, with the delivered tokens
    already consumed."""
    from .grammar import compile_response_format

    state = compile_response_format(request.response_format, limits.tokenizer)
    if request.HasField("continuation"):
        try:
            state.consume_delivered(list(request.continuation.delivered_token_ids))
        except ValueError as e:
            raise invalid(
                "continuation.delivered_token_ids", f"do not follow response_format: {e}"
            ) from None
    return state


def tokenize_request(request: pb.TokenizeRequest, limits: ModelLimits) -> tuple[list[int], str]:
    """(ids, text) for a Tokenize request."""
    kind = request.WhichOneof("input")
    tok = limits.tokenizer
    if kind == "text":
        add = request.add_special_tokens if request.HasField("add_special_tokens") else True
        return list(tok.encode(request.text, add_special_tokens=add)), request.text
    if kind == "chat":
        text = render_chat("chat", request.chat, tok)
        return list(tok.encode(text, add_special_tokens=False)), text
    raise invalid("input", "must be one of text or chat (none known is set)")


def detokenize_request(request: pb.DetokenizeRequest, limits: ModelLimits) -> str:
    """The text of a Detokenize request's ids."""
    vocab = min(limits.vocab_size, limits.tokenizer.vocab_size)
    ids = _token_ids("ids", request.ids, vocab)
    return limits.tokenizer.decode(ids, skip_special_tokens=request.skip_special_tokens)
