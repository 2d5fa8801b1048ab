"""Imports mlx-lm's model classes without the ~0.7 s that ``import mlx_lm`` costs.

``mlx_lm/__init__.py`` imports ``mlx_lm.convert`` and through it ``transformers``. The model
modules (``mlx_lm.models.llama`` and friends) need none of that. If ``mlx_lm`` is not imported
yet, :func:`model_classes` registers the package without running its ``__init__`` and imports
only the model module. The package's own attributes (``mlx_lm.load``, ``mlx_lm.generate``, ...)
still work afterwards: the first access runs the real ``__init__`` then, so other code in the
process sees the usual package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

# config.json model types that mlx-lm serves with another model module (from mlx_lm.utils).
_MODEL_REMAPPING = {"mistral": "llama", "iquestcoder": "llama", "xverse": "llama"}


def _register_package_lazily() -> None:
    if "mlx_lm" in sys.modules:
        return
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        raise ImportError("mlx-lm is not installed (pip install mlx-lm)")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:  # PEP 562: runs only for missing attributes
        if name.startswith("__"):
            raise AttributeError(name)
        del package.__dict__["__getattr__"]
        loader.exec_module(package)  # the real mlx_lm/__init__.py
        return getattr(package, name)

    package.__dict__["__getattr__"] = __getattr__
    sys.modules["mlx_lm"] = package


def model_classes(model_type: str) -> tuple[type, type]:
    """(Model, ModelArgs) of mlx-lm's module for ``model_type``; ValueError if none."""
    _register_package_lazily()
    name = _MODEL_REMAPPING.get(model_type, model_type)
    if not name.isidentifier():
        raise ValueError(f"model type {model_type!r} is not supported by mlx-lm")
    try:
        module = importlib.import_module(f"mlx_lm.models.{name}")
    except ModuleNotFoundError as e:
        raise ValueError(f"model type {model_type!r} is not supported by mlx-lm") from e
    return module.Model, module.ModelArgs
