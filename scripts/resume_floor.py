"""The floor of resuming a stream: token-id mismatches with and without a seam.

    PYTHONPATH=sidecar .venv/bin/python scripts/resume_floor.py [--model M|tiny] [--prompts N]
        [--max-tokens T] [--cuts K] [--seeded] [--methods replay,prefill]

Runs N requests in a real in-process engine (mlx_worker.testing.engine_runs), greedy (or
seeded sampling with --seeded), with end-of-sequence ignored so each gives T tokens:

- the floor without faults: each request alone (the solo path) and all N together (the batch);
  the two runs' token ids are compared, and the batch run is repeated to check it is stable;
- with a seam: for K cut points k, the continuation of every request after its first k tokens,
  by each method of mlx_worker.engine.continuation (``replay``: the delivered tokens decoded
  again, one per step; ``prefill``: prefilled with the prompt), alone and all N together; each
  is compared with the uninterrupted run of the same setting, token by token.

Prints one JSON object: mismatched requests per comparison, and the continuations' time to
their first new token (the cost of the method). Figures: BENCHMARKS.md, "Resuming a stream".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one paragraph.",
    "List three uses of copper.",
    "Why is the sky blue?",
    "Tell me a short story about a robot.",
    "How do I boil an egg?",
    "What is a prime number?",
    "Describe the water cycle.",
    "Give me a tip for learning to code.",
    "What does a compiler do?",
    "Name some planets of the solar system.",
]


def _requests(args: argparse.Namespace, tiny: bool) -> list[Any]:
    from mlx_sidecar.v1 import inference_pb2 as pb

    out = []
    for i in range(args.prompts):
        question = QUESTIONS[i % len(QUESTIONS)] + (
            f" ({i})" if i >= len(QUESTIONS) else ""
        )
        if tiny:
            prompt = pb.Prompt(text=question)
        else:
            msg = pb.ChatMessage(role="user", content=question)
            prompt = pb.Prompt(chat=pb.ChatPrompt(messages=[msg]))
        sampling = pb.SamplingParams()
        if args.seeded:
            sampling = pb.SamplingParams(temperature=0.8, top_p=0.95, seed=1000 + i)
        out.append(
            pb.GenerateRequest(
                prompt=prompt,
                max_tokens=args.max_tokens,
                sampling=sampling,
                ignore_eos=True,
            )
        )
    return out


def _continued(request: Any, reference: Any, k: int) -> Any:
    """``request`` resumed after the reference's first ``k`` tokens (at a chunk boundary)."""
    from mlx_sidecar.v1 import inference_pb2 as pb

    chunks, count = 0, 0
    while count < k:
        count += len(reference.chunks[chunks].token_ids)
        chunks += 1
    resumed = pb.GenerateRequest()
    resumed.CopyFrom(request)
    resumed.continuation.CopyFrom(reference.cut_after(chunks))
    return resumed


def _no_cut(request: Any) -> Any:
    from mlx_sidecar.v1 import inference_pb2 as pb

    out = pb.GenerateRequest()
    out.CopyFrom(request)
    out.continuation.CopyFrom(pb.Continuation())
    return out


def _differ(first: list[Any], second: list[Any]) -> int:
    """How many requests' token ids differ between two runs."""
    _check(first + second)
    return sum(a.token_ids != b.token_ids for a, b in zip(first, second, strict=True))


def _seam_mismatches(references: list[Any], resumed: list[Any], runs: list[Any]) -> int:
    """How many continuations' token ids are not the reference's after the delivered ones."""
    _check(runs)
    bad = 0
    for ref, request, run in zip(references, resumed, runs, strict=True):
        k = len(request.continuation.delivered_token_ids)
        bad += run.token_ids != ref.token_ids[k:]
    return bad


def _logprob_gaps(
    references: list[Any], resumed: list[Any], runs: list[Any]
) -> list[float]:
    """Per continuation: the largest |logprob - the reference's| over its tokens (where the
    token ids agree), 0.0 when the model computed the same values bit for bit."""
    gaps = []
    for ref, request, run in zip(references, resumed, runs, strict=True):
        k = len(request.continuation.delivered_token_ids)
        pairs = zip(run.logprobs, ref.logprobs[k:], strict=False)
        same = [(a.logprob, b.logprob) for a, b in pairs if a.token_id == b.token_id]
        gaps.append(max((abs(a - b) for a, b in same), default=0.0))
    return gaps


def _check(runs: list[Any]) -> None:
    for run in runs:
        if run.failure is not None:
            raise SystemExit(f"a request failed: {run.failure}")


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from mlx_worker.engine import continuation
    from mlx_worker.testing.engine_runs import engine_runs

    tmp = Path(tempfile.mkdtemp(prefix="resume-floor-"))
    tiny = args.model == "tiny"
    model = args.model
    if tiny:
        model = str(tmp / "tiny")
        child = await asyncio.create_subprocess_exec(  # this process imports MLX later
            sys.executable, "-m", "mlx_worker.testing.tiny_model", model
        )
        if await child.wait() != 0:
            raise SystemExit("cannot write the tiny model")
    requests = _requests(args, tiny)
    report: dict[str, Any] = {"model": args.model, "prompts": len(requests)}
    report.update(
        max_tokens=args.max_tokens, seeded=args.seeded, dequantize=args.dequantize
    )
    cache_dir = Path(args.cache_dir) if args.cache_dir else tmp
    async with engine_runs(model, cache_dir, dequantize=args.dequantize) as runs:

        async def alone(reqs: list[Any]) -> list[Any]:
            return [(await runs.run([r]))[0] for r in reqs]

        solo_ref = await alone(requests)
        batch_ref = await runs.run(requests)
        batch_again = await runs.run(requests)
        report["floor_logprob_gap_max"] = max(
            _logprob_gaps(solo_ref, [_no_cut(r) for r in requests], batch_ref)
        )
        report["floor"] = {
            "solo_vs_batch": _differ(solo_ref, batch_ref),
            "batch_vs_batch": _differ(batch_ref, batch_again),
        }
        n = args.max_tokens
        cuts = sorted(
            {max(1, n * j // (args.cuts + 1)) for j in range(1, args.cuts + 1)}
        )
        report["cuts"] = cuts
        for method in args.methods.split(","):
            continuation.RESUME_METHOD = method
            seams: dict[str, int] = {"solo": 0, "batch": 0, "batch_vs_solo_ref": 0}
            ttft: dict[str, list[float]] = {"solo": [], "batch": []}
            gaps: dict[str, list[float]] = {"solo": [], "batch": []}
            for k in cuts:
                pairs = zip(requests, solo_ref, strict=True)
                solo_resumed = [_continued(r, ref, k) for r, ref in pairs]
                solo_cont = await alone(solo_resumed)
                pairs = zip(requests, batch_ref, strict=True)
                batch_resumed = [_continued(r, ref, k) for r, ref in pairs]
                batch_cont = await runs.run(batch_resumed)
                seams["solo"] += _seam_mismatches(solo_ref, solo_resumed, solo_cont)
                seams["batch"] += _seam_mismatches(batch_ref, batch_resumed, batch_cont)
                seams["batch_vs_solo_ref"] += _seam_mismatches(
                    solo_ref, batch_resumed, batch_cont
                )
                gaps["solo"] += _logprob_gaps(solo_ref, solo_resumed, solo_cont)
                gaps["batch"] += _logprob_gaps(batch_ref, batch_resumed, batch_cont)
                ttft["solo"] += [
                    c.finished.timings.time_to_first_token_ms for c in solo_cont
                ]
                ttft["batch"] += [
                    c.finished.timings.time_to_first_token_ms for c in batch_cont
                ]
            report[method] = {
                "mismatched": seams,
                "continuations": len(cuts) * len(requests),
                "ttft_ms_median": {
                    key: round(statistics.median(v), 1) for key, v in ttft.items()
                },
                "logprob_gap_max": {key: max(v) for key, v in gaps.items()},
                "bit_identical": {
                    key: sum(g == 0.0 for g in v) for key, v in gaps.items()
                },
            }
        report["uninterrupted_ttft_ms_median"] = {
            "solo": _median_ttft(solo_ref),
            "batch": _median_ttft(batch_ref),
        }
    return report


def _median_ttft(runs: list[Any]) -> float:
    return round(
        statistics.median(r.finished.timings.time_to_first_token_ms for r in runs), 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="model (default: the default model)"
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cuts", type=int, default=4)
    parser.add_argument("--seeded", action="store_true")
    parser.add_argument(
        "--dequantize", default="auto", help="the worker's --dequantize"
    )
    parser.add_argument("--methods", default="replay,prefill", help="comma-separated")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_measure(args))))


if __name__ == "__main__":
    main()
