"""Runs Generate requests through a real in-process engine and records what a caller receives.

For tests and measurements of continuations (tests/test_worker_continuation.py,
scripts/resume_floor.py): requests are validated as the servicer validates them, submitted
together (so that they share the batch) and collected chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_sidecar.v1 import inference_pb2 as pb

from ..config import WorkerConfig
from ..engine import Engine
from ..errors import RequestFailure
from ..faults import Faults
from ..streams import ResponseStream
from ..timings import RequestClock, now
from ..validation import ModelLimits, validate_generate


@dataclass
class Received:
    """What a caller received for one request."""

    chunks: list[pb.GenerateChunk] = field(default_factory=list)
    finished: pb.GenerateFinished | None = None
    failure: RequestFailure | None = None

    @property
    def token_ids(self) -> list[int]:
        return [t for c in self.chunks for t in c.token_ids]

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def logprobs(self) -> list[pb.TokenLogprob]:
        return [lp for c in self.chunks for lp in c.logprobs]

    def cut_after(self, chunks: int) -> pb.Continuation:
        """The continuation a caller sends after receiving the first ``chunks`` chunks."""
        got = self.chunks[:chunks]
        return pb.Continuation(
            delivered_token_ids=[t for c in got for t in c.token_ids],
            delivered_text_bytes=len("".join(c.text for c in got).encode("utf-8")),
            resume_count=1,
        )


class EngineRuns:
    """A started engine, and the model limits validation needs."""

    def __init__(self, engine: Engine, limits: ModelLimits) -> None:
        self.engine = engine
        self.limits = limits

    def submit(self, request: pb.GenerateRequest) -> tuple[RequestClock, asyncio.Task[Received]]:
        """Submits one request: its clock (the engine sets its readings) and its outcome."""
        stream = ResponseStream()
        clock = RequestClock(arrival=now())
        self.engine.submit(validate_generate(request, self.limits), stream, clock)
        return clock, asyncio.ensure_future(_collect(stream))

    async def run(self, requests: list[pb.GenerateRequest]) -> list[Received]:
        """Submits ``requests`` together; what each caller received, in order."""
        tasks = [self.submit(request)[1] for request in requests]
        return list(await asyncio.gather(*tasks))


async def _collect(stream: ResponseStream) -> Received:
    received = Received()
    while True:
        for item in await stream.take():
            if isinstance(item, RequestFailure):
                received.failure = item
                return received
            if item.HasField("finished"):
                received.finished = item.finished
                return received
            received.chunks.append(item.chunk)


@contextlib.asynccontextmanager
async def engine_runs(model: str, cache_dir: Path, **config: Any) -> AsyncIterator[EngineRuns]:
    """A real engine on ``model`` (``config``: WorkerConfig fields, e.g. solo="off")."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    worker_config = WorkerConfig(
        socket_path=Path("unused"), model=model, cache_dir=cache_dir, **config
    )
    engine = Engine(
        worker_config,
        Faults(),
        loop,
        on_ready=lambda loaded, report: ready.set_result(loaded),  # called on the loop
        on_failed=lambda e: ready.set_exception(e),
        on_died=lambda: None,
    )
    engine.start()
    try:
        loaded = await asyncio.wait_for(ready, 600)
        tok = loaded.tokenizer
        limits = ModelLimits(
            tokenizer=tok,
            vocab_size=loaded.description.vocab_size,
            context_length=loaded.description.context_length,
            eos_token_ids=frozenset(tok.eos_token_ids),
            default_max_tokens=worker_config.default_max_tokens,
        )
        yield EngineRuns(engine, limits)
    finally:
        engine.stop(timeout=10)
