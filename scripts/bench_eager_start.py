"""Time to the first token of eight requests joining a batch, with mlx-lm's BatchGenerator
and with the worker's EagerBatchGenerator (engine/eager_batch.py), alternating in one process.

    PYTHONPATH=sidecar .venv/bin/python scripts/bench_eager_start.py [--busy] [--prompt-tokens N]

``--busy``: eight sequences are decoding when the eight arrive (otherwise the batch is idle).
Prints each kind's times (the last of the eight first tokens, ms) and the ratio per pair.
BENCHMARKS.md, "Generation starts in the prefill step".
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from mlx_worker.model.cpu_blas import prepare_cpu_blas

prepare_cpu_blas()  # before MLX is imported

from mlx_worker.config import WorkerConfig
from mlx_worker.engine import startup
from mlx_worker.faults import Faults


def first_tokens_ms(
    kind: type, started: startup.Started, prompts: list[list[int]], busy: bool
) -> float:
    from mlx_lm.generate import StopSequences

    plan = started.plan
    batch = kind(
        started.loaded.model,
        completion_batch_size=32,
        prefill_batch_size=plan.batch_size,
        prefill_step_size=plan.step_size,
    )
    eager = hasattr(batch, "start_generating")
    stop = [StopSequences()] * len(prompts)
    if busy:
        batch.insert(
            [p[:8] for p in prompts],
            max_tokens=[200] * len(prompts),
            stop_sequences=stop,
        )
        for _ in range(4):
            batch.next()
            if eager:
                batch.start_generating()
    began = time.perf_counter()
    new = set(batch.insert(prompts, max_tokens=[2] * len(prompts), stop_sequences=stop))
    firsts: dict[int, float] = {}
    while len(firsts) < len(new):
        _, generated = batch.next()
        if eager:
            batch.start_generating()
        for response in generated:
            if response.uid in new:
                firsts.setdefault(response.uid, time.perf_counter() - began)
    batch.close()
    return max(firsts.values()) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    from mlx_lm.generate import BatchGenerator
    from mlx_worker.engine.eager_batch import EagerBatchGenerator

    config = WorkerConfig(
        socket_path=Path("unused"), model=None, cache_dir=Path("target/test-cache")
    )
    started = startup.start_up(config, Faults())
    vocab = started.loaded.description.vocab_size
    rng = random.Random(2)
    times: dict[str, list[float]] = {"mlx-lm": [], "eager": []}
    kinds = {"mlx-lm": BatchGenerator, "eager": EagerBatchGenerator}
    for pair in range(args.pairs):
        order = ["mlx-lm", "eager"] if pair % 2 == 0 else ["eager", "mlx-lm"]
        for name in order:
            prompts = [
                [rng.randrange(100, vocab) for _ in range(args.prompt_tokens)]
                for _ in range(8)
            ]
            times[name].append(
                first_tokens_ms(kinds[name], started, prompts, args.busy)
            )
    for name, values in times.items():
        print(
            name, [round(v) for v in values], "median", round(statistics.median(values))
        )
    ratios = [e / p for e, p in zip(times["eager"], times["mlx-lm"], strict=True)]
    print(
        "eager / mlx-lm per pair",
        [round(r, 3) for r in ratios],
        "median",
        round(statistics.median(ratios), 3),
    )
    os._exit(
        0
    )  # MLX may abort at interpreter exit after several generators (as resume_seam.py)


if __name__ == "__main__":
    main()
