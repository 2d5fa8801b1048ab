"""Start-up, health, faults, shutdown and the socket rules of the real worker process."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import threading
from pathlib import Path

import grpc
import pytest
from conftest import SERVICE, SpawnWorker, WorkerProcess, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlx_sidecar.v1 import inference_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROMPT = pb.Prompt(text="The quick brown fox")


def _unavailable(w: WorkerProcess) -> str:
    with pytest.raises(grpc.RpcError) as e:
        w.generate(prompt=PROMPT, max_tokens=1, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
    return e.value.details()


# ---- start-up and health -----------------------------------------------------------------


def test_not_serving_until_loaded_then_serving(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="startup_delay=1.5")
    w.wait_health(NOT_SERVING, timeout=30)
    assert w.find_log("startup") is None
    assert "loading" in _unavailable(w)
    w.wait_serving()
    startup = w.wait_log("startup")["fields"]
    for key in ("import_s", "load_s", "warmup_s", "total_s", "process_start_to_ready_s"):
        assert isinstance(startup[key], float) and startup[key] >= 0, key
    assert startup["total_s"] >= 1.5  # the injected delay
    assert startup["process_start_to_ready_s"] >= startup["total_s"]
    listening = w.find_log("listening", socket=str(w.socket_path))
    assert 0 < listening["fields"]["process_start_to_listening_s"] < startup["total_s"]
    _, fin = w.generate(prompt=PROMPT, max_tokens=2)
    assert fin.usage.completion_tokens == 2


def test_logs_are_json_lines(worker: WorkerProcess) -> None:
    events = worker.log_events()
    assert events
    for e in events:
        assert set(e) == {"ts", "level", "target", "message", "fields"}
        assert e["level"] in {"debug", "info", "warning", "error", "critical"}
        assert isinstance(e["ts"], float) and isinstance(e["fields"], dict)
    assert any(e["message"] == "startup" for e in events)


def test_engine_stall_turns_health_not_serving(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--stall-seconds", "1", faults="engine_stall_after_steps=5").wait_serving()
    codes: list[grpc.StatusCode] = []

    def stuck_request() -> None:
        try:
            w.generate(prompt=PROMPT, max_tokens=100, timeout=4)
        except grpc.RpcError as e:
            codes.append(e.code())

    stuck = threading.Thread(target=stuck_request)
    stuck.start()
    # The engine is blocked; gRPC still answers, and tells the truth.
    w.wait_health(NOT_SERVING, timeout=10)
    assert w.wait_log("engine not making progress")["fields"]["alive"] is True
    assert "engine" in _unavailable(w)
    stuck.join(20)
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED]  # it hung: the supervisor's problem


def test_engine_crash_turns_health_not_serving(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="engine_crash_after_steps=5").wait_serving()
    with pytest.raises(grpc.RpcError) as e:
        w.generate(prompt=PROMPT, max_tokens=100)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the in-flight request learns at once
    w.wait_health(NOT_SERVING, timeout=10)
    assert w.find_log("engine thread died")["level"] == "critical"
    _unavailable(w)
    assert w.proc.poll() is None  # the process lives on; the supervisor decides


def test_sigkill_fault_kills_the_worker_mid_request(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="sigkill_after_steps=5").wait_serving()
    with pytest.raises(grpc.RpcError) as e:
        w.generate(prompt=PROMPT, max_tokens=100)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the connection broke
    assert w.wait_exit() == -signal.SIGKILL
    assert w.find_log("fault injection: the worker kills itself", fault="sigkill_after_steps")


def test_load_failure_exits_non_zero(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="load_error")
    assert w.wait_exit() == 1
    assert w.find_log("model loading failed")["level"] == "critical"
    assert not w.socket_path.exists()


def test_missing_model_exits_non_zero(spawn_worker: SpawnWorker, tmp_path: Path) -> None:
    w = spawn_worker(model=str(tmp_path / "no-such-model"))
    assert w.wait_exit() == 1
    assert "no-such-model" in w.log_text()


def test_startup_exit_fault(spawn_worker: SpawnWorker) -> None:
    assert spawn_worker(faults="startup_exit=7").wait_exit() == 7


def test_unknown_fault_is_refused(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="explode_now")
    assert w.wait_exit() == 2
    assert "unknown fault" in w.log_text()


# ---- shutdown ----------------------------------------------------------------------------


def test_sigterm_drains_in_flight_work_and_exits_zero(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--grace-seconds", "30").wait_serving()
    call = w.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=2000), timeout=60)
    msgs = [next(call)]
    w.signal(signal.SIGTERM)
    w.wait_health(NOT_SERVING, timeout=10)
    assert "shutting down" in _unavailable(w)
    msgs.extend(call)
    fin = msgs[-1].finished
    assert fin.finish_reason == pb.FINISH_REASON_LENGTH
    assert fin.usage.completion_tokens == 2000
    assert w.wait_exit() == 0
    assert not w.socket_path.exists()


def test_sigterm_cancels_what_outlives_the_grace_period(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--grace-seconds", "0.2").wait_serving()
    call = w.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=1900), timeout=60)
    next(call)
    w.signal(signal.SIGTERM)
    fin = list(call)[-1].finished
    assert fin.finish_reason == pb.FINISH_REASON_CANCELLED
    assert 0 < fin.usage.completion_tokens < 1900
    assert w.wait_exit() == 0


def test_ignore_sigterm_fault(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="ignore_sigterm").wait_serving()
    w.signal(signal.SIGTERM)
    w.wait_log("fault injection: ignoring SIGTERM")
    assert w.health(SERVICE) == SERVING and w.proc.poll() is None


def test_exits_when_stdin_reaches_eof(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker().wait_serving()
    w.proc.stdin.close()  # type: ignore[union-attr]
    assert w.wait_exit(timeout=15) == 0
    assert w.find_log("stdin reached EOF (the parent is gone): stopping")
    assert not w.socket_path.exists()


def test_no_stdin_watch_keeps_running_after_eof(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--no-stdin-watch").wait_serving()
    w.proc.stdin.close()  # type: ignore[union-attr]
    # A whole request later, it still serves (the EOF exit happens within milliseconds).
    _, fin = w.generate(prompt=PROMPT, max_tokens=50)
    assert fin.usage.completion_tokens == 50 and w.health() == SERVING
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0


# ---- the socket --------------------------------------------------------------------------


def test_socket_is_owner_only_and_no_tcp_port(worker: WorkerProcess) -> None:
    st = worker.socket_path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    if not sys.platform.startswith("linux"):
        return
    fd_dir = Path(f"/proc/{worker.proc.pid}/fd")
    inodes = set()
    for fd in fd_dir.iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A":  # LISTEN
                    listening.add(cols[9])
    assert inodes and not inodes & listening


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o720])
def test_refuses_a_directory_others_can_write(
    spawn_worker: SpawnWorker, private_dir: Path, mode: int
) -> None:
    shared = private_dir / "shared"
    shared.mkdir()
    shared.chmod(mode)
    w = spawn_worker(socket_path=shared / "w.sock")
    assert w.wait_exit() == 2
    assert "writable by group or others" in w.log_text()
    assert not (shared / "w.sock").exists()


def test_refuses_a_live_socket(spawn_worker: SpawnWorker, worker: WorkerProcess) -> None:
    intruder = spawn_worker(socket_path=worker.socket_path)
    assert intruder.wait_exit() == 2
    assert "live server already listens" in intruder.log_text()
    assert worker.health() == SERVING
    _, fin = worker.generate(prompt=PROMPT, max_tokens=1)
    assert fin.usage.completion_tokens == 1


def test_removes_a_stale_socket(spawn_worker: SpawnWorker, private_dir: Path) -> None:
    path = private_dir / "w.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    assert path.exists()
    w = spawn_worker(socket_path=path).wait_serving()
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0


def test_refuses_a_path_that_is_not_a_socket(spawn_worker: SpawnWorker, private_dir: Path) -> None:
    path = private_dir / "w.sock"
    path.write_text("precious")
    w = spawn_worker(socket_path=path)
    assert w.wait_exit() == 2
    assert "not a socket" in w.log_text()
    assert path.read_text() == "precious"


def test_second_sigterm_during_drain_stops_at_once(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker("--grace-seconds", "60").wait_serving()
    call = w.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=1900), timeout=60)
    next(call)
    w.signal(signal.SIGTERM)
    w.wait_log("draining")
    w.signal(signal.SIGTERM)
    assert w.wait_exit(timeout=15) == 0
    fin = list(call)[-1].finished
    assert fin.finish_reason == pb.FINISH_REASON_CANCELLED


def test_health_watchers_see_the_transitions(spawn_worker: SpawnWorker) -> None:
    w = spawn_worker(faults="startup_delay=1")
    seen: list[int] = []

    def watch() -> None:
        stub = health_pb2_grpc.HealthStub(w.channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30):
                seen.append(reply.status)
                if reply.status == SERVING:
                    return
        except grpc.RpcError:
            pass

    wait_for(w.socket_path.exists, 30, "the socket")
    watcher = threading.Thread(target=watch)
    watcher.start()
    watcher.join(30)
    assert seen[0] == NOT_SERVING and seen[-1] == SERVING
