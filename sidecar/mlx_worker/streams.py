"""The loop-side mailbox of one Generate call.

The engine thread hands its output to the event loop once per step, or per stream interval
(``call_soon_threadsafe``); :func:`dispatch` then pushes each request's items into its
:class:`ResponseStream`. The handler
takes everything that arrived since it last looked, so a slow client gets fewer, bigger
messages rather than a backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any


class ResponseStream:
    """Items (GenerateResponse messages or a RequestFailure) for one request, in order."""

    __slots__ = ("_event", "_items", "closed")

    # Benchmark mode only (``--synthetic-tokens merge=0``): hand out one item per take, so
    # that every token goes out as its own message.
    one_item_per_take = False

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._event = asyncio.Event()
        self.closed = False

    def push(self, items: Sequence[Any]) -> None:
        """Adds items (on the event loop's thread)."""
        if self.closed:
            return
        self._items.extend(items)
        self._event.set()

    async def take(self) -> list[Any]:
        """Waits for at least one item and returns all that are there."""
        while not self._items:
            self._event.clear()
            await self._event.wait()
        if self.one_item_per_take:
            return [self._items.pop(0)]
        items, self._items = self._items, []
        return items


def dispatch(events: Iterable[tuple[ResponseStream, Sequence[Any]]]) -> None:
    """Fans one hand-over of the engine's output out to the requests' streams."""
    for stream, items in events:
        stream.push(items)
