"""The worker's tokenizer: a Hugging Face ``tokenizers`` tokenizer plus the chat template.

Loaded from a model directory's ``tokenizer.json`` and ``tokenizer_config.json`` (and the
end-of-sequence ids in ``config.json`` / ``generation_config.json``) with the ``tokenizers``
library directly, which takes milliseconds, instead of ``transformers.AutoTokenizer``, whose
import alone takes about half a second.

Chat prompts: render with :meth:`Tokenizer.apply_chat_template`, then encode the result with
``add_special_tokens=False`` (the template already holds the special tokens it wants), as
``transformers`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HfTokenizer

from .chat_template import ChatTemplate
from .errors import UnsupportedModelError
from .token_bytes import TokenBytes

# Special tokens that end a turn or a document in common chat models. Any of them present in
# the vocabulary as a special token ends generation, besides the configured eos_token_id(s).
EOS_LIKE_TOKENS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "</s>",
    }
)

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"cannot read {path}: {e}", path) from e
    return data if isinstance(data, dict) else {}


def _read_chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template:
        return template
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _read_json(model_dir / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) and template else None


class Tokenizer:
    """Encodes and decodes text, renders chat templates, and knows the end-of-sequence ids."""

    def __init__(
        self,
        backend: HfTokenizer,
        *,
        chat_template: str | None,
        special_tokens: dict[str, str | None],
        eos_token_ids: Iterable[int],
        add_bos_token: bool = False,
    ) -> None:
        self._backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        bos = special_tokens.get("bos_token")
        self.bos_token_id: int | None = backend.token_to_id(bos) if bos else None
        # Prepend BOS ourselves only where the config asks for it and tokenizer.json's
        # post-processor does not already add it.
        probe = backend.encode("a", add_special_tokens=True).ids
        self._prepend_bos = (
            add_bos_token and self.bos_token_id is not None and probe[:1] != [self.bos_token_id]
        )
        special_ids = {
            i for i, t in backend.get_added_tokens_decoder().items() if t.special
        }  # dict[int, AddedToken]
        eos = set(eos_token_ids)
        eos |= {i for i in special_ids if backend.id_to_token(i) in EOS_LIKE_TOKENS}
        self.eos_token_ids: frozenset[int] = frozenset(i for i in eos if 0 <= i < self.vocab_size)
        self._chat_template = (
            ChatTemplate(chat_template, special_tokens) if chat_template is not None else None
        )
        self._token_bytes: TokenBytes | None = None  # made on first use: logprobs only

    @classmethod
    def from_dir(cls, model_dir: Path, config: dict[str, Any] | None = None) -> Tokenizer:
        """Loads the tokenizer of an mlx-lm / Hugging Face model directory."""
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise UnsupportedModelError(
                f"{model_dir} has no tokenizer.json (only fast tokenizers are supported)",
                model_dir,
            )
        try:
            backend = HfTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on bad files
            raise UnsupportedModelError(f"cannot load {path}: {e}", path) from e
        tok_config = _read_json(model_dir / "tokenizer_config.json")
        config = config if config is not None else _read_json(model_dir / "config.json")
        gen_config = _read_json(model_dir / "generation_config.json")
        special = {k: _token_content(tok_config.get(k)) for k in _SPECIAL_TOKEN_KEYS}
        eos_ids = _ids(config.get("eos_token_id")) + _ids(gen_config.get("eos_token_id"))
        if special["eos_token"] and (i := backend.token_to_id(special["eos_token"])) is not None:
            eos_ids.append(i)
        return cls(
            backend,
            chat_template=_read_chat_template(model_dir, tok_config),
            special_tokens=special,
            eos_token_ids=eos_ids,
            add_bos_token=tok_config.get("add_bos_token") is True,
        )

    @property
    def has_chat_template(self) -> bool:
        return self._chat_template is not None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids."""
        ids = self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos:
            ids.insert(0, self.bos_token_id)  # type: ignore[arg-type]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; an incomplete UTF-8 character at the end comes out as U+FFFD.

        Raises ValueError for an id outside ``[0, vocab_size)``.
        """
        ids = list(ids)
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is out of range [0, {self.vocab_size})")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token (a partial UTF-8 character becomes U+FFFD)."""
        return self.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a partial UTF-8 character stays as it is): the bytes of
        a sequence's tokens, joined, are the bytes of its text."""
        if self._token_bytes is None:
            decoder = self._backend.decoder
            self._token_bytes = TokenBytes(
                decoder.__getstate__() if decoder is not None else None,
                self._backend.id_to_token,
                self.token_text,
            )
        return self._token_bytes(token_id)

    def backend_json(self) -> str:
        """The ``tokenizers`` tokenizer as its JSON (what llguidance builds its tokenizer from)."""
        return self._backend.to_str()

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """Renders ``messages`` with the model's chat template.

        Raises ValueError if the model has no chat template or the template rejects the
        messages (for example roles that do not alternate).
        """
        if self._chat_template is None:
            raise ValueError("the model has no chat template")
        return self._chat_template.render(messages, add_generation_prompt=add_generation_prompt)
