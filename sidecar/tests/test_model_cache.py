"""The GGUF conversion cache: reuse, half-written entries, races, write failures."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlx_worker.model import ModelCacheError, cache, gguf_convert, load_model
from mlx_worker.testing.tiny_gguf import write_tiny_gguf

SIDECAR_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny-Q8_0.gguf")


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "models").iterdir())


def _python(code: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SIDECAR_DIR)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


def test_converts_once_then_reuses(gguf: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    target, built = gguf_convert.converted_dir(gguf, cache_dir)
    assert built and cache.is_complete(target)
    assert target.parent == cache_dir / "models"
    assert target.name.startswith("tiny-Q8_0-")
    again, built_again = gguf_convert.converted_dir(gguf, cache_dir)
    assert again == target and not built_again
    assert _entries(cache_dir) == [target.name]
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)


def test_same_content_elsewhere_shares_entry_changed_content_does_not(
    gguf: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    first, _ = gguf_convert.converted_dir(gguf, cache_dir)
    copy = tmp_path / "copy" / gguf.name
    copy.parent.mkdir()
    copy.write_bytes(gguf.read_bytes())
    assert gguf_convert.converted_dir(copy, cache_dir) == (first, False)
    other = write_tiny_gguf(tmp_path / "other" / gguf.name, seed=1)
    second, built = gguf_convert.converted_dir(other, cache_dir)
    assert built and second != first


def test_entry_without_marker_is_rebuilt(gguf: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    target, _ = gguf_convert.converted_dir(gguf, cache_dir)
    (target / cache.MARKER).unlink()
    (target / "model.safetensors").write_bytes(b"half written")
    loaded = load_model(gguf, cache_dir=cache_dir)
    assert cache.is_complete(target)
    assert loaded.description.vocab_size > 0
    assert _entries(cache_dir) == [target.name]


def test_damaged_complete_entry_is_rebuilt(gguf: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    target, _ = gguf_convert.converted_dir(gguf, cache_dir)
    (target / "model.safetensors").write_bytes(b"\0" * 100)
    loaded = load_model(gguf, cache_dir=cache_dir)
    assert loaded.description.parameter_count > 0
    assert (target / "model.safetensors").stat().st_size > 100


def test_converter_killed_midway_leaves_nothing_used(gguf: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    # The converter dies (as by SIGKILL) after writing the weights, before finishing.
    code = f"""
import os
from pathlib import Path
from mlx_worker.model import gguf_convert
real = gguf_convert.convert
def dying(path, out):
    real(path, out)
    os._exit(9)
gguf_convert.convert = dying
gguf_convert.converted_dir(Path({str(gguf)!r}), Path({str(cache_dir)!r}))
"""
    result = _python(code)
    assert result.returncode == 9, result.stderr
    leftovers = _entries(cache_dir)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
    target, built = gguf_convert.converted_dir(gguf, cache_dir)
    assert built
    assert _entries(cache_dir) == [target.name]  # the dead builder's temp dir is gone


def test_concurrent_converters_both_succeed(
    gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    both_building = threading.Barrier(2, timeout=30)
    real = gguf_convert.convert

    def convert(path: Path, out: Path) -> dict:
        facts = real(path, out)
        both_building.wait()  # neither renames until both have built
        return facts

    monkeypatch.setattr(gguf_convert, "convert", convert)
    results: list[tuple[Path, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf_convert.converted_dir(gguf, cache_dir)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert results[0][0] == results[1][0]
    assert sorted(built for _, built in results) == [False, True]
    assert _entries(cache_dir) == [results[0][0].name]
    assert cache.is_complete(results[0][0])


def test_write_failure_is_a_clear_error(gguf: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    # A file size limit makes writes fail the way a full disk does.
    code = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
from mlx_worker.model import load_model, ModelCacheError
try:
    load_model({str(gguf)!r}, cache_dir={str(cache_dir)!r})
except ModelCacheError as e:
    print("ERROR", e)
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ERROR cannot write converted model"), result.stdout
    assert str(cache_dir / "models") in result.stdout
    assert _entries(cache_dir) == []  # no half-written entry or temp dir left


def test_cache_dir_not_creatable(gguf: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelCacheError, match="cannot create conversion cache") as info:
        load_model(gguf, cache_dir=blocker / "cache")
    assert str(blocker) in str(info.value)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLX_SIDECAR_CACHE_DIR", str(tmp_path / "a"))
    assert cache.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MLX_SIDECAR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "mlx-sidecar"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "mlx-sidecar"
