"""Bad input from raw sockets: malformed JSON, wrong types, a 10 MB body, 500 connections
opened and dropped, a client that stops reading its stream. Each gets a clear error (or
none, for a client that went away); the daemon and its worker serve on, and its file
descriptors return to their baseline. These tests abuse their own daemon."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, running_daemon, wait_for

STALL_TIMEOUT_S = 2.0
FD_SLACK = 4


@pytest.fixture(scope="module")
def stall_timeout_s() -> float:
    """The daemon's ``--stall-timeout``, short so that the stalled-reader test ends soon."""
    return STALL_TIMEOUT_S


@pytest.fixture(scope="module")
def own(daemon_binary: Path, tiny_model_dir: Path, stall_timeout_s: float) -> Iterator[Daemon]:
    with running_daemon(tiny_model_dir, "--stall-timeout", str(stall_timeout_s)) as d:
        yield d


def http_request(
    daemon: Daemon,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a raw socket (the body may be anything); reads while it
    writes, so an answer that comes before the body is sent is still read."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {daemon.grpc_target}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=timeout) as sock:

        def send() -> None:
            # The server may answer and close before the body is all sent.
            with contextlib.suppress(OSError):
                sock.sendall(head + body)

        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        received = b""
        try:
            while b"\r\n\r\n" not in received or not response_complete(received):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass  # the answer was read; the reset is for the unread rest of the body
        writer.join(timeout)
    head_bytes, _, payload = received.partition(b"\r\n\r\n")
    assert head_bytes, "no answer"
    status_line, *header_lines = head_bytes.decode().split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, val = line.partition(":")
        parsed[name.strip().lower()] = val.strip()
    return int(status_line.split()[1]), parsed, payload


def response_complete(received: bytes) -> bool:
    head, _, payload = received.partition(b"\r\n\r\n")
    for line in head.decode(errors="replace").split("\r\n"):
        name, _, val = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(payload) >= int(val)
    return False


def openai_error(status: int, expected: int, payload: bytes) -> dict[str, Any]:
    assert status == expected, payload
    error = json.loads(payload)["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["message"]
    return error


def post_json(daemon: Daemon, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    return http_request(
        daemon, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )


def assert_serves(daemon: Daemon) -> None:
    status, _, payload = post_json(daemon, "/v1/completions", {"prompt": "Hi", "max_tokens": 3})
    assert status == 200, payload
    assert json.loads(payload)["usage"]["completion_tokens"] == 3


def test_malformed_json_is_400(own: Daemon) -> None:
    status, _, payload = http_request(
        own,
        "POST",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi"}',
        {"Content-Type": "application/json"},
    )
    error = openai_error(status, 400, payload)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    status, _, payload = http_request(
        own, "POST", "/v1/completions", b"\xff\xfe not json", {"Content-Type": "application/json"}
    )
    openai_error(status, 400, payload)
    assert_serves(own)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "temperature",
        ),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ("/v1/completions", {"prompt": {"a": 1}}, "prompt"),
        ("/v1/completions", [1, 2, 3], None),
    ],
)
def test_wrong_types_are_400_naming_the_parameter(
    own: Daemon, path: str, body: Any, param: str | None
) -> None:
    status, _, payload = post_json(own, path, body)
    error = openai_error(status, 400, payload)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


def test_a_10_mb_body_is_413(own: Daemon) -> None:
    body = json.dumps({"prompt": "x" * (10 * 1024 * 1024), "max_tokens": 1}).encode()
    status, _, payload = http_request(
        own, "POST", "/v1/completions", body, {"Content-Type": "application/json"}
    )
    error = openai_error(status, 413, payload)
    assert error["code"] == "request_too_large"
    assert_serves(own)


def half_requests(port: int, count: int) -> list[socket.socket]:
    """Opens ``count`` connections; some send nothing, some half a header, some a header and
    half the body they announce."""
    partial = [
        b"",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 200\r\n\r\n{"prompt": "Hel',
        b"GET /metrics HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ]
    sockets = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if partial[i % len(partial)]:
            s.sendall(partial[i % len(partial)])
        sockets.append(s)
    return sockets


def test_500_connections_opened_and_dropped(own: Daemon) -> None:
    assert_serves(own)
    baseline = own.fd_count()
    sockets = half_requests(own.port, 500)
    try:
        # While they hang, others are served.
        assert_serves(own)
        wait_for(lambda: own.fd_count() >= baseline + 400, 10, "the daemon to accept them")
    finally:
        for s in sockets:
            s.close()
    wait_for(
        lambda: own.fd_count() <= baseline + FD_SLACK,
        15,
        f"the daemon's fds to return to {baseline} (+{FD_SLACK})",
        interval=0.1,
    )
    assert_serves(own)
    status, body = own.get("/metrics")
    assert status == 200
    assert "mlx_sidecar_requests_running" in body


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(daemon: Daemon, series: str) -> float:
    """One sample of ``GET /metrics`` by its exact series text (0 when absent)."""
    _, body = daemon.get("/metrics")
    for line in body.splitlines():
        name, _, val = line.rpartition(" ")
        if name == series:
            return float(val)
    return 0.0


def stable_value(read: Callable[[], float], window: float, timeout: float, what: str) -> float:
    """Waits until ``read()`` stays the same for ``window`` seconds; returns that value."""
    last = {"value": read(), "since": time.monotonic()}

    def settled() -> bool:
        now_value = read()
        if now_value != last["value"]:
            last.update(value=now_value, since=time.monotonic())
        return time.monotonic() - last["since"] >= window

    wait_for(settled, timeout, what, interval=0.1)
    return last["value"]


def test_a_client_that_stops_reading(own: Daemon, stall_timeout_s: float) -> None:
    running = 'mlx_sidecar_requests_running{api="http"}'
    generated = 'mlx_sidecar_generation_tokens_total{api="http"}'
    finished = 'mlx_sidecar_requests_total{api="http",finish_reason="length"}'
    cancelled = 'mlx_sidecar_request_errors_total{api="http",code="cancelled"}'
    before = {name: metric(own, name) for name in (generated, finished, cancelled)}
    rss_before = vm_rss_kib(own.pid)
    fds_before = own.fd_count()
    # A long stream of large events (20 alternatives a token, about 1.4 kB an event; 2.6 MB
    # in all) on the Unix socket, whose kernel buffer (about 200 kB) fills at once, unlike
    # loopback TCP's, which grows to hold megabytes.
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1900,
            "ignore_eos": True,
            "logprobs": True,
            "top_logprobs": 20,
            "stream": True,
        }
    ).encode()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.settimeout(30)
    try:
        stalled.connect(str(own.socket_path))
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        first = b""
        while b"data: " not in first:
            first += stalled.recv(1024)
        assert first.startswith(b"HTTP/1.1 200"), first
        # Now it reads no more. The daemon stops taking tokens from the worker (its buffer
        # is bounded) long before the 1900 (which take the tiny model about 4 s)...
        plateau = stable_value(
            lambda: metric(own, generated), 1.0, 20, "generation to stop at a bounded buffer"
        )
        assert 0 < plateau - before[generated] < 1900 / 2, plateau - before[generated]
        assert metric(own, running) == 1
        assert metric(own, finished) == before[finished]
        # ... and serves others meanwhile, at full speed.
        started = time.monotonic()
        for _ in range(3):
            assert_serves(own)
        assert time.monotonic() - started < 10, "others were held up by the stalled stream"
        grown = vm_rss_kib(own.pid) - rss_before
        assert grown < 32 * 1024, f"the daemon grew {grown} KiB for one stalled stream"
        # After the stall timeout the daemon gives the stream up and cancels the generation.
        wait_for(
            lambda: metric(own, cancelled) >= before[cancelled] + 1,
            stall_timeout_s + 15,
            "the stalled stream to be cancelled",
            interval=0.2,
        )
        wait_for(lambda: metric(own, running) == 0, 10, "nothing running")
        assert metric(own, finished) == before[finished] + 3, "only the 3 others finished"
        # What the client can still read ends (without [DONE]) and the connection closes.
        stalled.settimeout(10)
        rest = first
        while data := stalled.recv(65536):
            rest += data
        assert rest.endswith(b"\r\n0\r\n\r\n"), rest[-200:]
        assert b"data: [DONE]" not in rest
    finally:
        stalled.close()
    wait_for(
        lambda: own.fd_count() <= fds_before + FD_SLACK,
        10,
        f"the daemon's fds to return to {fds_before} (+{FD_SLACK})",
        interval=0.1,
    )
    assert_serves(own)
