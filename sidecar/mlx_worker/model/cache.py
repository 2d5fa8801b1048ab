"""The conversion cache: converted models under ``<cache_dir>/models/<name>-<digest>/``.

A directory is used only when it holds the completion marker, which is written last. Builds
happen in a private temporary directory beside the target, renamed into place at the end, so
a build killed half-way is never used, and two processes converting the same model at once
do not disturb each other (the second rename finds the target present and the loser's copy
is dropped). Temporary directories of builders that died are removed by the next build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelCacheError

# Bump when the converter's output changes, so old conversions are not reused.
CONVERTER_VERSION = 1
MARKER = "mlx-sidecar-complete.json"
_DIGEST_SPAN = 1 << 20  # bytes hashed at each end of the source file
_TMP_RE = re.compile(r"\.tmp-.+-(\d+)-[^-]+")


def default_cache_dir() -> Path:
    """$MLX_SIDECAR_CACHE_DIR, else $XDG_CACHE_HOME/mlx-sidecar, else ~/.cache/mlx-sidecar."""
    if env := os.environ.get("MLX_SIDECAR_CACHE_DIR"):
        return Path(env)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "mlx-sidecar"
    return Path.home() / ".cache" / "mlx-sidecar"


def source_digest(path: Path) -> str:
    """A short digest of a file's size and its first and last MiB (the GGUF header and data).

    Content based, so the same file at another path or with a new mtime maps to the same
    cache entry; reading 2 MiB takes a millisecond or two.
    """
    h = hashlib.sha256(f"v{CONVERTER_VERSION}:".encode())
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        h.update(f.read(_DIGEST_SPAN))
        if size > 2 * _DIGEST_SPAN:
            f.seek(size - _DIGEST_SPAN)
        h.update(f.read(_DIGEST_SPAN))
    return h.hexdigest()[:16]


def entry_name(stem: str, digest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "model"
    return f"{safe[:64]}-{digest}"


def is_complete(target: Path) -> bool:
    return (target / MARKER).is_file()


def discard(path: Path) -> None:
    """Removes a directory, first renaming it away so that nobody sees it half-deleted."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ModelCacheError(f"cannot remove stale cache entry {path}: {e.strerror}", path) from e
    shutil.rmtree(trash, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_builds(parent: Path) -> None:
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            if child.name.startswith(".trash-") or (
                (m := _TMP_RE.fullmatch(child.name)) and not _pid_alive(int(m.group(1)))
            ):
                shutil.rmtree(child, ignore_errors=True)


def _write_marker(directory: Path, info: dict[str, Any]) -> None:
    path = directory / MARKER
    with path.open("w", encoding="utf-8") as f:
        json.dump({"converter_version": CONVERTER_VERSION, **info}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def build_once(target: Path, build: Callable[[Path], dict[str, Any]]) -> bool:
    """Makes sure ``target`` is a complete cache entry, calling ``build(tmp_dir)`` if not.

    ``build`` fills the temporary directory and returns facts for the marker. Returns True
    if this call built the entry. OSErrors become ModelCacheError naming the path.
    """
    if is_complete(target):
        return False
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            discard(target)  # left without a marker: not ours to trust
        _remove_dead_builds(parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=parent))
    except ModelCacheError:
        raise
    except OSError as e:
        raise ModelCacheError(
            f"cannot create conversion cache in {parent}: {e.strerror or e}", parent
        ) from e
    try:
        info = build(tmp)
        _write_marker(tmp, info)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
            return False
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        where = e.filename or tmp
        raise ModelCacheError(
            f"cannot write converted model {target}: writing {where} failed: {e.strerror or e}",
            target,
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True
