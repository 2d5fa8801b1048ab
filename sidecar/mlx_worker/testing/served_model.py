"""The model ``python -m mlx_worker --test-model`` serves: the tiny random-weight llama of
``tiny_model``, written once into ``<cache_dir>/test-model/tiny-v<N>/`` (published like a
conversion, see ``model.cache``) and reused after, so that a test worker loads in a fraction
of a second. Its text is gibberish; it exists for the tests of services built on the worker.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model.cache import build_once
from . import tiny_model

# Bump when tiny_model's output changes, so old copies are not reused.
VERSION = 1
SEED = 0
MODEL_ID = "mlx-sidecar-test-model"


def served_model_dir(cache_dir: Path) -> Path:
    """Where the test model lives in ``cache_dir``."""
    return cache_dir / "test-model" / f"tiny-v{VERSION}"


def ensure_served_model(cache_dir: Path) -> Path:
    """The test model's directory in ``cache_dir``, written first if it is not there yet."""
    target = served_model_dir(cache_dir)

    def write(tmp: Path) -> dict[str, str]:
        tiny_model.write_tiny_model(tmp, seed=SEED)
        facts = {"source_format": "test-model", "model_id": MODEL_ID}
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["mlx_sidecar"] = facts
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return facts

    build_once(target, write)
    return target
