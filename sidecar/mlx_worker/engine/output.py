"""The hand-off of the engine thread's output to the event loop.

Output gathers here during a step (requests with tokens or a finish to take, failures to
send) and goes to the loop in ONE ``call_soon_threadsafe`` of :func:`streams.dispatch`: after
every step, or with ``--stream-interval-ms`` at most once per interval, except that a first
token, a finish or a failure goes at the step's end. Each request's tokens since the last
hand-off go out as one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..errors import RequestFailure
from ..responses import RequestState
from ..streams import ResponseStream, dispatch
from ..timings import now

# After a hand-off that holds a first token, the engine thread sleeps this long so that the
# loop takes the GIL and sends it at once, not after the next step's graph building.
# Figures: BENCHMARKS.md, "The first token goes out at once".
FIRST_TOKEN_YIELD_S = 0.0005


class OutputHandOff:
    """Collects the engine's output and hands it to the event loop when due."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream_interval_s: float) -> None:
        self._loop = loop
        self._stream_interval_s = stream_interval_s
        self._with_output: dict[RequestState, None] = {}  # requests whose output is not taken
        self._ready: list[tuple[ResponseStream, list[Any]]] = []  # taken, not handed off
        self._urgent = False  # a first token, a finish or a failure is waiting
        self._first_tokens = False  # a first token is in what is being handed off
        self._handed_off_at = 0.0

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``fn(*args)`` on the event loop (dropped if the loop has closed: exiting)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def emit(self, request: RequestState, urgent: bool = True) -> None:
        """Marks a request's output for the next hand-off (``urgent``: at the end of this
        step, whatever the stream interval)."""
        if request.has_output:
            self._with_output[request] = None
            self._urgent |= urgent
            self._first_tokens |= request.generated == 1

    def send_failure(self, stream: ResponseStream, failure: RequestFailure) -> None:
        """Ends a request that has no output waiting with ``failure``."""
        self._urgent = True
        self._ready.append((stream, [failure]))

    def fail(self, request: RequestState, failure: RequestFailure) -> None:
        """Ends a started request with ``failure``, after the output it already has."""
        self._with_output.pop(request, None)
        if request.has_output:
            self._ready.append((request.job.stream, request.take_output()))
        self.send_failure(request.job.stream, failure)

    def hand_off_if_due(self, idle: bool) -> None:
        """Hands off what has gathered if it is due: something urgent, the engine ``idle``,
        or the stream interval passed."""
        if (self._ready or self._with_output) and (
            self._urgent or idle or now() - self._handed_off_at >= self._stream_interval_s
        ):
            self.hand_off()

    def hand_off(self) -> None:
        """Hands everything gathered so far to the event loop in one call."""
        if not (self._ready or self._with_output):
            return
        for request in self._with_output:
            self._ready.append((request.job.stream, request.take_output()))
        self._with_output.clear()
        ready, self._ready = self._ready, []
        self._urgent = False
        self._handed_off_at = now()
        self.post(dispatch, ready)
        if self._first_tokens:
            self._first_tokens = False
            time.sleep(FIRST_TOKEN_YIELD_S)
