"""Converts a llama GGUF file into an mlx-lm model directory (once; see cache.py).

``mx.load`` reads GGUF directly: Q4_0, Q4_1 and Q8_0 tensors come out as MLX affine
quantized triples (weight, scales, biases; group size 32), F16/F32 tensors as they are. The
tensors are renamed to mlx-lm's names and saved as ``model.safetensors`` beside a
``config.json`` and the Hugging Face tokenizer files built from the GGUF metadata.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import mlx.core as mx

from . import gguf_config, gguf_tokenizer
from .cache import build_once, default_cache_dir, entry_name, is_complete, source_digest
from .errors import ModelCacheError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"
_QUANT_SUFFIX = re.compile(r"[.\-_](?:[QqIi]{1,2}\d[\w]*|[Ff]16|[Ff]32|[Bb][Ff]16)$")


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def model_id_from_path(path: Path) -> str:
    """ "SmolLM2-135M-Instruct" from "SmolLM2-135M-Instruct.Q4_1.gguf"."""
    return _QUANT_SUFFIX.sub("", path.stem) or path.stem


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    try:
        return mx.load(str(path), return_metadata=True)
    except Exception as e:  # mlx raises RuntimeError / ValueError for what it cannot read
        raise UnsupportedModelError(f"cannot read GGUF {path}: {e}", path) from e


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def convert(path: Path, out_dir: Path) -> dict[str, Any]:
    """Writes the mlx-lm model directory for GGUF ``path`` into ``out_dir``; returns facts."""
    weights, meta = read_gguf(path)
    config = gguf_config.llama_config(meta, weights)
    tokenizer = gguf_tokenizer.build_tokenizer(meta)
    eos = [config["eos_token_id"]] if "eos_token_id" in config else []
    eos += [i for i in gguf_tokenizer.extra_eos_ids(meta) if i not in eos]
    config["eos_token_id"] = eos
    facts = {
        "source_path": str(path),
        "source_format": gguf_config.source_format(meta),
        "source_name": str(meta.get("general.name", "")),
        "model_id": model_id_from_path(path),
    }
    config["mlx_sidecar"] = facts
    renamed = {gguf_config.mlx_name(name): w for name, w in weights.items()}
    weights_file = out_dir / "model.safetensors"
    try:
        mx.save_safetensors(str(weights_file), renamed, metadata={"format": "mlx"})
    except RuntimeError as e:  # mlx reports failed writes (disk full, ...) as RuntimeError
        raise OSError(errno.EIO, f"{e} (is the disk full?)", str(weights_file)) from e
    with weights_file.open("rb") as f:
        os.fsync(f.fileno())
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(
        out_dir / "tokenizer_config.json",
        gguf_tokenizer.tokenizer_config(meta, config["max_position_embeddings"]),
    )
    _write_json(out_dir / "config.json", config)
    return facts


def converted_dir(path: Path, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """The cache entry holding GGUF ``path`` converted, converting it first if needed.

    Returns (directory, whether this call converted it).
    """
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "models"
    try:
        digest = source_digest(path)
    except OSError as e:
        raise ModelCacheError(f"cannot read {path}: {e.strerror or e}", path) from e
    target = root / entry_name(path.name.removesuffix(".gguf"), digest)
    if is_complete(target):
        return target, False
    built = build_once(target, lambda tmp: convert(path, tmp))
    return target, built
