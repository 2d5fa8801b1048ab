"""Fixtures that run the REAL daemon: the `mlx-sidecar serve` binary on the tiny model, with a
real supervised worker, reached by clients nobody in this project wrote.

- ``tiny_model_dir``: the tiny random-weight llama (``mlx_worker.testing.tiny_model``).
- ``start_daemon(*args)``: starts ``mlx-sidecar serve`` on a socket in a fresh temp dir and on
  ``--listen 127.0.0.1:0``, waits until it says its port and a worker is ready, and stops it
  (SIGTERM, then a check that it exited 0) when the test or module ends.
- ``daemon``: one shared daemon for the tests that leave it as they found it.

The binary is ``$MLX_SIDECAR_BIN`` (default ``target/debug/mlx-sidecar``); the worker runs on
this interpreter (``MLX_SIDECAR_PYTHON``). Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_DIR = Path(__file__).resolve().parents[2]
SIDECAR_DIR = REPO_DIR / "sidecar"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
# The port `--listen 127.0.0.1:0` got, as the daemon prints it on stderr.
LISTEN_LINE = re.compile(r"(?:127\.0\.0\.1|localhost):([1-9][0-9]*)")


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
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


def binary_path() -> Path:
    path = Path(os.environ.get("MLX_SIDECAR_BIN", REPO_DIR / "target/debug/mlx-sidecar"))
    return path if path.is_absolute() else REPO_DIR / path


class Daemon:
    """One `mlx-sidecar serve` process, its socket, its TCP address and its log."""

    def __init__(
        self,
        model_dir: Path,
        args: list[str],
        env: dict[str, str],
        headers: dict[str, str] | None = None,
    ) -> None:
        # A short private dir: Unix socket paths are limited to about 100 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="mlxd-"))
        self.socket_path = self.dir / "daemon.sock"
        self.log_path = self.dir / "daemon.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        full_env = {
            **os.environ,
            "MLX_SIDECAR_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(
                [str(SIDECAR_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "MLX_SIDECAR_CACHE_DIR": str(self.dir / "cache"),
            "MLX_SIDECAR_SOCKET_DIR": str(self.dir),
            **env,
        }
        command = [
            str(binary_path()),
            "--python",
            sys.executable,
            "--model",
            str(model_dir),
            "--cache-dir",
            str(self.dir / "cache"),
            "serve",
            "--socket",
            str(self.socket_path),
            "--listen",
            "127.0.0.1:0",
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env=full_env,
            cwd=str(self.dir),
        )
        self.pid = self.proc.pid
        self.port = 0
        # Sent with every `get` (the API key of a daemon that wants one).
        self.headers = headers or {}

    @property
    def base_url(self) -> str:
        """The HTTP address, such as ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """The gRPC target over TCP, such as ``127.0.0.1:40123``."""
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the daemon exited with {self.proc.returncode}:\n{self.log_text()}"
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Daemon:
        """Waits until the daemon says its port and answers ``GET /ready`` with 200."""

        def port() -> int:
            self._alive()
            match = LISTEN_LINE.search(self.log_text())
            return int(match.group(1)) if match else 0

        self.port = wait_for(port, timeout, "the daemon to print its TCP port")
        wait_for(
            lambda: self._alive() or self.get("/ready")[0] == 200,
            timeout,
            "GET /ready to answer 200",
            interval=0.05,
        )
        return self

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """A plain GET over TCP: (status, body); (0, "") when nothing answers."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.base_url + path, headers={**self.headers, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def fd_count(self) -> int:
        """Open file descriptors of the daemon process (Linux)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> int:
        """SIGTERM, then waits for the exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {STOP_TIMEOUT} s of SIGTERM:\n{self.log_text()}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run(
        [sys.executable, "-m", "mlx_worker.testing.tiny_model", str(out)],
        check=True,
        cwd=str(SIDECAR_DIR),
        env={**os.environ, "PYTHONPATH": str(SIDECAR_DIR)},
    )
    return out


@pytest.fixture(scope="session")
def daemon_binary() -> Path:
    path = binary_path()
    if not path.exists():
        pytest.fail(
            f"no mlx-sidecar binary at {path}: run `cargo build -p mlx-sidecar-cli` "
            "or set MLX_SIDECAR_BIN"
        )
    return path


@contextlib.contextmanager
def running_daemon(
    model_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[Daemon]:
    """A ready daemon until the block ends; then SIGTERM must stop it with exit code 0.
    ``headers`` go with its ``get`` calls (such as the API key)."""
    d = Daemon(model_dir, list(args), env or {}, headers)
    try:
        d.wait_ready()
        yield d
        code = d.stop()
        assert code == 0, f"the daemon exited with {code} on SIGTERM:\n{d.log_text()}"
    finally:
        d.close()


@pytest.fixture(scope="session")
def daemon(daemon_binary: Path, tiny_model_dir: Path) -> Iterator[Daemon]:
    """A shared daemon on the tiny model; tests must leave it serving."""
    with running_daemon(tiny_model_dir) as d:
        yield d


@pytest.fixture(scope="session")
def served_model(daemon: Daemon) -> str:
    """The model id the daemon serves, as ``GET /v1/models`` lists it."""
    import json

    status, body = daemon.get("/v1/models")
    assert status == 200, body
    return json.loads(body)["data"][0]["id"]
