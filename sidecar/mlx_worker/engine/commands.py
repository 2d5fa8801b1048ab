"""What the event loop sends the engine thread: one typed command per queue entry."""

from __future__ import annotations

from dataclasses import dataclass

from ..params import GenerateParams
from ..streams import ResponseStream
from ..timings import RequestClock


@dataclass(eq=False)
class Job:
    """One Generate request handed to the engine (identity is the key)."""

    params: GenerateParams
    stream: ResponseStream
    clock: RequestClock


@dataclass(frozen=True)
class Submit:
    """Start a request."""

    job: Job


@dataclass(frozen=True)
class Cancel:
    """Drop a request without a message (its caller went away)."""

    job: Job


@dataclass(frozen=True)
class CancelAll:
    """End every request with finish reason CANCELLED (the end of a drain)."""


@dataclass(frozen=True)
class Stop:
    """Stop the thread once the commands queued before this one are done."""


Command = Submit | Cancel | CancelAll | Stop
