"""Builds an mlx-lm model from a model directory's config.json and *.safetensors.

The same steps as ``mlx_lm.utils.load_model`` (model class from ``model_type``, ``sanitize``,
``nn.quantize`` of the layers that have ``.scales``, ``load_weights``), without importing
``mlx_lm.utils`` (which imports ``transformers``). Only MLX's own quantization format
(config.json ``quantization``) is read; other formats are refused with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .errors import UnsupportedModelError
from .mlx_lm_models import model_classes


def _quant_params(path: str, module: nn.Module, weights: dict[str, mx.array]) -> dict[str, Any]:
    """group_size and bits of one saved quantized layer, read from its shapes."""
    in_dims = module.weight.shape[-1]
    group_size = in_dims // weights[f"{path}.scales"].shape[-1]
    bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
    return {"group_size": group_size, "bits": bits, "mode": "affine"}


def read_weights(model_dir: Path) -> dict[str, mx.array]:
    files = sorted(model_dir.glob("model*.safetensors")) or sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{model_dir} has no *.safetensors weights", model_dir)
    weights: dict[str, mx.array] = {}
    for f in files:
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # mlx raises RuntimeError/ValueError on bad files
            raise UnsupportedModelError(f"cannot read weights {f}: {e}", f) from e
    return weights


def build_model(model_dir: Path, config: dict[str, Any]) -> nn.Module:
    """The mlx-lm model for ``config`` with the weights of ``model_dir``, evaluated."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise UnsupportedModelError(f"{model_dir}/config.json has no model_type", model_dir)
    quantization = config.get("quantization")
    if quantization is None and config.get("quantization_config"):
        qc = config["quantization_config"]
        if not (isinstance(qc, dict) and "bits" in qc and "group_size" in qc):
            raise UnsupportedModelError(
                f"{model_dir}: quantization_config {qc!r} is not MLX's format", model_dir
            )
        quantization = qc
    try:
        model_class, args_class = model_classes(model_type)
        model = model_class(args_class.from_dict(config))
    except (ValueError, TypeError, KeyError) as e:
        raise UnsupportedModelError(f"{model_dir}: {e}", model_dir) from e
    weights = read_weights(model_dir)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)

    if quantization is not None:
        mode = quantization.get("mode", "affine")

        def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
            if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
                return False
            return {**_quant_params(path, module, weights), "mode": mode}

        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            mode=mode,
            class_predicate=predicate,
        )
    model.eval()
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UnsupportedModelError(
            f"{model_dir}: weights do not fit the config: {e}", model_dir
        ) from e
    mx.eval(model.parameters())
    return model
