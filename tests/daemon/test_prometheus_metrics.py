"""`GET /metrics` read by prometheus-client's own text parser: every family parses, every
name is ours, and the counters move as requests are served."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from conftest import Daemon

EXPECTED_FAMILIES = {
    "mlx_sidecar_time_to_first_token_seconds": "histogram",
    "mlx_sidecar_inter_token_latency_seconds": "histogram",
    "mlx_sidecar_e2e_request_latency_seconds": "histogram",
    "mlx_sidecar_request_queue_time_seconds": "histogram",
    "mlx_sidecar_requests_running": "gauge",
    "mlx_sidecar_requests_waiting": "gauge",
    "mlx_sidecar_worker_up": "gauge",
    "mlx_sidecar_standby_ready": "gauge",
    # The parser names counter families without their `_total` suffix.
    "mlx_sidecar_prompt_tokens": "counter",
    "mlx_sidecar_generation_tokens": "counter",
    "mlx_sidecar_requests": "counter",
    "mlx_sidecar_request_errors": "counter",
    "mlx_sidecar_worker_restarts": "counter",
}


def scrape(daemon: Daemon) -> dict[str, tuple[str, list[Sample]]]:
    """The families by name: (type, samples); fails on anything the parser rejects."""
    status, text = daemon.get("/metrics")
    assert status == 200, text
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.samples)
    return families


def value(families: dict, sample_name: str, **labels: str) -> float:
    """The sum of the samples named so whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for _, samples in families.values():
        for s in samples:
            if s.name == sample_name and labels.items() <= s.labels.items():
                total += s.value
    return total


def post_json(daemon: Daemon, path: str, body: dict) -> int:
    request = urllib.request.Request(
        daemon.base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return response.status


def test_every_family_parses_and_is_ours(daemon: Daemon) -> None:
    families = scrape(daemon)
    assert families, "no metrics"
    for name, (kind, samples) in families.items():
        assert name.startswith("mlx_sidecar_"), name
        assert kind != "unknown", f"{name} has no TYPE"
        for s in samples:
            assert s.name.startswith("mlx_sidecar_"), s.name
    for name, kind in EXPECTED_FAMILIES.items():
        assert name in families, f"{name} missing from {sorted(families)}"
        assert families[name][0] == kind, f"{name} is a {families[name][0]}, not a {kind}"
    assert value(families, "mlx_sidecar_worker_up") == 1.0


def test_counters_move_as_requests_are_served(daemon: Daemon) -> None:
    before = scrape(daemon)
    assert post_json(daemon, "/v1/completions", {"prompt": "Hello", "max_tokens": 6}) == 200
    assert (
        post_json(
            daemon,
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True},
        )
        == 200
    )
    after = scrape(daemon)

    def moved(sample_name: str, **labels: str) -> float:
        return value(after, sample_name, **labels) - value(before, sample_name, **labels)

    assert moved("mlx_sidecar_requests_total", api="http", finish_reason="length") == 2
    assert moved("mlx_sidecar_generation_tokens_total", api="http") == 10
    assert moved("mlx_sidecar_prompt_tokens_total", api="http") >= 2
    assert moved("mlx_sidecar_time_to_first_token_seconds_count", api="http") == 2
    assert moved("mlx_sidecar_e2e_request_latency_seconds_count", api="http") == 2
    assert moved("mlx_sidecar_e2e_request_latency_seconds_sum", api="http") > 0
    assert moved("mlx_sidecar_request_queue_time_seconds_count", api="http") == 2
    # Nothing runs or waits once both answers are in.
    assert value(after, "mlx_sidecar_requests_running") == 0
    assert value(after, "mlx_sidecar_requests_waiting") == 0


def test_errors_are_counted_by_code(daemon: Daemon) -> None:
    before = scrape(daemon)
    request = urllib.request.Request(
        daemon.base_url + "/v1/completions",
        data=json.dumps({"prompt": "Hi", "max_tokens": 2, "top_p": 1.5}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError("top_p 1.5 was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400
    after = scrape(daemon)
    errors = value(after, "mlx_sidecar_request_errors_total", api="http") - value(
        before, "mlx_sidecar_request_errors_total", api="http"
    )
    assert errors == 1
    assert (
        value(after, "mlx_sidecar_request_errors_total", api="http", code="invalid_argument")
        - value(before, "mlx_sidecar_request_errors_total", api="http", code="invalid_argument")
        == 1
    )
