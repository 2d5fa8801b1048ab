"""The default model (SmolLM2-135M: 9 query heads, 3 key/value heads, MLP width 1536) sharded
over 3 real processes gives the same greedy token ids as the unsharded worker.

Marked ``default_model`` (slow: four processes load the model on a small CPU).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import WorkerProcess, short_private_dir

from mlx_sidecar.v1 import inference_pb2 as pb

pytestmark = pytest.mark.default_model

PROMPTS = [
    pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=q)]))
    for q in ("What is the capital of France?", "Name three colours.", "Count to five.")
]


def _ids(w: WorkerProcess, prompt: pb.Prompt) -> list[int]:
    chunks, _ = w.generate(timeout=300, prompt=prompt, max_tokens=24, ignore_eos=True)
    return [t for c in chunks for t in c.token_ids]


def _run(args: list[str], cache: str) -> tuple[list[list[int]], list[list[int]]]:
    """(each prompt alone, the prompts together) through one worker started with ``args``."""
    d = short_private_dir()
    w = WorkerProcess(["--cache-dir", cache, *args], {}, d / "w.sock", d / "worker.log")
    try:
        w.wait_serving(timeout=600)
        alone = [_ids(w, p) for p in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: _ids(w, p), PROMPTS))
        return alone, together
    finally:
        w.close()


def test_three_ranks_give_the_unsharded_ids(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = os.environ.get("MLX_SIDECAR_CACHE_DIR") or str(tmp_path_factory.mktemp("cache"))
    plain_alone, plain_together = _run([], cache)
    sharded_alone, sharded_together = _run(["--shard-ranks", "3"], cache)
    assert all(len(ids) == 24 for ids in plain_alone)
    assert sharded_alone == plain_alone
    assert sharded_together == plain_together


def test_two_ranks_are_refused_with_the_head_count(tmp_path: Path) -> None:
    cache = os.environ.get("MLX_SIDECAR_CACHE_DIR") or str(tmp_path / "cache")
    d = short_private_dir()
    w = WorkerProcess(
        ["--cache-dir", cache, "--shard-ranks", "2"], {}, d / "w.sock", d / "worker.log"
    )
    try:
        assert w.wait_exit(600) != 0
        assert "does not divide by 2 ranks" in w.log_text()
    finally:
        w.close()
