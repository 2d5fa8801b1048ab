"""What ``load_model`` returns: the model, its tokenizer and a description of both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.nn as nn

    from .tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelDescription:
    """Facts about the loaded model, as ModelInfo reports them."""

    model_id: str  # a short name, such as "SmolLM2-135M-Instruct"
    model_path: str  # the GGUF file or model directory it was loaded from
    architecture: str  # config.json's model_type, such as "llama"
    context_length: int  # max_position_embeddings
    vocab_size: int  # rows of the output layer
    parameter_count: int  # logical parameters (quantized weights counted unpacked)
    quant_mode: str  # "none", or MLX's mode such as "affine"
    quant_bits: int  # 0 when not quantized
    quant_group_size: int  # 0 when not quantized
    dtype: str  # float weights and activations: "float16", "bfloat16" or "float32"
    source_format: str  # "gguf:Q4_1", "mlx", ...
    dequantized: bool  # quantized weights were expanded to floats at load time
    cpu_blas: str  # "openblas" or "bundled" on CPU, "" on GPU


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: an mlx-lm ``nn.Module``, its tokenizer, its description."""

    model: nn.Module
    tokenizer: Tokenizer
    description: ModelDescription
