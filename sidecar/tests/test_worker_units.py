"""Small pure parts of the worker: fault parsing, the command line, socket checks, logging."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from mlx_worker.config import parse_args
from mlx_worker.faults import Faults, parse_faults
from mlx_worker.logging_json import JsonFormatter
from mlx_worker.socket_guard import SocketPathError, check_socket_path


def test_faults_parse_every_documented_entry() -> None:
    f = parse_faults(
        "startup_delay=1.5, startup_hang,startup_exit=3,load_error,ignore_sigterm,"
        "engine_stall_after_steps=4,engine_crash_after_steps=9"
    )
    assert f == Faults(
        startup_delay=1.5,
        startup_hang=True,
        startup_exit=3,
        load_error=True,
        ignore_sigterm=True,
        engine_stall_after_steps=4,
        engine_crash_after_steps=9,
    )
    assert f.any
    assert parse_faults(None) == parse_faults("") == Faults() and not Faults().any


@pytest.mark.parametrize(
    "spec",
    [
        "bogus",
        "startup_delay",
        "startup_delay=-1",
        "startup_delay=nan",
        "load_error=1",
        "engine_stall_after_steps=x",
        "engine_crash_after_steps=-2",
    ],
)
def test_bad_faults_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="MLX_WORKER_FAULTS"):
        parse_faults(spec)


def test_command_line_defaults_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_SIDECAR_CACHE_DIR", "/some/cache")
    c = parse_args(["--socket", "/run/w.sock"])
    assert (c.max_batch, c.max_queue, c.grace_seconds, c.log_level, c.dequantize) == (
        32,
        256,
        10.0,
        "info",
        "auto",
    )
    assert c.cache_dir == Path("/some/cache") and c.model is None and c.stdin_watch
    c = parse_args(
        [
            "--socket",
            "s",
            "--model",
            "m",
            "--max-batch",
            "4",
            "--no-stdin-watch",
            "--stall-seconds",
            "2.5",
            "--prefill-step-size",
            "128",
            "--stream-interval-ms",
            "7.5",
            "--cache-dir",
            "/c",
        ]
    )
    assert (c.model, c.max_batch, c.stdin_watch, c.stall_seconds, c.prefill_step_size) == (
        "m",
        4,
        False,
        2.5,
        128,
    )
    assert c.stream_interval_ms == 7.5
    assert c.cache_dir == Path("/c")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--socket", "s", "--max-batch", "0"],
        ["--socket", "s", "--grace-seconds", "inf"],
        ["--socket", "s", "--dequantize", "maybe"],
        ["--socket", "s", "--stall-seconds", "0"],
        ["--socket", "s", "--stream-interval-ms", "-1"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2


def test_socket_checks(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    check_socket_path(d / "ok.sock")  # nothing there: fine
    with pytest.raises(SocketPathError, match="does not exist"):
        check_socket_path(tmp_path / "missing" / "w.sock")
    with pytest.raises(SocketPathError, match="longer than"):
        check_socket_path(d / ("x" * 120))
    # A stale socket is removed; a live one is refused.
    stale = d / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    check_socket_path(stale)
    assert not stale.exists()
    live = d / "live.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(live))
    server.listen()
    try:
        with pytest.raises(SocketPathError, match="live server"):
            check_socket_path(live)
        assert live.exists()
    finally:
        server.close()


def test_json_formatter() -> None:
    record = logging.LogRecord("mlx_worker.x", logging.WARNING, "f", 1, "hi %s", ("there",), None)
    record.fields = {"n": 1, "path": Path("/p")}
    entry = json.loads(JsonFormatter().format(record))
    assert entry == {
        "ts": record.created,
        "level": "warning",
        "target": "mlx_worker.x",
        "message": "hi there",
        "fields": {"n": 1, "path": "/p"},
    }
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in entry["fields"]["exception"]


def test_fast_import_skips_transformers_and_leaves_no_placeholder() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mlx_worker.fast_import import import_batch_generator\n"
        "bg = import_batch_generator()\n"
        "assert bg.__name__ == 'BatchGenerator', bg\n"
        "assert 'transformers' not in sys.modules\n"
        "import mlx_lm.sample_utils\n"
        "assert sys.modules['mlx_lm.generate'].BatchGenerator is bg\n"
        "import transformers\n"  # the real package, once the worker is up
        "assert isinstance(transformers.__version__, str)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_prefill_plan_batches_eight_prompts_within_the_per_step_bound() -> None:
    from mlx_worker.engine.startup import PrefillPlan, prefill_plan

    c = parse_args(["--socket", "/run/w.sock"])
    assert c.prefill_step_size is None
    assert prefill_plan(c, on_gpu=False) == PrefillPlan(step_size=256, batch_size=8)
    assert prefill_plan(c, on_gpu=True) == PrefillPlan(step_size=512, batch_size=8)
    # An explicit chunk size is kept; the batch shrinks to stay within the bound.
    big = parse_args(["--socket", "/run/w.sock", "--prefill-step-size", "2048"])
    assert prefill_plan(big, on_gpu=False) == PrefillPlan(step_size=2048, batch_size=1)
    assert prefill_plan(big, on_gpu=True) == PrefillPlan(step_size=2048, batch_size=4)
    small = parse_args(["--socket", "/run/w.sock", "--max-batch", "2", "--prefill-step-size", "16"])
    assert prefill_plan(small, on_gpu=False).batch_size == 2


def test_solo_flag() -> None:
    assert parse_args(["--socket", "/run/w.sock"]).solo == "on"
    assert parse_args(["--socket", "/run/w.sock", "--solo", "off"]).solo == "off"
    with pytest.raises(SystemExit):
        parse_args(["--socket", "/run/w.sock", "--solo", "maybe"])


def test_row_count_warm_up_runs_the_model_at_each_count_up_to_the_bound(
    tiny_model_dir: Path,
) -> None:
    from mlx_worker.engine.startup import GPU_WARMUP_ROWS, warm_up_row_counts
    from mlx_worker.model import load_model

    model = load_model(str(tiny_model_dir)).model
    assert warm_up_row_counts(model, 16, 256) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert warm_up_row_counts(model, 100, 256) == [r for r in GPU_WARMUP_ROWS if r <= 100]
    # Beyond one prefill chunk, the rows come as several sequences of at most a chunk.
    assert warm_up_row_counts(model, 1024, 256)[-1] == 1024
    # The per-step prompt bound on a GPU (8 prompts of 512 tokens) is covered.
    assert max(GPU_WARMUP_ROWS) >= 8 * 512


def test_gathering_waits_for_the_expected_returning_requests_then_one_gap_at_a_time() -> None:
    from mlx_worker.engine.gather import GATHER_GAP_S, gather_wait

    left = 0.004
    # No one expected: one gap for another request (at most what is left).
    assert gather_wait(1, 0, left) == GATHER_GAP_S
    assert gather_wait(3, 0, 0.0002) == 0.0002
    # Three returning clients expected: wait for them whatever the gaps, then one gap at a
    # time for more (a growing load sends more than just finished).
    assert gather_wait(1, 3, left) == left
    assert gather_wait(2, 3, left) == left
    assert gather_wait(3, 3, left) == GATHER_GAP_S
    assert gather_wait(4, 3, left) == GATHER_GAP_S
