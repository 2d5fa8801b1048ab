"""Validated generation parameters: plain data passed from a handler to the engine thread."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .grammar import GrammarState


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen (defaults: greedy, no penalties)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_context_size: int = 20
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_context_size: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Continuation:
    """A stream cut by a worker's death, resumed here (GenerateRequest.continuation)."""

    delivered_ids: tuple[int, ...]  # tokens the caller received: treated as generated
    delivered_text_bytes: int  # UTF-8 bytes of their text the caller received
    resume_count: int  # this resume included (>= 1)


@dataclass(frozen=True)
class GenerateParams:
    """One validated Generate request."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingSettings
    stop_strings: tuple[str, ...] = ()
    # Token ids that end generation: the model's EOS ids (unless ignore_eos) plus the extra ones.
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False
    top_logprobs: int = 0
    continuation: Continuation | None = None
    # Only fill the prefix cache with the prompt (GenerateRequest.prefill_only).
    prefill_only: bool = False

    @property
    def delivered_ids(self) -> tuple[int, ...]:
        """The tokens a continuation treats as already generated (none for a new request)."""
        return self.continuation.delivered_ids if self.continuation is not None else ()

    # The response_format's grammar, ready to follow this request's output (the one mutable
    # member: made for this request alone, used only by the engine thread once submitted).
    grammar: GrammarState | None = None
