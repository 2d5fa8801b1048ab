"""The worker's life: bind, serve health early, load, serve, drain, exit.

Order of start-up (restart time matters):

1. the socket path is checked and bound owner-only, health answers NOT_SERVING at once;
2. the engine thread imports MLX/mlx-lm, loads and warms up the model;
3. health turns SERVING for "" and "mlx_sidecar.v1.Inference"; the "startup" event is logged.

While serving, a watchdog turns health NOT_SERVING if the engine thread dies or its heartbeat
(beaten every step, every prefill chunk, and every second when idle) is older than
--stall-seconds. SIGTERM (or SIGINT) drains: NOT_SERVING at once, new requests UNAVAILABLE,
in-flight ones get --grace-seconds to finish, then the rest end CANCELLED, and the worker
exits 0. EOF on stdin (the parent died) stops the worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .config import WorkerConfig
from .engine import Engine, StartupReport
from .faults import Faults
from .servicer import SERVICE_NAME, InferenceServicer, add_to_server
from .socket_guard import owner_only_umask, remove_socket_file, secure_socket_file

log = logging.getLogger(__name__)

HEALTH_NAMES = ("", SERVICE_NAME)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

EXIT_OK = 0
EXIT_LOAD_FAILED = 1


def _stdin_should_be_watched() -> bool:
    """Only a pipe or socket (what the supervisor gives) is watched; never a TTY or a file."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class Worker:
    """One worker process: the gRPC server, the engine, health and shutdown."""

    def __init__(self, config: WorkerConfig, faults: Faults, started_wall: float) -> None:
        self._config = config
        self._faults = faults
        self._started_wall = started_wall
        self._started_perf = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        self._health = health_aio.HealthServicer()
        self._engine = Engine(
            config,
            faults,
            self._loop,
            on_ready=self._on_ready,
            on_failed=self._on_load_failed,
            on_died=self._on_engine_died,
        )
        self._servicer = InferenceServicer(config, self._engine, faults.model_info_delay)
        self._server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1024)]
        )
        self._ready = False
        self._health_state: int | None = None
        self._shutdown = asyncio.Event()
        self._hurry = asyncio.Event()  # stop waiting for in-flight requests
        self._exit_code = EXIT_OK
        self._drain_grace = config.grace_seconds
        self._inode: int | None = None

    async def run(self) -> int:
        """Serves until shut down; returns the exit code."""
        await self._set_health(NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        add_to_server(self._servicer, self._server)
        path = self._config.socket_path
        with owner_only_umask():
            self._server.add_insecure_port(f"unix:{path}")
            await self._server.start()
        try:
            self._inode = secure_socket_file(path)
            fields = {
                "socket": str(path),
                "process_start_to_listening_s": round(time.time() - self._started_wall, 4),
            }
            log.info("listening", extra={"fields": fields})
            self._install_signal_handlers()
            if self._config.stdin_watch and _stdin_should_be_watched():
                threading.Thread(target=self._watch_stdin, name="stdin-watch", daemon=True).start()
            self._engine.start()
            watchdog = asyncio.create_task(self._watchdog())
            await self._shutdown.wait()
            watchdog.cancel()
            await self._drain()
        finally:
            # A short grace: calls still open (health watches) end cleanly, without the
            # GOAWAY error chatter an immediate stop makes the C core print.
            await self._server.stop(grace=0.2)
            remove_socket_file(path, self._inode)
        # A loading engine can't stop before the load ends: don't wait for it then.
        self._engine.stop(timeout=2.0 if self._ready else 0.0)
        log.info("stopped", extra={"fields": {"exit_code": self._exit_code}})
        return self._exit_code

    # ---- health ----------------------------------------------------------------------

    async def _set_health(self, status: int) -> None:
        if status == self._health_state:
            return
        self._health_state = status
        for name in HEALTH_NAMES:
            await self._health.set(name, status)
        log.info(
            "health",
            extra={"fields": {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(status)}},
        )

    async def _watchdog(self) -> None:
        period = min(1.0, self._config.stall_seconds / 4)
        while True:
            await asyncio.sleep(period)
            if not self._ready:
                continue
            alive = self._engine.alive
            stalled = self._engine.seconds_since_heartbeat() > self._config.stall_seconds
            healthy = alive and not stalled
            if healthy != self._servicer.engine_healthy:
                self._servicer.engine_healthy = healthy
                if not healthy:
                    log.error(
                        "engine not making progress" if alive else "engine thread is dead",
                        extra={
                            "fields": {
                                "alive": alive,
                                "seconds_since_heartbeat": round(
                                    self._engine.seconds_since_heartbeat(), 3
                                ),
                                "steps": self._engine.steps,
                            }
                        },
                    )
                else:
                    log.warning("engine making progress again")
            await self._set_health(SERVING if healthy else NOT_SERVING)

    # ---- engine callbacks (on the loop) ----------------------------------------------

    def _on_ready(self, loaded: Any, report: StartupReport) -> None:
        if self._shutdown.is_set():
            return
        load_seconds = report.load_s + report.warmup_s
        self._servicer.set_ready(loaded, load_seconds)
        self._ready = True
        total = time.perf_counter() - self._started_perf
        fields = {
            "import_s": round(report.import_s, 4),
            "load_s": round(report.load_s, 4),
            "warmup_s": round(report.warmup_s, 4),
            "total_s": round(total, 4),
            "process_start_to_ready_s": round(time.time() - self._started_wall, 4),
            "model": loaded.description.model_id,
        }
        if self._faults.startup_delay:
            fields["fault_delay_s"] = round(report.delay_s, 4)
        log.info("startup", extra={"fields": fields})
        self._loop.create_task(self._set_health(SERVING))

    def _on_load_failed(self, error: BaseException) -> None:
        log.critical(
            "model loading failed",
            exc_info=(type(error), error, error.__traceback__),
            extra={"fields": {"model": self._config.model}},
        )
        self._exit_code = EXIT_LOAD_FAILED
        self._drain_grace = 0.0
        self._shutdown.set()

    def _on_engine_died(self) -> None:
        self._servicer.engine_healthy = False
        if not self._shutdown.is_set():
            self._loop.create_task(self._set_health(NOT_SERVING))

    # ---- shutdown --------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        name = signal.Signals(sig).name
        if self._faults.ignore_sigterm and sig == signal.SIGTERM:
            log.warning("fault injection: ignoring SIGTERM")
            return
        if self._shutdown.is_set():
            log.info("second signal: stopping without waiting", extra={"fields": {"signal": name}})
            self._hurry.set()
            return
        log.info("draining", extra={"fields": {"signal": name, "in_flight": self._in_flight()}})
        self._begin_drain()

    def _in_flight(self) -> int:
        return self._servicer.in_flight

    def _begin_drain(self) -> None:
        self._servicer.draining = True
        self._loop.create_task(self._health.enter_graceful_shutdown())
        self._shutdown.set()

    def _watch_stdin(self) -> None:
        """Blocks reading stdin; at EOF (the parent died) stops the worker."""
        try:
            while os.read(sys.stdin.fileno(), 65536):
                pass
        except OSError:
            pass
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_stdin_eof)

    def _on_stdin_eof(self) -> None:
        if self._shutdown.is_set():
            self._hurry.set()
            return
        log.warning("stdin reached EOF (the parent is gone): stopping")
        self._drain_grace = 0.0
        self._begin_drain()

    async def _drain(self) -> None:
        """Lets in-flight requests finish within the grace period, then cancels the rest."""
        self._servicer.draining = True
        await self._health.enter_graceful_shutdown()
        if self._in_flight():
            idle = asyncio.ensure_future(self._servicer.wait_idle())
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait(
                {idle, hurry}, timeout=self._drain_grace, return_when=asyncio.FIRST_COMPLETED
            )
            hurry.cancel()
            idle.cancel()
        if self._in_flight():
            log.warning(
                "grace period over: cancelling requests",
                extra={"fields": {"in_flight": self._in_flight()}},
            )
            self._engine.cancel_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._servicer.wait_idle(), timeout=2.0)
