"""A request that runs alone: one sequence, one KV cache, no ``BatchGenerator``.

For one sequence ``BatchGenerator`` costs more per token than mlx-lm's single-sequence
``generate_step`` (its batched cache and bookkeeping are overhead for a batch of one), so with
``--solo on`` (the default) a request that finds the engine idle runs as a
:class:`SoloSequence`: ``generate_step``'s loop on a plain ``KVCache``, the next token computed
while the current one is handed out. When another request arrives, ``hand_over`` gives
the batch what it needs to continue the sequence from its own cache; it never runs beside the
batch, which would cost two model passes per step. Figures: BENCHMARKS.md, "The solo path on
the CPU, start order balanced".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx


@dataclass
class SoloResponse:
    """One generated token (the fields of a ``BatchGenerator.next()`` response the engine reads)."""

    token: int
    finish_reason: str | None
    logprobs: Any
    # At the finish: the KV cache and the tokens it holds (as the batch's responses give them).
    prompt_cache: list[Any] | None = None
    all_tokens: list[int] | None = None


@dataclass
class HandOver:
    """What the batch needs to continue a solo sequence (``BatchGenerator.insert`` arguments)."""

    next_token: int  # computed, handed out, not yet in the cache: the batch feeds it next
    cache: list[Any]
    history: list[int]  # every token in the cache (prompt and generated)
    remaining_tokens: int


class SoloSequence:
    """One sequence decoded alone; ``next()`` gives one token per call."""

    def __init__(
        self,
        model: Any,
        prompt_ids: list[int],
        max_tokens: int,
        sampler: Callable[[Any], Any],
        logits_processors: list[Callable[[Any, Any], Any]],
        stop_token_ids: frozenset[int],
        cache: list[Any] | None = None,
        cached_tokens: int = 0,
    ) -> None:
        """``cache``: a KV cache holding the first ``cached_tokens`` of the prompt (from the
        prefix cache), fewer than all of them; only the rest is prefilled."""
        self.prompt_ids = prompt_ids
        self.sampler = sampler
        self.processors = logits_processors
        self.stop_token_ids = stop_token_ids
        self._model = model
        self._max_tokens = max_tokens
        self._cache: list[Any] | None = cache
        self._cached_tokens = cached_tokens if cache is not None else 0
        self._history: list[int] = []  # tokens in the cache
        self._context: Any = None  # the same as an array, for the logits processors
        self._pending: Any = None  # (token, logprobs) arrays being computed
        self.generated = 0

    @property
    def started(self) -> bool:
        """Whether the prompt has been processed (before that, it is just a request)."""
        return self._pending is not None

    def _compute(self, fed: Any) -> tuple[Any, Any]:
        """Queues feeding ``fed`` (a lazy 1-D array whose tokens join the cache) and sampling
        the token after it; returns (token, logprobs), still being computed."""
        logits = self._model(fed[None], cache=self._cache)[:, -1, :]
        if self.processors:
            # The history as mlx-lm's generate_step gives it: everything in the cache,
            # grown lazily by each fed token rather than rebuilt from the list every step.
            if self._context is None:
                self._context = mx.array(self._history, dtype=fed.dtype)
            self._context = mx.concatenate([self._context, fed])
            for processor in self.processors:
                logits = processor(self._context, logits)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        token = self.sampler(logprobs)
        mx.async_eval(token, logprobs)
        return token, logprobs.squeeze(0)

    def _start(self) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        if self._cache is None:
            self._cache = make_prompt_cache(self._model)
        self._history.extend(self.prompt_ids[: self._cached_tokens])
        body = self.prompt_ids[self._cached_tokens : -1]
        if body:
            self._model(mx.array(body)[None], cache=self._cache)
            mx.eval([c.state for c in self._cache])
            self._history.extend(body)
        last = self.prompt_ids[-1:]
        self._pending = self._compute(mx.array(last, dtype=mx.uint32))
        self._history.extend(last)

    def _take(self) -> tuple[int, Any, str | None]:
        """Waits for the pending token and counts it."""
        token_array, logprobs = self._pending
        token = int(token_array.item())
        self.generated += 1
        finish = None
        if token in self.stop_token_ids:
            finish = "stop"
        elif self.generated >= self._max_tokens:
            finish = "length"
        return token, logprobs, finish

    def next(self) -> SoloResponse:
        """The next token; the one after it is computed meanwhile (as ``generate_step`` does)."""
        if self._pending is None:
            self._start()
        following = None
        if self.generated + 1 < self._max_tokens:
            following = self._compute(self._pending[0].reshape(-1).astype(mx.uint32))
        token, logprobs, finish = self._take()
        if following is not None:
            self._history.append(token)  # fed above
        self._pending = following
        if self.generated % 256 == 0:
            mx.clear_cache()  # as generate_step does: return freed buffers now and then
        response = SoloResponse(token, finish, logprobs)
        if finish is not None:
            response.prompt_cache, response.all_tokens = self._cache, self._history
            self.close()
        return response

    def hand_over(self) -> tuple[SoloResponse, HandOver | None]:
        """Stops decoding alone: hands out the token already computed and returns what the
        batch needs to continue (``None`` if that token ended the request)."""
        token, logprobs, finish = self._take()
        response = SoloResponse(token, finish, logprobs)
        if finish is not None:
            self.close()
            return response, None
        state = HandOver(
            next_token=token,
            cache=self._cache or [],
            history=list(self._history),
            remaining_tokens=self._max_tokens - self.generated,
        )
        self.close()
        return response, state

    def close(self) -> None:
        """Drops the cache (a finishing response still holds it)."""
        self._cache = None
        self._pending = None
        self._context = None
