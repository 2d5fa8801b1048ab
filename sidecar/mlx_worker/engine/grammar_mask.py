"""The logits processor of a request with a ``response_format``: masks the tokens that
would break its JSON.

It runs last among the request's processors, in mlx-lm's ``(history, logits)`` form, in the
batch and in the solo path alike. Each call first feeds the grammar the tokens generated since
the last call (read from the history; usually the one just sampled, which makes this step wait
for it), then sets every token the grammar does not allow to -inf. It never raises: a broken
grammar is recorded in the state and fails its request when the engine reports the next token
(:meth:`~mlx_worker.grammar.GrammarState.observe`), so the batch's other requests go on.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
import numpy as np

from ..grammar import GrammarState

log = logging.getLogger("mlx_worker.engine")


class GrammarMask:
    """Logits processor: -inf for the tokens ``state`` does not allow next."""

    def __init__(self, state: GrammarState) -> None:
        self.state = state

    def __call__(self, history: mx.array, logits: mx.array) -> mx.array:
        state = self.state
        if state.error is not None:
            return logits
        try:
            state.feed_history(history.shape[0], lambda n: history[-n:].tolist())
            if state.error is not None:
                return logits
            allowed = state.allowed()
        except Exception as e:  # never fail the batch's step: the request fails on its own
            log.exception("grammar mask failed")
            state.error = str(e)
            return logits
        width = logits.shape[-1]
        if allowed.shape[0] < width:  # the output layer is wider than the vocabulary
            allowed = np.pad(allowed, (0, width - allowed.shape[0]))
        keep = mx.array(allowed[:width].astype(np.bool_))
        return mx.where(keep, logits, mx.array(-mx.inf, dtype=logits.dtype))


def grammar_processors(state: GrammarState | None) -> list[Any]:
    """The processors a request's grammar adds (none without a ``response_format``)."""
    return [] if state is None else [GrammarMask(state)]
