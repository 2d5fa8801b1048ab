"""The worker's benchmark mode (``--synthetic-tokens``): spec parsing and the stand-in
generator's contract with the engine (batch limit, exact lengths, removal)."""

from __future__ import annotations

import argparse

import pytest

from mlx_worker.config import parse_args
from mlx_worker.synthetic import SyntheticBatchGenerator, SyntheticSpec, parse_spec


def test_spec_defaults_and_values() -> None:
    assert parse_spec("on") == SyntheticSpec()
    assert parse_spec("tokens_per_step=4,merge=0") == SyntheticSpec(4, False)
    for bad in ("tokens_per_step=0", "merge", "speed=3", "tokens_per_step=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_spec(bad)


def test_flag_is_off_unless_given(tmp_path) -> None:
    assert parse_args(["--socket", str(tmp_path / "s")]).synthetic is None
    cfg = parse_args(["--socket", str(tmp_path / "s"), "--synthetic-tokens", "merge=0"])
    assert cfg.synthetic == SyntheticSpec(1, False)


def _drain(gen: SyntheticBatchGenerator) -> dict[int, list[tuple[int, str | None]]]:
    out: dict[int, list[tuple[int, str | None]]] = {}
    for _ in range(1000):
        _, generated = gen.next()
        if not generated:
            break
        for r in generated:
            out.setdefault(r.uid, []).append((r.token, r.finish_reason))
    return out


def test_exact_lengths_prompt_tokens_and_batch_limit() -> None:
    gen = SyntheticBatchGenerator(SyntheticSpec(tokens_per_step=3), completion_batch_size=2)
    uids = gen.insert([[5, 6], [7], [8, 9, 10]], max_tokens=[4, 5, 2])
    started, first = gen.next()
    assert [s.uid for s in started] == uids[:2]  # the third waits for a free slot
    assert {r.uid for r in first} == set(uids[:2])
    rest = _drain(gen)
    tokens = {uid: [(r.token, r.finish_reason) for r in first if r.uid == uid] for uid in uids}
    for uid, items in rest.items():
        tokens[uid] += items
    assert [t for t, _ in tokens[uids[0]]] == [5, 6, 5, 6]
    assert [t for t, _ in tokens[uids[1]]] == [7] * 5
    assert [t for t, _ in tokens[uids[2]]] == [8, 9]
    for items in tokens.values():
        assert [f for _, f in items][-1] == "length"
        assert all(f is None for _, f in items[:-1])


def test_removed_sequences_stop() -> None:
    gen = SyntheticBatchGenerator(SyntheticSpec(), completion_batch_size=4)
    a, b = gen.insert([[1], [2]], max_tokens=[100, 100])
    gen.next()
    gen.remove([a])
    _, generated = gen.next()
    assert {r.uid for r in generated} == {b}
