"""The default model (SmolLM2-135M-Instruct Q4_1 GGUF): converts, loads, answers correctly."""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_worker.model import LoadedModel, gguf_convert, load_model

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smollm(cache_dir: Path) -> LoadedModel:
    return load_model(None, cache_dir=cache_dir, dequantize="off")


def greedy_answer(loaded: LoadedModel, question: str, max_tokens: int = 16) -> str:
    from mlx_lm.models.cache import make_prompt_cache

    tok = loaded.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": question}])
    cache = make_prompt_cache(loaded.model)
    x = mx.array([tok.encode(prompt, add_special_tokens=False)])
    out: list[int] = []
    for _ in range(max_tokens):
        token = int(mx.argmax(loaded.model(x, cache=cache)[0, -1]).item())
        if token in tok.eos_token_ids:
            break
        out.append(token)
        x = mx.array([[token]])
    return tok.decode(out)


def test_greedy_answer_names_paris(smollm: LoadedModel) -> None:
    answer = greedy_answer(smollm, "What is the capital of France?")
    assert "Paris" in answer, answer


def test_description(smollm: LoadedModel) -> None:
    d = smollm.description
    assert d.model_id == "SmolLM2-135M-Instruct"
    assert d.model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert d.architecture == "llama"
    assert d.context_length == 8192
    assert d.vocab_size == 49152
    assert d.source_format == "gguf:Q4_1"
    assert (d.quant_mode, d.quant_bits, d.quant_group_size) == ("affine", 4, 32)
    assert not d.dequantized
    # 135M model: 30 layers of 576 hidden, tied 49152 x 576 embeddings.
    assert 134_000_000 < d.parameter_count < 135_000_000
    assert d.cpu_blas in ("openblas", "bundled")


def test_special_tokens(smollm: LoadedModel) -> None:
    tok = smollm.tokenizer
    assert tok.eos_token_ids == frozenset({0, 2})  # <|endoftext|>, <|im_end|>
    assert tok.bos_token_id == 1
    assert tok.vocab_size == 49152
    assert tok.has_chat_template
    # SmolLM2 adds no BOS to plain text.
    assert tok.encode("Hello", add_special_tokens=True) == tok.encode("Hello", False)


def test_second_load_reuses_conversion(
    smollm: LoadedModel, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "convert", no_conversion)
    start = time.perf_counter()
    again = load_model(None, cache_dir=cache_dir, dequantize="off")
    elapsed = time.perf_counter() - start
    assert again.description == smollm.description
    assert elapsed < 2.0, f"cached load took {elapsed:.2f} s"
    entries = [p for p in (cache_dir / "models").iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")
