"""A daemon started with `--api-key-file`: on TCP, HTTP needs `Authorization: Bearer KEY`
(else 401 and nothing more) and gRPC the same metadata (else UNAUTHENTICATED); the
`openai` package and grpcio with the right key are served."""

from __future__ import annotations

import json
import secrets
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from conftest import Daemon, running_daemon

KEY = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def keyed(
    daemon_binary: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    with running_daemon(tiny_model_dir, "--api-key-file", str(key_file), headers=bearer(KEY)) as d:
        yield d


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def http_status(
    daemon: Daemon, path: str, headers: dict[str, str], body: dict | None = None
) -> tuple[int, dict, str]:
    request = urllib.request.Request(
        daemon.base_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-" + KEY),
        bearer(KEY[:-1]),
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ],
    ids=["missing", "wrong", "truncated", "no-scheme", "basic"],
)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/models", "/metrics", "/health"])
def test_http_without_the_key_is_401(keyed: Daemon, headers: dict[str, str], path: str) -> None:
    body = {"prompt": "Hi", "max_tokens": 2} if path == "/v1/completions" else None
    status, response_headers, text = http_status(keyed, path, headers, body)
    assert status == 401, text
    assert {k.lower(): v for k, v in response_headers.items()}["www-authenticate"].startswith(
        "Bearer"
    )
    error = json.loads(text)["error"]
    assert error["code"] == "invalid_api_key"
    assert KEY not in text


def test_http_with_the_key_is_served(keyed: Daemon) -> None:
    status, _, text = http_status(
        keyed, "/v1/completions", bearer(KEY), {"prompt": "Hi", "max_tokens": 2}
    )
    assert status == 200, text
    client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=KEY, max_retries=0)
    with client:
        reply = client.completions.create(model="default", prompt="Hi", max_tokens=3)
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 3


def test_openai_client_with_a_wrong_key_gets_authentication_error(keyed: Daemon) -> None:
    client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="nope", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert raised.value.status_code == 401


class KeyMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization`` metadata to every call."""

    def __init__(self, value: str) -> None:
        self.value = value

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or []), ("authorization", self.value)]
        return details._replace(metadata=metadata)  # type: ignore[attr-defined]

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_key(details), request)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._with_key(details), requests)


@pytest.mark.parametrize(
    "metadata", [None, f"Bearer wrong-{KEY}", KEY], ids=["missing", "wrong", "no-scheme"]
)
def test_grpc_without_the_key_is_unauthenticated(keyed: Daemon, metadata: str | None) -> None:
    with grpc.insecure_channel(keyed.grpc_target) as plain:
        channel = (
            plain if metadata is None else grpc.intercept_channel(plain, KeyMetadata(metadata))
        )
        with pytest.raises(grpc.RpcError) as raised:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert KEY not in (raised.value.details() or "")
        with pytest.raises(grpc.RpcError) as raised:
            list(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_with_the_key_is_served(keyed: Daemon) -> None:
    with grpc.insecure_channel(keyed.grpc_target) as plain:
        channel = grpc.intercept_channel(plain, KeyMetadata(f"Bearer {KEY}"))
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "mlx_sidecar.v1.Inference" in set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        assert pool.FindServiceByName("mlx_sidecar.v1.Inference").methods_by_name["Generate"]


def test_the_unix_socket_needs_no_key(keyed: Daemon) -> None:
    # Its 0600 mode protects it; the key is for TCP only.
    assert keyed.socket_path.stat().st_mode & 0o777 == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(keyed.socket_path))
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200"), answer
    # A plain authority: see test_grpc_reflection.py on grpcio's default for unix: targets.
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix:{keyed.socket_path}", options=options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
