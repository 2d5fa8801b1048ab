"""The official `openai` package streams from the daemon while its worker is SIGKILLed: the
stream goes on on the next worker, unbroken, with the text and usage of an uninterrupted run,
and `mlx_sidecar_stream_resumes_total` counts the resume."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import Daemon, running_daemon, wait_for


@pytest.fixture(scope="module")
def own_daemon(daemon_binary: Path, tiny_model_dir: Path) -> Iterator[Daemon]:
    """A daemon of this module's own: its worker gets killed."""
    with running_daemon(tiny_model_dir) as d:
        yield d


def worker_pids(daemon: Daemon) -> list[int]:
    """The daemon's worker processes (its children running mlx_worker)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == daemon.pid and b"mlx_worker" in cmdline:
            pids.append(int(entry))
    return pids


def resumes_total(daemon: Daemon) -> float:
    status, text = daemon.get("/metrics")
    assert status == 200, text
    for line in text.splitlines():
        if line.startswith("mlx_sidecar_stream_resumes_total "):
            return float(line.split()[1])
    return 0.0


def test_a_stream_cut_by_a_worker_kill_goes_on_unbroken(own_daemon: Daemon) -> None:
    with openai.OpenAI(
        base_url=f"{own_daemon.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        model = client.models.list().data[0].id
        request = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": 600,
            "temperature": 0,
            "extra_body": {"ignore_eos": True},
        }
        whole = client.chat.completions.create(**request)
        before = resumes_total(own_daemon)
        stream = client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        text, usage, killed = "", None, None
        for n, chunk in enumerate(stream):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
            if killed is None and n >= 30:
                (pid,) = worker_pids(own_daemon)
                os.kill(pid, signal.SIGKILL)
                killed = pid
    assert killed is not None, "the worker was killed mid-stream"
    assert text == whole.choices[0].message.content, "the uninterrupted run's text"
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == 600
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    wait_for(lambda: resumes_total(own_daemon) == before + 1, 5.0, "the resume to be counted")
    assert killed not in worker_pids(own_daemon)
