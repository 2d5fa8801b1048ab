"""The engine thread: the one thread that owns all MLX state.

It imports MLX and mlx-lm, loads the model, warms it up, then loops:

1. take every command waiting in its queue (``submit`` a request, ``cancel`` one, cancel all,
   stop); when idle, block on the queue (waking every second to beat the heartbeat), and once
   woken linger while more requests keep arriving (1 ms apart at most, 5 ms in all; right
   after the last N requests finished, until N have arrived), so that requests sent together
   are prefilled together;
2. run one step of mlx-lm's ``BatchGenerator`` (one decode step for the running sequences plus
   at most one prefill chunk of ``prefill_step_size`` tokens for the ones being prompted);
3. turn the step's tokens into output (``responses.RequestState``: detokenize, stop strings,
   logprobs, finish) and hand everything gathered to the event loop with ONE
   ``call_soon_threadsafe``: after every step, or with ``--stream-interval-ms`` at most once
   per interval, except that a first token, a finish or a failure goes at the step's end.
   Each request's tokens since the last hand-over go out as one chunk. After a hand-over that
   holds a first token the thread sleeps 0.5 ms, so that the loop sends it at once.

With ``--solo on`` (the default), a request that arrives while the engine is idle, with a
prompt that fits in one prefill chunk, runs alone as a :class:`~mlx_worker.solo.SoloSequence`
(mlx-lm's single-sequence ``generate_step`` loop, cheaper per token than a batch of one); when
another request arrives it moves into the ``BatchGenerator`` with its cache (see ``solo.py``).

A cancelled request is removed from the batch (``BatchGenerator.remove``) at the next command
check, whether it is queued, in prefill or decoding. An error in one request fails that
request (INTERNAL); an error in a whole step fails that step's requests and replaces the
BatchGenerator; the thread keeps serving. If the thread dies anyway, every request it held
fails with UNAVAILABLE and the health watchdog sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mlx_sidecar.v1 import inference_pb2 as pb

from .config import WorkerConfig
from .errors import RequestFailure
from .faults import Faults
from .params import GenerateParams, SamplingSettings
from .responses import Finish, RequestState, token_logprobs
from .streams import ResponseStream, dispatch
from .timings import RequestClock, now

log = logging.getLogger(__name__)

_STOP = object()
_CANCEL_ALL = object()


# Most prompt tokens one engine step processes (over all sequences being prompted): one step
# is the unit of cancellation and of the heartbeat, and stalls the running streams' decoding
# while it runs, so it is bounded (2048 tokens of SmolLM2-135M take seconds on a small CPU; a
# GPU does 8192 in a fraction of a second).
PREFILL_TOKENS_PER_STEP_CPU = 2048
PREFILL_TOKENS_PER_STEP_GPU = 8192


# Woken from idle by a request, the engine waits up to GATHER_GAP_S for another (and so on,
# for GATHER_MAX_S at most) before its first step: a lone request pays one gap of latency.
# On an H100 requests sent together reached the engine more than 0.2 ms apart: with a 0.2 ms
# gap, 16 and 64 streams ran at 0.84-0.89 of in-process with TTFT p50 +111-295 ms; with
# 1 ms, at 1.06-1.07 with +13-53 ms (side by side, ``bench --passes 2``).
GATHER_GAP_S = 0.001
GATHER_MAX_S = 0.005
# Clients that send their next request when the last one ends (a worker pool, the bench's
# closed loop) come back together: when a step finished the last N requests, requests
# arriving within RETURN_WINDOW_S of it are awaited (up to GATHER_MAX_S) until N have come,
# whatever their gaps (see gather_wait).
# Otherwise the first returning request, finding the engine idle, would start alone (as the
# solo sequence) and the others join it a step later: on an H100, 4 streams ran at
# 0.91 of in-process with the solo sequence and 0.98 without it.
RETURN_WINDOW_S = 0.05

# After handing the event loop a request's first token, the engine thread sleeps this long
# before its next step, so that the loop gets the GIL and sends the token at once. Otherwise
# the loop waits until the engine releases the GIL again, after building the next step's
# graph (milliseconds of Python for the default model). On the 2-core CPU with the default
# model, the time from the worker's first token to the client's receiving it fell from 3.0-4.9
# ms to 1.5-2.2 ms, and the single-stream TTFT difference to in-process from +8.2/+10.7 ms to
# -0.9/+1.5 ms (bench, side by side); the engine loses this sleep once per hand-over that
# holds a first token.
FIRST_TOKEN_YIELD_S = 0.0005

# On a GPU, MLX compiles a quantized-matmul kernel (NVRTC) the first time it sees a new range
# of rows (tokens in a forward pass): 17-25 s each on an H100 with an empty kernel cache. A
# first batch of 16 streams stalled the engine 34 s, long enough for the stall watchdog.
# Start-up runs one forward pass at each of these row counts (up to the per-step prompt
# bound) so that the compiling happens before the worker reports SERVING; once compiled, the
# kernels are cached on disk ($TMPDIR/mlx) and the passes take milliseconds.
GPU_WARMUP_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096)


def gather_wait(gathered: int, expected: int, left: float) -> float:
    """How long the engine, woken from idle, waits for the next request before its first
    step: ``gathered`` requests so far, ``expected`` returning ones (0: none expected),
    ``left`` seconds of GATHER_MAX_S. Until the expected have come it waits for them whatever
    the gaps; after that, one gap for another, as when none are expected: more may come than
    just finished (a load that grows, the bench's next level). Going at once when the
    expected had come saved a lone client 1 ms of TTFT, but split such waves: 16 and 64
    streams fell to 0.93 and 0.90 of in-process on the 2-core CPU, their first prefill step
    taking only as many requests as had just finished."""
    if gathered < expected:
        return left
    return min(GATHER_GAP_S, left)


@dataclass(frozen=True)
class PrefillPlan:
    """How prompts are processed: tokens per sequence per step, sequences per step."""

    step_size: int
    batch_size: int


def prefill_plan(config: WorkerConfig, on_gpu: bool) -> PrefillPlan:
    """Prompts are prefilled 8 at a time (mlx-lm's default) where the per-step bound allows.

    Requests that arrive together are then prefilled together and finish together, so the
    batch changes shape less often: with 4 at a time, 64 streams on an H100 lost 15-25 % of
    their throughput to the extra prefill steps and batch reshuffles.
    """
    step = config.prefill_step_size or (512 if on_gpu else 256)
    bound = PREFILL_TOKENS_PER_STEP_GPU if on_gpu else PREFILL_TOKENS_PER_STEP_CPU
    return PrefillPlan(step_size=step, batch_size=max(1, min(8, config.max_batch, bound // step)))


def warm_up_bound(plan: PrefillPlan, max_batch: int) -> int:
    """The most rows one engine step runs: a prefill step's prompts, or the decoding batch."""
    return max(plan.step_size * plan.batch_size, max_batch)


def gpu_kernel_cache() -> Path:
    """Where MLX CUDA keeps the kernels it compiles (``$TMPDIR/mlx/<version>/ptx``)."""
    return Path(tempfile.gettempdir()) / "mlx"


def warm_up_row_counts(model: Any, bound: int, step: int) -> list[int]:
    """One forward pass per entry of ``GPU_WARMUP_ROWS`` up to ``bound`` rows, each on a
    throwaway cache (see ``GPU_WARMUP_ROWS``), shaped as the engine's prefill steps are:
    sequences of at most ``step`` tokens; returns the row counts run."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    done = []
    for rows in GPU_WARMUP_ROWS:
        if rows > bound:
            break
        length = min(rows, step)
        batch = -(-rows // length)
        cache = make_prompt_cache(model)
        mx.eval(model(mx.zeros((batch, length), dtype=mx.uint32), cache=cache))
        done.append(rows)
    mx.clear_cache()
    return done


class EngineUnavailable(Exception):
    """The engine thread is not running (it stopped or died)."""


@dataclass(eq=False)
class Job:
    """One Generate request handed to the engine (identity is the key)."""

    params: GenerateParams
    stream: ResponseStream
    clock: RequestClock


@dataclass
class StartupReport:
    """What start-up took, in seconds (the "startup" log event)."""

    delay_s: float
    import_s: float
    load_s: float
    warmup_s: float


class Engine:
    """Owns the engine thread; its public methods are called from the event loop."""

    def __init__(
        self,
        config: WorkerConfig,
        faults: Faults,
        loop: asyncio.AbstractEventLoop,
        on_ready: Callable[[Any, StartupReport], None],
        on_failed: Callable[[BaseException], None],
        on_died: Callable[[], None],
    ) -> None:
        self._config = config
        self._faults = faults
        self._loop = loop
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._on_died = on_died
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.heartbeat = time.monotonic()
        self.steps = 0
        # Engine-thread state.
        self._loaded: Any = None
        self._bg: Any = None
        self._by_job: dict[Job, RequestState] = {}
        self._by_uid: dict[int, RequestState] = {}
        self._prefill = PrefillPlan(step_size=256, batch_size=1)
        self._solo: Any = None  # the SoloSequence running, if any
        self._solo_enabled = False  # decided at start-up (--solo, not in synthetic mode)
        self._on_gpu = False  # decided at start-up
        # (how many requests the step that left the engine idle finished, when it ended)
        self._returning: tuple[int, float] = (0, 0.0)
        self._solo_uids = 0  # solo sequences get uids -1, -2, ... (the batch's are >= 0)
        # Output for the event loop: requests with output to take, failures to send; handed
        # over when due (``_flush``).
        self._pending: dict[RequestState, None] = {}
        self._out: list[tuple[ResponseStream, list[Any]]] = []
        self._urgent = False  # a first token, a finish or a failure is waiting
        self._first_tokens_out = False  # a first token is in the output being handed over
        self._flushed_at = 0.0
        self._stream_interval = config.stream_interval_ms / 1000

    # ---- event-loop side -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def seconds_since_heartbeat(self) -> float:
        return time.monotonic() - self.heartbeat

    def submit(self, params: GenerateParams, stream: ResponseStream, clock: RequestClock) -> Job:
        """Queues a request; raises EngineUnavailable if the engine has stopped."""
        job = Job(params, stream, clock)
        with self._lock:
            if not self._accepting:
                raise EngineUnavailable("the engine has stopped")
            self._commands.put(job)
        return job

    def cancel(self, job: Job) -> None:
        """Removes a request from the batch (the caller went away); no message is sent."""
        self._commands.put(("cancel", job))

    def cancel_all(self) -> None:
        """Ends every request with finish reason CANCELLED (used at the end of a drain)."""
        self._commands.put(_CANCEL_ALL)

    def stop(self, timeout: float) -> None:
        """Stops the thread after the commands queued before this one."""
        self._commands.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- engine thread ---------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        # A closed loop means the process is exiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        try:
            report = self._start_up()
        except BaseException as e:
            with self._lock:
                self._accepting = False
            self._post(self._on_failed, e)
            return
        self._post(self._on_ready, self._loaded, report)
        try:
            self._serve()
        except BaseException:
            log.critical("engine thread died", exc_info=True)
        finally:
            self._die()

    def _start_up(self) -> StartupReport:
        t0 = now()
        if self._faults.startup_delay:
            time.sleep(self._faults.startup_delay)
        if self._faults.startup_hang:
            log.warning("fault injection: startup_hang")
            threading.Event().wait()
        t1 = now()
        # OpenBLAS for MLX's CPU matrix products must be loaded before MLX is first imported.
        from .model.cpu_blas import prepare_cpu_blas

        prepare_cpu_blas(enable=self._config.dequantize != "off")
        from .fast_import import import_batch_generator
        from .model import load_model

        import_batch_generator()
        import mlx.core as mx

        from . import sampling  # noqa: F401  (after mlx_lm.generate: see fast_import)

        on_gpu = mx.default_device().type == mx.gpu
        self._on_gpu = on_gpu
        self._prefill = prefill_plan(self._config, on_gpu=on_gpu)
        self._solo_enabled = self._config.synthetic is None and self._config.solo == "on"
        t2 = now()
        if self._faults.load_error:
            raise RuntimeError("fault injection: load_error")
        self._loaded = load_model(
            self._config.model,
            cache_dir=self._config.cache_dir,
            dequantize=self._config.dequantize,
        )
        t3 = now()
        self._bg = self._new_batch_generator()
        self._warm_up()
        t4 = now()
        self.heartbeat = time.monotonic()
        return StartupReport(delay_s=t1 - t0, import_s=t2 - t1, load_s=t3 - t2, warmup_s=t4 - t3)

    def _new_batch_generator(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        cfg = self._config
        if cfg.synthetic is not None:  # benchmark mode: made-up tokens, the model never runs
            from .synthetic import start_synthetic

            return start_synthetic(cfg.synthetic, cfg.max_batch)
        return BatchGenerator(
            self._loaded.model,
            completion_batch_size=cfg.max_batch,
            prefill_batch_size=self._prefill.batch_size,
            prefill_step_size=self._prefill.step_size,
        )

    def _warm_up(self) -> None:
        """One tiny generation, greedy and sampled, so the first request pays no first-use cost
        (and on a GPU, one forward pass per row count: ``GPU_WARMUP_ROWS``)."""
        from mlx_lm.generate import StopSequences

        from .sampling import make_request_processors, make_request_sampler

        tok = self._loaded.tokenizer
        first = (
            tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
        )
        vocab = self._loaded.description.vocab_size
        sampled = SamplingSettings(temperature=0.7, top_p=0.9, top_k=5, min_p=0.01, seed=0)
        greedy = SamplingSettings()
        uids = self._bg.insert(
            [[first, first], [first, first]],
            max_tokens=[1, 1],
            samplers=[make_request_sampler(s, vocab) for s in (greedy, sampled)],
            logits_processors=[make_request_processors(s) for s in (greedy, sampled)],
            stop_sequences=[StopSequences(), StopSequences()],
        )
        pending = set(uids)
        for _ in range(100):
            _, generated = self._bg.next()
            for r in generated:
                if r.finish_reason is not None:
                    pending.discard(r.uid)
            if not pending:
                break
        else:
            raise RuntimeError("warm-up generation did not finish")
        if self._solo_enabled:
            from .solo import SoloSequence

            for s in (greedy, sampled):
                solo = SoloSequence(
                    -1,
                    self._loaded.model,
                    [first, first],
                    2,
                    make_request_sampler(s, vocab),
                    make_request_processors(s),
                    frozenset(),
                )
                while solo.next().finish_reason is None:
                    pass
        if self._on_gpu and self._config.synthetic is None:
            kernels = gpu_kernel_cache()
            if not any(kernels.glob("*/ptx/*.ptx")):
                log.info(
                    "compiling GPU kernels (first start here: minutes, then cached)",
                    extra={"fields": {"kernel_cache": str(kernels)}},
                )
            plan = self._prefill
            warm_up_row_counts(
                self._loaded.model,
                warm_up_bound(plan, self._config.max_batch),
                plan.step_size,
            )

    def _serve(self) -> None:
        idle_wait = min(1.0, self._config.stall_seconds / 4)
        commands = self._commands
        while True:
            self.heartbeat = time.monotonic()
            idle = not self._by_uid
            try:
                cmd = commands.get(timeout=idle_wait) if idle else commands.get_nowait()
            except queue.Empty:
                cmd = None
            # Woken from idle: requests sent together reach the queue a fraction of a
            # millisecond apart (the event loop validates them one by one), so linger while
            # they keep coming, to prefill them in one step rather than the first alone; and
            # wait for as many as have just finished (see RETURN_WINDOW_S).
            linger_until, expected, gathered = 0.0, 0, 0
            if idle:
                woken = now()
                linger_until = woken + GATHER_MAX_S
                returning, finished_at = self._returning
                if woken - finished_at < RETURN_WINDOW_S:
                    expected = returning
            while cmd is not None:
                if cmd is _STOP:
                    self._flush()
                    return
                self._command(cmd)
                gathered += isinstance(cmd, Job)
                try:
                    left = linger_until - now()
                    wait = gather_wait(gathered, expected, left)
                    cmd = commands.get(timeout=wait) if wait > 0 else commands.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._by_uid:
                running = len(self._by_uid)
                self._step()
                if not self._by_uid:
                    self._returning = (running, now())
            self._flush(force=False)

    def _flush(self, force: bool = True) -> None:
        """Hands the output gathered so far to the event loop in one call: when ``force``d,
        or when it is due (a first token, a finish or a failure; the engine going idle; the
        stream interval passed)."""
        if not (self._out or self._pending):
            return
        if not (
            force
            or self._urgent
            or not self._by_uid
            or now() - self._flushed_at >= self._stream_interval
        ):
            return
        for a in self._pending:
            self._out.append((a.job.stream, a.take_output()))
        self._pending.clear()
        out, self._out = self._out, []
        self._urgent = False
        self._flushed_at = now()
        self._post(dispatch, out)
        if self._first_tokens_out:
            # Let the event loop take the GIL and send the first tokens now, rather than
            # after the next step's graph building (see FIRST_TOKEN_YIELD_S).
            self._first_tokens_out = False
            time.sleep(FIRST_TOKEN_YIELD_S)

    def _command(self, cmd: Any) -> None:
        if isinstance(cmd, Job):
            self._insert(cmd)
        elif cmd is _CANCEL_ALL:
            for a in list(self._by_uid.values()):
                self._remove(a, "shutdown")
                a.finish(Finish(pb.FINISH_REASON_CANCELLED))
                self._emit(a)
        else:
            _, job = cmd
            a = self._by_job.get(job)
            if a is not None:
                self._remove(a, "client_cancelled")

    def _insert(self, job: Job) -> None:
        p = job.params
        if self._runs_alone(p):
            self._insert_solo(job)
            return
        if self._solo is not None:
            self._hand_over_solo()
        self._insert_batch(job)

    def _insert_batch(self, job: Job) -> None:
        from mlx_lm.generate import StopSequences

        from .sampling import make_request_processors, make_request_sampler

        p = job.params
        try:
            vocab = self._loaded.description.vocab_size
            (uid,) = self._bg.insert(
                [p.prompt_ids],
                max_tokens=[p.max_tokens],
                samplers=[make_request_sampler(p.sampling, vocab)],
                logits_processors=[make_request_processors(p.sampling)],
                stop_sequences=[StopSequences([(t,) for t in sorted(p.stop_token_ids)])],
            )
        except Exception as e:
            self._cannot_start(job, e)
            return
        self._book(RequestState.start(job, uid, self._loaded.tokenizer))

    def _runs_alone(self, p: GenerateParams) -> bool:
        """Whether a new request runs as the solo sequence: the engine is idle and the prompt
        fits in one prefill chunk (a longer one is prefilled chunk by chunk in the batch, where
        a cancel or the heartbeat waits at most one chunk)."""
        return (
            self._solo_enabled and not self._by_uid and len(p.prompt_ids) <= self._prefill.step_size
        )

    def _hand_over_solo(self) -> None:
        """Another request arrived: the solo sequence moves into the BatchGenerator (one
        model pass per step for everyone, instead of the solo's plus the batch's)."""
        from mlx_lm.generate import StopSequences

        solo = self._solo
        a = self._by_uid[solo.uid]
        if not solo.started:  # nothing computed yet: it is a plain request
            self._forget(a)
            self._insert_batch(a.job)
            return
        try:
            response, state = solo.hand_over()
        except Exception as e:
            self._fail_request(a, e)
            return
        self._solo = None
        self._on_token(a, response, self._logprobs([response]).get(response.uid), now())
        if state is None or a.job not in self._by_job:  # that token ended it
            return
        self._forget(a)
        try:
            (uid,) = self._bg.insert(
                [[state.next_token]],
                max_tokens=[state.remaining_tokens],
                caches=[state.cache],
                all_tokens=[state.history],
                samplers=[solo.sampler],
                logits_processors=[solo.processors],
                stop_sequences=[StopSequences([(t,) for t in sorted(solo.stop_token_ids)])],
            )
        except Exception as e:
            self._fail_request(a, e)  # already out of the books: nothing else to undo
            return
        a.uid = uid
        self._book(a)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request joins the batch",
                extra={"fields": {"request_id": a.job.params.request_id, "generated": a.generated}},
            )

    def _insert_solo(self, job: Job) -> None:
        from .sampling import make_request_processors, make_request_sampler
        from .solo import SoloSequence

        p = job.params
        self._solo_uids += 1
        uid = -self._solo_uids
        try:
            self._solo = SoloSequence(
                uid,
                self._loaded.model,
                p.prompt_ids,
                p.max_tokens,
                make_request_sampler(p.sampling, self._loaded.description.vocab_size),
                make_request_processors(p.sampling),
                p.stop_token_ids,
            )
        except Exception as e:
            self._cannot_start(job, e)
            return
        self._book(RequestState.start(job, uid, self._loaded.tokenizer))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request runs alone", extra={"fields": {"request_id": p.request_id}})

    def _remove(self, a: RequestState, reason: str) -> None:
        """Takes a request out of the batch (and out of the engine's books)."""
        self._forget(a)
        if a.uid >= 0:
            self._bg.remove([a.uid])
        if reason != "finished" and log.isEnabledFor(logging.DEBUG):
            clock = a.job.clock
            stage = (
                "decode"
                if clock.first_token is not None
                else "prefill"
                if clock.prefill_start is not None
                else "queued"
            )
            log.debug(
                "request removed",
                extra={
                    "fields": {
                        "request_id": a.job.params.request_id,
                        "reason": reason,
                        "stage": stage,
                        "completion_tokens": a.generated,
                        "since_arrival_ms": round((now() - clock.arrival) * 1e3, 3),
                    }
                },
            )

    def _step(self) -> None:
        self.steps += 1
        self._maybe_inject_engine_fault()
        t0 = now()
        if self._solo is not None:  # then it is the only request (it leaves when another comes)
            prompt_responses, generated = self._solo_step()
        else:
            try:
                prompt_responses, generated = self._bg.next()
            except Exception:
                log.exception("engine step failed; failing its requests and resetting the batch")
                self._fail_all(grpc.StatusCode.INTERNAL, "the engine step failed (see worker log)")
                with contextlib.suppress(Exception):
                    self._bg.close()
                self._bg = self._new_batch_generator()
                return
        t1 = now()
        self.heartbeat = time.monotonic()
        by_uid = self._by_uid
        for r in prompt_responses:
            a = by_uid.get(r.uid)
            if a is not None and a.job.clock.prefill_start is None:
                a.job.clock.prefill_start = t0
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "prefill started",
                        extra={
                            "fields": {
                                "request_id": a.job.params.request_id,
                                "prompt_tokens": len(a.job.params.prompt_ids),
                            }
                        },
                    )
        if not generated:
            return
        logprobs = self._logprobs(generated)
        for r in generated:
            a = by_uid.get(r.uid)
            if a is None:
                continue
            try:
                self._on_token(a, r, logprobs.get(r.uid), t1)
            except Exception as e:
                if r.finish_reason is None and a.uid >= 0:
                    self._bg.remove([a.uid])  # still in the batch
                self._fail_request(a, e)

    def _solo_step(self) -> tuple[list[Any], list[Any]]:
        """One token of the solo sequence, shaped as ``BatchGenerator.next()``'s output."""
        solo = self._solo
        a = self._by_uid[solo.uid]
        prompts = [solo] if a.job.clock.prefill_start is None else []
        try:
            return prompts, [solo.next()]
        except Exception as e:
            self._fail_request(a, e)
            return [], []

    def _maybe_inject_engine_fault(self) -> None:
        f = self._faults
        if f.engine_stall_after_steps is not None and self.steps > f.engine_stall_after_steps:
            log.warning("fault injection: engine stalls", extra={"fields": {"steps": self.steps}})
            threading.Event().wait()
        if f.engine_crash_after_steps is not None and self.steps > f.engine_crash_after_steps:
            raise RuntimeError(f"fault injection: engine crash after {self.steps - 1} steps")

    def _logprobs(self, generated: list[Any]) -> dict[int, pb.TokenLogprob]:
        wanted = []
        for r in generated:
            a = self._by_uid.get(r.uid)
            if a is not None and a.job.params.logprobs and r.finish_reason != "stop":
                wanted.append((r, a.job.params.top_logprobs))
        if not wanted:
            return {}
        return token_logprobs(wanted, self._loaded.tokenizer.token_text)

    def _on_token(self, a: RequestState, r: Any, logprob: pb.TokenLogprob | None, t: float) -> None:
        finish = a.on_token(r.token, r.finish_reason, logprob, t)
        if finish is not None:
            if r.finish_reason is None:
                self._remove(a, "finished")  # a stop string: the batch doesn't know
            else:
                self._forget(a)  # the batch has dropped it already
            a.finish(finish)
        self._emit(a, urgent=finish is not None or a.generated == 1)

    def _book(self, a: RequestState) -> None:
        """Puts a started request in the engine's books (``_forget`` takes it out)."""
        self._by_job[a.job] = a
        self._by_uid[a.uid] = a

    def _forget(self, a: RequestState) -> None:
        self._by_uid.pop(a.uid, None)
        self._by_job.pop(a.job, None)
        if self._solo is not None and a.uid == self._solo.uid:
            self._solo.close()
            self._solo = None

    def _emit(self, a: RequestState, urgent: bool = True) -> None:
        """Marks a request's output for the next hand-over (``urgent``: at the end of this
        step, whatever the stream interval)."""
        if a.has_output:
            self._pending[a] = None
            self._urgent |= urgent
            self._first_tokens_out |= a.generated == 1

    def _send_failure(self, stream: ResponseStream, failure: RequestFailure) -> None:
        self._urgent = True
        self._out.append((stream, [failure]))

    def _fail(self, a: RequestState, failure: RequestFailure) -> None:
        """Ends a started request with ``failure``, after the output it already has."""
        self._forget(a)
        self._pending.pop(a, None)
        if a.has_output:
            self._out.append((a.job.stream, a.take_output()))
        self._send_failure(a.job.stream, failure)

    def _cannot_start(self, job: Job, error: Exception) -> None:
        """A request could not be set up (call it while handling ``error``): INTERNAL."""
        log.exception(
            "cannot start request", extra={"fields": {"request_id": job.params.request_id}}
        )
        self._send_failure(job.stream, RequestFailure(grpc.StatusCode.INTERNAL, str(error)))

    def _fail_request(self, a: RequestState, error: Exception) -> None:
        """One request failed on its own (call it while handling ``error``): only it gets
        INTERNAL; the engine serves on."""
        log.exception("request failed", extra={"fields": {"request_id": a.job.params.request_id}})
        self._fail(a, RequestFailure(grpc.StatusCode.INTERNAL, f"internal: {error}"))

    def _fail_all(self, code: grpc.StatusCode, message: str) -> None:
        for a in list(self._by_uid.values()):
            self._fail(a, RequestFailure(code, message))

    def _die(self) -> None:
        """The thread is ending: fail everything it holds or was sent, tell the loop."""
        with self._lock:
            self._accepting = False
        self._fail_all(grpc.StatusCode.UNAVAILABLE, "the worker's engine has stopped")
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, Job):
                self._send_failure(
                    cmd.stream, RequestFailure(grpc.StatusCode.UNAVAILABLE, "engine stopped")
                )
        self._flush()
        self._post(self._on_died)

    @property
    def loaded(self) -> Any:
        """The LoadedModel, once start-up has finished."""
        return self._loaded
