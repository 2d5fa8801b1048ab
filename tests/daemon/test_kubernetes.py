"""deploy/kubernetes: the example manifest passes Kubernetes' own schemas (kubernetes-validate,
strict), its probes point at the port and paths the daemon serves, and those probes pass,
made as the kubelet makes them (no API key), against a real daemon started with the
container's own arguments; everything else on that keyed listener still needs the key."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import REPO_DIR, START_TIMEOUT, Daemon, running_daemon, wait_for

MANIFEST = REPO_DIR / "deploy" / "kubernetes" / "mlx-sidecar.yaml"
KEY = secrets.token_urlsafe(24)
# What the daemon's grpc.health.v1 reports (crates/mlx-sidecar-server/src/grpc/health.rs).
HEALTH_SERVICES = {"", "mlx_sidecar.v1.Inference", "mlx_sidecar.v1.Daemon"}


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def container() -> dict[str, Any]:
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def port_number(port: int | str, ports: list[dict[str, Any]]) -> int:
    """A probe's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (named,) = [p for p in ports if p.get("name") == port]
    return int(named["containerPort"])


@pytest.mark.parametrize("version", [kubernetes_validate.latest_version(), "1.30.0"])
def test_the_manifest_passes_the_kubernetes_schemas(version: str) -> None:
    kinds = []
    for document in documents():
        kubernetes_validate.validate(document, version, strict=True)
        kinds.append(document["kind"])
    assert sorted(kinds) == ["Deployment", "Service"]


def test_the_validator_catches_a_broken_probe() -> None:
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    broken = copy.deepcopy(deployment)
    probe = broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["grpc"]["portName"] = "api"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_probes_point_at_what_the_daemon_serves() -> None:
    main = container()
    args = main["args"]
    assert main["command"] == ["mlx-sidecar"] and args[0] == "serve"
    listen_port = int(option(args, "--listen").rsplit(":", 1)[1])
    ports = main["ports"]
    assert [p["containerPort"] for p in ports] == [listen_port]
    # Without --open-probes the kubelet's probes would get UNAUTHENTICATED / 401.
    assert "--api-key-file" in args and "--open-probes" in args
    key_dir = str(Path(option(args, "--api-key-file")).parent)
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in documents()[0]["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes[mounts[key_dir]]
    for kind in ("startupProbe", "livenessProbe"):
        probe = main[kind]["grpc"]
        assert probe["port"] == listen_port, kind
        assert probe.get("service", "") in HEALTH_SERVICES, kind
    ready = main["readinessProbe"]["httpGet"]
    assert ready["path"] == "/ready"
    assert port_number(ready["port"], ports) == listen_port
    (service,) = [d for d in documents() if d["kind"] == "Service"]
    (service_port,) = service["spec"]["ports"]
    assert port_number(service_port["targetPort"], ports) == listen_port
    assert service["spec"]["selector"] == main_labels()


def main_labels() -> dict[str, str]:
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def as_deployed(
    daemon_binary: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A daemon with the container's arguments, on loopback with a key file of its own and
    two worker replicas."""
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    args = list(container()["args"][1:])
    args[args.index("--api-key-file") + 1] = str(key_file)
    args[args.index("--workers") + 1] = "2"
    # The conftest's Daemon adds its own --listen on loopback; the manifest's comes first.
    listen = args.index("--listen")
    del args[listen : listen + 2]
    with running_daemon(tiny_model_dir, *args) as d:
        yield d


def test_the_probes_pass_without_the_key_and_nothing_else_does(as_deployed: Daemon) -> None:
    main = container()
    with grpc.insecure_channel(as_deployed.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for kind in ("startupProbe", "livenessProbe"):
            service = main[kind]["grpc"].get("service", "")
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, kind
    status, body = as_deployed.get(main["readinessProbe"]["httpGet"]["path"])
    assert status == 200, body
    # The exemption is narrow: the rest of the listener still wants the key.
    assert as_deployed.get("/metrics")[0] == 401
    assert as_deployed.get("/v1/models")[0] == 401

    # With the key: both worker replicas come up (the pod is ready once the first is).
    def both_up() -> bool:
        status, metrics = as_deployed.get("/metrics", {"Authorization": f"Bearer {KEY}"})
        assert status == 200
        return all(f'mlx_sidecar_replica_up{{replica="{r}"}} 1' in metrics for r in "01")

    wait_for(both_up, START_TIMEOUT, "both replicas to be up")
