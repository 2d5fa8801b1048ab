"""A generic gRPC client that knows nothing of our protos: grpcio-reflection's descriptor
database finds the services over TCP, and the messages are built from the reflected
descriptors (not from the checked-in stubs) to call Generate and Status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from conftest import Daemon

INFERENCE = "mlx_sidecar.v1.Inference"
DAEMON = "mlx_sidecar.v1.Daemon"
HEALTH = "grpc.health.v1.Health"


@pytest.fixture(scope="module")
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def pool(channel: grpc.Channel) -> descriptor_pool.DescriptorPool:
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


class Reflected:
    """Calls a method known only through its reflected descriptor."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, service: str, method: str) -> None:
        descriptor = pool.FindServiceByName(service).methods_by_name[method]
        self.request_class = message_factory.GetMessageClass(descriptor.input_type)
        self.response_class = message_factory.GetMessageClass(descriptor.output_type)
        self.path = f"/{service}/{method}"
        self.server_streaming = descriptor.server_streaming

    def request(self, fields: dict[str, Any]) -> Any:
        return json_format.ParseDict(fields, self.request_class())

    def callable(self, channel: grpc.Channel) -> Any:
        make = channel.unary_stream if self.server_streaming else channel.unary_unary
        return make(
            self.path,
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )


def test_lists_the_services(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {INFERENCE, DAEMON, HEALTH} <= services, services


def test_inference_descriptor_has_its_methods(pool: descriptor_pool.DescriptorPool) -> None:
    service = pool.FindServiceByName(INFERENCE)
    assert service.file.name == "mlx_sidecar/v1/inference.proto"
    assert set(service.methods_by_name) >= {"Generate", "Tokenize", "Detokenize", "ModelInfo"}
    generate = service.methods_by_name["Generate"]
    assert generate.server_streaming
    assert not generate.client_streaming
    assert generate.input_type.full_name == "mlx_sidecar.v1.GenerateRequest"
    assert "max_tokens" in generate.input_type.fields_by_name


def test_generate_with_reflected_messages(
    pool: descriptor_pool.DescriptorPool, channel: grpc.Channel
) -> None:
    generate = Reflected(pool, INFERENCE, "Generate")
    request = generate.request(
        {"prompt": {"text": "Once upon a time"}, "max_tokens": 5, "sampling": {"temperature": 0}}
    )
    chunks, finished = [], []
    for message in generate.callable(channel)(request, timeout=60):
        event = message.WhichOneof("event")
        assert event in ("chunk", "finished"), event
        (chunks if event == "chunk" else finished).append(getattr(message, event))
    assert len(finished) == 1, "exactly one `finished`, at the end"
    assert sum(len(c.token_ids) for c in chunks) == 5
    done = json_format.MessageToDict(finished[0], preserving_proto_field_name=True)
    assert done["finish_reason"] == "FINISH_REASON_LENGTH"
    assert done["usage"]["completion_tokens"] == 5


def test_invalid_argument_through_reflection(
    pool: descriptor_pool.DescriptorPool, channel: grpc.Channel
) -> None:
    generate = Reflected(pool, INFERENCE, "Generate")
    request = generate.request({"prompt": {"text": "Hi"}, "sampling": {"top_p": 1.5}})
    with pytest.raises(grpc.RpcError) as raised:
        list(generate.callable(channel)(request, timeout=60))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_p" in (raised.value.details() or "")


def test_daemon_status_through_reflection(
    daemon: Daemon, pool: descriptor_pool.DescriptorPool, channel: grpc.Channel
) -> None:
    status = Reflected(pool, DAEMON, "Status")
    reply = status.callable(channel)(status.request({}), timeout=10)
    assert reply.daemon_pid == daemon.pid
    assert reply.HasField("worker_pid")
    listeners = {(listener.kind, listener.address) for listener in reply.listeners}
    assert ("tcp", daemon.grpc_target) in listeners, listeners
    assert ("unix", str(daemon.socket_path)) in listeners, listeners


def test_health_is_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", INFERENCE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def unix_health(daemon: Daemon, options: list[tuple[str, str]]) -> int:
    with grpc.insecure_channel(f"unix:{daemon.socket_path}", options=options) as unix:
        reply = health_pb2_grpc.HealthStub(unix).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return reply.status


def test_grpcio_over_the_unix_socket_with_a_plain_authority(daemon: Daemon) -> None:
    options = [("grpc.default_authority", "localhost")]
    assert unix_health(daemon, options) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.xfail(
    strict=True,
    raises=grpc.RpcError,
    reason="grpcio's default :authority for a unix: target is made from the socket path, "
    "and the daemon's HTTP/2 server (h2) answers such an authority with RST_STREAM "
    "PROTOCOL_ERROR (the worker, a grpcio server, accepts it)",
)
def test_grpcio_over_the_unix_socket_as_it_comes(daemon: Daemon) -> None:
    assert unix_health(daemon, []) == health_pb2.HealthCheckResponse.SERVING
