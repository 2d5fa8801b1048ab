"""The decoder: which requests run, and how, one step at a time.

A request runs in one of two places (:class:`Placement`): in mlx-lm's ``BatchGenerator``
(continuous batching: one decode step for the running sequences plus at most one prefill
chunk for the ones being prompted), or alone as the :class:`~.solo.SoloSequence`, when it
found the engine idle (``--solo on``) and its prompt fits in one prefill chunk. When another
request arrives, the solo sequence is handed over to the batch with its cache; the two never
run side by side.

With the prefix cache on (:mod:`.prefix_cache`), a request starts from the KV cache of the
longest cached prefix of its prompt and prefills only the rest; a finished request stores its
cache. Requests bound for the batch wait in ``_waiting`` until the next step, so that those
sent together are seen together: of those sharing a long prefix, one prefills it (its prompt
split at the prefix's end) and the others wait until it is stored, then start from it.
Continuations (streams cut by a worker's death) are inserted ahead of new requests, so that
mlx-lm's first-in-first-out prefill takes them first; prefill-only requests (a standby's
shadows) come last, and leave the batch as soon as their tokens are prefilled: each is
inserted with a stand-in token after them, which the batch holds back to feed at the first
decode step and so never computes; at the end of the tokens before it, the request's cache is
stored and the request finishes, without the two steps a first token would take.

Each step's tokens go to the requests' :class:`~mlx_worker.responses.RequestState` and what
they build to the :class:`~.output.OutputHandOff`. An error in one request fails that request
(INTERNAL); an error in a whole step fails that step's requests and replaces the
``BatchGenerator``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from typing import Any

import grpc

from mlx_sidecar.v1 import inference_pb2 as pb

from ..config import WorkerConfig
from ..errors import RequestFailure
from ..responses import Finish, RequestState, token_logprobs
from ..timings import now
from . import continuation
from .commands import Job
from .continuation import prefilled_ids, prefilled_length, start_point
from .output import OutputHandOff
from .prefix_cache import Hit, PrefixCache, SharedPrefix, SharedPrefixes, new_prefix_cache
from .startup import Started, new_batch_generator

log = logging.getLogger("mlx_worker.engine")


def admission_order(
    waiting: list[tuple[Job, Hit | None]],
) -> list[tuple[Job, Hit | None]]:
    """``waiting`` in the order the batch takes them: continuations (streams cut by a
    worker's death, their callers mid-stream), then new requests, then prefill-only ones (a
    standby's shadows, which nobody waits on); otherwise in arrival order."""
    return sorted(
        waiting,
        key=lambda item: (item[0].params.prefill_only, item[0].params.continuation is None),
    )


class Placement(enum.Enum):
    """Where a request runs."""

    BATCH = "batch"  # a sequence of the BatchGenerator
    SOLO = "solo"  # the SoloSequence, alone


class Decoder:
    """Owns the running requests, the ``BatchGenerator`` and the solo sequence (engine thread)."""

    def __init__(self, config: WorkerConfig, started: Started, output: OutputHandOff) -> None:
        self._config = config
        self._loaded = started.loaded
        self._plan = started.plan
        self._solo_enabled = started.solo_enabled
        self._resume_method = started.resume_method
        self._batch = started.batch
        self._output = output
        self._by_job: dict[Job, RequestState] = {}  # every running request
        self._in_batch: dict[int, RequestState] = {}  # those in the batch, by uid
        self._solo: Any = None  # the SoloSequence running, if any
        self._solo_request: RequestState | None = None  # its request
        self._prefix: PrefixCache | None = new_prefix_cache(config, started.loaded)
        self._shared = SharedPrefixes()
        # Requests bound for the batch, inserted at the next step (with the hit found when
        # they arrived, if any).
        self._waiting: list[tuple[Job, Hit | None]] = []
        # Prefill-only requests in the batch with a stand-in token (uids): they end when the
        # tokens before it are prefilled.
        self._ending_before_stand_in: set[int] = set()
        self.hand_overs = 0  # solo sequences moved into the batch so far

    @property
    def running(self) -> int:
        """How many requests are running (solo, prefilling or decoding) or waiting to."""
        return len(self._by_job) + len(self._waiting)

    # ---- commands --------------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Starts a request: alone if the engine is idle, else in the batch (handing the solo
        sequence over first, if one runs). A prefill-only request always goes to the batch,
        whose finished caches are stored."""
        if job.params.prefill_only:
            if self._prefix is None:
                failure = RequestFailure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "prefill_only: this worker's prefix cache is off",
                )
                self._output.send_failure(job.stream, failure)
                return
            if self._solo is not None:
                self._hand_over_solo()
            self._waiting.append((job, None))
            return
        hit = self._lookup(self._prefilled_ids(job)) if self._may_run_alone() else None
        if hit is not None and self._runs_alone(job, hit):
            self._start_solo(job, hit)
            return
        if self._solo is not None:
            self._hand_over_solo()
        self._waiting.append((job, hit))

    def cancel(self, job: Job) -> None:
        """Drops a request (its caller went away); no message is sent."""
        request = self._by_job.get(job)
        if request is not None:
            self._remove(request, "client_cancelled")
        self._waiting = [(j, hit) for j, hit in self._waiting if j is not job]

    def cancel_all(self) -> None:
        """Ends every request with finish reason CANCELLED."""
        waiting, self._waiting = self._waiting, []
        for job, _ in waiting:
            request = RequestState.start(job, self._loaded.tokenizer, Placement.BATCH)
            request.finish(Finish(pb.FINISH_REASON_CANCELLED))
            self._output.emit(request)
        for request in list(self._by_job.values()):
            self._remove(request, "shutdown")
            request.finish(Finish(pb.FINISH_REASON_CANCELLED))
            self._output.emit(request)

    def fail_all(self, code: grpc.StatusCode, message: str) -> None:
        """Ends every request with a failure."""
        waiting, self._waiting = self._waiting, []
        for job, _ in waiting:
            self._output.send_failure(job.stream, RequestFailure(code, message))
        for request in list(self._by_job.values()):
            self._fail(request, RequestFailure(code, message))

    # ---- stepping --------------------------------------------------------------------

    def idle(self) -> None:
        """The engine woke with nothing to do (a sharded group's rank 0 ticks the others)."""

    def step(self) -> None:
        """One step: a token of the solo sequence, or a step of the batch."""
        if self._solo is not None:  # then it is the only request (it leaves when another comes)
            self._solo_step()
            return
        if self._waiting:
            self._admit_waiting()
        if self._in_batch:
            self._batch_step()

    def _batch_step(self) -> None:
        started_at = now()
        try:
            prompted, generated = self._batch.next()
        except Exception:
            self._step_failed()
            return
        stepped_at = now()
        in_batch = self._in_batch
        for response in prompted:
            request = in_batch.get(response.uid)
            if request is not None:
                self._prefill_started(request, started_at)
                if (
                    response.uid in self._shared.pending
                    and response.end_of_segment
                    and not response.end_of_prompt
                ):
                    self._store_shared_prefix(response.uid)
                if response.uid in self._ending_before_stand_in and _before_last_token(response):
                    self._prefilled_before_stand_in(request)
        if prompted:
            try:  # prompts now left with their last token start generating (eager_batch.py)
                self._batch.start_generating(held=self._ending_before_stand_in)
            except Exception:
                self._step_failed()
                return
        if not generated:
            return
        logprobs = self._batch_logprobs(generated)
        for response in generated:
            request = in_batch.get(response.uid)
            if request is None:
                continue
            try:
                self._on_token(request, response, logprobs.get(response.uid), stepped_at)
            except Exception as e:
                if response.finish_reason is None:  # still in the batch
                    self._batch.remove([response.uid])
                self._fail_request(request, e)

    def _step_failed(self) -> None:
        """A whole batch step failed (call it while handling the error): its requests fail
        with INTERNAL and a new ``BatchGenerator`` replaces this one."""
        log.exception("engine step failed; failing its requests and resetting the batch")
        self.fail_all(grpc.StatusCode.INTERNAL, "the engine step failed (see worker log)")
        with contextlib.suppress(Exception):
            self._batch.close()
        self._batch = new_batch_generator(self._config, self._loaded, self._plan)
        self._shared.pending.clear()
        self._ending_before_stand_in.clear()

    def _solo_step(self) -> None:
        request = self._solo_request
        assert request is not None
        started_at = now()
        try:
            response = self._solo.next()
        except Exception as e:
            self._fail_request(request, e)
            return
        stepped_at = now()
        self._prefill_started(request, started_at)
        try:
            self._on_token(request, response, self._logprob(request, response), stepped_at)
        except Exception as e:
            self._fail_request(request, e)

    def _prefill_started(self, request: RequestState, at: float) -> None:
        clock = request.job.clock
        if clock.prefill_start is not None:
            return
        clock.prefill_start = at
        if log.isEnabledFor(logging.DEBUG):
            params = request.job.params
            log.debug(
                "prefill started",
                extra={
                    "fields": {
                        "request_id": params.request_id,
                        "prompt_tokens": len(params.prompt_ids),
                    }
                },
            )

    def _batch_logprobs(self, generated: list[Any]) -> dict[int, pb.TokenLogprob]:
        wanted = []
        for response in generated:
            request = self._in_batch.get(response.uid)
            if request is not None and _wants_logprob(request, response):
                wanted.append((response, request.job.params.top_logprobs))
        if not wanted:
            return {}
        values = token_logprobs(wanted, self._loaded.tokenizer)
        return {response.uid: value for (response, _), value in zip(wanted, values, strict=True)}

    def _logprob(self, request: RequestState, response: Any) -> pb.TokenLogprob | None:
        if not _wants_logprob(request, response):
            return None
        wanted = [(response, request.job.params.top_logprobs)]
        return token_logprobs(wanted, self._loaded.tokenizer)[0]

    def _on_token(
        self, request: RequestState, response: Any, logprob: pb.TokenLogprob | None, at: float
    ) -> None:
        if request.replaying:
            _replayed(request, response)
            return
        if request.job.params.prefill_only:
            self._prefilled(request, response)
            return
        grammar = request.job.params.grammar
        complete = grammar is not None and grammar.observe(response.token)
        finish = request.on_token(response.token, response.finish_reason, logprob, at, complete)
        if finish is not None:
            self._finished(request, response)
            request.finish(finish)
        self._output.emit(request, urgent=finish is not None or request.generated == 1)

    def _prefilled(self, request: RequestState, response: Any) -> None:
        """A prefill-only request without a stand-in (its delivered tokens were replayed)
        reached its first new token, which is dropped: its cache is stored, and the request
        finishes without output."""
        self._finished(request, response)
        self._end_prefill_only(request)

    def _prefilled_before_stand_in(self, request: RequestState) -> None:
        """A prefill-only request's tokens are prefilled (only its stand-in is left): out of
        the batch with its cache stored (the tokens, not the stand-in), finished."""
        self._remove(request, "finished")
        self._end_prefill_only(request)

    def _end_prefill_only(self, request: RequestState) -> None:
        """A prefill-only request's tokens are cached: it finishes without output."""
        request.finish(Finish(pb.FINISH_REASON_LENGTH))
        self._output.emit(request, urgent=True)

    def _finished(self, request: RequestState, response: Any) -> None:
        """A request ends at ``response``: out of the books and the batch, its cache stored."""
        if response.finish_reason is None:
            self._remove(request, "finished")  # ended here (a stop string): the batch doesn't know
        else:
            self._forget(request)  # the batch has dropped it already
            self._store(
                getattr(response, "all_tokens", None), getattr(response, "prompt_cache", None)
            )

    # ---- placement -------------------------------------------------------------------

    def _may_run_alone(self) -> bool:
        """Whether a request arriving now could run as the solo sequence (the engine is idle)."""
        return self._solo_enabled and not self._by_job and not self._waiting

    def _runs_alone(self, job: Job, hit: Hit) -> bool:
        """Whether a new request runs as the solo sequence: the engine is idle and the part of
        the prompt not cached fits in one prefill chunk (a longer one is prefilled chunk by
        chunk in the batch, where a cancel or the heartbeat waits at most one chunk)."""
        return prefilled_length(job.params, self._method) - hit.tokens <= self._plan.step_size

    def _admit_waiting(self) -> None:
        """Inserts the waiting requests into the batch, continuations first, each from its
        longest cached prefix; one of several sharing a longer prefix prefills it for the
        others, which wait."""
        waiting = admission_order(self._waiting)
        self._waiting = []
        prompts = [self._inserted_ids(job) for job, _ in waiting]
        for i, (job, hit) in enumerate(waiting):
            prompt = prompts[i]
            if hit is None:
                hit = self._lookup(prompt)
            split = 0
            if self._prefix is not None:
                if self._shared.awaited_by(prompt, hit.tokens) is not None:
                    self._waiting.append((job, None))  # looked up again once it is stored
                    continue
                split = SharedPrefixes.split_point(prompt, hit.tokens, prompts[i + 1 :])
            self._start_in_batch(job, prompt, hit, split)

    def _start_in_batch(self, job: Job, prompt: list[int], hit: Hit, split: int = 0) -> None:
        """Inserts a request into the batch with ``prompt`` (its ``_inserted_ids``), from
        ``hit``'s cache if any; ``split`` > 0: the prompt's first ``split`` tokens are stored
        as a shared prefix once prefilled."""
        from ..sampling import make_request_processors, make_request_sampler
        from .grammar_mask import grammar_processors

        params = job.params
        stand_in = self._has_stand_in(job)
        try:
            sampler = make_request_sampler(params.sampling, self._vocab_size)
            point = start_point(params, sampler, self._method)
            options: dict[str, Any] = {
                "max_tokens": [point.max_tokens],
                "samplers": [point.sampler],
                "logits_processors": [
                    make_request_processors(params.sampling) + grammar_processors(params.grammar)
                ],
                "stop_sequences": [_stop_sequences(params.stop_token_ids)],
            }
            if hit.cache is not None:
                options.update(caches=[hit.cache], all_tokens=[prompt[: hit.tokens]])
            request = RequestState.start(job, self._loaded.tokenizer, Placement.BATCH)
            if stand_in and hit.tokens == len(prompt) - 1:  # all of it cached already
                request.cached_tokens = hit.tokens
                self._end_prefill_only(request)
                return
            if split:
                segments = [prompt[hit.tokens : split], prompt[split:]]
                (request.uid,) = self._batch.insert_segments([segments], **options)
            else:
                (request.uid,) = self._batch.insert([prompt[hit.tokens :]], **options)
        except Exception as e:
            self._cannot_start(job, e)
            return
        request.cached_tokens = hit.tokens
        request.replaying = point.replayed
        self._book(request)
        if stand_in:
            self._ending_before_stand_in.add(request.uid)
        if split:
            self._shared.pending[request.uid] = SharedPrefix(tokens=prompt[:split], uid=request.uid)

    def _start_solo(self, job: Job, hit: Hit) -> None:
        from ..sampling import make_request_processors, make_request_sampler
        from .grammar_mask import grammar_processors
        from .solo import SoloSequence

        params = job.params
        try:
            sampler = make_request_sampler(params.sampling, self._vocab_size)
            point = start_point(params, sampler, self._method)
            solo = SoloSequence(
                self._loaded.model,
                point.prompt_ids,
                point.max_tokens,
                point.sampler,
                make_request_processors(params.sampling) + grammar_processors(params.grammar),
                params.stop_token_ids,
                cache=hit.cache,
                cached_tokens=hit.tokens,
            )
            request = RequestState.start(job, self._loaded.tokenizer, Placement.SOLO)
        except Exception as e:
            self._cannot_start(job, e)
            return
        self._solo = solo
        request.replaying = point.replayed
        request.cached_tokens = hit.tokens
        self._book(request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request runs alone", extra={"fields": {"request_id": params.request_id}})

    def _hand_over_solo(self) -> None:
        """Another request arrived: the solo sequence moves into the BatchGenerator (one
        model pass per step for everyone, instead of the solo's plus the batch's)."""
        solo, request = self._solo, self._solo_request
        assert request is not None
        if not solo.started:  # nothing computed yet: it is a plain request
            self._forget(request)
            self._waiting.append((request.job, None))
            return
        try:
            response, state = solo.hand_over()
        except Exception as e:
            self._fail_request(request, e)
            return
        self._solo, self._solo_request = None, None
        self._on_token(request, response, self._logprob(request, response), now())
        if state is None or request.job not in self._by_job:  # that token ended it
            return
        self._forget(request)
        try:
            (uid,) = self._batch.insert(
                [[state.next_token]],
                max_tokens=[state.remaining_tokens],
                caches=[state.cache],
                all_tokens=[state.history],
                samplers=[solo.sampler],
                logits_processors=[solo.processors],
                stop_sequences=[_stop_sequences(solo.stop_token_ids)],
            )
        except Exception as e:
            self._fail_request(request, e)  # already out of the books: nothing else to undo
            return
        request.placement, request.uid = Placement.BATCH, uid
        self._book(request)
        self.hand_overs += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request joins the batch",
                extra={
                    "fields": {
                        "request_id": request.job.params.request_id,
                        "generated": request.generated,
                        "replaying": request.replaying,
                    }
                },
            )

    # ---- the prefix cache ------------------------------------------------------------

    def _lookup(self, prompt: list[int]) -> Hit:
        """The longest cached prefix of ``prompt`` (nothing with the prefix cache off)."""
        if self._prefix is None:
            return Hit()
        return self._prefix.lookup(prompt)

    def _store(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        """Keeps a finished request's KV cache (holding ``tokens``) for later requests."""
        if self._prefix is None or tokens is None or cache is None:
            return
        try:
            self._prefix.store(tokens, cache)
        except Exception:  # a cache that cannot be kept costs later requests a prefill only
            log.exception("cannot store a KV cache in the prefix cache")

    def _store_shared_prefix(self, uid: int) -> None:
        """The leader of a shared prefix has prefilled it: store it, so the waiting start."""
        shared = self._shared.pending.pop(uid, None)
        if shared is None:
            return
        extracted = self._batch.extract_cache([uid]).get(uid)
        if extracted is None:
            return
        cache, tokens = extracted
        if list(tokens) == shared.tokens:
            self._store(shared.tokens, cache)

    # ---- books -----------------------------------------------------------------------

    def _has_stand_in(self, job: Job) -> bool:
        """Whether a request is inserted with a stand-in token after its own: a prefill-only
        one whose prefill takes all its tokens (with "replay", a continuation's delivered
        tokens are decoded, so it runs to its first new token instead)."""
        params = job.params
        return params.prefill_only and (self._method != "replay" or not params.delivered_ids)

    def _inserted_ids(self, job: Job) -> list[int]:
        """The tokens a request is inserted with: what the prefix cache is looked up with
        (a prefill-only request's stand-in included, so that all its own tokens may be found
        cached)."""
        ids = self._prefilled_ids(job)
        return [*ids, ids[-1]] if self._has_stand_in(job) else ids

    def _prefilled_ids(self, job: Job) -> list[int]:
        """The tokens a request's prefill takes (a continuation's delivered ones too, when
        prefilled): what the prefix cache is looked up with."""
        return prefilled_ids(job.params, self._method)

    @property
    def _method(self) -> str:
        """How continuations start (engine/continuation.py)."""
        return continuation.RESUME_METHOD or self._resume_method

    @property
    def _vocab_size(self) -> int:
        return self._loaded.description.vocab_size

    def _book(self, request: RequestState) -> None:
        """Puts a started request in the books (``_forget`` takes it out)."""
        self._by_job[request.job] = request
        if request.placement is Placement.BATCH:
            assert request.uid is not None
            self._in_batch[request.uid] = request
        else:
            self._solo_request = request

    def _forget(self, request: RequestState) -> None:
        self._by_job.pop(request.job, None)
        if request.placement is Placement.SOLO:
            if request is self._solo_request:
                self._solo.close()
                self._solo, self._solo_request = None, None
        elif request.uid is not None:
            self._in_batch.pop(request.uid, None)
            self._ending_before_stand_in.discard(request.uid)
            self._shared.pending.pop(request.uid, None)  # its waiters start on their own

    def _remove(self, request: RequestState, reason: str) -> None:
        """Takes a request out of the books, and out of the batch if it runs there."""
        self._forget(request)
        if request.placement is Placement.BATCH:
            keep = reason == "finished" and self._prefix is not None
            kept = self._batch.remove([request.uid], return_prompt_caches=keep)
            if kept and request.uid in kept:
                cache, tokens = kept[request.uid]
                self._store(list(tokens), cache)
        if reason != "finished" and log.isEnabledFor(logging.DEBUG):
            clock = request.job.clock
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
                        "request_id": request.job.params.request_id,
                        "reason": reason,
                        "stage": stage,
                        "completion_tokens": request.generated,
                        "since_arrival_ms": round((now() - clock.arrival) * 1e3, 3),
                    }
                },
            )

    # ---- failures --------------------------------------------------------------------

    def _fail(self, request: RequestState, failure: RequestFailure) -> None:
        """Ends a started request with ``failure``, after the output it already has."""
        self._forget(request)
        self._output.fail(request, failure)

    def _cannot_start(self, job: Job, error: Exception) -> None:
        """A request could not be set up (call it while handling ``error``): INTERNAL."""
        log.exception(
            "cannot start request", extra={"fields": {"request_id": job.params.request_id}}
        )
        self._output.send_failure(job.stream, RequestFailure(grpc.StatusCode.INTERNAL, str(error)))

    def _fail_request(self, request: RequestState, error: Exception) -> None:
        """One request failed on its own (call it while handling ``error``): only it gets
        INTERNAL; the engine serves on."""
        log.exception(
            "request failed", extra={"fields": {"request_id": request.job.params.request_id}}
        )
        self._fail(request, RequestFailure(grpc.StatusCode.INTERNAL, f"internal: {error}"))


def _before_last_token(response: Any) -> bool:
    """Whether a prompt response ends the segment before the last token (which the batch
    holds back, to feed at the first decode step)."""
    done, total = response.progress
    return response.end_of_segment and not response.end_of_prompt and done == total - 1


def _wants_logprob(request: RequestState, response: Any) -> bool:
    return (
        bool(request.job.params.logprobs)
        and not request.replaying
        and response.finish_reason != "stop"
    )


def _replayed(request: RequestState, response: Any) -> None:
    """A delivered token of a continuation, decoded again (engine/continuation.py): checked,
    not sent."""
    delivered = request.job.params.delivered_ids
    expected = delivered[len(delivered) - request.replaying]
    request.replaying -= 1
    if response.token != expected or response.finish_reason is not None:
        raise RuntimeError(
            f"replaying delivered token {expected} gave {response.token} "
            f"(finish {response.finish_reason})"
        )


def _stop_sequences(stop_token_ids: frozenset[int]) -> Any:
    """The BatchGenerator's form of a request's stop token ids."""
    from mlx_lm.generate import StopSequences

    return StopSequences([(token,) for token in sorted(stop_token_ids)])
