"""`curl -N` on the daemon's server-sent events: every event is `data: JSON` and the stream
ends with `data: [DONE]`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import Daemon

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")


def curl_stream(daemon: Daemon, path: str, body: dict) -> tuple[list[str], str]:
    """POSTs with `curl -N`; returns the event data lines and curl's header dump."""
    result = subprocess.run(
        [
            str(CURL),
            "-sS",
            "-N",
            "--fail-with-body",
            "--max-time",
            "60",
            "-D",
            "-",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            daemon.base_url + path,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr}"
    head, _, events = result.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = [line for line in events.split("\n") if line]
    return lines, head


def test_chat_stream_ends_with_done(daemon: Daemon) -> None:
    lines, head = curl_stream(
        daemon,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True},
    )
    assert head.startswith("HTTP/1.1 200"), head
    assert "content-type: text/event-stream" in head.lower(), head
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines), lines
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_stream_with_usage_ends_with_done(daemon: Daemon) -> None:
    lines, _ = curl_stream(
        daemon,
        "/v1/completions",
        {
            "prompt": "Once upon a time",
            "max_tokens": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2].removeprefix("data: "))
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 7
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-2])
    assert text
