"""Samplers and logits processors for one request, in the form mlx-lm's BatchGenerator takes.

Imported only by the engine thread (it builds MLX objects). Greedy requests share mlx-lm's
``greedy_sampler``, so a batch of them samples in one call. A sampling request gets its own
:class:`SeededSampler`, which draws from its own ``mx.random`` key, split once per step: the
same seed and parameters give the same tokens whatever else is in the batch (mlx-lm's
``make_sampler`` draws from the global random state, shared by the whole batch).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_frequency_penalty,
    make_presence_penalty,
    make_repetition_penalty,
)

from .params import SamplingSettings

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


class SeededSampler:
    """Temperature sampling with top-p, min-p and top-k, from a per-request random key."""

    def __init__(self, settings: SamplingSettings, vocab_size: int) -> None:
        seed = settings.seed if settings.seed is not None else secrets.randbits(64)
        self._key = mx.random.key(seed)
        self._inv_temp = 1.0 / settings.temperature
        filters: list[Callable[[mx.array], mx.array]] = []
        if settings.top_p < 1.0:
            filters.append(lambda x, p=settings.top_p: apply_top_p(x, p))
        if settings.min_p > 0.0:
            filters.append(lambda x, p=settings.min_p: apply_min_p(x, p))
        if 0 < settings.top_k < vocab_size:
            filters.append(lambda x, k=settings.top_k: apply_top_k(x, k))
        self._filters = filters

    def skip(self, n: int) -> None:
        """Splits the key as ``n`` draws would (a continuation's delivered tokens)."""
        for _ in range(n):
            self._key, _ = mx.random.split(self._key)
        mx.eval(self._key)

    def __call__(self, logprobs: mx.array) -> mx.array:
        for f in self._filters:
            logprobs = f(logprobs)
        self._key, sub = mx.random.split(self._key)
        return mx.random.categorical(logprobs * self._inv_temp, key=sub)


def make_request_sampler(settings: SamplingSettings, vocab_size: int) -> Sampler:
    """The sampler for one request (the shared greedy one when temperature is 0)."""
    if settings.greedy:
        return greedy_sampler
    return SeededSampler(settings, vocab_size)


def make_request_processors(settings: SamplingSettings) -> list[LogitsProcessor]:
    """Logit bias and penalties, applied to each step's logits in this order.

    The penalties look at the last N tokens of the sequence, prompt included (mlx-lm's token
    context), N being repetition_context_size or penalty_context_size.
    """
    processors: list[LogitsProcessor] = []
    if settings.logit_bias:
        ids = mx.array(list(settings.logit_bias.keys()), dtype=mx.uint32)
        values = mx.array(list(settings.logit_bias.values()), dtype=mx.float32)

        def logit_bias(_tokens: mx.array, logits: mx.array) -> mx.array:
            return logits.at[:, ids].add(values.astype(logits.dtype))

        processors.append(logit_bias)
    if settings.repetition_penalty != 1.0:
        processors.append(
            make_repetition_penalty(settings.repetition_penalty, settings.repetition_context_size)
        )
    if settings.presence_penalty != 0.0:
        processors.append(
            make_presence_penalty(settings.presence_penalty, settings.penalty_context_size)
        )
    if settings.frequency_penalty != 0.0:
        processors.append(
            make_frequency_penalty(settings.frequency_penalty, settings.penalty_context_size)
        )
    return processors
