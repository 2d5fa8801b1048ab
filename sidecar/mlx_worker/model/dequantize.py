"""Expands quantized layers to float ones (``QuantizedLinear`` → ``Linear``, ...).

On a CPU with a fast BLAS, float32 matrix products beat MLX's quantized CPU kernels by far;
this trades memory (8x the 4-bit weights) for speed.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map, tree_unflatten


def dequantize_model(model: nn.Module, dtype: mx.Dtype) -> int:
    """Replaces every quantized Linear/Embedding of ``model`` in place; returns how many."""
    replaced: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            has_bias = "bias" in module
        elif isinstance(module, nn.QuantizedEmbedding):
            has_bias = False
        else:
            continue
        weight = mx.dequantize(
            module.weight,
            module.scales,
            module.biases,
            group_size=module.group_size,
            bits=module.bits,
            mode=module.mode,
        ).astype(dtype)
        out_dims, in_dims = weight.shape
        if isinstance(module, nn.QuantizedLinear):
            layer: nn.Module = nn.Linear(in_dims, out_dims, bias=has_bias)
            if has_bias:
                layer.bias = module.bias.astype(dtype)
        else:
            layer = nn.Embedding(out_dims, in_dims)
        layer.weight = weight
        replaced.append((name, layer))
    if replaced:
        model.update_modules(tree_unflatten(replaced))
        mx.eval(model.parameters())
    return len(replaced)


def cast_floats(model: nn.Module, dtype: mx.Dtype) -> None:
    """Casts the model's floating-point parameters (not packed weights) to ``dtype``."""

    def cast(v: mx.array) -> mx.array:
        return v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v

    model.update(tree_map(cast, model.parameters()))
    mx.eval(model.parameters())
