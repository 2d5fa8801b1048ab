"""``python -m mlx_worker.shard.follower WORKER_ARGS``: a rank other than 0 of a sharded group.

Rank 0 starts it (:mod:`.ranks`) with the worker's own arguments and ``MLX_RANK`` set. It
binds no socket and answers nobody: it starts up exactly as rank 0 does (join the group, load
and shard the model, warm up: the same collective operations in the same order), then
replays rank 0's steps (:func:`.steps.follow`) until it is killed. It ignores SIGTERM and
SIGINT (the supervisor signals the whole process group; rank 0 drains and, when it exits,
takes its followers with it) and exits at once when stdin reaches EOF (rank 0, or the ssh
that carried it, is gone).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ..config import parse_args
from ..logging_json import setup_logging

log = logging.getLogger("mlx_worker.shard")

EXIT_FAILED = 1


def _exit_at_stdin_eof() -> None:
    try:
        while os.read(sys.stdin.fileno(), 65536):
            pass
    except OSError:
        pass
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one follower rank; returns only when it fails."""
    config = parse_args(argv)
    setup_logging(config.log_level)
    rank = os.environ.get("MLX_RANK", "?")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if not sys.stdin.isatty():
        threading.Thread(target=_exit_at_stdin_eof, name="stdin-watch", daemon=True).start()
    from ..engine.decoder import Decoder
    from ..engine.startup import start_up
    from ..faults import Faults
    from .steps import FollowerOutput, StepChannel, follow

    try:
        started = start_up(config, Faults())
        if started.group is None:
            raise RuntimeError("a follower needs --shard-ranks of 2 or more")
        log.info("follower ready", extra={"fields": {"rank": rank, "pid": os.getpid()}})
        decoder = Decoder(config, started, FollowerOutput())  # type: ignore[arg-type]
        follow(decoder, StepChannel(started.group))
    except BaseException:
        log.critical("follower rank failed", exc_info=True, extra={"fields": {"rank": rank}})
    return EXIT_FAILED


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
