"""Where a resumed batch's time to first token goes, in one real in-process engine.

    PYTHONPATH=sidecar .venv/bin/python scripts/resume_seam.py --model M [--prompts 8]
        [--max-tokens 16] [--cuts 4,8,12] [--repeats 3]

N chat requests (greedy, end-of-sequence ignored) run once for their reference. Then, for
each cut k, the N continuations after the first k tokens arrive together at a fresh engine
(what a promoted standby sees after a kill) that holds in its prefix cache:

- ``none``: nothing (a restarted worker);
- ``prompt``: the prompts (the standby shadowed the streams as they started);
- ``prompt+delivered``: the prompts and the k delivered tokens (shadowed up to the cut);

and, for scale, ``new``: the N requests themselves on a fresh engine. Each engine first
serves one request, so that no set-up cost lands in the figures. Prints the median and
largest time to the first new token per setting, and checks every continuation's token ids
against the reference. Figures: CHAOS.md, "Where the seam's time goes on this CPU".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from resume_floor import QUESTIONS


def _requests(prompts: int, max_tokens: int) -> list[Any]:
    from mlx_sidecar.v1 import inference_pb2 as pb

    return [
        pb.GenerateRequest(
            prompt=pb.Prompt(
                chat=pb.ChatPrompt(
                    messages=[
                        pb.ChatMessage(
                            role="user", content=QUESTIONS[i % len(QUESTIONS)]
                        )
                    ]
                )
            ),
            max_tokens=max_tokens,
            ignore_eos=True,
        )
        for i in range(prompts)
    ]


def _with(request: Any, delivered: list[int] | None, prefill_only: bool = False) -> Any:
    """``request`` continuing after ``delivered`` (None: as sent), or its shadow."""
    from mlx_sidecar.v1 import inference_pb2 as pb

    out = pb.GenerateRequest()
    out.CopyFrom(request)
    out.prefill_only = prefill_only
    if delivered:
        out.continuation.CopyFrom(
            pb.Continuation(
                delivered_token_ids=delivered, delivered_text_bytes=0, resume_count=1
            )
        )
    return out


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from mlx_worker.testing.engine_runs import engine_runs

    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp())
    requests = _requests(args.prompts, args.max_tokens)
    async with engine_runs(args.model, cache_dir, prefix_cache_entries=0) as runs:
        references = await runs.run(requests)
    report: dict[str, Any] = {"model": args.model, "prompts": args.prompts}
    for k in (int(c) for c in args.cuts.split(",")):
        delivered = [ref.token_ids[:k] for ref in references]
        continuations = [_with(r, d) for r, d in zip(requests, delivered, strict=True)]
        shadows = {
            "none": [],
            "prompt": [_with(r, None, prefill_only=True) for r in requests],
            "prompt+delivered": [
                _with(r, d, prefill_only=True)
                for r, d in zip(requests, delivered, strict=True)
            ],
            "new": [],
        }
        for setting, shadowed in shadows.items():
            ttfts: list[float] = []
            for _ in range(args.repeats):
                async with engine_runs(args.model, cache_dir) as runs:
                    await runs.run(_requests(1, 2))
                    if shadowed:
                        await runs.run(shadowed)
                    sent = requests if setting == "new" else continuations
                    got = await runs.run(sent)
                for g, ref in zip(got, references, strict=True):
                    if g.failure is not None:
                        raise SystemExit(f"a request failed: {g.failure}")
                    if setting != "new" and g.token_ids != ref.token_ids[k:]:
                        raise SystemExit(
                            f"k={k} {setting}: a continuation's tokens differ"
                        )
                ttfts += [g.finished.timings.time_to_first_token_ms for g in got]
            key = f"k={k} {setting}"
            report[key] = {
                "median_ms": round(statistics.median(ttfts)),
                "max_ms": round(max(ttfts)),
            }
            print(key, report[key], flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model directory or GGUF file")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cuts", default="4,8,12", help="delivered tokens at the seam")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh engines per setting"
    )
    parser.add_argument("--cache-dir", help="where a GGUF model's conversion is kept")
    print(json.dumps(asyncio.run(_measure(parser.parse_args()))), flush=True)
    # With several engines run in this process, MLX aborts at interpreter exit ("terminate
    # called without an active exception"); the results are out by then.
    os._exit(0)


if __name__ == "__main__":
    main()
