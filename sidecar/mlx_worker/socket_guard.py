"""Checks on the Unix socket path, before binding and right after.

Rules (the worker refuses to start, with a clear error, when one is broken):

- the socket's directory exists and is writable by nobody but its owner (no group or other
  write bit, sticky or not): otherwise another user could replace the socket;
- an existing path must be a socket; a socket that a live server answers on belongs to someone
  else and is never taken over; a stale one (connection refused) is removed;
- the socket file is created owner-only (umask 077 while binding) and verified to be 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

# sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 103


class SocketPathError(Exception):
    """The socket path can't be used safely; the message says why."""


def check_socket_path(path: Path) -> None:
    """Checks the directory and any existing file at ``path``; removes a stale socket."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SocketPathError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes "
            "(the limit of a Unix socket address)"
        )
    parent = path.parent
    try:
        st = parent.stat()
    except FileNotFoundError:
        raise SocketPathError(f"socket directory {parent} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"socket directory {parent} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SocketPathError(
            f"socket directory {parent} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); use a directory only its owner can write"
        )
    _clear_existing(path)


def _clear_existing(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # stale: nobody listens
        return
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
            return
        raise SocketPathError(f"cannot tell whether {path} is in use: {e}") from None
    finally:
        probe.close()
    raise SocketPathError(f"a live server already listens on {path}; refusing to take it over")


@contextlib.contextmanager
def owner_only_umask() -> Iterator[None]:
    """Creates files owner-only (umask 077) inside the block."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def secure_socket_file(path: Path) -> int:
    """Sets the bound socket to 0600, verifies it, and returns its inode (for clean-up)."""
    os.chmod(path, 0o600)
    st = path.lstat()
    if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
        raise SocketPathError(
            f"{path} is not an owner-only socket after binding "
            f"(mode {stat.S_IMODE(st.st_mode):04o})"
        )
    if st.st_uid != os.getuid():
        raise SocketPathError(f"{path} is not owned by this user after binding")
    return st.st_ino


def remove_socket_file(path: Path, inode: int | None) -> None:
    """Removes the socket file if it is still the one this process bound."""
    if inode is None:
        return
    with contextlib.suppress(OSError):
        if path.lstat().st_ino == inode:
            path.unlink()
