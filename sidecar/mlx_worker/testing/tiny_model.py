"""A tiny random-weight llama written as an mlx-lm model directory, for fast tests.

    python -m mlx_worker.testing.tiny_model OUT_DIR [--quantize] [--seed N]

writes ``config.json``, ``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``
(with a ChatML chat template) into OUT_DIR in a few tens of milliseconds. The same seed always
gives the same files.

The model: 2 layers, hidden size 64, 4 attention heads, 2 key/value heads, a byte-level BPE
vocabulary of a few hundred tokens (round-trips any UTF-8 text) whose first three ids are the
special tokens ``<|endoftext|>`` (0), ``<|im_start|>`` (1) and ``<|im_end|>`` (2, the chat's
end-of-sequence). Its output is gibberish, and deliberately never an end-of-sequence token
under greedy decoding: the output-layer rows of the special tokens are zero, so their logits
are 0 while the largest of the hundreds of random logits is positive. Tests that need
generation to stop use ``stop_token_ids`` or ``max_tokens``; tests that need long outputs get
them (``ignore_eos`` is not needed, but harmless).

``--quantize`` writes 4-bit affine weights (group size 32), like a converted GGUF, so the
quantized code paths get tested too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HIDDEN_SIZE = 64
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 128
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITION_EMBEDDINGS = 2048
TARGET_VOCAB_SIZE = 384
QUANT_GROUP_SIZE = 32
QUANT_BITS = 4

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the BPE merges are learnt from: a little English, accents, CJK and emoji, so that
# multi-byte characters get merged tokens as well as falling back to single bytes.
_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? "
    "The capital of France is Paris. Hello, world! 0123456789 + - * / = ( ) [ ] { }",
    "Café, naïve, déjà vu, façade, Straße, smörgåsbord, año, crème brûlée.",
    "日本語のテキスト。東京は日本の首都です。中文文本，北京是中国的首都。",  # noqa: RUF001
    "Emoji: 🙂 🚀 👍 🎉 ❤️ — and symbols: € £ ¥ © ™ …",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
]


def build_tokenizer():  # -> tokenizers.Tokenizer
    """Trains the tiny byte-level BPE tokenizer (deterministic, a few milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT * 3, trainer)
    return tokenizer


def _weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    head_dim = HIDDEN_SIZE // NUM_HEADS
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab_size, HIDDEN_SIZE),
        "model.norm.weight": (HIDDEN_SIZE,),
        "lm_head.weight": (vocab_size, HIDDEN_SIZE),
    }
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (HIDDEN_SIZE,),
            f"{p}.post_attention_layernorm.weight": (HIDDEN_SIZE,),
            f"{p}.self_attn.q_proj.weight": (NUM_HEADS * head_dim, HIDDEN_SIZE),
            f"{p}.self_attn.k_proj.weight": (NUM_KV_HEADS * head_dim, HIDDEN_SIZE),
            f"{p}.self_attn.v_proj.weight": (NUM_KV_HEADS * head_dim, HIDDEN_SIZE),
            f"{p}.self_attn.o_proj.weight": (HIDDEN_SIZE, NUM_HEADS * head_dim),
            f"{p}.mlp.gate_proj.weight": (INTERMEDIATE_SIZE, HIDDEN_SIZE),
            f"{p}.mlp.up_proj.weight": (INTERMEDIATE_SIZE, HIDDEN_SIZE),
            f"{p}.mlp.down_proj.weight": (HIDDEN_SIZE, INTERMEDIATE_SIZE),
        }
    return shapes


def random_weights(vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random float32 weights, named as mlx-lm's llama names them."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in _weight_shapes(vocab_size).items():
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
        elif name == "lm_head.weight":
            # Large enough that greedy picks vary; special tokens' rows zeroed (see module doc).
            w = rng.normal(0.0, 0.5, shape).astype(np.float32)
            w[: len(SPECIAL_TOKENS)] = 0.0
            weights[name] = w
        else:
            weights[name] = rng.normal(0.0, 0.2, shape).astype(np.float32)
    return weights


def _config(vocab_size: int, quantize: bool) -> dict:
    config: dict = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": SPECIAL_TOKENS.index("<|im_start|>"),
        "eos_token_id": SPECIAL_TOKENS.index(EOS_TOKEN),
        "torch_dtype": "float32",
    }
    if quantize:
        quant = {"group_size": QUANT_GROUP_SIZE, "bits": QUANT_BITS}
        config["quantization"] = quant
        config["quantization_config"] = dict(quant)
    return config


def _tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "eos_token": EOS_TOKEN,
        "bos_token": None,
        "unk_token": None,
        "pad_token": EOS_TOKEN,
        "add_bos_token": False,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, tok in enumerate(SPECIAL_TOKENS)
        },
    }


def _save_weights(path: Path, weights: dict[str, np.ndarray], quantize: bool) -> None:
    import mlx.core as mx

    arrays: dict[str, mx.array] = {}
    for name, w in weights.items():
        a = mx.array(w)
        if quantize and not name.endswith("norm.weight"):
            q, scales, biases = mx.quantize(a, group_size=QUANT_GROUP_SIZE, bits=QUANT_BITS)
            base = name.removesuffix(".weight")
            arrays |= {name: q, f"{base}.scales": scales, f"{base}.biases": biases}
        else:
            arrays[name] = a
    mx.save_safetensors(str(path), arrays, metadata={"format": "mlx"})


def write_tiny_model(out_dir: str | Path, *, quantize: bool = False, seed: int = 0) -> Path:
    """Writes the tiny model into ``out_dir`` (created if missing) and returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab_size = tokenizer.get_vocab_size()
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2))
    (out / "config.json").write_text(json.dumps(_config(vocab_size, quantize), indent=2))
    _save_weights(out / "model.safetensors", random_weights(vocab_size, seed), quantize)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_worker.testing.tiny_model",
        description="Write a tiny random-weight llama as an mlx-lm model directory.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument(
        "--quantize", action="store_true", help="4-bit affine weights, group size 32"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    try:
        write_tiny_model(args.out_dir, quantize=args.quantize, seed=args.seed)
    except OSError as e:
        print(f"tiny_model: cannot write {args.out_dir}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
