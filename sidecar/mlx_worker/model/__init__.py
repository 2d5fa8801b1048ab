"""Model loading for the worker: ``load_model(model) -> LoadedModel``.

How the parts fit:

- ``loader``: ``load_model`` resolves what to load (``default`` for the default model's GGUF),
  converts a GGUF once through ``gguf_convert`` (``gguf_config`` for config.json and tensor
  names, ``gguf_tokenizer`` for tokenizer files) into the conversion ``cache``, builds the
  mlx-lm model (``weights``, with ``mlx_lm_models`` importing mlx-lm's model classes without
  ``transformers``), loads the ``tokenizer`` (``tokenizers`` + ``chat_template``), optionally
  expands quantized weights (``dequantize``), and describes the result (``description``).
- ``cpu_blas``: on Linux CPUs, ``prepare_cpu_blas()`` makes MLX's float matrix products use
  OpenBLAS; it must run before ``mlx.core`` is first imported.
- ``errors``: every failure is a ``ModelLoadError`` naming the path concerned.
"""

from .description import LoadedModel, ModelDescription
from .errors import ModelCacheError, ModelLoadError, ModelNotFoundError, UnsupportedModelError
from .loader import load_model
from .tokenizer import Tokenizer

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
