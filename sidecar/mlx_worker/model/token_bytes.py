"""The raw bytes of one token, read from the vocabulary the way the tokenizer's decoder would.

``tokenizers`` decodes to text only, with U+FFFD where a token holds part of a UTF-8
character. Log-probabilities also report each generated token's raw bytes (like OpenAI's
``bytes``), so that clients can join split characters; :class:`TokenBytes` rebuilds them from
the token's vocabulary string and the decoder's configuration (its ``__getstate__`` JSON):

- ``ByteLevel`` (GPT-2 style): each character of the token stands for one byte;
- ``Sequence`` of ``Replace`` / ``ByteFallback`` / ``Fuse`` / ``Strip`` and ``Metaspace``
  (SentencePiece style): ``▁`` is a space and ``<0xNN>`` is the byte NN.

Steps that depend on a token's place in the whole text (stripping the first token's leading
space) are left out: a token's bytes are the same wherever it stands. Any other decoder falls
back to the UTF-8 of the token's decoded text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's map from the printable character standing for a byte back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _byte_level(token: str) -> bytes:
    table = _byte_level_table()
    try:
        return bytes(table[c] for c in token)
    except KeyError:  # not a byte-level string (an added token): its own UTF-8, as HF does
        return token.encode("utf-8")


def _sentencepiece(
    replacements: list[tuple[str, str]], byte_fallback: bool
) -> Callable[[str], bytes]:
    def decode(token: str) -> bytes:
        if byte_fallback and (m := _BYTE_FALLBACK.fullmatch(token)):
            return bytes([int(m.group(1), 16)])
        for pattern, content in replacements:
            token = token.replace(pattern, content)
        return token.encode("utf-8")

    return decode


def _decoder_for(config: dict[str, Any] | None) -> Callable[[str], bytes] | None:
    """The per-token byte decoder for a decoder configuration, or None when unknown."""
    if not config:
        return None
    kind = config.get("type")
    if kind == "ByteLevel":
        return _byte_level
    if kind == "Metaspace":
        return _sentencepiece([(str(config.get("replacement", "▁")), " ")], byte_fallback=False)
    if kind != "Sequence":
        return None
    replacements: list[tuple[str, str]] = []
    byte_fallback = False
    for step in config.get("decoders", []):
        step_kind = step.get("type")
        if step_kind == "Replace" and isinstance(step.get("pattern", {}).get("String"), str):
            replacements.append((step["pattern"]["String"], str(step.get("content", ""))))
        elif step_kind == "Metaspace":
            replacements.append((str(step.get("replacement", "▁")), " "))
        elif step_kind == "ByteFallback":
            byte_fallback = True
        elif step_kind == "ByteLevel" and len(config["decoders"]) == 1:
            return _byte_level
        elif step_kind not in ("Fuse", "Strip"):
            return None
    return _sentencepiece(replacements, byte_fallback)


class TokenBytes:
    """Raw bytes of token ids, for one tokenizer (built on first use, answers cached)."""

    def __init__(
        self,
        decoder_state: bytes | None,
        id_to_token: Callable[[int], str | None],
        token_text: Callable[[int], str],
    ) -> None:
        config = json.loads(decoder_state) if decoder_state else None
        self._decode = _decoder_for(config if isinstance(config, dict) else None)
        self._id_to_token = id_to_token
        self._token_text = token_text
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        token = self._id_to_token(token_id)
        if self._decode is not None and token is not None:
            value = self._decode(token)
        else:
            value = self._token_text(token_id).encode("utf-8")
        self._cache[token_id] = value
        return value
