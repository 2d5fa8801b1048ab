"""GGUF tokenizer metadata → tokenizer.json and tokenizer_config.json (Hugging Face format).

Only GGUF's "gpt2" tokenizer model (byte-level BPE: ``tokenizer.ggml.tokens`` plus
``tokenizer.ggml.merges``) is supported. The pre-tokenizer (how text is split before BPE)
follows ``tokenizer.ggml.pre``, with the same regular expressions llama.cpp uses for it.
Control tokens (token type 3) become special added tokens, user-defined ones (type 4) plain
added tokens, so that ``<|im_start|>`` written in a chat prompt is one token.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .errors import UnsupportedModelError

log = logging.getLogger(__name__)

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

_LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        # GPT-2's split after splitting every digit on its own.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama-bpe", "llama3", "qwen2", "deepseek-r1-qwen"):
        regex = _LLAMA3_REGEX if pre.startswith("llama") else _QWEN2_REGEX
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre not in ("default", "gpt-2", "gpt2", ""):
        log.warning("GGUF pre-tokenizer %r is not known; using GPT-2's", pre)
    return byte_level


def _scalar_int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if isinstance(value, mx.array):
        value = value.item()
    return int(value) if value is not None else None


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """The byte-level BPE tokenizer described by GGUF metadata."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
    tokenizer.decoder = decoders.ByteLevel()

    types = meta.get("tokenizer.ggml.token_type")
    type_list = types.tolist() if isinstance(types, mx.array) else list(types or [])
    added = [
        AddedToken(tokens[i], special=t == TOKEN_TYPE_CONTROL, normalized=False)
        for i, t in enumerate(type_list)
        if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])

    post: list[processors.PostProcessor] = [processors.ByteLevel(trim_offsets=False)]
    bos = _scalar_int(meta, "tokenizer.ggml.bos_token_id")
    if _add_bos(meta) and bos is not None:
        post.append(
            processors.TemplateProcessing(
                single=f"{tokens[bos]} $A",
                pair=f"{tokens[bos]} $A {tokens[bos]} $B",
                special_tokens=[(tokens[bos], bos)],
            )
        )
    tokenizer.post_processor = processors.Sequence(post)
    return tokenizer


def _add_bos(meta: dict[str, Any]) -> bool:
    value = meta.get("tokenizer.ggml.add_bos_token")
    if isinstance(value, mx.array):
        value = value.item()
    return bool(value)


def tokenizer_config(meta: dict[str, Any], context_length: int) -> dict[str, Any]:
    """tokenizer_config.json: special tokens, BOS policy and the chat template."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        i = _scalar_int(meta, f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": _add_bos(meta),
        "add_eos_token": False,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    if template := meta.get("tokenizer.chat_template"):
        config["chat_template"] = str(template)
    return config


def extra_eos_ids(meta: dict[str, Any]) -> list[int]:
    """End-of-turn ids GGUF names besides eos_token_id (eot, eom)."""
    ids = (_scalar_int(meta, f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom"))
    return [i for i in ids if i is not None]
