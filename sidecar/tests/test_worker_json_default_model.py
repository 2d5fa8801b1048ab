"""Structured output on the default model (SmolLM2-135M-Instruct): a real model asked for
JSON, greedy and sampled, alone and in the batch; every answer must complete (finish reason
STOP, not LENGTH) and validate. Marked ``default_model``, like test_worker_default_model.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import pytest
from conftest import WorkerProcess, short_private_dir
from json_schemas import SCHEMAS

from mlx_sidecar.v1 import inference_pb2 as pb

pytestmark = pytest.mark.default_model

CASES = {
    "person": "Give me a person (name and age) as JSON.",
    "address": "Give me an address in France as JSON.",
    "string_enum": "Pick a color, answer in JSON.",
    "many_fields": "Describe a to-do item as JSON.",
    "array_of_objects": "List two people with their ages as JSON.",
    "free_strings": "Write a title and a one-line body as JSON.",
}


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


def _ask(worker: WorkerProcess, name: str, sampled: bool) -> tuple[str, str, Any]:
    chat = pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=CASES[name])])
    sampling = pb.SamplingParams(temperature=0.8, seed=11) if sampled else pb.SamplingParams()
    chunks, fin = worker.generate(
        timeout=600,
        prompt=pb.Prompt(chat=chat),
        max_tokens=400,
        sampling=sampling,
        response_format=pb.ResponseFormat(json_schema=json.dumps(SCHEMAS[name])),
    )
    return name, "".join(c.text for c in chunks), fin


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_real_model_answers_validate(default_worker: WorkerProcess, sampled: bool) -> None:
    # The first alone (the solo path), the rest three at a time (the batch).
    first, *rest = CASES
    results = [_ask(default_worker, first, sampled)]
    with ThreadPoolExecutor(3) as pool:
        results += pool.map(lambda n: _ask(default_worker, n, sampled), rest)
    for name, text, fin in results:
        assert fin.finish_reason == pb.FINISH_REASON_STOP, (name, text)
        jsonschema.validate(json.loads(text), SCHEMAS[name])
