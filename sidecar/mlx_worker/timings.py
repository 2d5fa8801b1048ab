"""Per-request clock readings and the Timings message made from them.

All readings are ``time.perf_counter()`` values: one clock for the handler (arrival) and the
engine thread (prefill start, first and last token).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlx_sidecar.v1 import inference_pb2 as pb


@dataclass
class RequestClock:
    """When things happened to one request."""

    arrival: float
    prefill_start: float | None = None
    first_token: float | None = None
    last_token: float | None = None

    def to_proto(self, prompt_tokens: int, completion_tokens: int, now: float) -> pb.Timings:
        """Timings as of ``now`` (the moment the final message is made)."""
        start = self.prefill_start if self.prefill_start is not None else now
        first = self.first_token
        prefill_s = (first - start) if first is not None else now - start
        decode_s = (self.last_token - first) if first is not None and self.last_token else 0.0
        return pb.Timings(
            queue_wait_ms=(start - self.arrival) * 1e3,
            prefill_ms=prefill_s * 1e3,
            decode_ms=decode_s * 1e3,
            decode_tokens_per_second=(
                completion_tokens / decode_s if completion_tokens >= 2 and decode_s > 0 else 0.0
            ),
            prefill_tokens_per_second=(
                prompt_tokens / prefill_s if first is not None and prefill_s > 0 else 0.0
            ),
            time_to_first_token_ms=((first - self.arrival) * 1e3 if first is not None else 0.0),
            total_ms=(now - self.arrival) * 1e3,
        )


def now() -> float:
    """The clock every reading uses."""
    return time.perf_counter()
