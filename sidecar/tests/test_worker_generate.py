"""Generate, Tokenize, Detokenize and ModelInfo through a real worker on the tiny model."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import WorkerProcess, serving_tiny_worker

from mlx_sidecar.v1 import inference_pb2 as pb

PROMPT = pb.Prompt(text="The quick brown fox")


def _text(chunks: list[pb.GenerateChunk]) -> str:
    return "".join(c.text for c in chunks)


def _ids(chunks: list[pb.GenerateChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def _greedy_in_process(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from mlx_worker.model import load_model

    model = load_model(str(model_dir)).model
    cache = make_prompt_cache(model)
    out: list[int] = []
    x = mx.array([prompt])
    for _ in range(n):
        token = int(mx.argmax(model(x, cache=cache)[0, -1]).item())
        out.append(token)
        x = mx.array([[token]])
    return out


def test_stream_is_chunks_then_finished_with_usage(worker: WorkerProcess, tiny_tokenizer) -> None:
    chunks, fin = worker.generate(prompt=PROMPT, max_tokens=24, request_id="req-usage")
    assert fin.finish_reason == pb.FINISH_REASON_LENGTH
    assert fin.request_id == "req-usage"
    assert fin.usage.completion_tokens == 24 == len(_ids(chunks))
    assert fin.usage.prompt_tokens == len(tiny_tokenizer.encode(PROMPT.text))
    # At most one message per engine step (one token each); a client that falls behind gets
    # the tokens of several steps in one message.
    assert 1 <= len(chunks) <= 24
    assert _text(chunks) == tiny_tokenizer.decode(_ids(chunks))
    assert not fin.HasField("stop_token_id") and fin.matched_stop == ""
    t = fin.timings
    assert 0 <= t.queue_wait_ms <= t.time_to_first_token_ms <= t.total_ms
    assert t.prefill_ms > 0 and t.decode_ms > 0 and t.decode_tokens_per_second > 0
    assert t.prefill_tokens_per_second > 0
    assert t.time_to_first_token_ms + t.decode_ms <= t.total_ms + 1e-6


def test_worker_makes_a_request_id(worker: WorkerProcess) -> None:
    _, a = worker.generate(prompt=PROMPT, max_tokens=1)
    _, b = worker.generate(prompt=PROMPT, max_tokens=1)
    assert a.request_id and b.request_id and a.request_id != b.request_id


def test_greedy_matches_in_process_mlx(worker: WorkerProcess, tiny_model_dir: Path) -> None:
    prompt = [1, 40, 41, 42, 43]
    chunks, _ = worker.generate(prompt=pb.Prompt(tokens=pb.TokenIds(ids=prompt)), max_tokens=32)
    assert _ids(chunks) == _greedy_in_process(tiny_model_dir, prompt, 32)


def test_chat_prompt_uses_the_template(worker: WorkerProcess) -> None:
    chat = pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="Hi there")])
    tokenized = worker.stub.Tokenize(pb.TokenizeRequest(chat=chat), timeout=10)
    assert tokenized.text.endswith("<|im_start|>assistant\n")
    _, fin = worker.generate(prompt=pb.Prompt(chat=chat), max_tokens=3)
    assert fin.usage.prompt_tokens == len(tokenized.ids)
    no_gen = pb.ChatPrompt(messages=chat.messages, add_generation_prompt=False)
    assert not worker.stub.Tokenize(pb.TokenizeRequest(chat=no_gen), timeout=10).text.endswith(
        "assistant\n"
    )


def test_stop_token_id_ends_generation_and_is_not_text(worker: WorkerProcess) -> None:
    reference, _ = worker.generate(prompt=PROMPT, max_tokens=20)
    ids = _ids(reference)
    k = 5
    stop = ids[k]
    first = ids.index(stop)
    chunks, fin = worker.generate(prompt=PROMPT, max_tokens=20, stop_token_ids=[stop])
    assert fin.finish_reason == pb.FINISH_REASON_STOP
    assert fin.stop_token_id == stop
    assert _ids(chunks) == ids[:first]
    assert fin.usage.completion_tokens == first + 1  # the stop token was generated, not sent


def test_eos_stops_unless_ignored(worker: WorkerProcess) -> None:
    # The tiny model never picks EOS greedily, so bias it up: EOS (id 2) wins at once.
    bias = pb.SamplingParams(logit_bias={2: 100.0})
    chunks, fin = worker.generate(prompt=PROMPT, max_tokens=5, sampling=bias)
    assert fin.finish_reason == pb.FINISH_REASON_STOP and fin.stop_token_id == 2
    assert _ids(chunks) == [] and fin.usage.completion_tokens == 1
    chunks, fin = worker.generate(prompt=PROMPT, max_tokens=5, sampling=bias, ignore_eos=True)
    assert fin.finish_reason == pb.FINISH_REASON_LENGTH
    assert _ids(chunks) == [2] * 5


def _clean_boundary(tok: Any, ids: list[int]) -> tuple[int, str]:
    """A position k where tokens k and k+1 both decode to plain text; returns (k, stop)."""
    for k in range(2, len(ids) - 1):
        a, b = tok.decode([ids[k]]), tok.decode([ids[k + 1]])
        if all(s.isprintable() and "\ufffd" not in s and len(s) >= 1 for s in (a, b)):
            whole = tok.decode(ids[: k + 2])
            if whole.endswith(a + b):
                return k, a[-1] + b[:2]  # spans the token boundary
    raise AssertionError("no clean token boundary in the reference output")


def test_stop_string_cuts_exactly_across_tokens(worker: WorkerProcess, tiny_tokenizer) -> None:
    reference, _ = worker.generate(prompt=PROMPT, max_tokens=60)
    ids = _ids(reference)
    full = _text(reference)
    _, stop = _clean_boundary(tiny_tokenizer, ids)
    chunks, fin = worker.generate(prompt=PROMPT, max_tokens=60, stop=["\u2603unused", stop])
    assert fin.finish_reason == pb.FINISH_REASON_STOP
    assert fin.matched_stop == stop
    assert not fin.HasField("stop_token_id")
    assert _text(chunks) == full[: full.index(stop)]
    # Generation ended on the token that completed the stop string.
    n = fin.usage.completion_tokens
    assert stop in tiny_tokenizer.decode(ids[:n])
    assert stop not in tiny_tokenizer.decode(ids[: n - 1])


def _text_span(tok: Any, ids: list[int], start: int, n: int) -> tuple[int, str]:
    """(character offset, text) of tokens ids[start:start+n] within the decoded whole."""
    before, upto = tok.decode(ids[:start]), tok.decode(ids[: start + n])
    return len(before), upto[len(before) :]


def test_stop_string_prefix_is_held_back_then_released(
    worker: WorkerProcess, tiny_tokenizer
) -> None:
    reference, _ = worker.generate(prompt=PROMPT, max_tokens=60)
    ids, full = _ids(reference), _text(reference)
    k, _ = _clean_boundary(tiny_tokenizer, ids)
    # The text of 8 tokens, then a character that never comes: a long-held stop prefix.
    offset, prefix = _text_span(tiny_tokenizer, ids, k, 8)
    never = prefix + "\u2603"
    assert full.find(prefix) == offset
    for _ in range(5):  # a client that falls far behind merges chunks: try again then
        chunks, fin = worker.generate(prompt=PROMPT, max_tokens=60, stop=[never])
        assert fin.finish_reason == pb.FINISH_REASON_LENGTH
        assert _text(chunks) == full
        sent, n_ids, held_back = "", 0, False
        for c in chunks[:-1]:
            sent += c.text
            n_ids += len(c.token_ids)
            for n in range(1, len(never)):
                assert not sent.endswith(never[:n]), f"sent a possible stop prefix: {sent!r}"
            raw = tiny_tokenizer.decode(ids[:n_ids])
            # Inside the prefix: the model has produced part of it, none of it was sent.
            held_back |= offset < len(raw) < offset + len(prefix) and len(sent) <= offset
        if held_back:
            return
    raise AssertionError("no chunk ended inside the stop prefix: the test proves nothing")


def test_text_never_ends_inside_a_character(worker: WorkerProcess, tiny_tokenizer) -> None:
    """Sampled gibberish has many multi-byte characters split over tokens: each chunk's
    cumulative text must be a prefix of the final text (no U+FFFD later corrected)."""
    split_seen = 0
    for seed in range(3):
        chunks, _ = worker.generate(
            prompt=pb.Prompt(text="日本語のテキスト 🙂🚀"),
            max_tokens=150,
            sampling=pb.SamplingParams(temperature=1.0, seed=seed),
        )
        ids = _ids(chunks)
        final = tiny_tokenizer.decode(ids)
        assert _text(chunks) == final
        sent = ""
        for c in chunks:
            sent += c.text
            assert final.startswith(sent)
        for k in range(1, len(ids)):
            partial = tiny_tokenizer.decode(ids[:k])
            if partial.endswith("\ufffd") and not final.startswith(partial):
                split_seen += 1
    assert split_seen, "no character was split across tokens: the test proves nothing"


def test_logprobs_with_top_alternatives(worker: WorkerProcess, tiny_tokenizer) -> None:
    chunks, _ = worker.generate(
        prompt=PROMPT, max_tokens=8, logprobs=pb.LogprobsOptions(enabled=True, top_n=5)
    )
    for c in chunks:
        assert len(c.logprobs) == len(c.token_ids)
        for token, lp in zip(c.token_ids, c.logprobs, strict=True):
            assert lp.token_id == token
            assert lp.logprob <= 0
            assert len(lp.top) == 5
            values = [t.logprob for t in lp.top]
            assert values == sorted(values, reverse=True)
            # Greedy: the chosen token is the most likely one.
            assert lp.top[0].token_id == token and lp.top[0].logprob == pytest.approx(lp.logprob)
            assert lp.top[0].text == tiny_tokenizer.token_text(token)
    only = pb.LogprobsOptions(enabled=True)
    plain, _ = worker.generate(prompt=PROMPT, max_tokens=3, logprobs=only)
    assert all(len(lp.top) == 0 for c in plain for lp in c.logprobs)
    none, _ = worker.generate(prompt=PROMPT, max_tokens=3)
    assert all(len(c.logprobs) == 0 for c in none)


def test_logprobs_carry_each_generated_tokens_text_and_bytes(
    worker: WorkerProcess, tiny_tokenizer
) -> None:
    """The bytes of the generated tokens, joined, are the generated text, characters split
    across tokens included (sampled text with many multi-byte characters)."""
    split_seen = 0
    for seed in range(6):
        chunks, _ = worker.generate(
            prompt=pb.Prompt(text="日本語のテキスト 🙂🚀"),
            max_tokens=60,
            sampling=pb.SamplingParams(temperature=1.0, seed=seed),
            logprobs=pb.LogprobsOptions(enabled=True, top_n=1),
        )
        entries = [lp for c in chunks for lp in c.logprobs]
        assert [lp.token_id for lp in entries] == _ids(chunks)
        for lp in entries:
            assert lp.text == tiny_tokenizer.token_text(lp.token_id)
            assert lp.bytes, f"token {lp.token_id} has no bytes"
            assert lp.bytes.decode("utf-8", errors="replace") == lp.text
        joined = b"".join(lp.bytes for lp in entries)
        assert joined.decode("utf-8", errors="replace") == _text(chunks)
        split_seen += sum("\ufffd" in lp.text for lp in entries)
    assert split_seen, "no token held part of a character: the test proves nothing"


def _sampled(worker: WorkerProcess, seed: int, n: int = 40) -> list[int]:
    chunks, _ = worker.generate(
        prompt=PROMPT,
        max_tokens=n,
        sampling=pb.SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=seed),
    )
    return _ids(chunks)


def test_seed_reproducible_alone_and_batched(worker: WorkerProcess) -> None:
    alone = _sampled(worker, 42)
    assert _sampled(worker, 42) == alone
    assert _sampled(worker, 43) != alone
    with ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(lambda s: _sampled(worker, s), [42, 7, 8, 9]))
    assert batched[0] == alone


def test_sampling_parameters_change_the_output(worker: WorkerProcess) -> None:
    greedy, _ = worker.generate(prompt=PROMPT, max_tokens=30)
    penalized, _ = worker.generate(
        prompt=PROMPT,
        max_tokens=30,
        sampling=pb.SamplingParams(
            repetition_penalty=1.5, presence_penalty=1.0, frequency_penalty=0.5
        ),
    )
    assert _ids(penalized) != _ids(greedy)
    # Biasing one token far up makes greedy pick it every time.
    biased, _ = worker.generate(
        prompt=PROMPT, max_tokens=5, sampling=pb.SamplingParams(logit_bias={100: 1000.0})
    )
    assert _ids(biased) == [100] * 5
    # top_k=1 is greedy whatever the temperature.
    top1, _ = worker.generate(
        prompt=PROMPT, max_tokens=30, sampling=pb.SamplingParams(temperature=5.0, top_k=1)
    )
    assert _ids(top1) == _ids(greedy)


def test_concurrent_requests_run_in_one_batch(worker: WorkerProcess) -> None:
    n = 4
    start = threading.Barrier(n)
    first_chunk_at = [0.0] * n
    finished_at = [0.0] * n

    def run(i: int) -> pb.GenerateFinished:
        start.wait(10)
        finished = None
        for msg in worker.stub.Generate(
            pb.GenerateRequest(prompt=PROMPT, max_tokens=1000), timeout=120
        ):
            if msg.HasField("chunk") and not first_chunk_at[i]:
                first_chunk_at[i] = time.monotonic()
            if msg.HasField("finished"):
                finished_at[i] = time.monotonic()
                finished = msg.finished
        assert finished is not None
        return finished

    t0 = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(run, range(n)))
    wall = time.monotonic() - t0
    assert all(r.usage.completion_tokens == 1000 for r in results)
    # Every request had produced tokens before any of them finished: they overlapped.
    assert max(first_chunk_at) < min(finished_at)
    # And together they took far less than one after another would.
    assert wall * 1e3 < 0.75 * sum(r.timings.total_ms for r in results)


def test_context_overflow_is_resource_exhausted(worker: WorkerProcess) -> None:
    info = worker.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    ctx = info.context_length
    ids = [(i % 200) + 3 for i in range(ctx)]
    for prompt_ids, max_tokens, field in [
        (ids, None, "prompt:"),
        (ids[: ctx - 50], 100, "max_tokens:"),
    ]:
        fields: dict[str, Any] = {"prompt": pb.Prompt(tokens=pb.TokenIds(ids=prompt_ids))}
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        with pytest.raises(grpc.RpcError) as e:
            worker.generate(**fields)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details().startswith(field)
    # Unset max_tokens is capped by the room left in the context.
    chunks, fin = worker.generate(prompt=pb.Prompt(tokens=pb.TokenIds(ids=ids[: ctx - 10])))
    assert fin.finish_reason == pb.FINISH_REASON_LENGTH
    assert fin.usage.completion_tokens == 10 == len(_ids(chunks))


def test_tokenize_and_detokenize(worker: WorkerProcess, tiny_tokenizer) -> None:
    text = "Hello, world! Café 日本"
    r = worker.stub.Tokenize(pb.TokenizeRequest(text=text), timeout=10)
    assert list(r.ids) == tiny_tokenizer.encode(text) and r.text == text
    r2 = worker.stub.Tokenize(pb.TokenizeRequest(text=text, add_special_tokens=False), timeout=10)
    assert list(r2.ids) == tiny_tokenizer.encode(text, add_special_tokens=False)
    back = worker.stub.Detokenize(pb.DetokenizeRequest(ids=r2.ids), timeout=10)
    assert back.text == text
    special = worker.stub.Detokenize(pb.DetokenizeRequest(ids=[1, *r2.ids, 2]), timeout=10)
    assert special.text == f"<|im_start|>{text}<|im_end|>"
    skipped = worker.stub.Detokenize(
        pb.DetokenizeRequest(ids=[1, *r2.ids, 2], skip_special_tokens=True), timeout=10
    )
    assert skipped.text == text


def test_model_info_fills_every_field(worker: WorkerProcess, tiny_tokenizer) -> None:
    info = worker.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert info.model_id and info.model_path and info.architecture == "llama"
    assert info.context_length == 2048
    assert info.vocab_size == tiny_tokenizer.vocab_size
    assert info.device == pb.DEVICE_KIND_CPU and info.backend == pb.BACKEND_CPU
    assert info.device_name
    assert info.mlx_version == "0.32.4" and info.mlx_lm_version == "0.32.2"
    assert info.active_memory_bytes > 0 and info.peak_memory_bytes >= info.active_memory_bytes
    assert info.HasField("quantization") and info.quantization.dtype
    assert info.worker_pid == worker.proc.pid != os.getpid()
    assert info.worker_version and info.python_version
    assert list(info.eos_token_ids) == sorted(tiny_tokenizer.eos_token_ids)
    assert 2 in info.eos_token_ids
    assert info.has_chat_template
    assert info.max_batch_size == 32
    assert info.load_seconds > 0
    assert info.parameter_count > 0
    assert info.cpu_blas


def test_large_inputs(worker: WorkerProcess, tiny_tokenizer) -> None:
    """Inputs past the size that is tokenized off the event loop still work the same."""
    text = "The quick brown fox jumps over the lazy dog. " * 1200  # 54,000 characters
    r = worker.stub.Tokenize(pb.TokenizeRequest(text=text), timeout=30)
    assert list(r.ids) == tiny_tokenizer.encode(text)
    back = worker.stub.Detokenize(pb.DetokenizeRequest(ids=r.ids), timeout=30)
    assert back.text == text
    with pytest.raises(grpc.RpcError) as e:
        worker.generate(prompt=pb.Prompt(text=text), max_tokens=1)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details().startswith("prompt:")


@pytest.fixture(scope="module")
def solo_worker(tiny_model_dir: Path) -> Iterator[WorkerProcess]:
    """A worker with the solo path on (the default, said explicitly)."""
    with serving_tiny_worker(tiny_model_dir, "--solo", "on") as w:
        yield w


@pytest.fixture(scope="module")
def batch_worker(tiny_model_dir: Path) -> Iterator[WorkerProcess]:
    """A worker that keeps every request in the batch (``--solo off``)."""
    with serving_tiny_worker(tiny_model_dir, "--solo", "off") as w:
        yield w


def test_a_lone_request_runs_alone_and_gives_the_batched_tokens(
    solo_worker: WorkerProcess, batch_worker: WorkerProcess, worker: WorkerProcess
) -> None:
    w = solo_worker
    alone, fin = w.generate(prompt=PROMPT, max_tokens=40, request_id="lone")
    assert fin.usage.completion_tokens == 40
    w.wait_log("request runs alone", request_id="lone")
    # The same request while another one decodes joins the BatchGenerator.
    long = w.stub.Generate(
        pb.GenerateRequest(prompt=PROMPT, max_tokens=2000, request_id="long"), timeout=120
    )
    next(iter(long))  # "long" is decoding (alone)
    batched, _ = w.generate(prompt=PROMPT, max_tokens=40, request_id="beside")
    long.cancel()
    w.wait_log("request removed", request_id="long")
    assert w.find_log("request runs alone", request_id="beside") is None
    assert w.find_log("prefill started", request_id="beside") is not None
    assert _ids(batched) == _ids(alone)
    assert "".join(c.text for c in batched) == "".join(c.text for c in alone)
    # With --solo off a lone request goes through the batch: the same tokens.
    b = batch_worker
    in_batch, _ = b.generate(prompt=PROMPT, max_tokens=40, request_id="lone-batch")
    assert b.find_log("request runs alone", request_id="lone-batch") is None
    assert b.find_log("prefill started", request_id="lone-batch") is not None
    assert _ids(in_batch) == _ids(alone)
    # The default worker runs a lone request alone.
    default, _ = worker.generate(prompt=PROMPT, max_tokens=40, request_id="lone-default")
    worker.wait_log("request runs alone", request_id="lone-default")
    assert _ids(default) == _ids(alone)


@pytest.mark.parametrize(
    "sampling",
    [
        pb.SamplingParams(repetition_penalty=1.3, logit_bias={5: 2.0}),
        pb.SamplingParams(temperature=0.8, top_p=0.9, seed=5),
    ],
    ids=["greedy-penalized", "seeded"],
)
def test_a_lone_request_joined_midway_moves_into_the_batch_unchanged(
    solo_worker: WorkerProcess, sampling: pb.SamplingParams
) -> None:
    w = solo_worker
    n = 1500
    alone, _ = w.generate(prompt=PROMPT, max_tokens=n, sampling=sampling)
    rid = f"joined-{sampling.seed}"
    first = w.stub.Generate(
        pb.GenerateRequest(prompt=PROMPT, max_tokens=n, sampling=sampling, request_id=rid),
        timeout=120,
    )
    messages = iter(first)
    chunks = [next(messages).chunk]  # decoding alone
    other, _ = w.generate(prompt=PROMPT, max_tokens=5)
    assert len(other) == 5
    finished = None
    for msg in messages:
        if msg.HasField("chunk"):
            chunks.append(msg.chunk)
        else:
            finished = msg.finished
    joined = w.wait_log("request joins the batch", request_id=rid)
    assert 0 < joined["fields"]["generated"] < n
    assert finished is not None and finished.usage.completion_tokens == n
    # The cache, the token history (penalties), the sampler's random key and the count all
    # carried over: the same tokens as alone.
    assert _ids(chunks) == _ids(alone)


def test_a_stream_interval_groups_tokens_but_sends_the_first_and_the_end_at_once(
    tiny_model_dir: Path, worker: WorkerProcess
) -> None:
    interval_s, n = 0.05, 300
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "max_tokens": n,
        "ignore_eos": True,
        "logprobs": pb.LogprobsOptions(enabled=True, top_n=2),
    }
    reference, _ = worker.generate(**fields)
    request = pb.GenerateRequest(**fields)
    chunks: list[pb.GenerateChunk] = []
    arrivals: list[float] = []
    finished = None
    with serving_tiny_worker(tiny_model_dir, "--stream-interval-ms", str(interval_s * 1000)) as w:
        for msg in w.stub.Generate(request, timeout=60):
            arrivals.append(time.monotonic())
            if msg.HasField("chunk"):
                chunks.append(msg.chunk)
            else:
                finished = msg.finished
    assert finished is not None and finished.usage.completion_tokens == n
    assert _ids(chunks) == _ids(reference)
    assert _text(chunks) == _text(reference)
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert logprobs == [lp for c in reference for lp in c.logprobs]
    assert len(logprobs) == n  # one per token, in order, however the tokens were grouped
    assert len(chunks[0].token_ids) == 1  # the first token is not held back
    # After the first token, at most one message per interval (the end comes with the last).
    span = arrivals[-1] - arrivals[0]
    assert len(chunks) - 1 <= span / interval_s + 2, (len(chunks), span)
