"""The hosts of a sharded group and the addresses its ranks talk on.

Two files, both MLX's own formats:

- the *hosts* file (``--shard-hostfile``), as ``mlx.distributed_config`` writes it: a JSON list
  ``[{"ssh": "host0", "ips": ["10.0.0.1"]}, ...]`` or an object ``{"backend": ..., "hosts":
  [...]}``; rank i runs on host i, and host 0 is the machine of rank 0;
- the *ring* file that ``MLX_HOSTFILE`` names for the ring backend, as ``mlx.launch`` writes
  it: one list of ``"ip:port"`` per rank, where rank i listens and the others connect.

On loopback the ports are picked free by the kernel (bind to port 0, read it, close); across
hosts they are ``--shard-port`` and up, as ``mlx.launch --starting-port`` does.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", ""})


class HostfileError(ValueError):
    """The hosts file cannot be read or is not in mlx.distributed_config's format."""


@dataclass(frozen=True)
class Host:
    """One host of the group: the name to ssh into and the IPs its rank talks on."""

    ssh: str
    ips: tuple[str, ...]

    @property
    def local(self) -> bool:
        """Whether the rank runs on this machine, started directly rather than over ssh."""
        return self.ssh in LOCAL_NAMES

    @property
    def loopback(self) -> bool:
        return all(ipaddress.ip_address(ip).is_loopback for ip in self.ips)


def local_hosts(ranks: int) -> list[Host]:
    """``ranks`` ranks on this machine, talking over loopback."""
    return [Host(ssh="localhost", ips=(LOOPBACK,)) for _ in range(ranks)]


def read_hosts(path: Path) -> list[Host]:
    """Reads a hosts file in mlx.distributed_config's format."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HostfileError(f"cannot read the hostfile {path}: {e}") from e
    entries = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise HostfileError(f"{path}: expected a non-empty list of hosts")
    hosts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("ssh"), str):
            raise HostfileError(f'{path}: host {i} has no "ssh" name')
        ips = entry.get("ips") or []
        if not isinstance(ips, list) or not ips:
            raise HostfileError(f'{path}: host {i} ({entry["ssh"]}) lists no "ips"')
        try:
            for ip in ips:
                ipaddress.ip_address(ip)
        except ValueError as e:
            raise HostfileError(f"{path}: host {i}: {e}") from e
        hosts.append(Host(ssh=entry["ssh"], ips=(str(ips[0]),)))
    return hosts


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback right now (a port may still be taken
    between this and the ring's bind: the group then fails to start and is restarted)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ring_addresses(hosts: list[Host], first_port: int) -> list[list[str]]:
    """The ring backend's hostfile: one ``["ip:port"]`` per rank."""
    if all(h.loopback for h in hosts):
        ports = free_loopback_ports(len(hosts))
    else:
        ports = [first_port + i for i in range(len(hosts))]
    return [[f"{h.ips[0]}:{port}"] for h, port in zip(hosts, ports, strict=True)]


def write_ring_file(path: Path, addresses: list[list[str]]) -> None:
    """Writes the ring hostfile (owner-only) that MLX_HOSTFILE names."""
    path.write_text(json.dumps(addresses), encoding="utf-8")
    path.chmod(0o600)
