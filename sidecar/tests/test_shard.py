"""A model sharded over several real processes with mx.distributed's ring backend on loopback.

Each test starts real workers (``--shard-ranks``) on the tiny model, whose 4 query heads, 2
key/value heads and 128 hidden MLP units divide by 2, and checks token ids against the
unsharded worker on the same weights, and that the group lives and dies as one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import WorkerProcess, wait_for

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_worker.shard.hostfile import Host, HostfileError, read_hosts, ring_addresses
from mlx_worker.shard.ranks import EXIT_RANK_DIED, follower_args, remote_script

PROMPTS = ["The quick brown fox", "Hello, world!", "Café, naïve", "日本語のテキスト"]

SpawnWorker = Callable[..., WorkerProcess]


def _ids(w: WorkerProcess, text: str, max_tokens: int = 24, **fields: object) -> list[int]:
    chunks, _ = w.generate(prompt=pb.Prompt(text=text), max_tokens=max_tokens, **fields)
    return [t for c in chunks for t in c.token_ids]


def _together(w: WorkerProcess, prompts: list[str]) -> list[list[int]]:
    """The prompts sent at once (they decode in one batch)."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: _ids(w, p, 32), prompts))


def _follower_pids(w: WorkerProcess) -> list[int]:
    return [int(p) for p in w.wait_log("shard group started")["fields"]["pids"].values()]


def _ring_ports(w: WorkerProcess) -> list[int]:
    ring_file = Path(w.wait_log("shard group started")["fields"]["MLX_HOSTFILE"])
    return [int(a[0].rsplit(":", 1)[1]) for a in json.loads(ring_file.read_text())]


def _gone(pid: int) -> bool:
    """The process has exited and been reaped (no zombie either)."""
    return not Path(f"/proc/{pid}").exists()


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port (TIME_WAIT leftovers don't count)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
        return False
    except OSError:
        return True
    finally:
        s.close()


# ---- without MLX -------------------------------------------------------------------------


def test_hostfile_in_mlx_distributed_config_format(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text(
        json.dumps(
            {
                "backend": "ring",
                "hosts": [{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}],
            }
        )
    )
    hosts = read_hosts(path)
    assert hosts == [Host("a", ("10.0.0.1",)), Host("b", ("10.0.0.2",))]
    assert ring_addresses(hosts, 40000) == [["10.0.0.1:40000"], ["10.0.0.2:40001"]]
    path.write_text(json.dumps([{"ssh": "a"}]))
    with pytest.raises(HostfileError, match="ips"):
        read_hosts(path)


def test_loopback_ring_gets_distinct_free_ports() -> None:
    hosts = [Host("localhost", ("127.0.0.1",))] * 3
    ports = [int(a[0].rsplit(":", 1)[1]) for a in ring_addresses(hosts, 40000)]
    assert len(set(ports)) == 3
    assert not any(_listening(p) for p in ports)


def test_follower_gets_the_same_flags_without_the_hostfile() -> None:
    argv = ["--socket", "/s", "--max-batch", "4", "--shard-hostfile", "/h.json", "--solo", "off"]
    assert follower_args(argv, 3) == [
        "--socket",
        "/s",
        "--max-batch",
        "4",
        "--solo",
        "off",
        "--shard-ranks",
        "3",
    ]


def test_remote_script_exports_rank_and_writes_the_ring_file() -> None:
    script = remote_script(["py", "-m", "mod"], {"MLX_RANK": "2", "MLX_HOSTFILE": "/x"}, "[[1]]")
    assert "export MLX_RANK=2;" in script
    assert "fname=$(mktemp); echo '[[1]]' > $fname; export MLX_HOSTFILE=$fname;" in script
    assert script.endswith("exec py -m mod")


# ---- real groups ---------------------------------------------------------------------------


def test_sharded_greedy_ids_equal_unsharded(spawn_worker: SpawnWorker) -> None:
    plain = spawn_worker("--log-level", "debug").wait_serving()
    sharded = spawn_worker("--log-level", "debug", "--shard-ranks", "2").wait_serving()
    assert not plain.stub.ModelInfo(pb.ModelInfoRequest(), timeout=30).HasField("shard")
    for prompt in PROMPTS:  # one at a time: the solo path
        assert _ids(sharded, prompt) == _ids(plain, prompt), prompt
    # Together: the BatchGenerator, with prefill and decode steps mixed.
    assert _together(sharded, PROMPTS) == _together(plain, PROMPTS)
    # Seeded sampling draws the same tokens too (rank 0 fixes unseeded requests' seeds).
    sampled = {"sampling": pb.SamplingParams(temperature=0.8, top_p=0.95, seed=7)}
    assert _ids(sharded, PROMPTS[0], **sampled) == _ids(plain, PROMPTS[0], **sampled)
    unseeded = pb.SamplingParams(temperature=0.8)
    assert len(_ids(sharded, PROMPTS[1], sampling=unseeded)) == 24


def test_a_cancelled_request_leaves_the_ranks_in_step(spawn_worker: SpawnWorker) -> None:
    sharded = spawn_worker("--shard-ranks", "2").wait_serving()
    expected = _ids(sharded, PROMPTS[0])
    stream = sharded.stub.Generate(
        pb.GenerateRequest(prompt=pb.Prompt(text=PROMPTS[1]), max_tokens=2000), timeout=60
    )
    next(stream)
    stream.cancel()
    assert _ids(sharded, PROMPTS[0]) == expected


def test_killing_a_follower_ends_the_whole_group(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--shard-ranks", "2").wait_serving()
    (follower,) = _follower_pids(w)
    ports = _ring_ports(w)
    # ModelInfo names the group: its size, backend and each rank's process, rank 0 first.
    shard = w.stub.ModelInfo(pb.ModelInfoRequest(), timeout=30).shard
    assert (shard.ranks, shard.backend, list(shard.pids)) == (2, "ring", [w.proc.pid, follower])
    os.kill(follower, signal.SIGKILL)
    assert w.wait_exit(30) == EXIT_RANK_DIED
    assert w.find_log("a rank of the shard group ended: stopping the whole group", rank=1)
    wait_for(lambda: _gone(follower), 10, "the follower reaped")
    wait_for(lambda: not any(_listening(p) for p in ports), 10, "the ring's ports closed")
    assert not w.socket_path.exists()


def test_killing_rank_0_takes_the_followers_with_it(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--shard-ranks", "2").wait_serving()
    (follower,) = _follower_pids(w)
    w.signal(signal.SIGKILL)
    w.wait_exit(10)
    wait_for(lambda: _gone(follower), 10, "the follower gone (parent-death signal)")


def test_sigterm_drains_rank_0_and_exits_0(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--shard-ranks", "2").wait_serving()
    (follower,) = _follower_pids(w)
    os.kill(follower, signal.SIGTERM)  # the supervisor signals the whole group: ignored
    assert len(_ids(w, PROMPTS[0])) == 24
    w.signal(signal.SIGTERM)
    assert w.wait_exit(30) == 0
    wait_for(lambda: _gone(follower), 10, "the follower gone")


def test_a_rank_started_as_over_ssh_follows_and_dies_with_stdin(
    spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """The remote path, on loopback: a stand-in for ssh runs the script in a new session
    (outside the process group, as on another host); only stdin's EOF can end it."""
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\n# fake-ssh HOST SCRIPT\nsetsid sh -c "$2"\n')
    fake_ssh.chmod(fake_ssh.stat().st_mode | stat.S_IXUSR)
    hosts = tmp_path / "hosts.json"
    hosts.write_text(
        json.dumps(
            [
                {"ssh": "localhost", "ips": ["127.0.0.1"]},
                {"ssh": "rank1-host", "ips": ["127.0.0.1"]},
            ]
        )
    )
    plain = spawn_worker().wait_serving()
    w = spawn_worker("--shard-hostfile", str(hosts), "--shard-ssh", str(fake_ssh)).wait_serving()
    assert _ids(w, PROMPTS[2]) == _ids(plain, PROMPTS[2])
    follower = int(w.wait_log("follower ready", rank="1")["fields"].get("pid", 0))
    assert follower
    w.signal(signal.SIGKILL)
    w.wait_exit(10)
    wait_for(lambda: _gone(follower), 20, "the remote rank gone at stdin EOF")
