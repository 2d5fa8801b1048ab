"""Imports mlx-lm's BatchGenerator without importing ``transformers`` (restart time).

``mlx_lm.generate`` pulls in ``transformers`` through ``mlx_lm.tokenizer_utils`` and
``mlx_lm.utils``: 0.5 s on an idle 2-core machine, over 1 s on a busy one, often the largest
part of the worker's start-up. The worker never uses what it needs ``transformers`` for (mlx-lm's
own ``load`` and its Hugging Face tokenizer wrapper: ``mlx_worker.model`` loads models and
tokenizers itself); ``generate.py`` uses the names only in annotations, ``tokenizer_utils`` at
import time only to declare a tokenizer subclass and register it.

So, while ``mlx_lm.generate`` is imported, ``transformers`` is a placeholder module whose names
are inert classes; the placeholder is removed from ``sys.modules`` right after, so a later
``import transformers`` gets the real package. Consequence (accepted): in this process,
``mlx_lm.load`` and ``mlx_lm.tokenizer_utils.load`` don't work; nothing in the worker calls them.

If ``transformers`` is already imported, or the placeholder import fails in any way, the real
import runs instead (slower, same result). MLX_WORKER_REAL_TRANSFORMERS=1 forces it.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from typing import Any

log = logging.getLogger(__name__)

_PLACEHOLDERS = ("transformers", "transformers.tokenization_utils_base")


class _InertMeta(type):
    """Class attributes of a placeholder class are no-op callables (``AutoTokenizer.register``)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "placeholder for transformers while mlx_lm.generate loads")

    def __getattr__(attr: str) -> Any:  # PEP 562
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _InertMeta(attr, (), {"__module__": name})

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__path__ = []  # a package, so that its submodule imports resolve
    return module


def _drop_mlx_lm() -> None:
    for name in [n for n in sys.modules if n == "mlx_lm" or n.startswith("mlx_lm.")]:
        if not name.startswith("mlx_lm.models"):
            del sys.modules[name]


def import_batch_generator() -> type:
    """``mlx_lm.generate.BatchGenerator``, imported as cheaply as possible."""
    if "mlx_lm.generate" in sys.modules:
        return sys.modules["mlx_lm.generate"].BatchGenerator
    if "transformers" in sys.modules or os.environ.get("MLX_WORKER_REAL_TRANSFORMERS") == "1":
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator
    placeholders = {name: _placeholder_module(name) for name in _PLACEHOLDERS}
    sys.modules.update(placeholders)
    try:
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator
    except Exception:
        log.warning("mlx-lm without transformers failed to import; importing it all", exc_info=True)
        _drop_mlx_lm()
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    from mlx_lm.generate import BatchGenerator

    return BatchGenerator
