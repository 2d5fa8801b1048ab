"""The engine thread in-process (real model, real BatchGenerator, real event loop): a failure in
one request, or in a whole step, fails only what it must, and the engine keeps serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_worker.config import WorkerConfig
from mlx_worker.detokenize import IncrementalDetokenizer
from mlx_worker.engine import Engine
from mlx_worker.errors import RequestFailure
from mlx_worker.faults import Faults
from mlx_worker.params import GenerateParams, SamplingSettings
from mlx_worker.streams import ResponseStream
from mlx_worker.timings import RequestClock, now


def _params(request_id: str, prompt: list[int], max_tokens: int = 20) -> GenerateParams:
    return GenerateParams(
        request_id=request_id,
        prompt_ids=prompt,
        max_tokens=max_tokens,
        sampling=SamplingSettings(),
    )


async def _collect(stream: ResponseStream) -> list[Any]:
    items: list[Any] = []
    while True:
        for item in await stream.take():
            items.append(item)
            if isinstance(item, RequestFailure) or item.HasField("finished"):
                return items


async def _with_engine(model_dir: Path, body: Any) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    config = WorkerConfig(socket_path=Path("unused"), model=str(model_dir), cache_dir=Path("."))
    eng = Engine(
        config,
        Faults(),
        loop,
        on_ready=lambda loaded, report: ready.set_result(loaded),
        on_failed=lambda e: ready.set_exception(e),
        on_died=lambda: None,
    )
    eng.start()
    await asyncio.wait_for(ready, 120)
    try:
        await body(eng)
    finally:
        eng.stop(timeout=10)


def _run(eng: Engine, params: GenerateParams) -> asyncio.Task[list[Any]]:
    stream = ResponseStream()
    eng.submit(params, stream, RequestClock(arrival=now()))
    return asyncio.ensure_future(_collect(stream))


def test_a_failing_request_fails_alone(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = IncrementalDetokenizer.add

    def add(self: Any, ids: Any) -> str:
        if getattr(self, "_poisoned", False):
            raise ValueError("poisoned detokenizer")
        return real_add(self, ids)

    real_init = IncrementalDetokenizer.__init__

    def init(self: Any, tokenizer: Any, prompt_ids: Any = ()) -> None:
        real_init(self, tokenizer, prompt_ids)
        self._poisoned = list(prompt_ids)[:1] == [99]

    monkeypatch.setattr(IncrementalDetokenizer, "add", add)
    monkeypatch.setattr(IncrementalDetokenizer, "__init__", init)

    async def body(eng: Engine) -> None:
        good = _run(eng, _params("good", [40, 41, 42], 30))
        bad = _run(eng, _params("bad", [99, 41, 42], 30))
        good_items, bad_items = await asyncio.gather(good, bad)
        assert isinstance(bad_items[-1], RequestFailure)
        assert bad_items[-1].code == grpc.StatusCode.INTERNAL
        fin = good_items[-1].finished
        assert fin.finish_reason == pb.FINISH_REASON_LENGTH
        assert fin.usage.completion_tokens == 30
        assert eng.alive

    asyncio.run(_with_engine(tiny_model_dir, body))


def test_a_failing_step_fails_its_requests_and_the_engine_recovers(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(eng: Engine) -> None:
        from mlx_lm.generate import BatchGenerator

        a = _run(eng, _params("a", [40, 41, 42], 1000))
        b = _run(eng, _params("b", [43, 44], 1000))
        await asyncio.sleep(0.05)
        real_next = BatchGenerator.next
        calls = {"n": 0}

        def broken_next(self: Any) -> Any:  # one step blows up (as a kernel error would)
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("the whole step failed")
            return real_next(self)

        # The engine replaces its BatchGenerator after the failure; the new one steps.
        monkeypatch.setattr(BatchGenerator, "next", broken_next)
        for items in await asyncio.gather(a, b):
            assert isinstance(items[-1], RequestFailure)
            assert items[-1].code == grpc.StatusCode.INTERNAL
        after = await _run(eng, _params("after", [40, 41, 42], 5))
        assert after[-1].finished.usage.completion_tokens == 5
        assert eng.alive

    asyncio.run(_with_engine(tiny_model_dir, body))


async def _wave(eng: Engine, n: int, spacing_s: float) -> int:
    """Sends n five-token requests to the idle engine, spacing_s apart (as the event loop
    submits them: one by one, busy in between); returns in how many steps their prefill
    began."""
    clocks = []
    tasks = []
    for i in range(n):
        stream = ResponseStream()
        clock = RequestClock(arrival=now())
        eng.submit(_params(f"r{i}", [40 + i, 41, 42], 5), stream, clock)
        clocks.append(clock)
        tasks.append(asyncio.ensure_future(_collect(stream)))
        time.sleep(spacing_s)
    for items in await asyncio.gather(*tasks):
        assert items[-1].finished.usage.completion_tokens == 5
    return len({c.prefill_start for c in clocks})


def test_requests_sent_together_to_an_idle_engine_are_prefilled_together(
    tiny_model_dir: Path,
) -> None:
    async def body(eng: Engine) -> None:
        # One engine step starts all four prefills (the first does not go alone). A loaded
        # machine can pause the submitting thread longer than the engine lingers, so three
        # waves get the chance; without the lingering every wave splits.
        steps = [await _wave(eng, 4, 0.00005) for _ in range(3)]
        assert 1 in steps, steps

    asyncio.run(_with_engine(tiny_model_dir, body))


async def _second_wave(
    eng: Engine, first: tuple[int, float], second: tuple[int, float]
) -> list[tuple[int, int | None]]:
    """Sends a wave (n, spacing_s) and, if its prefill began in one step, a second one as soon
    as it has ended. A loaded machine can split a wave, so up to five tries, until the second
    begins in one step; returns (steps of the first, steps of the second or None) per try."""
    tries: list[tuple[int, int | None]] = []
    for _ in range(5):
        steps = await _wave(eng, *first)
        again = await _wave(eng, *second) if steps == 1 else None
        tries.append((steps, again))
        if again == 1:
            break
    return tries


def test_clients_returning_after_a_batch_ends_are_prefilled_together(
    tiny_model_dir: Path,
) -> None:
    async def body(eng: Engine) -> None:
        # Three requests end in one step; their clients send the next three at once, but
        # they reach the engine 1.5 ms apart, more than the gap it lingers for otherwise.
        # It waits for all three.
        tries = await _second_wave(eng, (3, 0.00005), (3, 0.0015))
        assert tries[-1][1] == 1, tries

    asyncio.run(_with_engine(tiny_model_dir, body))


def test_more_requests_than_just_finished_are_still_prefilled_together(
    tiny_model_dir: Path,
) -> None:
    async def body(eng: Engine) -> None:
        # One request ends, then four arrive together (a growing load, the bench's next
        # level): the engine, expecting one returning client, must not start with that one
        # alone.
        tries = await _second_wave(eng, (1, 0.0), (4, 0.00005))
        assert tries[-1][1] == 1, tries

    asyncio.run(_with_engine(tiny_model_dir, body))
