"""The Tokenizer: UTF-8 round trips, decoding edge cases, BOS policy, chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_worker.model import Tokenizer
from mlx_worker.model.default import default_model_path
from mlx_worker.model.gguf_convert import read_gguf
from mlx_worker.model.gguf_tokenizer import build_tokenizer, tokenizer_config
from mlx_worker.testing.tiny_model import CHAT_TEMPLATE, write_tiny_model

TEXTS = [
    "plain ASCII, with punctuation!?",
    "Café, naïve, déjà vu, Straße",
    "日本語のテキスト and 日本",
    "emoji 🙂🚀👍🏽 and a family 👨‍👩‍👧",
    "  leading spaces\n\ttabs\r\nand newlines  ",
    "digits 1234567890 and 3.14159",
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(write_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """The default model's tokenizer, built from its GGUF metadata as the converter does."""
    out = tmp_path_factory.mktemp("smollm")
    _, meta = read_gguf(default_model_path())
    build_tokenizer(meta).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(meta, 8192)))
    (out / "config.json").write_text(json.dumps({"eos_token_id": [2]}))
    return Tokenizer.from_dir(out)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_tiny(tiny: Tokenizer, text: str) -> None:
    assert tiny.decode(tiny.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_smollm(smollm: Tokenizer, text: str) -> None:
    assert smollm.decode(smollm.encode(text)) == text


def test_smollm_tokenization_matches_hugging_face(smollm: Tokenizer) -> None:
    # The ids SmolLM2's Hugging Face tokenizer gives for this chat prompt (as other projects
    # pin them in their tests).
    prompt = smollm.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    assert smollm.encode(prompt, add_special_tokens=False) == [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198,
        1, 520, 9531, 198,
    ]  # fmt: skip
    assert smollm.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert len(smollm.encode("12345")) == 5  # every digit on its own


def test_partial_utf8_becomes_replacement_char(tiny: Tokenizer) -> None:
    ids = tiny.encode("🙂")
    assert len(ids) > 1, "expected the emoji to span several byte-level tokens"
    assert tiny.decode(ids[:1]) == "\ufffd"
    assert tiny.decode(ids[:1] + tiny.encode("a")) == "\ufffda"
    assert tiny.token_text(ids[0]) == "\ufffd"


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_join_to_the_text(tiny: Tokenizer, smollm: Tokenizer, text: str) -> None:
    for tokenizer in (tiny, smollm):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b"".join(tokenizer.token_bytes(i) for i in ids).decode("utf-8") == text


def test_token_bytes_keep_a_split_character(tiny: Tokenizer) -> None:
    ids = tiny.encode("🙂")
    assert tiny.token_bytes(ids[0]) == "🙂".encode()[: len(tiny.token_bytes(ids[0]))]
    assert 0 < len(tiny.token_bytes(ids[0])) < 4
    assert tiny.token_bytes(2) == b"<|im_end|>"
    # Every token of the vocabulary: its bytes, read as UTF-8, are the decoder's text.
    for i in range(tiny.vocab_size):
        assert tiny.token_bytes(i).decode("utf-8", errors="replace") == tiny.token_text(i)


def test_token_bytes_of_a_sentencepiece_style_vocabulary(tmp_path: Path) -> None:
    """▁ is a space and <0xNN> a byte (byte fallback), as in Llama and Mistral tokenizers."""
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models

    vocab = {"<unk>": 0, "▁Hello": 1, "▁wor": 2, "ld": 3}
    vocab |= {f"<0x{b:02X}>": 4 + b for b in range(256)}
    backend = HfTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = Tokenizer.from_dir(tmp_path)
    assert tokenizer.token_bytes(1) == b" Hello"  # the leading space stays: it is the token's
    assert tokenizer.token_bytes(3) == b"ld"
    smile = list("🙂".encode())
    assert [tokenizer.token_bytes(4 + b) for b in smile] == [bytes([b]) for b in smile]
    ids = [1, 2, 3, *(4 + b for b in smile)]
    joined = b"".join(tokenizer.token_bytes(i) for i in ids).decode("utf-8")
    assert joined == " Hello world🙂" and tokenizer.decode(ids) == "Hello world🙂"


def test_decode_rejects_out_of_range_ids(tiny: Tokenizer) -> None:
    with pytest.raises(ValueError, match=f"token id {tiny.vocab_size} is out of range"):
        tiny.decode([5, tiny.vocab_size])
    with pytest.raises(ValueError, match="token id -1"):
        tiny.decode([-1])


def test_special_tokens(tiny: Tokenizer) -> None:
    ids = tiny.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tiny.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tiny.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tiny.token_text(2) == "<|im_end|>"
    assert tiny.eos_token_ids == frozenset({0, 2})
    assert tiny.bos_token_id is None


def test_chat_template_rendering(tiny: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi é 🙂"},
    ]
    assert tiny.has_chat_template
    assert tiny.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi é 🙂<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tiny.apply_chat_template(messages, add_generation_prompt=False).endswith(
        "🙂<|im_end|>\n"
    )


def test_smollm_chat_template_adds_default_system_prompt(smollm: Tokenizer) -> None:
    text = smollm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def _with_config(tmp_path: Path, **tokenizer_config: object) -> Tokenizer:
    out = write_tiny_model(tmp_path / "m")
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(tokenizer_config)
    config = {k: v for k, v in config.items() if v is not None}
    path.write_text(json.dumps(config))
    return Tokenizer.from_dir(out)


def test_no_chat_template(tmp_path: Path) -> None:
    tok = _with_config(tmp_path, chat_template=None)
    assert not tok.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_template_error_is_value_error(tmp_path: Path) -> None:
    tok = _with_config(tmp_path, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="roles must alternate"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_template_sees_special_tokens_and_tojson(tmp_path: Path) -> None:
    tok = _with_config(
        tmp_path,
        bos_token="<|im_start|>",
        chat_template="{{ bos_token }}{{ messages | tojson }}{{ eos_token }}",
    )
    out = tok.apply_chat_template([{"role": "user", "content": "é"}])
    assert out == '<|im_start|>[{"role": "user", "content": "é"}]<|im_end|>'


def test_add_bos_token_prepends_bos_to_plain_text_only(tmp_path: Path) -> None:
    tok = _with_config(tmp_path, bos_token="<|im_start|>", add_bos_token=True)
    assert tok.bos_token_id == 1
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == [1, *plain]


def test_chat_template_constant_matches_file(tmp_path: Path) -> None:
    out = write_tiny_model(tmp_path / "m")
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == (
        CHAT_TEMPLATE
    )
