"""A continuation (a stream cut by a worker's death, resumed on this worker) gives what the
uninterrupted run gives after the delivered tokens: the same token ids, text that joins the
delivered text exactly, the same stop, log-probabilities and usage.

Each test runs a real in-process engine on the tiny model (mlx_worker.testing.engine_runs):
the uninterrupted runs first, then a continuation cut after every chunk, by both methods of
mlx_worker.engine.continuation, alone (the solo path) and together (the batch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_worker.engine import continuation
from mlx_worker.errors import RequestFailure
from mlx_worker.testing.engine_runs import EngineRuns, Received, engine_runs
from mlx_worker.validation import ModelLimits, validate_generate

PROMPTS = ["Hello world", "The capital of France is", "日本語のテキスト"]
GREEDY = pb.SamplingParams()
SEEDED = pb.SamplingParams(temperature=0.9, top_p=0.95, seed=42)
PENALTIES = pb.SamplingParams(
    repetition_penalty=1.5,
    repetition_context_size=8,
    presence_penalty=1.0,
    frequency_penalty=0.7,
    penalty_context_size=8,
)
METHODS = ["replay", "prefill"]


def _request(prompt: str, sampling: pb.SamplingParams, max_tokens: int = 16, **kw: Any) -> Any:
    return pb.GenerateRequest(
        prompt=pb.Prompt(text=prompt), max_tokens=max_tokens, sampling=sampling, **kw
    )


def _resumed(request: pb.GenerateRequest, cont: pb.Continuation) -> pb.GenerateRequest:
    out = pb.GenerateRequest()
    out.CopyFrom(request)
    out.continuation.CopyFrom(cont)
    return out


def _with_engine(
    tiny_model_dir: Path, body: Callable[[EngineRuns], Awaitable[None]], **config: Any
) -> None:
    async def main() -> None:
        async with engine_runs(str(tiny_model_dir), tiny_model_dir.parent, **config) as runs:
            await body(runs)

    asyncio.run(main())


def _assert_continues(ref: Received, cont: pb.Continuation, got: Received, what: str) -> None:
    """``got`` (resumed after ``cont``) is the rest of ``ref``, token by token."""
    assert got.failure is None, f"{what}: {got.failure}"
    k = len(cont.delivered_token_ids)
    assert got.token_ids == ref.token_ids[k:], what
    delivered_text = ref.text.encode("utf-8")[: cont.delivered_text_bytes].decode("utf-8")
    assert delivered_text + got.text == ref.text, what
    assert got.finished is not None and ref.finished is not None
    assert got.finished.finish_reason == ref.finished.finish_reason, what
    assert got.finished.matched_stop == ref.finished.matched_stop, what
    assert got.finished.usage.completion_tokens == ref.finished.usage.completion_tokens, what
    assert got.finished.usage.resumes == cont.resume_count, what
    want = ref.logprobs[k:]
    assert [lp.token_id for lp in got.logprobs] == [lp.token_id for lp in want], what
    for a, b in zip(got.logprobs, want, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4), what
        assert [t.token_id for t in a.top] == [t.token_id for t in b.top], what


async def _check_every_cut(
    runs: EngineRuns, requests: list[pb.GenerateRequest], together: bool
) -> int:
    """Resumes every request after each of its chunks; returns how many continuations ran."""

    async def run(reqs: list[pb.GenerateRequest]) -> list[Received]:
        if together:
            return await runs.run(reqs)
        return [(await runs.run([r]))[0] for r in reqs]

    refs = await run(requests)
    checked = 0
    for cut in range(1, max(len(r.chunks) for r in refs)):
        cuts = [
            (req, ref) for req, ref in zip(requests, refs, strict=True) if cut < len(ref.chunks)
        ]
        conts = [ref.cut_after(cut) for _, ref in cuts]
        got = await run([_resumed(req, c) for (req, _), c in zip(cuts, conts, strict=True)])
        for (req, ref), cont, g in zip(cuts, conts, got, strict=True):
            what = f"prompt {req.prompt.text!r}, cut after {len(cont.delivered_token_ids)} tokens"
            _assert_continues(ref, cont, g, what)
            checked += 1
    return checked


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("placement", ["solo", "batch"])
@pytest.mark.parametrize(
    "sampling", [GREEDY, SEEDED, PENALTIES], ids=["greedy", "seeded", "penalties"]
)
def test_a_continuation_gives_the_uninterrupted_runs_tokens(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    placement: str,
    sampling: pb.SamplingParams,
) -> None:
    monkeypatch.setattr(continuation, "RESUME_METHOD", method)
    lp = pb.LogprobsOptions(enabled=True, top_n=3)
    requests = [_request(p, sampling, logprobs=lp) for p in PROMPTS]

    async def body(runs: EngineRuns) -> None:
        checked = await _check_every_cut(runs, requests, together=placement == "batch")
        assert checked >= 3 * 10

    _with_engine(tiny_model_dir, body)


def test_penalties_see_the_delivered_tokens(tiny_model_dir: Path) -> None:
    """The penalties case above can fail: on two of its prompts the penalties change the
    output after a repeated token (a continuation cut past that token gets it right only if
    its penalties count the delivered tokens)."""

    async def body(runs: EngineRuns) -> None:
        for prompt in PROMPTS[1:]:
            plain, penalized = await runs.run(
                [_request(prompt, GREEDY), _request(prompt, PENALTIES)]
            )
            assert plain.token_ids != penalized.token_ids, prompt
            assert plain.token_ids[:3] == penalized.token_ids[:3], prompt

    _with_engine(tiny_model_dir, body)


@pytest.mark.parametrize("method", METHODS)
def test_a_stop_string_spanning_the_seam_still_matches(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    monkeypatch.setattr(continuation, "RESUME_METHOD", method)

    async def body(runs: EngineRuns) -> None:
        (free,) = await runs.run([_request(PROMPTS[1], GREEDY, 40)])
        text = free.text
        # A stop string of 4 characters from the middle of the text (no replacement char).
        start = next(
            i for i in range(len(text) // 2, len(text) - 4) if "\ufffd" not in text[i : i + 4]
        )
        stop = text[start : start + 4]
        request = _request(PROMPTS[1], GREEDY, 40, stop=[stop])
        (ref,) = await runs.run([request])
        assert ref.finished is not None and ref.finished.matched_stop == stop
        held_at_seam = 0
        for cut in range(1, len(ref.chunks)):
            cont = ref.cut_after(cut)
            (got,) = await runs.run([_resumed(request, cont)])
            _assert_continues(ref, cont, got, f"cut after chunk {cut}")
            # The delivered tokens' text the caller did not get: held back as a stop's prefix.
            delivered_text = runs.limits.tokenizer.decode(list(cont.delivered_token_ids))
            held = delivered_text.encode("utf-8")[cont.delivered_text_bytes :]
            held_at_seam += bool(held) and stop.encode("utf-8").startswith(held)
        assert held_at_seam, "no cut fell inside the stop string"

    _with_engine(tiny_model_dir, body)


def _byte_token(tokenizer: Any, byte: int) -> int:
    """The tiny vocabulary's token for one raw byte."""
    for token in range(tokenizer.vocab_size):
        if tokenizer.token_bytes(token) == bytes([byte]):
            return token
    raise AssertionError(f"no token for byte {byte:#x}")


@pytest.mark.parametrize("method", METHODS)
def test_a_character_split_at_the_seam_joins(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Two of the three bytes of '€' were delivered (the caller got no text for them); the
    third, forced by a logit bias, completes the character."""
    monkeypatch.setattr(continuation, "RESUME_METHOD", method)

    async def body(runs: EngineRuns) -> None:
        tok = runs.limits.tokenizer
        first, second, third = (_byte_token(tok, b) for b in "€".encode())
        sampling = pb.SamplingParams(logit_bias={third: 100.0})
        request = _request(PROMPTS[0], sampling, 4, logprobs=pb.LogprobsOptions(enabled=True))
        cont = pb.Continuation(
            delivered_token_ids=[first, second], delivered_text_bytes=0, resume_count=2
        )
        (got,) = await runs.run([_resumed(request, cont)])
        assert got.failure is None, got.failure
        assert got.token_ids == [third, third]
        assert got.text.startswith("€"), got.text
        assert got.finished is not None
        assert got.finished.finish_reason == pb.FINISH_REASON_LENGTH
        assert got.finished.usage.completion_tokens == 4
        assert got.finished.usage.resumes == 2
        assert [lp.token_id for lp in got.logprobs] == [third, third]

    _with_engine(tiny_model_dir, body)


def test_text_the_caller_did_not_get_is_sent_first(tiny_model_dir: Path) -> None:
    """A caller that got fewer text bytes than its tokens' text gets the rest, then more."""

    async def body(runs: EngineRuns) -> None:
        request = _request(PROMPTS[1], GREEDY, 16)
        (ref,) = await runs.run([request])
        cont = ref.cut_after(8)
        full = ref.text.encode("utf-8")
        boundaries = [b for b in range(cont.delivered_text_bytes) if _on_boundary(full, b)]
        for b in boundaries:
            cont.delivered_text_bytes = b
            (got,) = await runs.run([_resumed(request, cont)])
            _assert_continues(ref, cont, got, f"delivered_text_bytes {b}")

    _with_engine(tiny_model_dir, body)


def test_text_the_caller_got_beyond_this_workers_is_not_sent_again(tiny_model_dir: Path) -> None:
    """A caller that got text this worker would have held back (a stop string's possible
    start) gets only what follows it."""

    async def body(runs: EngineRuns) -> None:
        tok = runs.limits.tokenizer
        delivered = tok.encode("abx", add_special_tokens=False)
        (q,) = tok.encode("q", add_special_tokens=False)
        sampling = pb.SamplingParams(logit_bias={q: 100.0})
        request = _request(PROMPTS[0], sampling, len(delivered) + 2, stop=["xyz"])
        cont = pb.Continuation(
            delivered_token_ids=delivered, delivered_text_bytes=3, resume_count=1
        )
        (got,) = await runs.run([_resumed(request, cont)])
        assert got.failure is None, got.failure
        assert got.token_ids == [q, q]
        assert got.text == "qq"

    _with_engine(tiny_model_dir, body)


def _on_boundary(data: bytes, offset: int) -> bool:
    try:
        data[:offset].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("method", METHODS)
def test_a_continuation_handed_over_to_the_batch_mid_replay(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    """A continuation running alone is handed over to the batch when a second request comes
    (while its delivered tokens are being decoded again, with ``replay``)."""
    monkeypatch.setattr(continuation, "RESUME_METHOD", method)
    caplog.set_level(logging.DEBUG, logger="mlx_worker.engine")

    async def body(runs: EngineRuns) -> None:
        request = _request(PROMPTS[0], SEEDED, 200)
        (ref,) = await runs.run([request])
        cont = ref.cut_after(150)
        clock, resumed = runs.submit(_resumed(request, cont))
        deadline = asyncio.get_running_loop().time() + 30
        while clock.prefill_start is None:  # it started, alone
            assert asyncio.get_running_loop().time() < deadline, "the continuation never started"
            await asyncio.sleep(0.0005)
        _, other = runs.submit(_request(PROMPTS[2], GREEDY, 8))
        got, other_got = await asyncio.gather(resumed, other)
        assert other_got.failure is None
        _assert_continues(ref, cont, got, "handed over")
        joins = [r for r in caplog.records if r.getMessage() == "request joins the batch"]
        assert joins, "no hand-over happened"
        if method == "replay":
            assert joins[0].fields["replaying"] > 0, "the hand-over came after the replay"

    _with_engine(tiny_model_dir, body)


# ---- validation ------------------------------------------------------------------------


@pytest.fixture
def limits(tiny_tokenizer: Any) -> ModelLimits:
    return ModelLimits(
        tokenizer=tiny_tokenizer,
        vocab_size=tiny_tokenizer.vocab_size,
        context_length=64,
        eos_token_ids=frozenset({2}),
    )


def _invalid(limits: ModelLimits, request: pb.GenerateRequest) -> RequestFailure:
    with pytest.raises(RequestFailure) as e:
        validate_generate(request, limits)
    return e.value


def test_continuation_fields_are_validated(limits: ModelLimits) -> None:
    tok = limits.tokenizer
    euro = [_byte_token(tok, b) for b in "€".encode()]
    a = tok.encode("ab", add_special_tokens=False)
    base = _request("hello", GREEDY, 8, stop=["xyz"])
    cases = [
        (pb.Continuation(delivered_token_ids=a, resume_count=0), "continuation.resume_count: "),
        (
            pb.Continuation(delivered_token_ids=[*a, 10**6], resume_count=1),
            f"continuation.delivered_token_ids[{len(a)}]: token id 1000000 is out of range",
        ),
        (
            pb.Continuation(delivered_token_ids=[a[0], 2], resume_count=1),
            "continuation.delivered_token_ids[1]: token id 2 is a stop token",
        ),
        (
            pb.Continuation(delivered_token_ids=a * 8, resume_count=1),
            "continuation.delivered_token_ids: ",
        ),
        (
            pb.Continuation(delivered_token_ids=a, delivered_text_bytes=3, resume_count=1),
            "continuation.delivered_text_bytes: 3 is beyond",
        ),
        (
            pb.Continuation(delivered_token_ids=euro, delivered_text_bytes=1, resume_count=1),
            "continuation.delivered_text_bytes: 1 is not on a character boundary",
        ),
        (
            pb.Continuation(delivered_text_bytes=1, resume_count=1),
            "continuation.delivered_text_bytes: ",
        ),
        (
            pb.Continuation(
                delivered_token_ids=tok.encode("axyz", add_special_tokens=False), resume_count=1
            ),
            "continuation.delivered_token_ids: their text holds the stop string 'xyz'",
        ),
    ]
    for cont, prefix in cases:
        failure = _invalid(limits, _resumed(base, cont))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, (cont, failure)
        assert failure.message.startswith(prefix), (cont, failure.message)
    # The text of the delivered tokens is at most their decoded text, on a boundary.
    ok = pb.Continuation(delivered_token_ids=euro, delivered_text_bytes=3, resume_count=1)
    assert validate_generate(_resumed(base, ok), limits).delivered_ids == tuple(euro)


def test_a_continuation_that_leaves_no_room_in_the_context(limits: ModelLimits) -> None:
    prompt = limits.tokenizer.encode("hello", add_special_tokens=True)
    request = pb.GenerateRequest(prompt=pb.Prompt(tokens=pb.TokenIds(ids=prompt)))
    filler = limits.tokenizer.encode("a", add_special_tokens=False)
    request.continuation.CopyFrom(
        pb.Continuation(delivered_token_ids=filler * (64 - len(prompt)), resume_count=1)
    )
    failure = _invalid(limits, request)
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.message.startswith("continuation: "), failure.message
    assert "leave no room in the context of 64 tokens" in failure.message


def test_a_continuation_in_benchmark_mode(tiny_model_dir: Path) -> None:
    """With synthetic tokens (the prompt's ids, cycled) a continuation is replayed, so it
    goes on with the cycle rather than with a longer prompt's."""
    from mlx_worker.synthetic import SyntheticSpec

    async def body(runs: EngineRuns) -> None:
        request = _request(PROMPTS[1], GREEDY, 12)  # 5 prompt tokens
        (ref,) = await runs.run([request])
        cont = ref.cut_after(3)  # not a whole cycle: prefilled, the cycle would change
        (got,) = await runs.run([_resumed(request, cont)])
        _assert_continues(ref, cont, got, "synthetic")

    _with_engine(tiny_model_dir, body, synthetic=SyntheticSpec())


def test_the_resume_method_by_device() -> None:
    """Prefill where it is bit for bit (a CPU and an H200, measured); replay for synthetic
    tokens (BENCHMARKS.md, "Resuming a stream: replay vs prefill")."""
    assert continuation.resume_method(on_gpu=False, synthetic=False) == "prefill"
    assert continuation.resume_method(on_gpu=True, synthetic=False) == "prefill"
    assert continuation.resume_method(on_gpu=False, synthetic=True) == "replay"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("placement", ["solo", "batch"])
def test_a_json_output_continues_with_its_grammar_state(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str, placement: str
) -> None:
    """response_format survives the seam: the grammar state rebuilt from the delivered tokens
    masks the next step as the uninterrupted run's did, by both resume methods."""
    monkeypatch.setattr(continuation, "RESUME_METHOD", method)
    schema = (
        '{"type":"object","properties":{"name":{"type":"string","maxLength":12},'
        '"n":{"type":"integer","minimum":0,"maximum":99}},"required":["name","n"],'
        '"additionalProperties":false}'
    )
    fmt = pb.ResponseFormat(json_schema=schema)
    requests = [_request(p, GREEDY, 200, response_format=fmt) for p in PROMPTS]

    async def body(runs: EngineRuns) -> None:
        checked = await _check_every_cut(runs, requests, together=placement == "batch")
        assert checked >= 3

    _with_engine(tiny_model_dir, body)
