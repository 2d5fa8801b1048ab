"""How long the engine, woken from idle, waits for more requests before its first step.

Requests sent together reach the queue a fraction of a millisecond apart (the event loop
validates them one by one); prefilling them in one step, rather than the first alone, is what
this policy is for.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..timings import now

# Woken from idle, the engine waits up to GATHER_GAP_S for each next request, GATHER_MAX_S in
# all; a lone request pays one gap. Figures: BENCHMARKS.md, "Gathering gap 0.2 → 1 ms".
GATHER_GAP_S = 0.001
GATHER_MAX_S = 0.005
# Clients that send their next request when the last one ends come back together: requests
# arriving within RETURN_WINDOW_S of the step that finished the last N are awaited until N
# have come. Figures: BENCHMARKS.md, "Waiting for returning clients".
RETURN_WINDOW_S = 0.05


def gather_wait(gathered: int, expected: int, left: float) -> float:
    """Seconds to wait for the next request: ``gathered`` so far, ``expected`` returning ones
    (0: none), ``left`` of GATHER_MAX_S. The expected are awaited whatever the gaps; after
    them, one gap for more, since a growing load brings more than just finished. Figures:
    BENCHMARKS.md, "Returning clients start at once: tried and reverted"."""
    if gathered < expected:
        return left
    return min(GATHER_GAP_S, left)


@dataclass
class Gathering:
    """One round of taking commands: until ``deadline``, expecting ``expected`` requests."""

    deadline: float
    expected: int
    gathered: int = 0

    def next_wait(self) -> float:
        """Seconds to wait for the next command (0 or less: take only what is queued)."""
        return gather_wait(self.gathered, self.expected, self.deadline - now())


class Gatherer:
    """Remembers when the engine last went idle, and how many requests that step finished."""

    def __init__(self) -> None:
        self._returning = 0
        self._idle_since = 0.0

    def went_idle(self, finished: int) -> None:
        """A step finished the last ``finished`` requests."""
        self._returning = finished
        self._idle_since = now()

    def woken(self) -> Gathering:
        """A command woke the idle engine: linger for the requests sent with it."""
        woken_at = now()
        expected = self._returning if woken_at - self._idle_since < RETURN_WINDOW_S else 0
        return Gathering(deadline=woken_at + GATHER_MAX_S, expected=expected)

    @staticmethod
    def busy() -> Gathering:
        """The engine is running requests: take what is queued, wait for nothing."""
        return Gathering(deadline=0.0, expected=0)
