"""Cancellation (mid-prefill, mid-decode, disconnect, deadline) and the queue limit.

The worker logs "request removed" (debug) with the stage the request was in when the engine
took it out of the batch; the tests read that, and check the other requests go on.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from conftest import SpawnWorker, WorkerProcess, wait_for

from mlx_sidecar.v1 import inference_pb2 as pb

LONG_PROMPT = pb.Prompt(tokens=pb.TokenIds(ids=[(i * 7) % 300 + 3 for i in range(2000)]))
SHORT_PROMPT = pb.Prompt(text="The quick brown fox")


def _first_chunk(call: grpc.Call) -> pb.GenerateResponse:
    msg = next(call)
    assert msg.HasField("chunk")
    return msg


def test_cancel_mid_prefill_frees_the_batch(spawn_worker: SpawnWorker) -> None:
    # Small prefill chunks: the 2000-token prompt takes many engine steps to process; no prefix
    # cache, so that the second time it is prefilled in full as well.
    w = spawn_worker(
        "--prefill-step-size", "16", "--prefix-cache-entries", "0", "--log-level", "debug"
    ).wait_serving()
    # How long the whole prefill takes, for comparison.
    _, full = w.generate(prompt=LONG_PROMPT, max_tokens=1)
    full_prefill_ms = full.timings.time_to_first_token_ms

    other_result: list[pb.GenerateFinished] = []
    other = threading.Thread(
        target=lambda: other_result.append(
            w.generate(prompt=SHORT_PROMPT, max_tokens=400, request_id="other")[1]
        )
    )
    other.start()
    w.wait_log("prefill started", request_id="other")
    call = w.stub.Generate(
        pb.GenerateRequest(prompt=LONG_PROMPT, max_tokens=40, request_id="long"), timeout=60
    )
    w.wait_log("prefill started", request_id="long")
    cancelled_at = time.time()
    call.cancel()
    removed = w.wait_log("request removed", request_id="long")
    assert removed["fields"]["stage"] == "prefill"
    assert removed["fields"]["reason"] == "client_cancelled"
    # Removed well before its prefill could have finished, within about one chunk of the cancel.
    assert removed["fields"]["since_arrival_ms"] < full_prefill_ms
    assert removed["ts"] - cancelled_at < 2.0  # about one chunk; generous for a busy machine
    assert w.find_log("request finished", request_id="long") is None
    # The other request was not disturbed.
    other.join(60)
    assert other_result and other_result[0].usage.completion_tokens == 400
    # And the next request doesn't wait behind the cancelled prefill.
    _, after = w.generate(prompt=SHORT_PROMPT, max_tokens=2)
    assert after.timings.queue_wait_ms < full_prefill_ms / 2


def test_cancel_mid_decode(worker: WorkerProcess) -> None:
    call = worker.stub.Generate(
        pb.GenerateRequest(prompt=SHORT_PROMPT, max_tokens=1900, request_id="decode-cancel"),
        timeout=60,
    )
    for _ in range(3):
        _first_chunk(call)
    call.cancel()
    removed = worker.wait_log("request removed", request_id="decode-cancel")
    assert removed["fields"]["stage"] == "decode"
    assert 3 <= removed["fields"]["completion_tokens"] < 1900
    _, fin = worker.generate(prompt=SHORT_PROMPT, max_tokens=2)
    assert fin.usage.completion_tokens == 2


def test_client_disconnect_removes_the_sequence(worker: WorkerProcess) -> None:
    channel = grpc.insecure_channel(f"unix:{worker.socket_path}")
    from mlx_sidecar.v1 import inference_pb2_grpc as pb_grpc

    call = pb_grpc.InferenceStub(channel).Generate(
        pb.GenerateRequest(prompt=SHORT_PROMPT, max_tokens=1900, request_id="disconnect"),
        timeout=60,
    )
    _first_chunk(call)
    channel.close()  # the connection goes away without a clean cancel of the stream
    removed = worker.wait_log("request removed", request_id="disconnect")
    assert removed["fields"]["completion_tokens"] < 1900


def test_deadline_exceeded_stops_the_work(worker: WorkerProcess) -> None:
    with pytest.raises(grpc.RpcError) as e:
        worker.generate(prompt=SHORT_PROMPT, max_tokens=1900, request_id="deadline", timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    removed = worker.wait_log("request removed", request_id="deadline")
    assert removed["fields"]["since_arrival_ms"] < 3000  # the deadline was 300 ms
    assert worker.find_log("request finished", request_id="deadline") is None


def test_full_queue_is_resource_exhausted(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--max-batch", "1", "--max-queue", "1", "--log-level", "debug")
    w.wait_serving()
    calls = [
        w.stub.Generate(
            pb.GenerateRequest(prompt=SHORT_PROMPT, max_tokens=1900, request_id=f"q{i}"),
            timeout=60,
        )
        for i in range(2)
    ]
    w.wait_log("request accepted", request_id="q0")
    w.wait_log("request accepted", request_id="q1")
    with pytest.raises(grpc.RpcError) as e:
        w.generate(prompt=SHORT_PROMPT, max_tokens=1)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in e.value.details()
    # q1 waits: with a batch of one it has not started while q0 decodes.
    _first_chunk(calls[0])
    assert w.find_log("prefill started", request_id="q1") is None
    for c in calls:
        c.cancel()
    w.wait_log("request removed", request_id="q0")
    w.wait_log("request removed", request_id="q1")

    def serves() -> bool:
        try:
            return w.generate(prompt=SHORT_PROMPT, max_tokens=1)[1].usage.completion_tokens == 1
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

    wait_for(serves, 10, "the queue to drain")
