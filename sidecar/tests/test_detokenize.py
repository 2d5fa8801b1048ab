"""Incremental detokenization and stop strings, on the tiny model's real byte-level tokenizer."""

from __future__ import annotations

import pytest

from mlx_worker.detokenize import IncrementalDetokenizer, StopStringFilter

TEXTS = [
    "plain ASCII text, with punctuation!",
    "Café déjà vu, Straße",
    "日本語のテキスト。東京は日本の首都です。",
    "Emoji 🙂🚀👍🏽 and ❤️ symbols € £ ¥",
    "mixed 中文 text 🎉 with spaces   and\nnew lines\t",
]


def _pieces(tokenizer, ids: list[int], prompt: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt or [])
    pieces = [detok.add([t]) for t in ids]
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_gives_the_text_without_partial_characters(tiny_tokenizer, text) -> None:
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    pieces = _pieces(tiny_tokenizer, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_multibyte_characters_really_are_split_across_tokens(tiny_tokenizer) -> None:
    """The case the detokenizer exists for: a token that is part of a character."""
    ids = tiny_tokenizer.encode("🙂🚀👍🏽", add_special_tokens=False)
    assert any(tiny_tokenizer.decode([t]).endswith("\ufffd") for t in ids)
    pieces = _pieces(tiny_tokenizer, ids)
    assert "".join(pieces) == "🙂🚀👍🏽"
    assert "" in pieces  # some tokens completed no character, so they sent nothing


def test_prompt_context_does_not_leak_into_the_output(tiny_tokenizer) -> None:
    prompt = tiny_tokenizer.encode("Hello there", add_special_tokens=False)
    ids = tiny_tokenizer.encode(" general Kenobi 🙂", add_special_tokens=False)
    assert "".join(_pieces(tiny_tokenizer, ids, prompt)) == " general Kenobi 🙂"


def test_prompt_ending_inside_a_character(tiny_tokenizer) -> None:
    ids = tiny_tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tiny_tokenizer, ids[:-1])  # prompt ends mid-character
    out = detok.add([ids[-1]]) + detok.flush()
    assert "\ufffd" in out or out == ""  # the lone tail bytes: never a wrong character


def test_flush_releases_an_unfinished_character_as_replacement(tiny_tokenizer) -> None:
    ids = tiny_tokenizer.encode("ab🙂", add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tokenizer)
    sent = "".join(detok.add([t]) for t in ids[:-1])
    assert sent == "ab"
    assert detok.flush().endswith("\ufffd")


def test_long_generation_keeps_the_window_short(tiny_tokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tokenizer)
    out = "".join(detok.add([t]) for t in ids) + detok.flush()
    assert out == text
    assert len(detok._ids) < 80


# ---- stop strings ------------------------------------------------------------------------


def _run_filter(stops: list[str], pieces: list[str]) -> tuple[list[str], str | None]:
    f = StopStringFilter(stops)
    sent = []
    for p in pieces:
        text, matched = f.feed(p)
        sent.append(text)
        if matched is not None:
            return sent, matched
    sent.append(f.flush())
    return sent, None


def test_stop_inside_one_piece() -> None:
    sent, matched = _run_filter(["STOP"], ["abc STOP def"])
    assert "".join(sent) == "abc " and matched == "STOP"


def test_stop_across_pieces_is_held_back_then_cut() -> None:
    sent, matched = _run_filter(["STOP"], ["abc S", "T", "OP and more"])
    assert sent == ["abc ", "", ""] and matched == "STOP"


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    sent, matched = _run_filter(["STOP"], ["abc ST", "ring"])
    assert sent == ["abc ", "STring", ""] and matched is None


def test_held_prefix_is_released_at_the_end() -> None:
    sent, matched = _run_filter(["STOP"], ["abc ST"])
    assert sent == ["abc ", "ST"] and matched is None


def test_earliest_stop_wins() -> None:
    sent, matched = _run_filter(["world", "lo w"], ["hello world"])
    assert "".join(sent) == "hel" and matched == "lo w"


def test_overlapping_prefixes_hold_the_longest() -> None:
    f = StopStringFilter(["abcd", "cx"])
    assert f.feed("zzabc") == ("zz", None)  # "abc" could still become "abcd"
    assert f.feed("x") == ("ab", "cx")


def test_multibyte_stop_strings() -> None:
    sent, matched = _run_filter(["東京"], ["日本の東", "京は"])
    assert "".join(sent) == "日本の" and matched == "東京"


def test_no_stops_passes_everything() -> None:
    f = StopStringFilter([])
    assert f.feed("anything") == ("anything", None)
    assert f.flush() == ""
