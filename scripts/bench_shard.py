"""The sharded group against the unsharded model, side by side in one run.

Starts the real worker (``python -m mlx_worker``) unsharded and with ``--shard-ranks N``, one
at a time in the order A B B A (each measured twice, the start order balanced), and through
its gRPC socket sends the same greedy requests to each: one at a time, then ``--wave``
together. Reports per configuration the decode tokens per second the worker measured
(``Timings.decode_tokens_per_second``, median over requests), the wave's wall-clock aggregate,
start-up time, and whether every request's token ids equal the unsharded ones.

    PYTHONPATH=sidecar .venv/bin/python scripts/bench_shard.py [--model PATH] [--ranks 3]
        [--tokens 64] [--requests 6] [--wave 4] [--backend ring] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sidecar"))

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_sidecar.v1 import inference_pb2_grpc as pb_grpc

TEXT = (
    "The history of the city begins with a small settlement on the river, where traders met "
    "to exchange grain, salt and cloth. Over the centuries it grew into"
)


def start_worker(
    args: list[str], workdir: Path
) -> tuple[subprocess.Popen[bytes], Path, float]:
    sock = workdir / "w.sock"
    log = open(workdir / "worker.log", "wb")  # noqa: SIM115 (lives as long as the worker)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sidecar")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_worker", "--socket", str(sock), *args],
        stdin=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    channel = grpc.insecure_channel(f"unix:{sock}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"worker exited {proc.returncode}: see {workdir / 'worker.log'}"
            )
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("worker did not start in 600 s")
        time.sleep(0.05)
    channel.close()
    return proc, sock, time.perf_counter() - t0


def generate(
    stub: pb_grpc.InferenceStub, i: int, tokens: int
) -> tuple[list[int], float]:
    request = pb.GenerateRequest(
        prompt=pb.Prompt(text=f"{i}. {TEXT}"), max_tokens=tokens, ignore_eos=True
    )
    ids: list[int] = []
    decode_tps = 0.0
    for msg in stub.Generate(request, timeout=600):
        if msg.HasField("chunk"):
            ids.extend(msg.chunk.token_ids)
        else:
            decode_tps = msg.finished.timings.decode_tokens_per_second
    return ids, decode_tps


def measure(
    name: str, worker_args: list[str], opts: argparse.Namespace
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mlxsb-"))
    proc, sock, startup_s = start_worker(worker_args, workdir)
    try:
        channel = grpc.insecure_channel(f"unix:{sock}")
        stub = pb_grpc.InferenceStub(channel)
        generate(stub, 999, 4)  # a first request, not measured
        single = [generate(stub, i, opts.tokens) for i in range(opts.requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(opts.wave) as pool:
            wave = list(
                pool.map(
                    lambda i: generate(stub, 100 + i, opts.tokens), range(opts.wave)
                )
            )
        wave_s = time.perf_counter() - t0
        channel.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "name": name,
        "startup_s": round(startup_s, 2),
        "single_ids": [ids for ids, _ in single],
        "wave_ids": [ids for ids, _ in wave],
        "single_decode_tps": round(statistics.median(tps for _, tps in single), 2),
        "wave_aggregate_tps": round(opts.wave * opts.tokens / wave_s, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="model path (default: the default model)"
    )
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--backend", default="ring")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--wave", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    opts = p.parse_args()
    base = ["--model", opts.model] if opts.model else []
    configs = {
        "unsharded": base,
        f"sharded x{opts.ranks}": [
            *base,
            "--shard-ranks",
            str(opts.ranks),
            "--shard-backend",
            opts.backend,
        ],
    }
    names = list(configs)
    runs = [
        measure(n, configs[n], opts) for n in (names[0], names[1], names[1], names[0])
    ]
    reference = runs[0]
    rows = []
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        identical = all(
            r["single_ids"] == reference["single_ids"]
            and r["wave_ids"] == reference["wave_ids"]
            for r in mine
        )
        rows.append(
            {
                "name": name,
                "startup_s": [r["startup_s"] for r in mine],
                "single_decode_tps": [r["single_decode_tps"] for r in mine],
                "wave_aggregate_tps": [r["wave_aggregate_tps"] for r in mine],
                "ids_identical_to_unsharded": identical,
            }
        )
    mean = {r["name"]: statistics.mean(r["single_decode_tps"]) for r in rows}
    wave = {r["name"]: statistics.mean(r["wave_aggregate_tps"]) for r in rows}
    result = {
        "model": opts.model or "default",
        "ranks": opts.ranks,
        "backend": opts.backend,
        "tokens": opts.tokens,
        "requests": opts.requests,
        "wave": opts.wave,
        "rows": rows,
        "decode_ratio_sharded_over_unsharded": round(
            mean[names[1]] / mean[names[0]], 3
        ),
        "wave_ratio_sharded_over_unsharded": round(wave[names[1]] / wave[names[0]], 3),
    }
    print(json.dumps(result, indent=2))
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
