"""A continuation's model side: how the delivered tokens get into the KV cache and the sampler.

Two ways (:func:`resume_method` picks one per engine), both giving the sampler the key an
uninterrupted run would have at the next position (a
:class:`~mlx_worker.sampling.SeededSampler` is split once per token):

- ``"prefill"``: the delivered tokens join the prompt and are prefilled with it;
  max_tokens shrinks by their number.
- ``"replay"``: the request starts as the original did (its prompt prefilled the same way) and
  the delivered tokens are decoded again, one per step, in whatever batch is running: a
  :class:`ForcedSampler` returns them instead of sampling, and the decoder sends nothing for
  them (``RequestState.replaying``). Every position is computed as it was the first time.

Figures behind the choice: BENCHMARKS.md, "Resuming a stream: replay vs prefill".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..params import GenerateParams

# A sampler (mlx_worker.sampling; imported by the engine thread only, after mlx-lm's fast import).
Sampler = Callable[[Any], Any]

# "replay" or "prefill" overrides the engine's ``resume_method`` for the requests started
# while it is set (tests, scripts/resume_floor.py).
RESUME_METHOD: str | None = None


def resume_method(on_gpu: bool, synthetic: bool) -> str:
    """``"prefill"``, measured bit for bit with decoding (alone or batched) on a CPU and on
    an H200 with MLX CUDA, at a third (CPU) to a sixteenth (GPU) of replay's time to the
    first new token; ``"replay"`` in benchmark mode, whose made-up tokens cycle the prompt.
    ``on_gpu`` stays a parameter for a device where prefill measures otherwise.
    Figures: BENCHMARKS.md, "Resuming a stream: replay vs prefill"."""
    del on_gpu
    return "replay" if synthetic else "prefill"


class ForcedSampler:
    """Returns the delivered tokens, one per call, then samples with ``inner``; the key of a
    seeded ``inner`` is split for each forced token as sampling would have split it."""

    def __init__(self, forced: Sequence[int], inner: Sampler) -> None:
        self._forced = deque(forced)
        self._inner = inner

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx

        if not self._forced:
            return self._inner(logprobs)
        _skip(self._inner, 1)
        return mx.array([self._forced.popleft()], dtype=mx.uint32)


def prefilled_length(params: GenerateParams, method: str) -> int:
    """How many tokens a request's prefill takes."""
    if method == "replay":
        return len(params.prompt_ids)
    return len(params.prompt_ids) + len(params.delivered_ids)


def prefilled_ids(params: GenerateParams, method: str) -> list[int]:
    """The tokens a request's prefill takes."""
    if method == "replay" or not params.delivered_ids:
        return params.prompt_ids
    return [*params.prompt_ids, *params.delivered_ids]


@dataclass(frozen=True)
class StartPoint:
    """What the engine starts a request from."""

    prompt_ids: list[int]  # prefilled as a prompt
    max_tokens: int  # tokens still to generate, replayed ones included
    sampler: Sampler
    replayed: int  # the first tokens this many steps give are delivered ones: not sent


def start_point(params: GenerateParams, sampler: Sampler, method: str) -> StartPoint:
    """Where a request (a continuation or not) starts, by ``method`` (``resume_method``)."""
    delivered = params.delivered_ids
    if not delivered:
        return StartPoint(params.prompt_ids, params.max_tokens, sampler, 0)
    if method == "replay":
        if params.grammar is not None:
            params.grammar.delivered_are_replayed(len(delivered))
        return StartPoint(
            params.prompt_ids, params.max_tokens, ForcedSampler(delivered, sampler), len(delivered)
        )
    _skip(sampler, len(delivered))
    return StartPoint(
        [*params.prompt_ids, *delivered], params.max_tokens - len(delivered), sampler, 0
    )


def _skip(sampler: Sampler, n: int) -> None:
    """Advances a seeded sampler's key past ``n`` tokens (greedy: nothing to advance)."""
    from ..sampling import SeededSampler

    if isinstance(sampler, SeededSampler):
        sampler.skip(n)
