"""Structured output: a request's ``response_format`` as an llguidance matcher.

Validation (:func:`compile_response_format`) turns ``GenerateRequest.response_format`` into
a :class:`GrammarState`: the JSON schema (or "any object") compiled by llguidance against the
model's vocabulary, ready to follow the output token by token. An invalid or unsupported
schema is INVALID_ARGUMENT naming ``response_format.json_schema``. The engine masks each step's
logits with the state's allowed tokens (``engine/grammar_mask.py``), feeds it each generated
token, and ends the request with finish reason STOP once the JSON is complete. A continued
stream rebuilds the state by consuming the tokens already delivered
(:meth:`GrammarState.consume_delivered`, called by validation for
``GenerateRequest.continuation``); the engine then only needs those tokens in the sequence's
history before its first step (as prompt), since the mask takes everything it sees at its
first call as already consumed.

The llguidance tokenizer is built from the worker's ``tokenizers`` tokenizer (Hugging Face
directories and GGUF files alike) on the first constrained request and kept with it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from mlx_sidecar.v1 import inference_pb2 as pb

from .errors import invalid

MAX_SCHEMA_BYTES = 256 * 1024

# Whitespace between JSON tokens: any JSON whitespace, but at most 20 characters in a row
# (enough for a newline and indentation), so that a model cannot loop on blanks forever.
_WHITESPACE = r"[\x20\x0A\x0D\x09]{0,20}"

_tokenizer_lock = threading.Lock()


def grammar_tokenizer(tokenizer: Any) -> Any:
    """The llguidance tokenizer of the worker's tokenizer (built once, ~0.3 s for 49k tokens,
    then kept on it)."""
    cached = getattr(tokenizer, "_llguidance", None)
    if cached is not None:
        return cached
    with _tokenizer_lock:
        cached = getattr(tokenizer, "_llguidance", None)
        if cached is None:
            import llguidance

            cached = llguidance.LLTokenizer(
                tokenizer.backend_json(),
                n_vocab=tokenizer.vocab_size,
                eos_token=sorted(tokenizer.eos_token_ids),
            )
            tokenizer._llguidance = cached
    return cached


class GrammarState:
    """Follows one request's output through its grammar (an llguidance ``LLMatcher``).

    Tokens reach it two ways: the logits processor feeds the tokens it finds new in the
    sequence's history (:meth:`feed_history`), and the engine reports each generated token
    (:meth:`observe`); a token is consumed once, by whichever sees it first.
    """

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size  # the tokenizer's: ids at or above it are never allowed
        self._base: int | None = None  # history length at the first mask (prompt + delivered)
        self._fed = 0  # generated tokens consumed
        self._observed = 0  # generated tokens reported by the engine
        self.error: str | None = None

    @property
    def is_complete(self) -> bool:
        """Whether the output is complete: the grammar accepts nothing more but EOS."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def consume_delivered(self, token_ids: list[int]) -> None:
        """Rebuilds the state of a continued stream from the tokens already delivered
        (before any decoding); ValueError if they do not follow the grammar."""
        if self._base is not None or self._fed:
            raise RuntimeError("consume_delivered after decoding started")
        if token_ids and not self._matcher.consume_tokens(list(token_ids)):
            raise ValueError(self._matcher.get_error() or "the tokens do not follow the grammar")

    def delivered_are_replayed(self, count: int) -> None:
        """The engine decodes the ``count`` delivered tokens again as generated ones (the
        "replay" resume method), so they reach the history and the engine's reports after
        :meth:`consume_delivered` took them: count them as fed and observed already."""
        self._fed = self._observed = count

    def feed_history(self, history_length: int, tail: Any) -> None:
        """Consumes the generated tokens of a history of ``history_length`` tokens not
        consumed yet; ``tail(n)`` gives the last n tokens of it as a list."""
        if self._base is None:
            self._base = history_length  # the first mask: everything so far is the prompt
            return
        new = history_length - self._base - self._fed
        if new > 0:
            self._consume(tail(new))

    def allowed(self) -> np.ndarray:
        """The tokens allowed next: a 0/1 uint8 array of ``vocab_size``."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.vocab_size]

    def observe(self, token: int) -> bool:
        """The engine's report of a generated token; whether the output is now complete.
        RuntimeError if the grammar broke (that request fails, the others go on)."""
        self._observed += 1
        if self._fed < self._observed:
            self._consume([token])
        if self.error is not None:
            raise RuntimeError(f"response_format: the grammar failed: {self.error}")
        return self.is_complete

    def _consume(self, tokens: list[int]) -> None:
        self._fed += len(tokens)
        if self.error is None and not self._matcher.consume_tokens(tokens):
            self.error = self._matcher.get_error() or f"tokens {tokens} were not allowed"


def _schema_text(fmt: pb.ResponseFormat) -> tuple[str, str]:
    """(field, JSON schema text) of a response format."""
    kind = fmt.WhichOneof("format")
    if kind == "json_object":
        return "response_format.json_object", '{"type": "object"}'
    if kind == "json_schema":
        field = "response_format.json_schema"
        text = fmt.json_schema
        if not text.strip():
            raise invalid(field, "must not be empty")
        if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
            raise invalid(field, f"must be at most {MAX_SCHEMA_BYTES} bytes")
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise invalid(field, f"is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise invalid(field, f"must be a JSON object (a schema), got {json.dumps(schema)[:40]}")
        return field, text
    raise invalid("response_format", "must be one of json_object or json_schema (none is set)")


def compile_response_format(fmt: pb.ResponseFormat, tokenizer: Any) -> GrammarState:
    """A fresh grammar state for ``fmt`` (raises RequestFailure INVALID_ARGUMENT naming the
    field when the schema is invalid or uses what llguidance does not support)."""
    import llguidance

    field, text = _schema_text(fmt)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            text, defaults={"whitespace_pattern": _WHITESPACE}
        )
    except ValueError as e:
        raise invalid(field, str(e)) from None
    lltok = grammar_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        raise invalid(field, _short_error(matcher.get_error()))
    return GrammarState(matcher, lltok.vocab_size)


def _short_error(message: str) -> str:
    """llguidance's error without its wrapping ("Grammar error: ..."), on one line."""
    return " ".join(message.split())
