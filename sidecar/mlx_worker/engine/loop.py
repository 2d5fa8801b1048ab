"""The engine thread: the one thread that owns all MLX state.

It starts up (:mod:`.startup`), then loops: take the commands waiting in its queue, gathering
requests sent together (:mod:`.gather`); run one step of the :class:`~.decoder.Decoder`; hand
the output to the event loop when due (:mod:`.output`). When idle it blocks on the queue,
waking every second to beat the heartbeat. If the thread dies, every request it held fails
with UNAVAILABLE and the health watchdog sees it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ..config import WorkerConfig
from ..errors import RequestFailure
from ..faults import Faults
from ..params import GenerateParams
from ..streams import ResponseStream
from ..timings import RequestClock
from .commands import Cancel, CancelAll, Command, Job, Stop, Submit
from .decoder import Decoder
from .gather import Gatherer, Gathering
from .output import OutputHandOff
from .startup import StartupReport, start_up

log = logging.getLogger("mlx_worker.engine")


class EngineUnavailable(Exception):
    """The engine thread is not running (it stopped or died)."""


class Engine:
    """Owns the engine thread; its public methods are called from the event loop."""

    def __init__(
        self,
        config: WorkerConfig,
        faults: Faults,
        loop: asyncio.AbstractEventLoop,
        on_ready: Callable[[Any, StartupReport], None],
        on_failed: Callable[[BaseException], None],
        on_died: Callable[[], None],
    ) -> None:
        self._config = config
        self._faults = faults
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._on_died = on_died
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.heartbeat = time.monotonic()
        self.steps = 0
        # Engine-thread state.
        self._output = OutputHandOff(loop, config.stream_interval_ms / 1000)
        self._decoder: Decoder | None = None  # once started up

    # ---- event-loop side -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def seconds_since_heartbeat(self) -> float:
        return time.monotonic() - self.heartbeat

    def submit(self, params: GenerateParams, stream: ResponseStream, clock: RequestClock) -> Job:
        """Queues a request; raises EngineUnavailable if the engine has stopped."""
        job = Job(params, stream, clock)
        with self._lock:
            if not self._accepting:
                raise EngineUnavailable("the engine has stopped")
            self._commands.put(Submit(job))
        return job

    def cancel(self, job: Job) -> None:
        """Removes a request from the batch (the caller went away); no message is sent."""
        self._commands.put(Cancel(job))

    def cancel_all(self) -> None:
        """Ends every request with finish reason CANCELLED (used at the end of a drain)."""
        self._commands.put(CancelAll())

    def stop(self, timeout: float) -> None:
        """Stops the thread after the commands queued before this one."""
        self._commands.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            started = start_up(self._config, self._faults)
        except BaseException as e:
            with self._lock:
                self._accepting = False
            self._output.post(self._on_failed, e)
            return
        self._decoder = Decoder(self._config, started, self._output)
        if started.group is not None:  # rank 0 of a sharded model: the others follow its steps
            from ..shard.steps import LeaderDecoder, StepChannel

            self._decoder = LeaderDecoder(self._decoder, StepChannel(started.group))  # type: ignore[assignment]
        self.heartbeat = time.monotonic()
        self._output.post(self._on_ready, started.loaded, started.report)
        try:
            self._serve(self._decoder)
        except BaseException:
            log.critical("engine thread died", exc_info=True)
        finally:
            self._die()

    def _serve(self, decoder: Decoder) -> None:
        idle_wait = min(1.0, self._config.stall_seconds / 4)
        commands = self._commands
        gatherer = Gatherer()
        output = self._output
        while True:
            self.heartbeat = time.monotonic()
            idle = not decoder.running
            try:
                command = commands.get(timeout=idle_wait) if idle else commands.get_nowait()
            except queue.Empty:
                command = None
            if command is not None:
                gathering = gatherer.woken() if idle else gatherer.busy()
                if not self._take_commands(decoder, command, gathering):
                    output.hand_off()
                    return
            elif idle:
                decoder.idle()
            if decoder.running:
                running = decoder.running
                self._step(decoder)
                if not decoder.running:
                    gatherer.went_idle(running)
            output.hand_off_if_due(idle=not decoder.running)

    def _take_commands(self, decoder: Decoder, command: Command, gathering: Gathering) -> bool:
        """Carries out ``command`` and those that follow within ``gathering``; returns False
        at a Stop."""
        commands = self._commands
        while True:
            match command:
                case Submit(job):
                    hand_overs = decoder.hand_overs
                    decoder.start(job)
                    gathering.gathered += 1
                    if self._faults.sigkill_at_hand_over and decoder.hand_overs > hand_overs:
                        _sigkill_self("sigkill_at_hand_over")
                case Cancel(job):
                    decoder.cancel(job)
                case CancelAll():
                    decoder.cancel_all()
                case Stop():
                    return False
            try:
                wait = gathering.next_wait()
                command = commands.get(timeout=wait) if wait > 0 else commands.get_nowait()
            except queue.Empty:
                return True

    def _step(self, decoder: Decoder) -> None:
        self.steps += 1
        self._inject_step_faults()
        decoder.step()
        self.heartbeat = time.monotonic()

    def _inject_step_faults(self) -> None:
        faults = self._faults
        if (
            faults.engine_stall_after_steps is not None
            and self.steps > faults.engine_stall_after_steps
        ):
            log.warning("fault injection: engine stalls", extra={"fields": {"steps": self.steps}})
            threading.Event().wait()
        if (
            faults.engine_crash_after_steps is not None
            and self.steps > faults.engine_crash_after_steps
        ):
            raise RuntimeError(f"fault injection: engine crash after {self.steps - 1} steps")
        if faults.sigkill_after_steps is not None and self.steps > faults.sigkill_after_steps:
            _sigkill_self("sigkill_after_steps")

    def _die(self) -> None:
        """The thread is ending: fail everything it holds or was sent, tell the loop."""
        with self._lock:
            self._accepting = False
        if self._decoder is not None:
            self._decoder.fail_all(grpc.StatusCode.UNAVAILABLE, "the worker's engine has stopped")
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Submit):
                self._output.send_failure(
                    command.job.stream,
                    RequestFailure(grpc.StatusCode.UNAVAILABLE, "engine stopped"),
                )
        self._output.hand_off()
        self._output.post(self._on_died)


def _sigkill_self(fault: str) -> None:
    """Fault injection: the worker dies at once, as if killed from outside (no clean-up)."""
    log.warning("fault injection: the worker kills itself", extra={"fields": {"fault": fault}})
    logging.shutdown()  # the line above reaches the supervisor first
    os.kill(os.getpid(), signal.SIGKILL)
