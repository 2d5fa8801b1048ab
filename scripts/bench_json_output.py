"""Constrained (response_format) against unconstrained decoding, side by side in one run.

Starts one worker (the default model, or --model) and sends pairs of requests through gRPC:
a chat prompt asking for JSON with a JSON schema, then the same prompt without it, greedy,
with ``ignore_eos`` and ``max_tokens`` set to the constrained answer's length so that both
decode the same number of tokens. Pairs alternate which goes first. Each request runs alone
(the solo path); ``--concurrency N`` also runs N of each kind at once (the batch). Printed:
each kind's median decode tokens/s (the worker's own timings) and their ratio.

    PYTHONPATH=sidecar .venv/bin/python scripts/bench_json_output.py [--pairs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sidecar"))

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_sidecar.v1 import inference_pb2_grpc as pb_grpc

SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "country": {"type": "string", "maxLength": 24},
                    "population": {"type": "integer", "minimum": 0},
                    "coastal": {"type": "boolean"},
                },
                "required": ["name", "country", "population", "coastal"],
                "additionalProperties": False,
            },
            "minItems": 4,
            "maxItems": 4,
        }
    },
    "required": ["cities"],
    "additionalProperties": False,
}
PROMPT = (
    "List six large cities of Europe as JSON, with country, population and coastal."
)


def _request(schema: bool, max_tokens: int) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        prompt=pb.Prompt(
            chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=PROMPT)])
        ),
        max_tokens=max_tokens,
    )
    if schema:
        request.response_format.json_schema = json.dumps(SCHEMA)
    else:
        request.ignore_eos = True
    return request


def _run(
    stub: pb_grpc.InferenceStub, request: pb.GenerateRequest
) -> tuple[float, int, str]:
    text, fin = [], None
    for msg in stub.Generate(request, timeout=600):
        if msg.HasField("chunk"):
            text.append(msg.chunk.text)
        else:
            fin = msg.finished
    assert fin is not None
    return (
        fin.timings.decode_tokens_per_second,
        fin.usage.completion_tokens,
        "".join(text),
    )


def _pair(
    stub: pb_grpc.InferenceStub, constrained_first: bool, n: int
) -> tuple[list, list]:
    """n constrained and n unconstrained requests (n at once when n > 1)."""
    with ThreadPoolExecutor(max(n, 1)) as pool:
        first = list(pool.map(lambda _: _run(stub, _request(True, 1500)), range(n)))
        lengths = [tokens for _, tokens, _ in first]
        for _, _, text in first:
            json.loads(text)  # it parses (the tests check validation)
        plain_requests = [_request(False, length) for length in lengths]
        if constrained_first:
            plain = list(pool.map(lambda r: _run(stub, r), plain_requests))
            return [r[0] for r in first], [r[0] for r in plain]
        plain = list(pool.map(lambda r: _run(stub, r), plain_requests))
        again = list(pool.map(lambda _: _run(stub, _request(True, 1500)), range(n)))
        return [r[0] for r in again], [r[0] for r in plain]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model path (default: the default model)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs per level")
    parser.add_argument("--concurrency", type=int, default=3, help="0: solo only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bjo-"))
    socket = tmp / "w.sock"
    cmd = [sys.executable, "-m", "mlx_worker", "--socket", str(socket)]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sidecar")}
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stderr=log)
    try:
        channel = grpc.insecure_channel(f"unix:{socket}")
        grpc.channel_ready_future(channel).result(timeout=300)
        stub = pb_grpc.InferenceStub(channel)
        deadline = time.monotonic() + 300
        while True:  # the model loads after the socket opens
            try:
                _run(stub, _request(True, 1500))  # warm-up (and the grammar tokenizer)
                break
            except grpc.RpcError as e:
                if (
                    e.code() != grpc.StatusCode.UNAVAILABLE
                    or time.monotonic() > deadline
                ):
                    raise
                time.sleep(0.2)
        results = {}
        for label, n in [
            ("solo", 1),
            (f"batch of {args.concurrency}", args.concurrency),
        ]:
            if n < 1:
                continue
            constrained, plain = [], []
            for i in range(args.pairs):
                c, p = _pair(stub, i % 2 == 0, n)
                constrained += c
                plain += p
                print(
                    f"{label} pair {i}: constrained {c} unconstrained {p}",
                    file=sys.stderr,
                )
            c_med, p_med = statistics.median(constrained), statistics.median(plain)
            results[label] = {
                "constrained_tps": round(c_med, 2),
                "unconstrained_tps": round(p_med, 2),
                "ratio": round(c_med / p_med, 3),
                "requests_each": len(constrained),
            }
        if args.json:
            print(json.dumps(results))
        else:
            for label, r in results.items():
                print(
                    f"{label}: constrained {r['constrained_tps']} tok/s, unconstrained "
                    f"{r['unconstrained_tps']} tok/s, ratio {r['ratio']} "
                    f"({r['requests_each']} requests each)"
                )
    finally:
        worker.terminate()
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
