"""A request that runs alone: mlx-lm's ``generate_step`` instead of ``BatchGenerator``.

For one sequence, ``BatchGenerator`` costs more per token than mlx-lm's single-sequence
``generate_step`` (what ``stream_generate`` runs): its batched cache, per-sequence logits
processing and bookkeeping are pure overhead when the batch holds one sequence. On an H100 with
the default model, one stream decoded at about 0.7 of ``generate_step``'s rate through
``BatchGenerator``, and the engine's single stream was correspondingly slower than in-process
``stream_generate``.

So the engine runs a request that arrives while it is idle (nothing decoding, nothing queued)
and whose prompt fits in one prefill chunk as a :class:`SoloSequence`: the same model, sampler
and logits processors, its own KV cache, one token per engine step. Requests that arrive while
it runs go to the ``BatchGenerator`` as usual; each engine step then advances both. The solo
sequence never moves into the batch: it finishes where it started.

``next()`` returns objects shaped like ``BatchGenerator``'s responses (``uid``, ``token``,
``finish_reason``, ``logprobs``), so the engine treats both alike downstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class SoloResponse:
    """One generated token, as ``BatchGenerator.next()`` reports it."""

    uid: int
    token: int
    finish_reason: str | None
    logprobs: Any


class SoloSequence:
    """One sequence generated with ``generate_step``, one token per ``next()``."""

    def __init__(
        self,
        uid: int,
        model: Any,
        prompt_ids: list[int],
        max_tokens: int,
        sampler: Callable[[Any], Any],
        logits_processors: list[Callable[[Any, Any], Any]],
        stop_token_ids: frozenset[int],
        prefill_step_size: int,
    ) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        self.uid = uid
        self._max_tokens = max_tokens
        self._stop_token_ids = stop_token_ids
        self._generated = 0
        self._steps: Iterator[tuple[int, Any]] = generate_step(
            mx.array(prompt_ids),
            model,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=logits_processors or None,
            prefill_step_size=prefill_step_size,
        )

    def next(self) -> SoloResponse:
        """Generates the next token (the first call also processes the prompt)."""
        token, logprobs = next(self._steps)
        self._generated += 1
        finish = None
        if token in self._stop_token_ids:
            finish = "stop"
        elif self._generated >= self._max_tokens:
            finish = "length"
        if finish is not None:
            self.close()
        return SoloResponse(self.uid, token, finish, logprobs)

    def close(self) -> None:
        """Drops the generator (and with it the KV cache)."""
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()
