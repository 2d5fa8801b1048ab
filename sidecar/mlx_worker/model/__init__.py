"""Model loading for the worker: ``load_model(model) -> LoadedModel``.

How the parts fit:

- ``loader``: ``load_model`` resolves what to load (``default`` for the default model's GGUF),
  converts a GGUF once through ``gguf_convert`` (``gguf_config`` for config.json and tensor
  names, ``gguf_tokenizer`` for tokenizer files) into the conversion ``cache``, builds the
  mlx-lm model (``weights``, with ``mlx_lm_models`` importing mlx-lm's model classes without
  ``transformers``), loads the ``tokenizer`` (``tokenizers`` + ``chat_template``), optionally
  expands quantized weights (``dequantize``), and describes the result (``description``).
- ``cpu_blas``: on Linux CPUs, ``prepare_cpu_blas()`` makes MLX's float matrix products use
  OpenBLAS; it must run before ``mlx.core`` is first imported. Importing this package imports
  no MLX; the first use of one of its names calls ``prepare_cpu_blas()`` (if nobody did) and
  then imports MLX.
- ``errors``: every failure is a ``ModelLoadError`` naming the path concerned.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .description import LoadedModel, ModelDescription
    from .errors import (
        ModelCacheError,
        ModelLoadError,
        ModelNotFoundError,
        UnsupportedModelError,
    )
    from .loader import load_model
    from .tokenizer import Tokenizer

# The public names, imported on first use (PEP 562), so that importing a submodule such as
# ``mlx_worker.model.cpu_blas`` does not import MLX.
_EXPORTS = {
    "LoadedModel": "description",
    "ModelDescription": "description",
    "ModelCacheError": "errors",
    "ModelLoadError": "errors",
    "ModelNotFoundError": "errors",
    "UnsupportedModelError": "errors",
    "load_model": "loader",
    "Tokenizer": "tokenizer",
}

__all__ = [
    "LoadedModel",
    "ModelCacheError",
    "ModelDescription",
    "ModelLoadError",
    "ModelNotFoundError",
    "Tokenizer",
    "UnsupportedModelError",
    "load_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .cpu_blas import prepare_cpu_blas

    prepare_cpu_blas()  # before MLX is first imported; does nothing if it already ran
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
