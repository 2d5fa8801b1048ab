"""Benchmark mode: the real worker streaming made-up tokens without running the model.

Used only by ``mlx-sidecar bench --transport-ceiling``, and only when the worker is started
with ``--synthetic-tokens SPEC``; never to answer real requests (the worker logs a warning at
start, and every reply is made-up text). It measures what the socket, both gRPC stacks and the
worker's own per-token work (detokenizing, building messages, handing them to the event loop)
can carry, with the model out of the way.

:class:`SyntheticBatchGenerator` stands in for mlx-lm's ``BatchGenerator`` inside the real
engine: the same ``insert`` / ``next`` / ``remove`` calls, the same batching limit, but each
``next()`` returns at once with ``tokens_per_step`` tokens for every running sequence (the
prompt's own ids, cycled, so detokenizing them is real work), the last one marked
``"length"`` at ``max_tokens``. Everything downstream of the engine step is the real code.

SPEC is comma-separated ``key=value``: ``tokens_per_step`` (default 1: one token per
sequence per step, as real decoding gives) and ``merge`` (default 1: the server sends all the
tokens a stream has ready as one message; 0 sends one message per token, to show what that
batching gains). Stop token ids, stop strings' token form and logprobs are not supported.
"""

from __future__ import annotations

import argparse
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSpec:
    """How the synthetic engine behaves."""

    tokens_per_step: int = 1
    merge: bool = True


def parse_spec(text: str) -> SyntheticSpec:
    """Parses ``--synthetic-tokens`` (argparse ``type``); "" or "on" means the defaults."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "on":
            continue
        key, sep, value = part.partition("=")
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not sep or key not in ("tokens_per_step", "merge") or number < 0:
            raise argparse.ArgumentTypeError(
                f"expected tokens_per_step=N (N >= 1) and/or merge=0|1, got {part!r}"
            )
        if key == "tokens_per_step":
            if number < 1:
                raise argparse.ArgumentTypeError("tokens_per_step must be >= 1")
            values[key] = number
        else:
            values[key] = bool(number)
    return SyntheticSpec(**values)


@dataclass
class _Response:
    """What ``BatchGenerator.next()`` reports per generated token (the fields the engine reads)."""

    uid: int
    token: int
    finish_reason: str | None
    logprobs: Any = None


@dataclass
class _PromptResponse:
    uid: int


@dataclass
class _Sequence:
    uid: int
    tokens: list[int]
    max_tokens: int
    generated: int = 0


class SyntheticBatchGenerator:
    """Produces made-up tokens through ``BatchGenerator``'s interface, as fast as asked."""

    def __init__(self, spec: SyntheticSpec, completion_batch_size: int) -> None:
        self._spec = spec
        self._batch_size = completion_batch_size
        self._next_uid = 0
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[int, _Sequence] = {}

    def insert(
        self, prompts: list[list[int]], max_tokens: list[int] | None = None, **_: Any
    ) -> list[int]:
        uids = []
        for i, prompt in enumerate(prompts):
            limit = max_tokens[i] if max_tokens else 128
            self._waiting.append(_Sequence(self._next_uid, list(prompt) or [0], limit))
            uids.append(self._next_uid)
            self._next_uid += 1
        return uids

    def remove(self, uids: list[int], **_: Any) -> None:
        gone = set(uids)
        for uid in gone:
            self._running.pop(uid, None)
        self._waiting = deque(s for s in self._waiting if s.uid not in gone)

    def start_generating(self, held: Any = ()) -> None:
        """Nothing to move: a synthetic sequence generates from its first step."""

    def next(self) -> tuple[list[_PromptResponse], list[_Response]]:
        started = []
        while self._waiting and len(self._running) < self._batch_size:
            seq = self._waiting.popleft()
            self._running[seq.uid] = seq
            started.append(_PromptResponse(seq.uid))
        out = []
        for seq in list(self._running.values()):
            for _ in range(self._spec.tokens_per_step):
                token = seq.tokens[seq.generated % len(seq.tokens)]
                seq.generated += 1
                done = seq.generated >= seq.max_tokens
                out.append(_Response(seq.uid, token, "length" if done else None))
                if done:
                    del self._running[seq.uid]
                    break
        return started, out


def start_synthetic(spec: SyntheticSpec, max_batch: int) -> SyntheticBatchGenerator:
    """Switches the worker into benchmark mode; returns the engine's stand-in generator."""
    from .streams import ResponseStream

    ResponseStream.one_item_per_take = not spec.merge
    log.warning(
        "BENCHMARK MODE: synthetic tokens; the model is not run and every reply is made up",
        extra={"fields": {"tokens_per_step": spec.tokens_per_step, "merge": spec.merge}},
    )
    return SyntheticBatchGenerator(spec, max_batch)
