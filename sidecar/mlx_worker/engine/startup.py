"""The engine thread's start-up: import MLX, load the model, warm it up.

Runs once, on the engine thread, before it serves: it decides the prefill plan and whether the
solo path is on, builds the first ``BatchGenerator`` and runs every path a request can take
once, so that the first request pays no first-use cost.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import WorkerConfig
from ..faults import Faults
from ..params import SamplingSettings
from ..timings import now

log = logging.getLogger("mlx_worker.engine")

# Most prompt tokens one engine step processes (over all sequences being prompted): a step is
# the unit of cancellation and of the heartbeat, and stalls decoding while it runs (2048
# tokens of the default model take seconds on a small CPU, 8192 a fraction of one on a GPU).
PREFILL_TOKENS_PER_STEP_CPU = 2048
PREFILL_TOKENS_PER_STEP_GPU = 8192

# On a GPU, MLX compiles a quantized-matmul kernel the first time it sees a new range of rows
# (17-25 s each); start-up runs one forward pass per row count up to the per-step bound, so
# that this happens before SERVING. Figures: BENCHMARKS.md, "Kernel warm-up on a fresh
# machine".
GPU_WARMUP_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class PrefillPlan:
    """How prompts are processed: tokens per sequence per step, sequences per step."""

    step_size: int
    batch_size: int


def prefill_plan(config: WorkerConfig, on_gpu: bool) -> PrefillPlan:
    """Prompts are prefilled 8 at a time (mlx-lm's default) where the per-step bound allows, so
    that requests that arrive together finish together. Figures: BENCHMARKS.md, "Earlier
    rounds on the GPU"."""
    step = config.prefill_step_size or (512 if on_gpu else 256)
    bound = PREFILL_TOKENS_PER_STEP_GPU if on_gpu else PREFILL_TOKENS_PER_STEP_CPU
    return PrefillPlan(step_size=step, batch_size=max(1, min(8, config.max_batch, bound // step)))


def warm_up_bound(plan: PrefillPlan, max_batch: int) -> int:
    """The most rows one engine step runs: a prefill step's prompts, or the decoding batch."""
    return max(plan.step_size * plan.batch_size, max_batch)


def gpu_kernel_cache() -> Path:
    """Where MLX CUDA keeps the kernels it compiles (``$TMPDIR/mlx/<version>/ptx``)."""
    return Path(tempfile.gettempdir()) / "mlx"


def warm_up_row_counts(model: Any, bound: int, step: int) -> list[int]:
    """One forward pass per entry of ``GPU_WARMUP_ROWS`` up to ``bound`` rows, each on a
    throwaway cache, shaped as the engine's prefill steps are (sequences of at most ``step``
    tokens); returns the row counts run."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    done = []
    for rows in GPU_WARMUP_ROWS:
        if rows > bound:
            break
        length = min(rows, step)
        batch = -(-rows // length)
        cache = make_prompt_cache(model)
        mx.eval(model(mx.zeros((batch, length), dtype=mx.uint32), cache=cache))
        done.append(rows)
    mx.clear_cache()
    return done


@dataclass
class StartupReport:
    """What start-up took, in seconds (the "startup" log event)."""

    delay_s: float
    import_s: float
    load_s: float
    warmup_s: float


@dataclass
class Started:
    """What start-up hands the decoder."""

    loaded: Any  # model.LoadedModel
    plan: PrefillPlan
    solo_enabled: bool  # --solo on, and not in synthetic mode
    batch: Any  # the warmed-up BatchGenerator (or its synthetic stand-in)
    report: StartupReport
    resume_method: str = "prefill"  # how continuations start (engine/continuation.py)
    group: Any = None  # the mx.distributed group of a sharded model (mlx_worker.shard)


def start_up(config: WorkerConfig, faults: Faults) -> Started:
    """Imports MLX and mlx-lm, loads the model and warms it up (start-up faults apply here)."""
    t0 = now()
    if faults.startup_delay:
        time.sleep(faults.startup_delay)
    if faults.startup_hang:
        log.warning("fault injection: startup_hang")
        threading.Event().wait()
    t1 = now()
    # OpenBLAS for MLX's CPU matrix products must be loaded before MLX is first imported.
    from ..model.cpu_blas import prepare_cpu_blas

    prepare_cpu_blas(enable=config.dequantize != "off")
    from ..fast_import import import_batch_generator
    from ..model import load_model

    import_batch_generator()
    import mlx.core as mx

    from .. import sampling  # noqa: F401  (after mlx_lm.generate: see fast_import)

    on_gpu = mx.default_device().type == mx.gpu
    plan = prefill_plan(config, on_gpu=on_gpu)
    # A sharded model runs every request in the BatchGenerator (see mlx_worker.shard.steps).
    sharded = config.shard is not None and config.shard.ranks > 1
    solo_enabled = config.synthetic is None and config.solo == "on" and not sharded
    group = None
    if sharded:
        from ..shard.group import join_group

        group = join_group(config.shard)
    t2 = now()
    if faults.load_error:
        raise RuntimeError("fault injection: load_error")
    model = config.model
    if config.test_model:
        from ..testing.served_model import ensure_served_model

        model = str(ensure_served_model(config.cache_dir))
    loaded = load_model(model, cache_dir=config.cache_dir, dequantize=config.dequantize)
    if group is not None:
        from ..shard.group import shard_model

        shard_model(loaded, group)
    t3 = now()
    batch = new_batch_generator(config, loaded, plan)
    _warm_up(config, loaded, plan, batch, solo_enabled)
    if on_gpu and config.synthetic is None:
        _warm_up_gpu_kernels(config, loaded, plan)
    t4 = now()
    report = StartupReport(delay_s=t1 - t0, import_s=t2 - t1, load_s=t3 - t2, warmup_s=t4 - t3)
    from .continuation import resume_method

    return Started(
        loaded=loaded,
        plan=plan,
        solo_enabled=solo_enabled,
        batch=batch,
        report=report,
        resume_method=resume_method(on_gpu, synthetic=config.synthetic is not None),
        group=group,
    )


def new_batch_generator(config: WorkerConfig, loaded: Any, plan: PrefillPlan) -> Any:
    """A ``BatchGenerator`` for the model (in benchmark mode, the synthetic stand-in)."""
    from .eager_batch import EagerBatchGenerator

    if config.synthetic is not None:  # benchmark mode: made-up tokens, the model never runs
        from ..synthetic import start_synthetic

        return start_synthetic(config.synthetic, config.max_batch)
    return EagerBatchGenerator(
        loaded.model,
        completion_batch_size=config.max_batch,
        prefill_batch_size=plan.batch_size,
        prefill_step_size=plan.step_size,
    )


def _warm_up(
    config: WorkerConfig, loaded: Any, plan: PrefillPlan, batch: Any, solo_enabled: bool
) -> None:
    """Runs each path a request takes once, with as few forward passes as that allows: a
    greedy and a sampled sequence of one token in the batch (two passes), and a greedy one
    on the solo path (one pass). The first use of a compiled sampler or kernel happens here;
    every further pass would only delay readiness (a restart's continuations wait on it).
    Figures: BENCHMARKS.md, "A leaner warm-up"."""
    from mlx_lm.generate import StopSequences

    from ..sampling import make_request_processors, make_request_sampler
    from .solo import SoloSequence

    tok = loaded.tokenizer
    first = tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
    vocab = loaded.description.vocab_size
    sampled = SamplingSettings(temperature=0.7, top_p=0.9, top_k=5, min_p=0.01, seed=0)
    greedy = SamplingSettings()
    uids = batch.insert(
        [[first], [first]],
        max_tokens=[1, 1],
        samplers=[make_request_sampler(s, vocab) for s in (greedy, sampled)],
        logits_processors=[make_request_processors(s) for s in (greedy, sampled)],
        stop_sequences=[StopSequences(), StopSequences()],
    )
    pending = set(uids)
    for _ in range(100):
        _, generated = batch.next()
        for response in generated:
            if response.finish_reason is not None:
                pending.discard(response.uid)
        if not pending:
            break
    else:
        raise RuntimeError("warm-up generation did not finish")
    if solo_enabled:
        solo = SoloSequence(
            loaded.model,
            [first],
            1,
            make_request_sampler(greedy, vocab),
            make_request_processors(greedy),
            frozenset(),
        )
        while solo.next().finish_reason is None:
            pass


def _warm_up_gpu_kernels(config: WorkerConfig, loaded: Any, plan: PrefillPlan) -> None:
    """Compiles the GPU kernels of every row count a step can run (see GPU_WARMUP_ROWS)."""
    kernels = gpu_kernel_cache()
    if not any(kernels.glob("*/ptx/*.ptx")):
        log.info(
            "compiling GPU kernels (first start here: minutes, then cached)",
            extra={"fields": {"kernel_cache": str(kernels)}},
        )
    warm_up_row_counts(loaded.model, warm_up_bound(plan, config.max_batch), plan.step_size)
