"""The worker's ``--shard-*`` flags, parsed into one frozen :class:`ShardOptions`.

Only the standard library is imported here (the command line is parsed before MLX).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("ring", "nccl")
# The first port of the ring on hosts other than loopback, as mlx.launch's --starting-port.
DEFAULT_RING_PORT = 32323
DEFAULT_SSH = "ssh"


@dataclass(frozen=True)
class ShardOptions:
    """One model split over ``ranks`` processes of an ``mx.distributed`` group."""

    ranks: int
    backend: str = "ring"
    # mlx.distributed_config's hostfile: rank i runs on host i (rank 0 on this one).
    hostfile: Path | None = None
    # The first TCP port used when a host is not loopback (on loopback: free ports).
    port: int = DEFAULT_RING_PORT
    # The command that runs a rank on another host (``ssh HOST SCRIPT``).
    ssh: str = DEFAULT_SSH


def add_shard_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the ``--shard-*`` flags to the worker's parser."""
    g = p.add_argument_group(
        "sharding", "one model over several processes with mx.distributed (mlx_worker.shard)"
    )
    g.add_argument(
        "--shard-ranks",
        type=int,
        default=None,
        metavar="N",
        help="run the model tensor-parallel over N ranks on this host (rank 0 is this process; "
        "the others are its children); its head counts must divide by N",
    )
    g.add_argument(
        "--shard-backend",
        choices=BACKENDS,
        default="ring",
        help="mx.distributed backend: ring (TCP, CPU or any device) or nccl (CUDA GPUs)",
    )
    g.add_argument(
        "--shard-hostfile",
        type=Path,
        default=None,
        metavar="PATH",
        help="hosts of the ranks, in the JSON format mlx.distributed_config writes; the first "
        "host is this one (rank 0); the others are started with --shard-ssh",
    )
    g.add_argument(
        "--shard-port",
        type=int,
        default=DEFAULT_RING_PORT,
        metavar="PORT",
        help="first TCP port of the ring (or NCCL's port) when the ranks span hosts; on loopback "
        "free ports are picked",
    )
    g.add_argument(
        "--shard-ssh",
        default=DEFAULT_SSH,
        metavar="CMD",
        help="command that runs a rank on another host, called as CMD HOST SCRIPT (default ssh)",
    )


def shard_options(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> ShardOptions | None:
    """The sharding asked for on the command line, or None (errors exit with status 2)."""
    ranks, hostfile = ns.shard_ranks, ns.shard_hostfile
    if ranks is None and hostfile is None:
        return None
    if hostfile is not None:
        from .hostfile import HostfileError, read_hosts

        try:
            hosts = read_hosts(hostfile)
        except HostfileError as e:
            parser.error(str(e))
        if ranks is not None and ranks != len(hosts):
            parser.error(f"--shard-ranks {ranks} but the hostfile lists {len(hosts)} hosts")
        ranks = len(hosts)
    if ranks < 1:
        parser.error(f"--shard-ranks must be >= 1, got {ranks}")
    if not 0 < ns.shard_port < 65536 - ranks:
        parser.error(f"--shard-port {ns.shard_port} is out of range")
    if ns.synthetic_tokens is not None:
        parser.error("--synthetic-tokens never runs the model: it cannot be sharded")
    return ShardOptions(
        ranks=ranks,
        backend=ns.shard_backend,
        hostfile=hostfile,
        port=ns.shard_port,
        ssh=ns.shard_ssh,
    )
