"""Fixtures that run the REAL worker: a process on a Unix socket with real MLX and a real model.

- ``tiny_model_dir``: the tiny random-weight llama, written once per session.
- ``spawn_worker``: starts ``python -m mlx_worker`` with the arguments and fault-injection
  environment a test asks for; every process it started is stopped when the test ends.
- ``worker``: one shared worker on the tiny model (debug logs) for the tests that need no
  special flags.

Waiting is always on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_sidecar.v1 import inference_pb2_grpc as pb_grpc

SIDECAR_DIR = Path(__file__).resolve().parents[1]
SERVICE = "mlx_sidecar.v1.Inference"
START_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "default_model: end-to-end tests on the default SmolLM2 model (slower)"
    )


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> Any:
    """Polls ``condition`` until it returns something truthy, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """One worker process, its socket, its log, and a gRPC channel to it."""

    def __init__(
        self, args: list[str], env: dict[str, str], socket_path: Path, log_path: Path
    ) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        full_env = {**os.environ, "PYTHONPATH": str(SIDECAR_DIR)}
        full_env.pop("MLX_WORKER_FAULTS", None)
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_worker", "--socket", str(self.socket_path), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env=full_env,
            cwd=str(SIDECAR_DIR),
        )
        self._channel: grpc.Channel | None = None

    # ---- gRPC --------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket_path}")
        return self._channel

    @property
    def stub(self) -> pb_grpc.InferenceStub:
        return pb_grpc.InferenceStub(self.channel)

    def health(self, service: str = "") -> int | None:
        """The health status, or None if the worker doesn't answer."""
        if not self.socket_path.exists():
            return None
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
        except grpc.RpcError:
            return None
        return reply.status

    def wait_health(self, status: int, timeout: float = START_TIMEOUT) -> None:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)

        def reached() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode} before {name}:\n{self.log_text()}"
                )
            return self.health() == status and self.health(SERVICE) == status

        wait_for(reached, timeout, f"health {name}", interval=0.02)

    def wait_serving(self, timeout: float = START_TIMEOUT) -> WorkerProcess:
        self.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout)
        return self

    def generate(self, timeout: float = 60.0, **fields: Any) -> tuple[list[pb.GenerateChunk], Any]:
        """Runs one Generate to the end: (chunks, finished)."""
        chunks: list[pb.GenerateChunk] = []
        finished = None
        for msg in self.stub.Generate(pb.GenerateRequest(**fields), timeout=timeout):
            assert finished is None, "a message came after `finished`"
            if msg.HasField("chunk"):
                chunks.append(msg.chunk)
            else:
                finished = msg.finished
        assert finished is not None, "the stream ended without `finished`"
        return chunks, finished

    # ---- logs --------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.strip():
                events.append(json.loads(line))
        return events

    def find_log(self, message: str, **fields: Any) -> dict[str, Any] | None:
        for e in self.log_events():
            if e["message"] == message and all(e["fields"].get(k) == v for k, v in fields.items()):
                return e
        return None

    def wait_log(self, message: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return wait_for(
            lambda: self.find_log(message, **fields), timeout, f"log {message!r} {fields}"
        )

    # ---- process -----------------------------------------------------------------------

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker did not exit within {timeout} s:\n{self.log_text()}"
            ) from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        self._log_file.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_worker.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def short_private_dir() -> Path:
    """A fresh owner-only directory with a short path (Unix socket paths are limited)."""
    return Path(tempfile.mkdtemp(prefix="mlxw-"))


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A fresh owner-only directory with a short path, removed afterwards."""
    d = short_private_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def spawn_worker(tiny_model_dir: Path) -> Iterator[SpawnWorker]:
    """``spawn_worker(*args, faults=None, model="tiny", socket_path=None, env=None)`` starts a
    worker (model None: the default model; socket_path None: one in a fresh private dir)."""
    started: list[tuple[WorkerProcess, Path | None]] = []

    def spawn(
        *args: str,
        faults: str | None = None,
        model: str | None = "tiny",
        socket_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        d = short_private_dir()  # the log, and the socket unless the test names one
        model_args = ["--model", str(tiny_model_dir)] if model == "tiny" else []
        if model not in (None, "tiny"):
            model_args = ["--model", model]
        extra_env = dict(env or {})
        if faults is not None:
            extra_env["MLX_WORKER_FAULTS"] = faults
        w = WorkerProcess(
            [*model_args, *args], extra_env, socket_path or d / "w.sock", d / "worker.log"
        )
        started.append((w, d))
        return w

    yield spawn
    for w, d in started:
        w.close()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving_tiny_worker(model_dir: Path, *extra_args: str) -> Iterator[WorkerProcess]:
    """A worker on the tiny model with debug logs (and ``extra_args``), serving until the
    block ends; then it is stopped and its directory removed."""
    d = short_private_dir()
    args = ["--model", str(model_dir), "--log-level", "debug", *extra_args]
    w = WorkerProcess(args, {}, d / "w.sock", d / "worker.log")
    try:
        w.wait_serving()
        yield w
    finally:
        w.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def worker(tiny_model_dir: Path) -> Iterator[WorkerProcess]:
    """A shared worker on the tiny model, serving; tests must leave it serving."""
    with serving_tiny_worker(tiny_model_dir) as w:
        yield w


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's tokenizer, as the worker loads it."""
    from mlx_worker.model import load_model

    return load_model(str(tiny_model_dir)).tokenizer
