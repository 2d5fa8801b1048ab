"""Rank 0's side of a sharded group: start the other ranks, watch them, end them together.

The worker process the supervisor spawned is rank 0. Before it imports MLX it writes the
ring hostfile, sets its own ``MLX_RANK``/``MLX_HOSTFILE`` (or NCCL's variables) and starts
ranks 1..N-1 as its children (``python -m mlx_worker.shard.follower`` with the worker's own
arguments), in its process group, with a parent-death signal (SIGKILL) and a stdin pipe
whose EOF also ends them. A rank on another host is started as ``mlx.launch`` does: ``ssh
HOST SCRIPT``, where SCRIPT exports the variables, writes the ring hostfile with ``mktemp``
and ``exec``s the follower; when ssh dies, the remote rank's stdin reaches EOF and it exits.

One thread per rank waits for it; when any rank ends, rank 0 kills the others, removes its
socket and exits with :data:`EXIT_RANK_DIED`, so the supervisor sees one worker die and
restarts the whole group (no rank left behind, its ports closed with it). The group this
process started is kept so that ModelInfo can name each rank's process (:func:`rank_pids`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .hostfile import (
    Host,
    free_loopback_ports,
    local_hosts,
    read_hosts,
    ring_addresses,
    write_ring_file,
)
from .options import ShardOptions

log = logging.getLogger("mlx_worker.shard")

EXIT_RANK_DIED = 3
FOLLOWER_MODULE = "mlx_worker.shard.follower"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child: SIGKILL when rank 0's main thread ends (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class RankGroup:
    """Ranks 1..N-1 of this worker's group, started and watched by rank 0."""

    def __init__(self, options: ShardOptions, socket_path: Path, argv: Sequence[str]) -> None:
        self._options = options
        self._socket_path = socket_path
        self._argv = list(argv)
        hostfile = options.hostfile
        self._hosts = read_hosts(hostfile) if hostfile else local_hosts(options.ranks)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._ended = False
        self._ring_json: str | None = None  # the ring hostfile's text, for remote ranks

    @property
    def pids(self) -> dict[int, int]:
        """The process id of each started rank but 0 (for a remote rank: its ssh)."""
        return {rank: p.pid for rank, p in self._procs.items()}

    def start(self) -> None:
        """Sets rank 0's environment and starts the other ranks (call before MLX is imported,
        on the main thread: the parent-death signal follows the thread that forked)."""
        shared, per_rank = self._environment()
        os.environ.update(shared | per_rank[0])
        for rank in range(1, len(self._hosts)):
            self._procs[rank] = self._spawn(rank, shared | per_rank[rank])
        for rank, proc in self._procs.items():
            threading.Thread(
                target=self._watch, args=(rank, proc), name=f"rank-{rank}-watch", daemon=True
            ).start()
        log.info(
            "shard group started",
            extra={
                "fields": {
                    "ranks": len(self._hosts),
                    "backend": self._options.backend,
                    "pids": self.pids,
                    **shared,
                }
            },
        )

    def _environment(self) -> tuple[dict[str, str], list[dict[str, str]]]:
        """(variables every rank gets, the variables of each rank)."""
        hosts, options = self._hosts, self._options
        per_rank = [{"MLX_RANK": str(rank)} for rank in range(len(hosts))]
        shared = {"MLX_SIDECAR_SHARD_RANKS": str(len(hosts))}
        if options.backend == "ring":
            addresses = ring_addresses(hosts, options.port)
            ring_file = self._socket_path.with_name(f".{self._socket_path.name}.ring.json")
            write_ring_file(ring_file, addresses)
            shared["MLX_HOSTFILE"] = str(ring_file)
            self._ring_json = _json(addresses)
        else:  # nccl: rank 0's host is the rendezvous; one GPU per rank on each host
            port = free_loopback_ports(1)[0] if all(h.loopback for h in hosts) else options.port
            shared |= {
                "NCCL_HOST_IP": hosts[0].ips[0],
                "NCCL_PORT": str(port),
                "MLX_WORLD_SIZE": str(len(hosts)),
            }
            devices = _visible_devices()
            seen: dict[str, int] = {}
            for rank, host in enumerate(hosts):
                index = seen.get(host.ssh, 0)
                seen[host.ssh] = index + 1
                device = devices[index % len(devices)] if devices and host.local else str(index)
                per_rank[rank]["CUDA_VISIBLE_DEVICES"] = device
        return shared, per_rank

    def _spawn(self, rank: int, variables: dict[str, str]) -> subprocess.Popen[bytes]:
        host = self._hosts[rank]
        args = follower_args(self._argv, len(self._hosts))
        command = [sys.executable, "-m", FOLLOWER_MODULE, *args]
        if host.local:
            env = {**os.environ, **variables}
            return subprocess.Popen(
                command, stdin=subprocess.PIPE, env=env, preexec_fn=_die_with_parent
            )
        script = remote_script(command, variables, self._ring_json)
        return subprocess.Popen(
            [*shlex.split(self._options.ssh), host.ssh, script],
            stdin=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )

    def _watch(self, rank: int, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            if self._ended:
                return
            self._ended = True
        log.critical(
            "a rank of the shard group ended: stopping the whole group",
            extra={"fields": {"rank": rank, "pid": proc.pid, "exit_code": code}},
        )
        self.kill_all()
        _remove_socket(self._socket_path)
        logging.shutdown()
        os._exit(EXIT_RANK_DIED)

    def kill_all(self) -> None:
        """SIGKILLs every rank still running and reaps it."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs.values():
            proc.wait()


def follower_args(argv: Sequence[str], ranks: int) -> list[str]:
    """The worker's arguments for a follower: the same engine flags (the ranks must make the
    same model calls), the hostfile replaced by its rank count (it lives on rank 0's host)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--shard-hostfile":
            skip = True
        elif not arg.startswith("--shard-hostfile="):
            out.append(arg)
    return [*out, "--shard-ranks", str(ranks)]


def remote_script(command: Sequence[str], variables: dict[str, str], ring_json: str | None) -> str:
    """The shell script a remote rank runs, as mlx.launch writes it: the same working
    directory and Python path, the rank's variables, the ring hostfile written to a temp
    file, then ``exec`` of the follower."""
    cwd = shlex.quote(os.getcwd())
    script = f"cd {cwd} 2>/dev/null; "
    python_path = os.environ.get("PYTHONPATH")
    if python_path:
        script += f"export PYTHONPATH={shlex.quote(python_path)}; "
    for key, value in variables.items():
        if key != "MLX_HOSTFILE":
            script += f"export {key}={shlex.quote(value)}; "
    if ring_json is not None:
        script += f"fname=$(mktemp); echo {shlex.quote(ring_json)} > $fname; "
        script += "export MLX_HOSTFILE=$fname; "
    script += "exec " + shlex.join(command)
    return script


def _remove_socket(path: Path) -> None:
    """Removes this worker's socket file on the way out (nobody else can have bound the
    path while this process lives: the supervisor never takes over a live socket)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _visible_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [d for d in visible.split(",") if d.strip()]


def _json(value: object) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


_started: RankGroup | None = None  # the group this process is rank 0 of


def start_rank_group(
    options: ShardOptions, socket_path: Path, argv: Sequence[str]
) -> RankGroup | None:
    """Starts the other ranks of a group of more than one (None for a group of one)."""
    global _started
    if options.ranks < 2:
        return None
    group = RankGroup(options, socket_path, argv)
    group.start()
    _started = group
    return group


def rank_pids() -> list[int]:
    """Each rank's process id, by rank: this process (rank 0), then the ranks it started
    (for a remote rank: its ssh); only this process when it started none."""
    pids = _started.pids if _started is not None else {}
    return [os.getpid(), *(pids[rank] for rank in sorted(pids))]


__all__ = [
    "EXIT_RANK_DIED",
    "Host",
    "RankGroup",
    "follower_args",
    "rank_pids",
    "remote_script",
    "start_rank_group",
]
