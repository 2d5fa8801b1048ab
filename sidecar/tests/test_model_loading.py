"""Loading model directories and GGUF files: same model, same logits; descriptions; dequantize."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_worker.model import LoadedModel, float_cache, gguf_convert, load_model
from mlx_worker.model.weights import build_model
from mlx_worker.testing.tiny_gguf import write_tiny_gguf
from mlx_worker.testing.tiny_model import write_tiny_model

SIDECAR_DIR = Path(__file__).resolve().parents[1]
PROMPT = mx.array([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48]])


def _logits(loaded: LoadedModel) -> mx.array:
    return loaded.model(PROMPT)


def _greedy(loaded: LoadedModel, n: int = 24) -> list[int]:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(loaded.model)
    x, out = PROMPT, []
    for _ in range(n):
        out.append(int(mx.argmax(loaded.model(x, cache=cache)[0, -1]).item()))
        x = mx.array([[out[-1]]])
    return out


def test_gguf_conversion_gives_the_same_model(tmp_path: Path) -> None:
    from_dir = load_model(write_tiny_model(tmp_path / "dir"))
    from_gguf = load_model(write_tiny_gguf(tmp_path / "tiny.gguf"), cache_dir=tmp_path / "c")
    assert mx.allclose(_logits(from_dir), _logits(from_gguf), atol=1e-4)
    assert from_dir.description.parameter_count == from_gguf.description.parameter_count
    assert from_gguf.description.source_format == "gguf:F32"
    assert from_gguf.description.model_id == "tiny"
    assert from_gguf.tokenizer.eos_token_ids == from_dir.tokenizer.eos_token_ids
    messages = [{"role": "user", "content": "hi"}]
    assert from_gguf.tokenizer.apply_chat_template(
        messages
    ) == from_dir.tokenizer.apply_chat_template(messages)


def test_gguf_needs_traditional_rope(tmp_path: Path) -> None:
    """GGUF's permuted Q/K only work with rope_traditional (so the test above can fail)."""
    target, _ = gguf_convert.converted_dir(write_tiny_gguf(tmp_path / "t.gguf"), tmp_path / "c")
    config = json.loads((target / "config.json").read_text())
    assert config["rope_traditional"] is True
    right = build_model(target, config)
    wrong = build_model(target, {**config, "rope_traditional": False})
    assert not mx.allclose(right(PROMPT), wrong(PROMPT), atol=1e-3)


def test_tied_gguf(tmp_path: Path) -> None:
    loaded = load_model(write_tiny_gguf(tmp_path / "tied.gguf", tied=True), cache_dir=tmp_path)
    assert loaded.model.args.tie_word_embeddings
    assert not hasattr(loaded.model, "lm_head")
    untied = load_model(write_tiny_gguf(tmp_path / "untied.gguf"), cache_dir=tmp_path)
    vocab, hidden = 384, 64
    assert untied.description.parameter_count - loaded.description.parameter_count == (
        vocab * hidden
    )


def test_quantized_dir(tmp_path: Path) -> None:
    floats = load_model(write_tiny_model(tmp_path / "f"))
    quant = load_model(write_tiny_model(tmp_path / "q", quantize=True), dequantize="off")
    d = quant.description
    assert (d.quant_mode, d.quant_bits, d.quant_group_size) == ("affine", 4, 32)
    assert d.dtype == "float32" and not d.dequantized
    assert d.parameter_count == floats.description.parameter_count  # unpacked count
    assert len(_greedy(quant)) == 24


def test_dequantize_on(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "q", quantize=True)
    cache_dir = tmp_path / "cache"
    quant = load_model(path, dequantize="off", cache_dir=cache_dir)
    expanded = load_model(path, dequantize="on", cache_dir=cache_dir)
    d = expanded.description
    assert d.dequantized and (d.quant_mode, d.quant_bits, d.quant_group_size) == ("none", 0, 0)
    assert d.dtype == "float32"
    assert d.model_path == str(path)
    assert d.parameter_count == quant.description.parameter_count
    assert mx.allclose(_logits(quant), _logits(expanded), atol=1e-3)
    assert _greedy(quant) == _greedy(expanded)


def test_float32_copy_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tiny_model(tmp_path / "q", quantize=True)
    cache_dir = tmp_path / "cache"
    first = load_model(path, dequantize="on", cache_dir=cache_dir)
    (entry,) = (cache_dir / "models").iterdir()
    assert entry.name.startswith("q-f32-")
    config = json.loads((entry / "config.json").read_text())
    assert "quantization" not in config and config["mlx_sidecar"]["dequantized_from"]

    def no_rebuild(*args: object) -> None:
        raise AssertionError("dequantized again")

    monkeypatch.setattr(float_cache, "_write", no_rebuild)
    again = load_model(path, dequantize="on", cache_dir=cache_dir)
    assert again.description == first.description
    assert mx.array_equal(_logits(first), _logits(again))


def test_float32_copy_unwritable_falls_back_to_memory(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "q", quantize=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    loaded = load_model(path, dequantize="on", cache_dir=blocker / "cache")
    assert loaded.description.dequantized and loaded.description.dtype == "float32"
    assert len(_greedy(loaded)) == 24


def test_float32_copy_of_gguf_keeps_its_facts(tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    target, _ = gguf_convert.converted_dir(gguf, tmp_path / "cache")
    # Make the converted entry quantized, as a Q4 GGUF would be.
    import mlx.nn as nn

    config = json.loads((target / "config.json").read_text())
    model = build_model(target, config)
    nn.quantize(model, group_size=32, bits=4)
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(target / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config["quantization"] = {"group_size": 32, "bits": 4}
    (target / "config.json").write_text(json.dumps(config))
    loaded = load_model(gguf, dequantize="on", cache_dir=tmp_path / "cache")
    d = loaded.description
    assert d.dequantized and d.source_format == "gguf:F32" and d.model_id == "tiny"
    assert d.model_path == str(gguf)


def test_float_model_is_never_dequantized(tmp_path: Path) -> None:
    loaded = load_model(write_tiny_model(tmp_path / "f"), dequantize="on")
    assert not loaded.description.dequantized
    assert loaded.description.quant_mode == "none"


def test_no_transformers_import(tmp_path: Path) -> None:
    """Loading stays clear of transformers (half a second of start-up)."""
    out = write_tiny_model(tmp_path / "m")
    code = (
        "import sys\n"
        "from mlx_worker.model import load_model\n"
        f"m = load_model({str(out)!r})\n"
        "m.tokenizer.apply_chat_template([{'role': 'user', 'content': 'x'}])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('transformers', 'torch')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SIDECAR_DIR), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("quantize", [False, True])
def test_mlx_lm_package_still_usable_after_loading(tmp_path: Path, quantize: bool) -> None:
    """mlx_lm's top-level API works in the same process after our lazy import of it."""
    out = write_tiny_model(tmp_path / "m", quantize=quantize)
    code = (
        "from mlx_worker.model import load_model\n"
        f"m = load_model({str(out)!r}, dequantize='off')\n"
        "import mlx_lm\n"
        "from mlx_lm import stream_generate\n"
        "from mlx_lm.generate import BatchGenerator\n"
        f"model, tok = mlx_lm.load({str(out)!r})\n"
        "print(mlx_lm.__version__, callable(stream_generate))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SIDECAR_DIR), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "True"
