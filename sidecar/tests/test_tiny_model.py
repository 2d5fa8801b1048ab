"""The tiny test model: written fast, deterministic, loadable by mlx-lm, generates."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest
from tokenizers import Tokenizer

from mlx_worker.testing import tiny_model

SIDECAR_DIR = Path(__file__).resolve().parents[1]


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    out: list[int] = []
    x = mx.array([prompt])
    for _ in range(n):
        token = int(mx.argmax(model(x, cache=cache)[0, -1]).item())
        out.append(token)
        x = mx.array([[token]])
    return out


def test_cli_writes_model_dir_quickly(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "mlx_worker.testing.tiny_model", str(out)],
        cwd=SIDECAR_DIR,
        check=True,
    )
    elapsed = time.monotonic() - start
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert elapsed < 2.0, f"tiny_model took {elapsed:.2f} s"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["max_position_embeddings"] == 2048


def test_output_is_deterministic(tmp_path: Path) -> None:
    a = tiny_model.write_tiny_model(tmp_path / "a")
    b = tiny_model.write_tiny_model(tmp_path / "b")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = tiny_model.write_tiny_model(tmp_path / "c", seed=1)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "text", ["plain ASCII text", "Café déjà vu", "日本語 and 日本", "emoji 🙂🚀👍🏽", "\x00\t\n \r"]
)
def test_tokenizer_round_trips_utf8(tmp_path: Path, text: str) -> None:
    out = tiny_model.write_tiny_model(tmp_path / "tiny")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text


def test_special_tokens_have_fixed_ids(tmp_path: Path) -> None:
    out = tiny_model.write_tiny_model(tmp_path / "tiny")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for i, name in enumerate(tiny_model.SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in config["chat_template"]


@pytest.mark.parametrize("quantize", [False, True])
def test_loads_with_mlx_lm_and_generates(tmp_path: Path, quantize: bool) -> None:
    from mlx_lm.utils import load_model

    out = tiny_model.write_tiny_model(tmp_path / "tiny", quantize=quantize)
    model, config = load_model(out)
    if quantize:
        assert config["quantization"] == {"group_size": 32, "bits": 4}
        assert model.model.layers[0].self_attn.q_proj.bits == 4
    tokens = _greedy(model, [1, 40, 41, 42], 64)
    assert len(tokens) == 64
    assert all(0 <= t < config["vocab_size"] for t in tokens)
    # Special tokens' output rows are zero, so greedy decoding never ends the sequence.
    assert not set(tokens) & {0, 1, 2}
    assert _greedy(model, [1, 40, 41, 42], 64) == tokens
