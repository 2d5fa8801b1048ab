"""Incremental detokenization and stop strings: the text a Generate stream may send.

:class:`IncrementalDetokenizer` turns tokens into text as they come, the way vLLM and TGI do:
it decodes a small window of recent tokens (from ``prefix_offset``) with and without the new
ones, and emits only the difference, so merges across token boundaries (SentencePiece spaces,
byte-level pieces) come out right. Text that ends in U+FFFD (an incomplete UTF-8 character) is
held back until the character completes.

:class:`StopStringFilter` cuts the text exactly before the first stop string, and holds back
the longest tail that could still become a stop string until the next text settles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# How many prompt tokens seed the decoding window (for tokenizers whose decode of a lone
# token drops a leading space).
_PROMPT_CONTEXT_TOKENS = 4


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    """Text of a growing token sequence, never ending inside a UTF-8 character."""

    def __init__(self, tokenizer: Decoder, prompt_ids: Sequence[int] = ()) -> None:
        self._decode = tokenizer.decode
        context = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        if context and self._decode(context).endswith(REPLACEMENT_CHAR):
            context = []  # the prompt ends inside a character: start clean
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)

    def add(self, token_ids: Sequence[int]) -> str:
        """Adds tokens; returns the text that became final."""
        self._ids.extend(token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Returns whatever text is still held back (at the end of generation)."""
        return self._emit(final=True)

    def pending(self) -> str:
        """The text ``flush`` would return now, without taking it (a trailing partial
        character left out)."""
        ids = self._ids
        if self._read_offset >= len(ids):
            return ""
        prefix_text = self._decode(ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(ids[self._prefix_offset :])
        return new_text[len(prefix_text) :].removesuffix(REPLACEMENT_CHAR)

    def _emit(self, *, final: bool) -> str:
        ids = self._ids
        if self._read_offset >= len(ids):
            return ""
        prefix_text = self._decode(ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(ids)
        if self._prefix_offset > 64:  # keep the list short on long generations
            del ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return new_text[len(prefix_text) :]


class StopStringFilter:
    """Cuts text before the first stop string; holds back possible stop-string prefixes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to send, the stop string that matched or None)."""
        if not self._stops:
            return text, None
        buf = self._held + text
        best: tuple[int, str] | None = None
        for stop in self._stops:
            i = buf.find(stop)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, stop)
        if best is not None:
            self._held = ""
            return buf[: best[0]], best[1]
        keep = self._held_back_length(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    @property
    def held(self) -> str:
        """The text held back as a possible stop-string prefix."""
        return self._held

    def flush(self) -> str:
        """Releases the held-back tail (generation ended without a stop string)."""
        held, self._held = self._held, ""
        return held

    def _held_back_length(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
