"""The prefix cache: the real engine with the tiny model, with the cache and without it.

Greedy output must be token for token the same; ``cached_prompt_tokens`` counts what was reused;
requests sharing a prefix sent together prefill it once; the bounds evict; a reused cache,
mutated, leaves the stored entry as it was; a prefill-only request (a standby's shadow of a
stream) fills the cache without output, so that a continuation prefills only its delivered
tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_worker.config import WorkerConfig, parse_size
from mlx_worker.engine import Engine
from mlx_worker.engine.prefix_cache import (
    MIN_SHARED_PREFIX,
    PrefixCache,
    SharedPrefixes,
    default_max_bytes,
)
from mlx_worker.errors import RequestFailure
from mlx_worker.faults import Faults
from mlx_worker.params import Continuation, GenerateParams, SamplingSettings
from mlx_worker.streams import ResponseStream
from mlx_worker.timings import RequestClock, now

# A shared "system prompt" longer than MIN_SHARED_PREFIX, and user turns after it.
SYSTEM = [40 + (i * 7) % 150 for i in range(MIN_SHARED_PREFIX + 36)]
TURNS = [[200 + i, 201, 202 + i, 203] for i in range(6)]


@dataclasses.dataclass
class Result:
    """One finished request: its token ids and the usage it reported."""

    ids: list[int]
    usage: pb.Usage


def _params(
    request_id: str,
    prompt: list[int],
    max_tokens: int,
    delivered: list[int] | None = None,
    prefill_only: bool = False,
) -> GenerateParams:
    continuation = None
    if delivered:
        continuation = Continuation(tuple(delivered), delivered_text_bytes=0, resume_count=1)
    return GenerateParams(
        request_id=request_id,
        prompt_ids=list(prompt),
        max_tokens=max_tokens,
        sampling=SamplingSettings(),
        continuation=continuation,
        prefill_only=prefill_only,
    )


async def _collect(stream: ResponseStream) -> Result:
    ids: list[int] = []
    while True:
        for item in await stream.take():
            if isinstance(item, RequestFailure):
                raise AssertionError(f"request failed: {item}")
            if item.HasField("chunk"):
                ids.extend(item.chunk.token_ids)
            elif item.HasField("finished"):
                return Result(ids, item.finished.usage)


def _run(
    eng: Engine, request_id: str, prompt: list[int], max_tokens: int, **extra: Any
) -> Awaitable[Result]:
    stream = ResponseStream()
    params = _params(request_id, prompt, max_tokens, **extra)
    eng.submit(params, stream, RequestClock(arrival=now()))
    return asyncio.ensure_future(_collect(stream))


async def _with_engine(
    model_dir: Path, body: Callable[[Engine], Awaitable[Any]], **settings: Any
) -> Any:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    config = WorkerConfig(
        socket_path=Path("unused"), model=str(model_dir), cache_dir=Path("."), **settings
    )
    eng = Engine(
        config,
        Faults(),
        loop,
        on_ready=lambda loaded, report: ready.set_result(loaded),
        on_failed=lambda e: ready.set_exception(e),
        on_died=lambda: None,
    )
    eng.start()
    await asyncio.wait_for(ready, 120)
    try:
        return await asyncio.wait_for(body(eng), 120)
    finally:
        eng.stop(timeout=10)


async def _conversation(eng: Engine) -> list[Result]:
    """Three turns, each prompt the last prompt plus its answer plus a new user turn."""
    results = []
    prompt = list(SYSTEM)
    for turn in TURNS[:3]:
        prompt = prompt + turn
        result = await _run(eng, f"turn{len(results)}", prompt, 8)
        results.append(result)
        prompt = prompt + result.ids
    return results


@pytest.mark.parametrize("solo", ["on", "off"])
def test_a_conversation_reuses_its_cache_and_decodes_the_same(
    tiny_model_dir: Path, solo: str
) -> None:
    cached = asyncio.run(_with_engine(tiny_model_dir, _conversation, solo=solo))
    plain = asyncio.run(
        _with_engine(tiny_model_dir, _conversation, solo=solo, prefix_cache_entries=0)
    )
    assert [r.ids for r in cached] == [r.ids for r in plain]
    assert [r.usage.cached_prompt_tokens for r in plain] == [0, 0, 0]
    # Each turn reuses everything before it; on the solo path but the previous answer's last
    # token (it ended at max_tokens, so it was never fed), the batch feeds each token it
    # hands out.
    unfed = 1 if solo == "on" else 0
    expected = [0]
    prompt_len = len(SYSTEM)
    for i, result in enumerate(cached[:-1]):
        prompt_len += len(TURNS[i])
        expected.append(prompt_len + len(result.ids) - unfed)
        prompt_len += len(result.ids)
    assert [r.usage.cached_prompt_tokens for r in cached] == expected
    for r in cached:
        assert r.usage.prompt_tokens > r.usage.cached_prompt_tokens


async def _same_prompt_twice(eng: Engine) -> list[Result]:
    first = await _run(eng, "first", SYSTEM + TURNS[0], 6)
    again = await _run(eng, "again", SYSTEM + TURNS[0], 6)
    return [first, again]


def test_the_same_prompt_again_feeds_only_its_last_token(tiny_model_dir: Path) -> None:
    first, again = asyncio.run(_with_engine(tiny_model_dir, _same_prompt_twice))
    assert again.ids == first.ids
    assert again.usage.cached_prompt_tokens == len(SYSTEM + TURNS[0]) - 1


async def _together(eng: Engine) -> list[Result]:
    tasks = [_run(eng, f"user{i}", SYSTEM + turn, 6) for i, turn in enumerate(TURNS)]
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("solo", ["on", "off"])
def test_requests_sent_together_prefill_their_shared_prefix_once(
    tiny_model_dir: Path, solo: str
) -> None:
    cached = asyncio.run(_with_engine(tiny_model_dir, _together, solo=solo))
    plain = asyncio.run(_with_engine(tiny_model_dir, _together, solo=solo, prefix_cache_entries=0))
    assert [r.ids for r in cached] == [r.ids for r in plain]
    counts = sorted(r.usage.cached_prompt_tokens for r in cached)
    # One prefills the shared prefix (the system prompt and the user turn's first token, 200
    # for all but the first user's 200 + i), the others start from it.
    assert counts[0] == 0
    assert all(c >= len(SYSTEM) for c in counts[1:]), counts
    computed = sum(r.usage.prompt_tokens - r.usage.cached_prompt_tokens for r in cached)
    assert computed < 2 * len(SYSTEM) + sum(len(t) for t in TURNS)


async def _branches(eng: Engine) -> list[Result]:
    """Two different continuations of one cached prompt, then the first again: reusing the
    cache for one must not change what the other (or a repeat) finds."""
    base = SYSTEM + TURNS[0]
    await _run(eng, "base", base, 4)
    a = await _run(eng, "a", base + TURNS[1], 6)
    b = await _run(eng, "b", base + TURNS[2], 6)
    a_again = await _run(eng, "a-again", base + TURNS[1], 6)
    return [a, b, a_again]


def test_a_reused_cache_does_not_leak_into_other_requests(tiny_model_dir: Path) -> None:
    cached = asyncio.run(_with_engine(tiny_model_dir, _branches, solo="off"))
    plain = asyncio.run(_with_engine(tiny_model_dir, _branches, solo="off", prefix_cache_entries=0))
    assert [r.ids for r in cached] == [r.ids for r in plain]
    assert all(r.usage.cached_prompt_tokens > len(SYSTEM) for r in cached)


PROMPT = SYSTEM + TURNS[0]
DELIVERED = 5  # tokens a cut stream had delivered


def _reference(model_dir: Path) -> Result:
    """PROMPT's uninterrupted run (12 tokens), on an engine of its own without a cache."""
    (reference,) = asyncio.run(
        _with_engine(
            model_dir,
            lambda eng: asyncio.gather(_run(eng, "reference", PROMPT, 12)),
            prefix_cache_entries=0,
        )
    )
    return reference


def test_a_shadowed_stream_resumes_from_the_cache_with_the_same_tokens(
    tiny_model_dir: Path,
) -> None:
    # The shadow and the continuation run on an engine of their own, as the standby that
    # takes over the cut stream sees them.
    reference = _reference(tiny_model_dir)
    delivered = reference.ids[:DELIVERED]

    async def standby(eng: Engine) -> list[Result]:
        shadow = await _run(eng, "shadow", PROMPT, 12, delivered=delivered, prefill_only=True)
        resumed = await _run(eng, "resumed", PROMPT, 12, delivered=delivered)
        return [shadow, resumed]

    shadow, resumed = asyncio.run(_with_engine(tiny_model_dir, standby))
    assert shadow.ids == []
    assert shadow.usage.completion_tokens == DELIVERED  # the delivered ones: none new
    assert resumed.ids == reference.ids[DELIVERED:]
    # The prompt and the delivered tokens but the last (fed to get the next logits) are cached.
    assert resumed.usage.cached_prompt_tokens == len(PROMPT)
    assert resumed.usage.cached_delivered_tokens == DELIVERED - 1


def test_a_second_shadow_prefills_only_the_tokens_since_the_first(
    tiny_model_dir: Path,
) -> None:
    # A stream shadowed again with more tokens delivered: the second shadow extends the
    # first's entry, and a stream resumed later than it prefills only the rest.
    reference = _reference(tiny_model_dir)
    ids = reference.ids

    async def standby(eng: Engine) -> list[Result]:
        first = await _run(eng, "shadow", PROMPT, 12, prefill_only=True)
        follow = await _run(eng, "follow", PROMPT, 12, delivered=ids[:5], prefill_only=True)
        resumed = await _run(eng, "resumed", PROMPT, 12, delivered=ids[:8])
        return [first, follow, resumed]

    first, follow, resumed = asyncio.run(_with_engine(tiny_model_dir, standby))
    assert first.ids == follow.ids == []
    # A shadow stores exactly its tokens: the first the prompt, the follow the prompt and
    # the five delivered ones.
    assert follow.usage.cached_prompt_tokens == len(PROMPT)
    assert follow.usage.cached_delivered_tokens == 0
    assert resumed.ids == ids[8:]
    assert resumed.usage.cached_prompt_tokens == len(PROMPT)
    assert resumed.usage.cached_delivered_tokens == 5  # the follow's; the rest prefilled


def test_a_shadow_ends_with_its_prefill_step(tiny_model_dir: Path) -> None:
    # No decode step follows a shadow's prefill (nothing is generated for it), and a shadow
    # whose tokens are all cached computes nothing.
    async def standby(eng: Engine) -> tuple[Result, Result, int, int]:
        start = eng.steps
        first = await _run(eng, "shadow", PROMPT, 12, prefill_only=True)
        first_steps = eng.steps - start
        start = eng.steps
        again = await _run(eng, "again", PROMPT, 12, prefill_only=True)
        return first, again, first_steps, eng.steps - start

    first, again, first_steps, again_steps = asyncio.run(_with_engine(tiny_model_dir, standby))
    assert first.ids == again.ids == []
    assert first_steps == 1  # the prompt fits one prefill chunk
    assert again_steps == 1  # the step that admits it finishes it
    assert first.usage.cached_prompt_tokens == 0
    assert again.usage.cached_prompt_tokens == len(PROMPT)


def test_shadows_sent_together_all_finish_and_are_reused(tiny_model_dir: Path) -> None:
    # Beside a request already running; each is stored.
    prompts = [SYSTEM + turn for turn in TURNS[:4]]

    async def body(eng: Engine) -> list[Result]:
        running = _run(eng, "running", PROMPT, 24)
        shadows = [
            _run(eng, f"shadow-{i}", prompt, 8, prefill_only=True)
            for i, prompt in enumerate(prompts)
        ]
        done = await asyncio.gather(running, *shadows)
        again = [await _run(eng, f"again-{i}", prompt, 4) for i, prompt in enumerate(prompts)]
        return [*done, *again]

    results = asyncio.run(_with_engine(tiny_model_dir, body))
    shadows, again = results[1:5], results[5:]
    assert all(r.ids == [] for r in shadows)
    assert [r.usage.cached_prompt_tokens for r in again] == [len(p) - 1 for p in prompts]


def test_a_prompt_starts_generating_in_the_step_that_prefills_it(tiny_model_dir: Path) -> None:
    # In the batch (solo off), a one-token request's prompt is prefilled in the first step,
    # which also feeds its last token; the second hands out that token (eager_batch.py).
    async def body(eng: Engine) -> tuple[Result, int]:
        start = eng.steps
        result = await _run(eng, "one", PROMPT, 1)
        return result, eng.steps - start

    result, steps = asyncio.run(_with_engine(tiny_model_dir, body, solo="off"))
    assert len(result.ids) == 1
    assert steps == 2  # mlx-lm alone: 3, the last prompt token fed a step later


def test_prefill_only_needs_the_prefix_cache(tiny_model_dir: Path) -> None:
    async def body(eng: Engine) -> RequestFailure:
        stream = ResponseStream()
        params = _params("shadow", PROMPT, 4, prefill_only=True)
        eng.submit(params, stream, RequestClock(arrival=now()))
        (item,) = await stream.take()
        assert isinstance(item, RequestFailure)
        return item

    failure = asyncio.run(_with_engine(tiny_model_dir, body, prefix_cache_entries=0))
    assert failure.code.name == "FAILED_PRECONDITION"
    assert "prefix cache" in failure.message


# ---- the cache on its own, with real KV caches -------------------------------------------


def _kv_cache(tokens: list[int], layers: int = 2) -> list[Any]:
    """A real mlx-lm KV cache holding one value per token (the token id) in every slot."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    cache = []
    for _ in range(layers):
        c = KVCache()
        kv = mx.broadcast_to(
            mx.array(tokens, dtype=mx.float32)[None, None, :, None], (1, 2, len(tokens), 4)
        )
        c.update_and_fetch(kv, kv)
        cache.append(c)
    return cache


def _cached_values(cache: list[Any]) -> list[float]:
    first = cache[0]
    return first.keys[0, 0, : first.offset, 0].tolist()


def test_lookup_finds_the_longest_prefix_and_leaves_a_token_to_feed() -> None:
    pc = PrefixCache(max_entries=8, max_bytes=1 << 30)
    assert pc.lookup([1, 2, 3]).tokens == 0
    pc.store([1, 2, 3, 4, 5], _kv_cache([1, 2, 3, 4, 5]))
    hit = pc.lookup([1, 2, 3, 4, 5, 6, 7])
    assert hit.tokens == 5 and _cached_values(hit.cache) == [1, 2, 3, 4, 5]
    exact = pc.lookup([1, 2, 3, 4, 5])
    assert exact.tokens == 4 and _cached_values(exact.cache) == [1, 2, 3, 4]
    shorter = pc.lookup([1, 2, 3, 9])  # a longer entry, trimmed to what is shared
    assert shorter.tokens == 3 and _cached_values(shorter.cache) == [1, 2, 3]
    assert pc.lookup([7, 8, 9]).tokens == 0


def test_mutating_a_hit_leaves_the_entry_as_it_was() -> None:
    import mlx.core as mx

    pc = PrefixCache(max_entries=8, max_bytes=1 << 30)
    pc.store([1, 2, 3, 4, 5], _kv_cache([1, 2, 3, 4, 5]))
    hit = pc.lookup([1, 2, 3, 9, 9])
    assert hit.cache is not None
    for c in hit.cache:  # what a request does: feed its own tokens over the trimmed part
        new = mx.full((1, 2, 2, 4), -1.0)
        c.update_and_fetch(new, new)
    assert _cached_values(hit.cache) == [1, 2, 3, -1, -1]
    again = pc.lookup([1, 2, 3, 4, 5, 6])
    assert again.tokens == 5 and _cached_values(again.cache) == [1, 2, 3, 4, 5]


def test_entries_beyond_the_bound_go_oldest_first() -> None:
    pc = PrefixCache(max_entries=2, max_bytes=1 << 30)
    for first in (10, 20, 30):
        pc.store([first, 1, 2], _kv_cache([first, 1, 2]))
    assert pc.entries == 2
    assert pc.lookup([10, 1, 2, 3]).tokens == 0
    assert pc.lookup([20, 1, 2, 3]).tokens == 3
    assert pc.lookup([30, 1, 2, 3]).tokens == 3


def test_bytes_beyond_the_bound_go_oldest_first() -> None:
    one = sum(c.nbytes for c in _kv_cache([0, 1, 2]))
    pc = PrefixCache(max_entries=100, max_bytes=2 * one + one // 2)
    for first in (10, 20, 30):
        pc.store([first, 1, 2], _kv_cache([first, 1, 2]))
    assert pc.entries == 2 and pc.nbytes <= pc.max_bytes
    assert pc.lookup([10, 1, 2, 3]).tokens == 0
    assert pc.lookup([30, 1, 2, 3]).tokens == 3


def test_a_longer_entry_replaces_its_prefix() -> None:
    pc = PrefixCache(max_entries=8, max_bytes=1 << 30)
    pc.store([1, 2, 3], _kv_cache([1, 2, 3]))
    pc.store([1, 2, 3, 4, 5], _kv_cache([1, 2, 3, 4, 5]))
    assert pc.entries == 1
    assert pc.lookup([1, 2, 3, 7]).tokens == 3


def test_the_split_point_lets_the_most_requests_follow() -> None:
    shared = list(range(100))
    a, b, c = [*shared, 1, 2, 3], [*shared, 1, 2, 4], [*shared, 5]
    assert SharedPrefixes.split_point(a, 0, [b, c]) == 100
    assert SharedPrefixes.split_point(a, 0, [b]) == 102
    assert SharedPrefixes.split_point(a, 30, [b, c]) == 100
    assert SharedPrefixes.split_point(a, 90, [b, c]) == 0  # too little left to share
    assert SharedPrefixes.split_point(a, 0, [[7, *shared]]) == 0


def test_default_bytes_follow_the_model_and_the_memory() -> None:
    gib = 1 << 30
    assert default_max_bytes(1 * gib, 18 * gib) == 4 * gib
    assert default_max_bytes(10 * gib, 16 * gib) == 64 << 20  # the floor
    assert default_max_bytes(1 * gib, 1024 * gib) == 32 * gib  # the ceiling
    assert parse_size("512M") == 512 << 20 and parse_size("2G") == 2 * gib
