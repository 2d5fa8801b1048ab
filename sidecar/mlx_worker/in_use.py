"""Marks the directories a running worker uses, so that cleaning up never removes them.

A directory is in use while some process holds a shared ``flock`` on its ``.in-use`` file;
``mlx-sidecar models rm/prune`` and the environment's pruning of old worker sources take an
exclusive one without waiting and leave the directory alone when they cannot. The OS drops
the lock when the worker exits, even by SIGKILL. Holding a model's lock also sets the file's
modification time: that is the model's "last used".
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

LOCK_NAME = ".in-use"

log = logging.getLogger(__name__)

# Open for the life of the process: closing a descriptor drops its lock.
_held: list[int] = []


def hold(directory: Path, *, create: bool = True) -> bool:
    """Takes a shared lock on ``directory``'s ``.in-use`` file for the life of the process
    and marks it used now. ``create=False`` holds only an existing file. Returns whether
    the lock is held; failures are logged, never raised (cleaning up is best effort).
    """
    path = directory / LOCK_NAME
    flags = os.O_RDWR | (os.O_CREAT if create else 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("cannot mark %s as in use: %s", directory, e.strerror or e)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with contextlib.suppress(OSError):
            os.utime(fd)
    except OSError as e:
        os.close(fd)
        log.warning("cannot mark %s as in use: %s", directory, e.strerror or e)
        return False
    _held.append(fd)
    return True


def hold_worker_source() -> bool:
    """Holds the worker's own source directory when it was extracted by mlx-sidecar (such a
    directory has an ``.in-use`` file; a checkout has none and is left alone)."""
    return hold(Path(__file__).resolve().parent.parent, create=False)
