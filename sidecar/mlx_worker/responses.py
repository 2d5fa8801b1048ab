"""One request's output inside the engine: tokens in, GenerateResponse messages out.

:class:`RequestState` turns each generated token into at most one chunk (text from the
incremental detokenizer, cut by the stop-string filter, plus the token id and its
log-probability) and decides when the request is finished: an end-of-sequence or stop token
id (not sent as text), a stop string (text ends just before it), or max_tokens. It only
builds messages; the engine owns the batch and the hand-over to the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlx_sidecar.v1 import inference_pb2 as pb

from .detokenize import IncrementalDetokenizer, StopStringFilter
from .timings import now

if TYPE_CHECKING:
    from .engine import Job

log = logging.getLogger("mlx_worker.engine")


@dataclass(frozen=True)
class Finish:
    """Why a request ends, as decided at one token."""

    reason: int  # pb.FinishReason
    matched_stop: str | None = None
    stop_token: int | None = None


@dataclass(eq=False)
class RequestState:
    """Engine-side state of one request in the BatchGenerator."""

    job: Job
    uid: int
    detok: IncrementalDetokenizer
    stops: StopStringFilter
    generated: int = 0
    events: list[Any] = field(default_factory=list)

    @classmethod
    def start(cls, job: Job, uid: int, tokenizer: Any) -> RequestState:
        p = job.params
        return cls(
            job=job,
            uid=uid,
            detok=IncrementalDetokenizer(tokenizer, p.prompt_ids),
            stops=StopStringFilter(p.stop_strings),
        )

    def on_token(
        self, token: int, batch_finish: str | None, logprob: pb.TokenLogprob | None, t: float
    ) -> Finish | None:
        """Adds one generated token (``batch_finish``: the BatchGenerator's finish reason)."""
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
            if batch_finish == "length":
                finish = Finish(pb.FINISH_REASON_LENGTH)
                text += self.detok.flush()
        text, matched = self.stops.feed(text) if text else ("", None)
        if matched is not None:
            finish = Finish(pb.FINISH_REASON_STOP, matched_stop=matched)
        elif finish is not None:
            text += self.stops.flush()
        if text or ids:
            chunk = pb.GenerateChunk(text=text, token_ids=ids)
            if logprob is not None:
                chunk.logprobs.append(logprob)
            self.events.append(pb.GenerateResponse(chunk=chunk))
        return finish

    def finish(self, finish: Finish) -> None:
        """Adds the final message (and logs the request at debug level)."""
        p = self.job.params
        timings = self.job.clock.to_proto(len(p.prompt_ids), self.generated, now())
        finished = pb.GenerateFinished(
            finish_reason=finish.reason,
            usage=pb.Usage(prompt_tokens=len(p.prompt_ids), completion_tokens=self.generated),
            timings=timings,
            matched_stop=finish.matched_stop or "",
            request_id=p.request_id,
        )
        if finish.stop_token is not None:
            finished.stop_token_id = finish.stop_token
        self.events.append(pb.GenerateResponse(finished=finished))
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request finished",
                extra={
                    "fields": {
                        "request_id": p.request_id,
                        "finish_reason": pb.FinishReason.Name(finish.reason),
                        "prompt_tokens": len(p.prompt_ids),
                        "completion_tokens": self.generated,
                        "queue_wait_ms": round(timings.queue_wait_ms, 3),
                        "ttft_ms": round(timings.time_to_first_token_ms, 3),
                        "decode_tps": round(timings.decode_tokens_per_second, 2),
                        "total_ms": round(timings.total_ms, 3),
                    }
                },
            )

    def take_events(self) -> list[Any]:
        events, self.events = self.events, []
        return events


def token_logprobs(wanted: list[tuple[Any, int]], token_text: Any) -> dict[int, pb.TokenLogprob]:
    """Log-probabilities (and top alternatives) of one step's tokens, in one eval.

    ``wanted``: (BatchGenerator response, top_n) pairs. The values are mlx-lm's: the
    log-softmax of the logits after logit bias and penalties, before temperature and top-p /
    top-k / min-p truncation.
    """
    import mlx.core as mx

    arrays = []
    for r, top_n in wanted:
        lp = r.logprobs
        arrays.append(lp[r.token])
        if top_n:
            idx = mx.argpartition(-lp, kth=top_n - 1)[:top_n]
            arrays.extend((idx, lp[idx]))
    mx.eval(arrays)
    out: dict[int, pb.TokenLogprob] = {}
    i = 0
    for r, top_n in wanted:
        entry = pb.TokenLogprob(token_id=r.token, logprob=arrays[i].item())
        i += 1
        if top_n:
            ids, values = arrays[i].tolist(), arrays[i + 1].tolist()
            i += 2
            for v, t in sorted(zip(values, ids, strict=True), reverse=True):
                entry.top.add(token_id=t, logprob=v, text=token_text(t))
        out[r.uid] = entry
    return out
