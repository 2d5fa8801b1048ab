"""Float32 copies of quantized models, kept in the conversion cache for fast CPU restarts.

Expanding a 4-bit model to float32 takes seconds on a small CPU (MLX's CPU kernels for
``dequantize`` and ``astype`` run on one thread), while reading a float32 copy back takes a
fraction of that. So the expansion runs once and its result is saved as an mlx-lm model
directory (float weights, same tokenizer files, config.json without ``quantization``) under
``<cache_dir>/models/<entry>-f32-<digest>/``, built and published like a GGUF conversion
(see cache.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from .cache import build_once, entry_name, is_complete
from .dequantize import dequantize_model
from .weights import build_model

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)


def _source_digest(model_dir: Path) -> str:
    """Digest of a model directory: its path, config.json and each weight file's size/mtime."""
    h = hashlib.sha256(f"f32:{model_dir.resolve()}".encode())
    h.update((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _write(model_dir: Path, config: dict[str, Any], out: Path) -> dict[str, Any]:
    net = build_model(model_dir, config)
    dequantize_model(net, mx.float32)
    weights = dict(tree_flatten(net.parameters()))
    path = out / "model.safetensors"
    try:
        mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})
    except RuntimeError as e:  # mlx reports failed writes (disk full, ...) as RuntimeError
        raise OSError(5, f"{e} (is the disk full?)", str(path)) from e
    with path.open("rb") as f:
        os.fsync(f.fileno())
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    float_config = {
        k: v for k, v in config.items() if k not in ("quantization", "quantization_config")
    }
    facts = {**config.get("mlx_sidecar", {}), "dequantized_from": str(model_dir)}
    float_config["mlx_sidecar"] = facts
    float_config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(float_config, indent=2), encoding="utf-8")
    return facts


def float32_dir(model_dir: Path, config: dict[str, Any], cache_root: Path) -> tuple[Path, bool]:
    """The float32 copy of quantized ``model_dir``, made first if needed.

    Returns (directory, whether this call made it). ModelCacheError if it cannot be written.
    """
    target = cache_root / "models" / entry_name(f"{model_dir.name}-f32", _source_digest(model_dir))
    if is_complete(target):
        return target, False
    return target, build_once(target, lambda tmp: _write(model_dir, config, tmp))
