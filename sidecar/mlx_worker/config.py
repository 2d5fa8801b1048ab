"""The worker's command line, parsed into one frozen :class:`WorkerConfig`.

Only the standard library is imported here: the command line is parsed before anything slow
(gRPC, MLX) is imported, so that a bad flag fails fast and start-up stays short.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .shard.options import ShardOptions, add_shard_arguments, shard_options
from .synthetic import SyntheticSpec, parse_spec

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEQUANTIZE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker was told on its command line (and by its environment)."""

    socket_path: Path
    model: str | None
    cache_dir: Path
    max_batch: int = 32
    max_queue: int = 256
    grace_seconds: float = 10.0
    log_level: str = "info"
    dequantize: str = "auto"
    stall_seconds: float = 30.0
    # None: the engine picks (see engine.startup.prefill_plan).
    prefill_step_size: int | None = None
    stdin_watch: bool = True
    # A request that finds the engine idle decodes alone (engine/solo.py): "on" or "off".
    solo: str = "on"
    # Least time between two messages of one stream, but for its first and its end: tokens
    # that come sooner go out together (0: each engine step's tokens at once).
    stream_interval_ms: float = 0.0
    default_max_tokens: int = 256
    # The prefix cache (engine/prefix_cache.py): most entries (0: off) and most bytes
    # (None: from the model's size and the machine's memory).
    prefix_cache_entries: int = 64
    prefix_cache_bytes: int | None = None
    # Benchmark mode only (``--synthetic-tokens``): made-up tokens, the model is never run.
    synthetic: SyntheticSpec | None = None
    # One model over several processes (``--shard-*``; see mlx_worker.shard).
    shard: ShardOptions | None = None
    # ``--test-model``: serve the tiny random-weight model (see testing.served_model).
    test_model: bool = False


def default_cache_dir() -> Path:
    """$MLX_SIDECAR_CACHE_DIR, else $XDG_CACHE_HOME/mlx-sidecar, else ~/.cache/mlx-sidecar."""
    explicit = os.environ.get("MLX_SIDECAR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mlx-sidecar"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """A byte count: digits, optionally followed by K, M or G (binary: 1K = 1024)."""
    body = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = body[-1:] if body[-1:] in ("k", "m", "g") else ""
    digits = body[: len(body) - len(unit)]
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}")
    return int(digits) * _SIZE_UNITS[unit]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its --help is the worker's command-line reference)."""
    p = argparse.ArgumentParser(
        prog="python -m mlx_worker",
        description="Serve one MLX model over gRPC on a Unix domain socket.",
    )
    p.add_argument(
        "--socket",
        required=True,
        type=Path,
        help="Unix socket path to bind; its directory must not be writable by group or others",
    )
    which_model = p.add_mutually_exclusive_group()
    which_model.add_argument(
        "--model", default=None, help="model directory or GGUF file (default: SmolLM2-135M)"
    )
    which_model.add_argument(
        "--test-model",
        action="store_true",
        help="serve a tiny model with random weights (gibberish text, loads in a fraction of a "
        "second) for the tests of programs built on the worker; written once into the cache",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where converted models are kept (default: $MLX_SIDECAR_CACHE_DIR, "
        "else $XDG_CACHE_HOME/mlx-sidecar, else ~/.cache/mlx-sidecar)",
    )
    p.add_argument(
        "--max-batch", type=_positive_int, default=32, help="most sequences decoded together"
    )
    p.add_argument(
        "--max-queue",
        type=_non_negative_int,
        default=256,
        help="most requests waiting beyond --max-batch; more get RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--grace-seconds",
        type=_non_negative_float,
        default=10.0,
        help="on SIGTERM, how long in-flight requests may run before they are cancelled",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="least level logged")
    p.add_argument(
        "--dequantize",
        choices=DEQUANTIZE_MODES,
        default="auto",
        help="expand quantized weights to floats at load (auto: on CPU with a fast BLAS)",
    )
    p.add_argument(
        "--solo",
        choices=("on", "off"),
        default="on",
        help="decode a request that finds the engine idle on mlx-lm's single-sequence loop until "
        "another arrives (faster for one stream than a batch of one, on a GPU and on a CPU)",
    )
    p.add_argument(
        "--stream-interval-ms",
        type=_non_negative_float,
        default=0.0,
        metavar="MS",
        help="least time between two messages of one stream: tokens that come sooner wait and "
        "go out together, the first token and the end at once (default 0: each engine step's "
        "tokens go out when the step ends)",
    )
    p.add_argument(
        "--stall-seconds",
        type=_positive_seconds,
        default=30.0,
        help="health turns NOT_SERVING when the engine makes no progress for this long",
    )
    p.add_argument(
        "--prefill-step-size",
        type=_positive_int,
        default=None,
        help="prompt tokens of one sequence processed per engine step (bounds how long a "
        "cancel waits; default 256 on the CPU, 512 on a GPU)",
    )
    p.add_argument(
        "--prefix-cache-entries",
        type=_non_negative_int,
        default=64,
        metavar="N",
        help="most KV caches of earlier requests kept for reuse by requests that start with "
        "the same tokens (least recently stored go first; 0 turns the prefix cache off)",
    )
    p.add_argument(
        "--prefix-cache-bytes",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="most bytes those KV caches take, e.g. 512M or 4G (default: a quarter of the "
        "memory the model leaves, between 64M and 32G; 0 turns the prefix cache off)",
    )
    p.add_argument(
        "--synthetic-tokens",
        type=parse_spec,
        default=None,
        metavar="SPEC",
        help="BENCHMARK MODE, never for real requests: stream made-up tokens without running "
        "the model (SPEC: tokens_per_step=N,merge=0|1 or 'on'; see mlx_worker.synthetic)",
    )
    p.add_argument(
        "--no-stdin-watch",
        action="store_true",
        help="don't exit when stdin reaches EOF (stdin is only watched when it is a pipe "
        "or a socket, as the supervisor gives; a terminal or /dev/null is never watched)",
    )
    add_shard_arguments(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    """Parses the command line (exits with status 2 and a usage message on a bad flag)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    return WorkerConfig(
        socket_path=ns.socket,
        model=ns.model,
        cache_dir=ns.cache_dir if ns.cache_dir is not None else default_cache_dir(),
        max_batch=ns.max_batch,
        max_queue=ns.max_queue,
        grace_seconds=ns.grace_seconds,
        log_level=ns.log_level,
        dequantize=ns.dequantize,
        solo=ns.solo,
        stream_interval_ms=ns.stream_interval_ms,
        stall_seconds=ns.stall_seconds,
        prefill_step_size=ns.prefill_step_size,
        stdin_watch=not ns.no_stdin_watch,
        synthetic=ns.synthetic_tokens,
        shard=shard_options(ns, parser),
        test_model=ns.test_model,
        prefix_cache_entries=ns.prefix_cache_entries,
        prefix_cache_bytes=ns.prefix_cache_bytes,
    )
