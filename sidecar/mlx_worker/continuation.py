"""A continuation's output side: checking it, and the text state as if this worker had sent it.

A stream cut by a worker's death comes back as the original request plus
``GenerateRequest.continuation``: the token ids the caller received and how many bytes of
their text it got. :func:`check_continuation` validates those against the request (on the event
loop, like any field); :func:`resume_output` replays the delivered tokens through a fresh
detokenizer and stop-string filter, so that the next token's text joins the delivered text
(no broken UTF-8, a stop string half matched at the seam still matches) and the text the
caller has not got yet is sent first. The model side (KV cache, sampler) is
:mod:`mlx_worker.engine.continuation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from mlx_sidecar.v1 import inference_pb2 as pb

from .detokenize import IncrementalDetokenizer, StopStringFilter
from .errors import RequestFailure, invalid
from .params import Continuation

FIELD = "continuation"


@dataclass
class ResumedOutput:
    """The output state after the delivered tokens, and where the caller's text stands."""

    detok: IncrementalDetokenizer
    stops: StopStringFilter
    # Text the replay emitted past delivered_text_bytes: the caller has not got it, so it goes
    # out with the next chunk.
    unsent_text: str
    # Bytes the caller got beyond what the replay emitted (a worker that held back less):
    # dropped from the start of the text that follows.
    bytes_to_skip: int


def resume_output(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    stop_strings: Sequence[str],
    continuation: Continuation,
) -> ResumedOutput:
    """Replays the delivered tokens' text; raises INVALID_ARGUMENT if their text holds a stop
    string (the stream had ended) or the text offset is not one of it."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    stops = StopStringFilter(stop_strings)
    emitted: list[str] = []
    for i, token in enumerate(continuation.delivered_ids):
        text = detok.add([token])
        if not text:
            continue
        safe, matched = stops.feed(text)
        if matched is not None:
            raise invalid(
                f"{FIELD}.delivered_token_ids",
                f"their text holds the stop string {matched!r} (at token {i}): the stream had "
                "ended",
            )
        emitted.append(safe)
    sent = "".join(emitted).encode("utf-8")
    whole = sent + (stops.held + detok.pending()).encode("utf-8")
    offset = continuation.delivered_text_bytes
    if offset > len(whole):
        raise invalid(
            f"{FIELD}.delivered_text_bytes",
            f"{offset} is beyond the delivered tokens' text ({len(whole)} bytes)",
        )
    try:
        whole[:offset].decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(
            f"{FIELD}.delivered_text_bytes",
            f"{offset} is not on a character boundary of the delivered tokens' text",
        ) from None
    if offset <= len(sent):
        return ResumedOutput(detok, stops, sent[offset:].decode("utf-8"), 0)
    return ResumedOutput(detok, stops, "", offset - len(sent))


def check_continuation(
    message: pb.Continuation,
    *,
    prompt_len: int,
    max_tokens: int,
    context_length: int,
    vocab_size: int,
    stop_token_ids: frozenset[int],
) -> Continuation:
    """The checked continuation of a request whose other fields passed (raises
    RequestFailure naming the field)."""
    if message.resume_count < 1:
        raise invalid(f"{FIELD}.resume_count", f"must be >= 1, got {message.resume_count}")
    ids = list(message.delivered_token_ids)
    for i, token in enumerate(ids):
        where = f"{FIELD}.delivered_token_ids[{i}]"
        if token >= vocab_size:
            raise invalid(where, f"token id {token} is out of range (vocabulary size {vocab_size})")
        if token in stop_token_ids:
            raise invalid(where, f"token id {token} is a stop token: the stream had ended")
    if prompt_len + len(ids) >= context_length:
        raise RequestFailure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{FIELD}: {prompt_len} prompt tokens + {len(ids)} delivered tokens leave no room "
            f"in the context of {context_length} tokens",
        )
    if len(ids) >= max_tokens:
        raise invalid(
            f"{FIELD}.delivered_token_ids",
            f"{len(ids)} delivered tokens reach max_tokens ({max_tokens}): the stream had ended",
        )
    if not ids and message.delivered_text_bytes:
        raise invalid(
            f"{FIELD}.delivered_text_bytes",
            f"must be 0 without delivered tokens, got {message.delivered_text_bytes}",
        )
    return Continuation(tuple(ids), message.delivered_text_bytes, message.resume_count)
