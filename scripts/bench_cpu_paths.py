"""Compares the worker's CPU paths on the default model (or --model):

- stock: MLX's quantized kernels, mlx-cpu's bundled BLAS (MLX_SIDECAR_CPU_BLAS=bundled,
  dequantize off);
- stock+openblas: quantized kernels, OpenBLAS loaded (dequantize off);
- fast: OpenBLAS with the weights expanded to float32 (dequantize auto, the default).

Each path runs in fresh processes (the BLAS is chosen before MLX is imported): one to warm the
conversion cache, one measured. Printed per path: process start to model ready, load_model
time, prefill tok/s (one prompt), greedy decode tok/s with 1 stream (a plain loop) and with 4
streams (mlx-lm's BatchGenerator), and whether the greedy tokens equal the stock path's.

    PYTHONPATH=sidecar .venv/bin/python scripts/bench_cpu_paths.py [--json] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PATHS = {
    "stock": ({"MLX_SIDECAR_CPU_BLAS": "bundled"}, "off"),
    "stock+openblas": ({"MLX_SIDECAR_CPU_BLAS": "auto"}, "off"),
    "fast": ({"MLX_SIDECAR_CPU_BLAS": "auto"}, "auto"),
}

QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a CPU cache is.",
    "List three uses of copper.",
]
PREFILL_TEXT = (
    "The history of the city begins with a small settlement on the bank of a slow river, "
    "where traders stopped to rest their animals and exchange news from the roads to the "
    "north and south. Over the centuries the settlement grew into a market town, then into "
    "a walled city with a cathedral, a university and a harbour that sent ships to every "
    "port of the known world. "
) * 4


def child(args: argparse.Namespace) -> None:
    """Runs in the measured process: load, prefill, decode; prints one JSON line."""
    t_start = time.perf_counter()
    # The worker's model package first: it picks the BLAS before MLX is imported.
    from mlx_worker.model import load_model  # noqa: I001

    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models.cache import make_prompt_cache

    t_imported = time.perf_counter()
    loaded = load_model(
        args.model, cache_dir=args.cache_dir, dequantize=args.dequantize
    )
    t_loaded = time.perf_counter()
    model, tok = loaded.model, loaded.tokenizer
    ready_unix = time.time()

    prompt = tok.encode(PREFILL_TEXT, add_special_tokens=False)[: args.prefill_tokens]
    best = float("inf")
    for _ in range(2):
        cache = make_prompt_cache(model)
        t = time.perf_counter()
        mx.eval(model(mx.array([prompt]), cache=cache))
        best = min(best, time.perf_counter() - t)
    prefill_tps = len(prompt) / best

    chats = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]), False)
        for q in QUESTIONS
    ]
    single_tokens, decode_times = [], []
    for ids in chats:
        cache = make_prompt_cache(model)
        x, out = mx.array([ids]), []
        for _ in range(args.tokens):
            out.append(int(mx.argmax(model(x, cache=cache)[0, -1]).item()))
            if len(out) == 1:
                t_first = time.perf_counter()
            x = mx.array([[out[-1]]])
        decode_times.append(time.perf_counter() - t_first)
        single_tokens.append(out)
    decode_1 = (args.tokens - 1) * len(chats) / sum(decode_times)

    gen = BatchGenerator(
        model, max_tokens=args.tokens, completion_batch_size=len(chats)
    )
    uids = gen.insert(chats)
    batch_tokens: dict[int, list[int]] = {u: [] for u in uids}
    t_first = None
    done: set[int] = set()
    while len(done) < len(uids):
        _, responses = gen.next()
        for r in responses:
            if t_first is None:
                t_first = time.perf_counter()
            batch_tokens[r.uid].append(r.token)
            if r.finish_reason is not None:
                done.add(r.uid)
    t_end = time.perf_counter()
    gen.close()
    decode_4 = (sum(len(v) for v in batch_tokens.values()) - len(uids)) / (
        t_end - t_first
    )

    d = loaded.description
    print(
        json.dumps(
            {
                "blas": d.cpu_blas,
                "dequantized": d.dequantized,
                "dtype": d.dtype,
                "import_s": t_imported - t_start,
                "load_s": t_loaded - t_imported,
                "ready_unix": ready_unix,
                "prefill_tokens": len(prompt),
                "prefill_tps": prefill_tps,
                "decode_1_tps": decode_1,
                "decode_4_tps": decode_4,
                "single_tokens": single_tokens,
                "batch_tokens": [batch_tokens[u] for u in uids],
                "answer": tok.decode(single_tokens[0]),
            }
        )
    )


def run_path(name: str, args: argparse.Namespace, cache_dir: str) -> dict:
    env_extra, dequantize = PATHS[name]
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT / "sidecar")}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--dequantize",
        dequantize,
        "--cache-dir",
        cache_dir,
        "--tokens",
        str(args.tokens),
        "--prefill-tokens",
        str(args.prefill_tokens),
    ]
    if args.model:
        cmd += ["--model", args.model]
    result: dict = {}
    for attempt in ("warm-up", "measured"):
        spawned = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{name} ({attempt}) failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["start_to_ready_s"] = result["ready_unix"] - spawned
        if attempt == "warm-up":
            first_load = result["load_s"]
    result["first_load_s"] = first_load
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=None, help="model path (default: the default model)"
    )
    p.add_argument("--tokens", type=int, default=48, help="tokens generated per stream")
    p.add_argument("--prefill-tokens", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dequantize", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as cache_dir:
        results = {name: run_path(name, args, cache_dir) for name in PATHS}
    stock = results["stock"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"load average: {os.getloadavg()[0]:.2f} (2-core machine: figures are noisy)")
    header = (
        f"{'path':<16}{'blas':<10}{'first load':>11}{'load':>7}{'start→ready':>13}"
        f"{'prefill':>10}{'decode x1':>11}{'decode x4':>11}  same tokens as stock (1 / 4 streams)"
    )
    print(header)
    for name, r in results.items():
        same_1 = sum(a == b for a, b in zip(r["single_tokens"], stock["single_tokens"]))
        same_4 = sum(a == b for a, b in zip(r["batch_tokens"], stock["batch_tokens"]))
        n = len(r["single_tokens"])
        print(
            f"{name:<16}{r['blas']:<10}{r['first_load_s']:>10.2f}s{r['load_s']:>6.2f}s"
            f"{r['start_to_ready_s']:>12.2f}s{r['prefill_tps']:>7.0f} t/s"
            f"{r['decode_1_tps']:>7.1f} t/s{r['decode_4_tps']:>7.1f} t/s"
            f"  {same_1}/{n} prompts, {same_4}/{n} prompts"
        )
    print(f"stock answer: {stock['answer']!r}")
    print(f"fast answer:  {results['fast']['answer']!r}")


if __name__ == "__main__":
    main()
