"""The order in which the decoder inserts waiting requests into the batch: continuations
(streams cut by a worker's death) before new requests, prefill-only requests (a standby's
shadows, even those carrying delivered tokens) last, otherwise in arrival order."""

from __future__ import annotations

from mlx_worker.engine.commands import Job
from mlx_worker.engine.decoder import admission_order
from mlx_worker.engine.prefix_cache import Hit
from mlx_worker.params import Continuation, GenerateParams, SamplingSettings
from mlx_worker.streams import ResponseStream
from mlx_worker.timings import RequestClock, now


def _job(request_id: str, resumed: bool, prefill_only: bool = False) -> Job:
    continuation = (
        Continuation(delivered_ids=(5, 6), delivered_text_bytes=2, resume_count=1)
        if resumed
        else None
    )
    params = GenerateParams(
        request_id=request_id,
        prompt_ids=[1, 2, 3],
        max_tokens=8,
        sampling=SamplingSettings(),
        continuation=continuation,
        prefill_only=prefill_only,
    )
    return Job(params, ResponseStream(), RequestClock(arrival=now()))


def _ids(waiting: list[tuple[Job, Hit | None]]) -> list[str]:
    return [job.params.request_id for job, _ in waiting]


def test_continuations_are_admitted_before_new_requests_in_arrival_order() -> None:
    hit = Hit()
    waiting: list[tuple[Job, Hit | None]] = [
        (_job("new-1", False), None),
        (_job("resumed-1", True), hit),
        (_job("new-2", False), None),
        (_job("resumed-2", True), None),
    ]
    ordered = admission_order(waiting)
    assert _ids(ordered) == ["resumed-1", "resumed-2", "new-1", "new-2"]
    assert ordered[0][1] is hit  # each keeps its own cache hit
    assert waiting[0][0].params.request_id == "new-1"  # the input is untouched


def test_without_continuations_the_order_is_arrival() -> None:
    waiting: list[tuple[Job, Hit | None]] = [(_job(f"new-{i}", False), None) for i in range(5)]
    assert admission_order(waiting) == waiting


def test_shadows_come_after_new_requests_even_with_delivered_tokens() -> None:
    waiting: list[tuple[Job, Hit | None]] = [
        (_job("shadow-1", True, prefill_only=True), None),
        (_job("new-1", False), None),
        (_job("shadow-2", False, prefill_only=True), None),
        (_job("resumed-1", True), None),
    ]
    assert _ids(admission_order(waiting)) == ["resumed-1", "new-1", "shadow-1", "shadow-2"]
