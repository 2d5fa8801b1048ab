"""Keeping the ranks in lockstep: rank 0 broadcasts what its decoder is told; the others
replay it on the same deterministic decoder.

Every rank runs the same :class:`~mlx_worker.engine.decoder.Decoder` on its shard of the
model. Rank 0's is wrapped in :class:`LeaderDecoder`, which records each command it gets
(start a request, cancel one, cancel all) and, before each step, broadcasts the recorded
commands and "step" to the group; when idle it broadcasts an empty tick every second, so a
hung rank stalls rank 0's heartbeat and health turns NOT_SERVING. Followers
(:func:`follow`) receive each message, apply the same commands in the same order and step.
With the same commands, the same greedy or seeded sampling (rank 0 fixes a seed for an
unseeded request before recording it) and the model's all-reduced logits, which are equal on
every rank, the decoders make the same decisions and the same model calls.

The broadcast is two ``all_sum`` of int32 (a type every backend sums): a header (step flag,
payload length) and, when there are commands, their pickled bytes, zeros on the followers.
The group is our own processes only.

Collective operations must reach the ring in the same order on every rank, so they all run
on one MLX stream: the ``BatchGenerator``'s ``generation_stream``, which the broadcast uses
too. That is why a sharded model has no solo path (``SoloSequence`` computes on the default
stream, ahead of time, and its all-reduces would race the broadcast's on another stream):
every request runs in the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import secrets
import time
import weakref
from typing import Any

from ..engine.commands import Job
from ..params import GenerateParams
from ..timings import RequestClock, now

log = logging.getLogger("mlx_worker.shard")

# Rank 0 broadcasts an empty message at least this often when idle (a hung rank then
# stalls rank 0's heartbeat; see the module doc).
IDLE_TICK_S = 1.0

_STEP = 1


class StepChannel:
    """Broadcasts rank 0's commands to the group with ``all_sum``."""

    def __init__(self, group: Any) -> None:
        self._group = group

    def _all_sum(self, values: Any) -> Any:
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        total = mx.distributed.all_sum(values, group=self._group, stream=generation_stream)
        mx.eval(total)
        return total

    def publish(self, commands: list[tuple[Any, ...]], flags: int) -> None:
        """Rank 0: sends ``commands`` and ``flags`` (step, stop)."""
        import mlx.core as mx
        import numpy as np

        payload = pickle.dumps(commands) if commands else b""
        self._all_sum(mx.array([flags, len(payload)], dtype=mx.int32))
        if payload:
            padded = payload + bytes(-len(payload) % 4)
            self._all_sum(mx.array(np.frombuffer(padded, dtype=np.int32)))

    def receive(self) -> tuple[list[tuple[Any, ...]], int]:
        """The other ranks: waits for rank 0's next message; returns (commands, flags)."""
        import mlx.core as mx
        import numpy as np

        flags, size = (int(v) for v in self._all_sum(mx.zeros((2,), dtype=mx.int32)).tolist())
        if not size:
            return [], flags
        words = np.array(self._all_sum(mx.zeros((-(-size // 4),), dtype=mx.int32)))
        return pickle.loads(words.tobytes()[:size]), flags  # the group is our own ranks


class LeaderDecoder:
    """Rank 0's decoder: the real one, with each command recorded and broadcast before the
    step that follows it."""

    def __init__(self, decoder: Any, channel: StepChannel) -> None:
        self._decoder = decoder
        self._channel = channel
        self._pending: list[tuple[Any, ...]] = []
        self._ids: weakref.WeakKeyDictionary[Job, int] = weakref.WeakKeyDictionary()
        self._next_id = 0
        self._published_at = time.monotonic()

    @property
    def running(self) -> int:
        return self._decoder.running

    @property
    def hand_overs(self) -> int:
        return self._decoder.hand_overs

    def start(self, job: Job) -> None:
        job.params = _with_fixed_seed(job.params)
        self._next_id += 1
        self._ids[job] = self._next_id
        self._pending.append(("start", self._next_id, job.params))
        self._decoder.start(job)

    def cancel(self, job: Job) -> None:
        job_id = self._ids.get(job)
        if job_id is not None:
            self._pending.append(("cancel", job_id))
        self._decoder.cancel(job)

    def cancel_all(self) -> None:
        self._pending.append(("cancel_all",))
        self._decoder.cancel_all()

    def fail_all(self, code: Any, message: str) -> None:
        # Only when rank 0's engine is dying: the group goes with it.
        self._decoder.fail_all(code, message)

    def step(self) -> None:
        self._publish(_STEP)
        self._decoder.step()

    def idle(self) -> None:
        """Called by the engine loop when it woke with nothing to run."""
        if self._pending or time.monotonic() - self._published_at >= IDLE_TICK_S:
            self._publish(0)

    def _publish(self, flags: int) -> None:
        commands, self._pending = self._pending, []
        self._channel.publish(commands, flags)
        self._published_at = time.monotonic()


def _with_fixed_seed(params: GenerateParams) -> GenerateParams:
    """Every rank must draw the same tokens: an unseeded sampled request gets its seed here,
    on rank 0, instead of on each rank."""
    sampling = params.sampling
    if sampling.greedy or sampling.seed is not None:
        return params
    seeded = dataclasses.replace(sampling, seed=secrets.randbits(63))
    return dataclasses.replace(params, sampling=seeded)


class FollowerOutput:
    """The output side of a follower's decoder: everything is dropped (rank 0 answers)."""

    def emit(self, request: Any, urgent: bool = True) -> None:
        if request.has_output:
            request.take_output()

    def fail(self, request: Any, failure: Any) -> None:
        pass

    def send_failure(self, stream: Any, failure: Any) -> None:
        pass

    def hand_off_if_due(self, idle: bool) -> None:
        pass

    def hand_off(self) -> None:
        pass


def follow(decoder: Any, channel: StepChannel, on_step: Any = None) -> None:
    """A follower's engine loop: replays rank 0's commands and steps, until the process
    ends (with rank 0: its parent-death signal, or EOF on stdin)."""
    jobs: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
    while True:
        commands, flags = channel.receive()
        for command in commands:
            match command:
                case ("start", job_id, params):
                    job = Job(params, None, RequestClock(arrival=now()))  # type: ignore[arg-type]
                    jobs[job_id] = job
                    decoder.start(job)
                case ("cancel", job_id):
                    job = jobs.get(job_id)
                    if job is not None:
                        decoder.cancel(job)
                case ("cancel_all",):
                    decoder.cancel_all()
        if flags & _STEP:
            decoder.step()
            if on_step is not None:
                on_step()
