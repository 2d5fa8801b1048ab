"""``python -m mlx_worker --socket PATH [--model PATH] ...``: the worker's entry point.

Only the standard library and small local modules are imported before the socket checks, so
that a bad command line or an unusable socket path fails in milliseconds; gRPC comes next (the
socket is bound and health answers NOT_SERVING), MLX last, on the engine thread.

``python -m mlx_worker doctor ...`` is dispatched to ``doctor`` before any of that is imported.
"""

from __future__ import annotations

import time

_STARTED = time.time()

import sys  # noqa: E402

if __name__ == "__main__" and sys.argv[1:2] == ["doctor"]:
    # ``python -m mlx_worker doctor ...`` needs none of the worker's imports below.
    from .doctor import main as doctor_main

    sys.exit(doctor_main(sys.argv[2:]))

import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from .config import WorkerConfig, parse_args  # noqa: E402
from .faults import Faults, load_faults  # noqa: E402
from .in_use import hold_worker_source  # noqa: E402
from .logging_json import setup_logging  # noqa: E402
from .socket_guard import SocketPathError, check_socket_path  # noqa: E402

log = logging.getLogger("mlx_worker")

EXIT_USAGE = 2


def process_start_time() -> float:
    """Wall-clock time this process started (Linux: from /proc; else when this module ran)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _STARTED


async def _serve(config: WorkerConfig, faults: Faults, started: float) -> int:
    from .server import Worker

    return await Worker(config, faults, started).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the worker; returns the process exit code."""
    config = parse_args(argv)
    setup_logging(config.log_level)
    try:
        faults = load_faults(os.environ)
    except ValueError as e:
        log.critical(str(e))
        return EXIT_USAGE
    if faults.any:
        log.warning("fault injection is on", extra={"fields": {"faults": repr(faults)}})
    if faults.startup_exit is not None:
        log.warning(
            "fault injection: startup_exit", extra={"fields": {"code": faults.startup_exit}}
        )
        return faults.startup_exit
    try:
        check_socket_path(config.socket_path)
    except SocketPathError as e:
        log.critical(
            f"refusing the socket path: {e}", extra={"fields": {"socket": str(config.socket_path)}}
        )
        return EXIT_USAGE
    if config.shard is not None:
        # Before MLX is imported and on the main thread (see mlx_worker.shard.ranks).
        from .shard.ranks import start_rank_group

        start_rank_group(
            config.shard, config.socket_path, list(argv) if argv is not None else sys.argv[1:]
        )
    # gRPC's C core writes plain-text lines on stderr; keep them to errors, so that stderr
    # stays JSON lines in all but exceptional cases.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    hold_worker_source()
    return asyncio.run(_serve(config, faults, process_start_time()))


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the engine thread may still hold MLX work (a stalled or
    # loading engine), and tearing down MLX and gRPC under it only adds time and noise.
    os._exit(code)
