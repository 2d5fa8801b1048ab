"""One request's output inside the engine: tokens in, GenerateResponse messages out.

:class:`RequestState` takes each generated token (text from the incremental detokenizer,
cut by the stop-string filter, plus the token id and its log-probability) and decides when the
request is finished: an end-of-sequence or stop token id (not sent as text), a stop string
(text ends just before it), or max_tokens. What it holds goes out as one chunk however many
tokens it covers (``take_output``), then the final message. A continuation starts from the
output state its delivered tokens leave (:mod:`mlx_worker.continuation`) and counts them as
generated. It only builds messages; the engine owns the batch and decides when output is
handed to the event loop.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlx_sidecar.v1 import inference_pb2 as pb

from .continuation import resume_output
from .detokenize import IncrementalDetokenizer, StopStringFilter
from .timings import now

if TYPE_CHECKING:
    from .engine.commands import Job
    from .engine.decoder import Placement

log = logging.getLogger("mlx_worker.engine")


@dataclass(frozen=True)
class Finish:
    """Why a request ends, as decided at one token."""

    reason: int  # pb.FinishReason
    matched_stop: str | None = None
    stop_token: int | None = None


@dataclass(eq=False)
class RequestState:
    """Engine-side state of one request: where it runs and the output it builds."""

    job: Job
    detok: IncrementalDetokenizer
    stops: StopStringFilter
    placement: Placement
    uid: int | None = None  # its uid in the BatchGenerator (placement BATCH)
    generated: int = 0  # tokens generated here (a continuation's delivered ones not included)
    delivered: int = 0  # a continuation's delivered tokens, counted as generated
    replaying: int = 0  # delivered tokens still to be decoded again (not sent)
    _skip_bytes: int = 0  # text bytes the caller of a continuation already has
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache, not prefilled
    # Output not yet taken: the text, ids and log-probabilities of the tokens since the last
    # take (sent as ONE chunk, however many tokens), then the final message.
    _text: list[str] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list)
    _logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    _finished: pb.GenerateResponse | None = None

    @classmethod
    def start(
        cls, job: Job, tokenizer: Any, placement: Placement, uid: int | None = None
    ) -> RequestState:
        params = job.params
        if params.continuation is None:
            return cls(
                job=job,
                detok=IncrementalDetokenizer(tokenizer, params.prompt_ids),
                stops=StopStringFilter(params.stop_strings),
                placement=placement,
                uid=uid,
            )
        resumed = resume_output(
            tokenizer, params.prompt_ids, params.stop_strings, params.continuation
        )
        return cls(
            job=job,
            detok=resumed.detok,
            stops=resumed.stops,
            placement=placement,
            uid=uid,
            delivered=len(params.continuation.delivered_ids),
            _skip_bytes=resumed.bytes_to_skip,
            _text=[resumed.unsent_text] if resumed.unsent_text else [],
        )

    @property
    def completion_tokens(self) -> int:
        """Every generated token, a continuation's delivered ones included."""
        return self.delivered + self.generated

    def on_token(
        self,
        token: int,
        batch_finish: str | None,
        logprob: pb.TokenLogprob | None,
        t: float,
        grammar_complete: bool = False,
    ) -> Finish | None:
        """Adds one generated token (``batch_finish``: the BatchGenerator's finish reason;
        ``grammar_complete``: the token completed the response_format's JSON, which ends the
        request with STOP, the token kept as text)."""
        clock = self.job.clock
        if clock.first_token is None:
            clock.first_token = t
        clock.last_token = t
        self.generated += 1
        finish = None
        ids: list[int] = []
        if batch_finish == "stop":  # an end-of-sequence or stop token id: not text
            finish = Finish(pb.FINISH_REASON_STOP, stop_token=token)
            text = self.detok.flush()
        else:
            ids.append(token)
            text = self.detok.add(ids)
            if batch_finish == "length" or grammar_complete:
                reason = pb.FINISH_REASON_STOP if grammar_complete else pb.FINISH_REASON_LENGTH
                finish = Finish(reason)
                text += self.detok.flush()
        text, matched = self.stops.feed(text) if text else ("", None)
        if matched is not None:
            finish = Finish(pb.FINISH_REASON_STOP, matched_stop=matched)
        elif finish is not None:
            text += self.stops.flush()
        if self._skip_bytes and text:
            text = self._skip_delivered(text)
        if text:
            self._text.append(text)
        self._ids.extend(ids)
        if logprob is not None:
            self._logprobs.append(logprob)
        return finish

    def _skip_delivered(self, text: str) -> str:
        """Drops the start of ``text`` that the caller of a continuation already has."""
        data = text.encode("utf-8")
        n = min(self._skip_bytes, len(data))
        self._skip_bytes -= n
        return data[n:].decode("utf-8", errors="replace")

    def finish(self, finish: Finish) -> None:
        """Adds the final message (and logs the request at debug level)."""
        params = self.job.params
        # Tokens prefilled: a continuation's delivered ones may be among those cached.
        prefilled = max(len(params.prompt_ids) - self.cached_tokens, 0)
        timings = self.job.clock.to_proto(prefilled, self.generated, now())
        resumes = params.continuation.resume_count if params.continuation is not None else 0
        finished = pb.GenerateFinished(
            finish_reason=finish.reason,
            usage=pb.Usage(
                prompt_tokens=len(params.prompt_ids),
                completion_tokens=self.completion_tokens,
                cached_prompt_tokens=min(self.cached_tokens, len(params.prompt_ids)),
                resumes=resumes,
                cached_delivered_tokens=max(self.cached_tokens - len(params.prompt_ids), 0),
            ),
            timings=timings,
            matched_stop=finish.matched_stop or "",
            request_id=params.request_id,
        )
        if finish.stop_token is not None:
            finished.stop_token_id = finish.stop_token
        self._finished = pb.GenerateResponse(finished=finished)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request finished",
                extra={
                    "fields": {
                        "request_id": params.request_id,
                        "finish_reason": pb.FinishReason.Name(finish.reason),
                        "prompt_tokens": len(params.prompt_ids),
                        "cached_prompt_tokens": self.cached_tokens,
                        "completion_tokens": self.completion_tokens,
                        "resumes": resumes,
                        "queue_wait_ms": round(timings.queue_wait_ms, 3),
                        "ttft_ms": round(timings.time_to_first_token_ms, 3),
                        "decode_tps": round(timings.decode_tokens_per_second, 2),
                        "total_ms": round(timings.total_ms, 3),
                    }
                },
            )

    @property
    def has_output(self) -> bool:
        """Whether there is output that ``take_output`` would return."""
        return bool(self._text or self._ids or self._finished is not None)

    def take_output(self) -> list[pb.GenerateResponse]:
        """The output since the last take: at most one chunk, then the final message if the
        request has finished."""
        out = []
        if self._text or self._ids:
            chunk = pb.GenerateChunk(text="".join(self._text), token_ids=self._ids)
            if self._logprobs:
                chunk.logprobs.extend(self._logprobs)
            out.append(pb.GenerateResponse(chunk=chunk))
            self._text, self._ids, self._logprobs = [], [], []
        if self._finished is not None:
            out.append(self._finished)
            self._finished = None
        return out


def token_logprobs(wanted: list[tuple[Any, int]], tokenizer: Any) -> list[pb.TokenLogprob]:
    """Log-probabilities (and top alternatives) of one step's tokens, in one eval.

    ``wanted``: (response, top_n) pairs, answered in their order. The values are mlx-lm's: the
    log-softmax of the logits after logit bias, penalties and a response_format's mask (masked
    tokens are not listed as alternatives), before temperature and top-p / top-k / min-p
    truncation. Each token, and each alternative, comes with its text from
    ``tokenizer.token_text``; the generated token also with its raw ``tokenizer.token_bytes``.
    """
    import mlx.core as mx

    arrays = []
    for response, top_n in wanted:
        lp = response.logprobs
        arrays.append(lp[response.token])
        if top_n:
            idx = mx.argpartition(-lp, kth=top_n - 1)[:top_n]
            arrays.extend((idx, lp[idx]))
    mx.eval(arrays)
    out: list[pb.TokenLogprob] = []
    i = 0
    for response, top_n in wanted:
        token = response.token
        entry = pb.TokenLogprob(
            token_id=token,
            logprob=arrays[i].item(),
            text=tokenizer.token_text(token),
            bytes=tokenizer.token_bytes(token),
        )
        i += 1
        if top_n:
            ids, values = arrays[i].tolist(), arrays[i + 1].tolist()
            i += 2
            for v, t in sorted(zip(values, ids, strict=True), reverse=True):
                if v == -math.inf:  # masked out (response_format): not an alternative
                    continue
                entry.top.add(token_id=t, logprob=v, text=tokenizer.token_text(t))
        out.append(entry)
    return out
