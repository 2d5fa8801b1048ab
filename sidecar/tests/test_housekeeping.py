"""The test model (``--test-model``) and the ``.in-use`` locks that keep cleaning up away
from what a running worker uses."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from mlx_worker.config import parse_args
from mlx_worker.model import load_model
from mlx_worker.testing.served_model import MODEL_ID, ensure_served_model
from mlx_worker.testing.tiny_gguf import write_tiny_gguf


def _locked_by_someone(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_test_model_is_written_once_and_loads_fast(tmp_path: Path) -> None:
    first = ensure_served_model(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_served_model(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    start = time.perf_counter()
    loaded = load_model(first, cache_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    assert loaded.description.model_id == MODEL_ID
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("Hello")) == "Hello"


def test_test_model_flag_excludes_model() -> None:
    assert parse_args(["--socket", "/tmp/s", "--test-model"]).test_model
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_worker", "--socket", "/tmp/s", "--test-model", "--model", "x"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


def test_loading_a_converted_model_holds_its_entry(tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    cache_dir = tmp_path / "cache"
    code = (
        "import sys, time\n"
        "from mlx_worker.model import load_model\n"
        "load_model(sys.argv[1], cache_dir=sys.argv[2])\n"
        "print('loaded', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(gguf), str(cache_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "loaded"
        (entry,) = [p for p in (cache_dir / "models").iterdir() if not p.name.startswith(".")]
        lock = entry / ".in-use"
        assert lock.is_file()
        assert _locked_by_someone(lock)
    finally:
        proc.kill()
        proc.wait()
    assert not _locked_by_someone(lock)
