"""End to end on the default model (SmolLM2-135M-Instruct, Q4_1 GGUF): real answers.

Marked ``default_model`` (``pytest -m "not default_model"`` skips them): the model is
converted once into the cache ($MLX_SIDECAR_CACHE_DIR, else a directory of this session) and
decodes at a few tokens per second on a small CPU.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import WorkerProcess, short_private_dir

from mlx_sidecar.v1 import inference_pb2 as pb

pytestmark = pytest.mark.default_model


def _chat(question: str) -> pb.Prompt:
    return pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=question)]))


FRANCE = _chat("What is the capital of France?")


@pytest.fixture(scope="module")
def default_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    cache = os.environ.get("MLX_SIDECAR_CACHE_DIR") or str(tmp_path_factory.mktemp("cache"))
    d = short_private_dir()
    w = WorkerProcess(["--cache-dir", cache], {}, d / "w.sock", d / "worker.log")
    try:
        w.wait_serving(timeout=300)
        yield w
    finally:
        w.close()
        shutil.rmtree(d, ignore_errors=True)


def _text(chunks: list[pb.GenerateChunk]) -> str:
    return "".join(c.text for c in chunks)


def test_capital_of_france_is_paris(default_worker: WorkerProcess) -> None:
    chunks, fin = default_worker.generate(prompt=FRANCE, max_tokens=48)
    text = _text(chunks)
    assert "Paris" in text, text
    assert fin.finish_reason == pb.FINISH_REASON_STOP
    info = default_worker.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert fin.stop_token_id in info.eos_token_ids
    assert "<|im_end|>" not in text  # the end-of-sequence token is not text
    ids = [t for c in chunks for t in c.token_ids]
    assert default_worker.stub.Detokenize(pb.DetokenizeRequest(ids=ids), timeout=10).text == text


def test_stop_string_cuts_a_real_answer(default_worker: WorkerProcess) -> None:
    chunks, fin = default_worker.generate(prompt=FRANCE, max_tokens=48, stop=[" Paris"])
    assert fin.finish_reason == pb.FINISH_REASON_STOP and fin.matched_stop == " Paris"
    text = _text(chunks)
    assert "Paris" not in text and text.strip(), text


def test_batched_answers_match_single_answers(default_worker: WorkerProcess) -> None:
    prompts = [FRANCE, _chat("What is 2 + 2?"), _chat("Name a primary color.")]
    alone = [_text(default_worker.generate(prompt=p, max_tokens=8)[0]) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(
            pool.map(lambda p: _text(default_worker.generate(prompt=p, max_tokens=8)[0]), prompts)
        )
    assert together == alone


def test_default_model_info(default_worker: WorkerProcess) -> None:
    info = default_worker.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert info.model_id == "SmolLM2-135M-Instruct"
    assert Path(info.model_path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info.architecture == "llama"
    assert info.context_length == 8192 and info.vocab_size == 49152
    assert info.quantization.source_format == "gguf:Q4_1"
    assert info.has_chat_template and info.parameter_count > 100_000_000
    startup = default_worker.wait_log("startup")["fields"]
    assert startup["model"] == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    "sampling",
    [pb.SamplingParams(), pb.SamplingParams(temperature=0.8, seed=7)],
    ids=["greedy", "seeded"],
)
def test_a_continuation_resumes_a_real_answer(
    default_worker: WorkerProcess, sampling: pb.SamplingParams
) -> None:
    """Cut after 6 chunks and resumed: the rest of the uninterrupted answer, token by token."""
    request = {"prompt": FRANCE, "max_tokens": 16, "sampling": sampling, "ignore_eos": True}
    chunks, fin = default_worker.generate(**request)
    got = chunks[:6]
    cont = pb.Continuation(
        delivered_token_ids=[t for c in got for t in c.token_ids],
        delivered_text_bytes=len(_text(got).encode("utf-8")),
        resume_count=1,
    )
    rest, rest_fin = default_worker.generate(**request, continuation=cont)
    ids = [t for c in chunks for t in c.token_ids]
    assert [t for c in rest for t in c.token_ids] == ids[len(cont.delivered_token_ids) :]
    assert _text(got) + _text(rest) == _text(chunks)
    assert rest_fin.usage.completion_tokens == fin.usage.completion_tokens == 16
    assert rest_fin.usage.resumes == 1
