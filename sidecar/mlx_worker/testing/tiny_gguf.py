"""The tiny test model written as a llama GGUF file, as llama.cpp's converter would write it.

    python -m mlx_worker.testing.tiny_gguf OUT.gguf [--tied] [--seed N]

Same weights and tokenizer as ``tiny_model`` (F32 tensors; MLX cannot write quantized GGUF),
with GGUF tensor names, ``llama.*`` / ``tokenizer.ggml.*`` metadata, and the Q/K rows permuted
for interleaved rotary embeddings, exactly as GGUF stores them. So a converted copy must give
the same logits as the ``tiny_model`` directory. ``--tied`` leaves out ``output.weight``
(the output layer then reuses the token embeddings).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import tiny_model

_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    base = name.removesuffix(".weight")
    if base in _NAMES:
        return f"{_NAMES[base]}.weight"
    _, _, layer, part = base.split(".", 3)  # model.layers.N.part
    return f"blk.{layer}.{_NAMES[part]}.weight"


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of Q/K rows (rotate-half layout → interleaved pairs)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _metadata(tokenizer, vocab_size: int) -> dict:  # tokenizer: tokenizers.Tokenizer
    import mlx.core as mx

    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    token_type = [3 if t in tiny_model.SPECIAL_TOKENS else 1 for t in tokens]

    def u32(v: int) -> mx.array:
        return mx.array(v, dtype=mx.uint32)

    return {
        "general.architecture": "llama",
        "general.name": "tiny-llama",
        "general.file_type": u32(0),
        "llama.context_length": u32(tiny_model.MAX_POSITION_EMBEDDINGS),
        "llama.embedding_length": u32(tiny_model.HIDDEN_SIZE),
        "llama.block_count": u32(tiny_model.NUM_LAYERS),
        "llama.feed_forward_length": u32(tiny_model.INTERMEDIATE_SIZE),
        "llama.attention.head_count": u32(tiny_model.NUM_HEADS),
        "llama.attention.head_count_kv": u32(tiny_model.NUM_KV_HEADS),
        "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
        "llama.rope.freq_base": mx.array(10000.0, dtype=mx.float32),
        "llama.vocab_size": u32(vocab_size),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(token_type, dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": u32(tiny_model.SPECIAL_TOKENS.index("<|im_start|>")),
        "tokenizer.ggml.eos_token_id": u32(tiny_model.SPECIAL_TOKENS.index(tiny_model.EOS_TOKEN)),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": tiny_model.CHAT_TEMPLATE,
    }


def write_tiny_gguf(path: str | Path, *, tied: bool = False, seed: int = 0) -> Path:
    """Writes the tiny model as a GGUF file at ``path`` and returns the path."""
    import mlx.core as mx

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_model.build_tokenizer()
    vocab_size = tokenizer.get_vocab_size()
    arrays: dict[str, mx.array] = {}
    for name, w in tiny_model.random_weights(vocab_size, seed).items():
        if tied and name == "lm_head.weight":
            continue
        if name.endswith("q_proj.weight"):
            w = permute_for_gguf(w, tiny_model.NUM_HEADS)
        elif name.endswith("k_proj.weight"):
            w = permute_for_gguf(w, tiny_model.NUM_KV_HEADS)
        arrays[gguf_name(name)] = mx.array(w)
    mx.save_gguf(str(out), arrays, _metadata(tokenizer, vocab_size))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_worker.testing.tiny_gguf",
        description="Write the tiny random-weight llama as a GGUF file.",
    )
    parser.add_argument("out", type=Path, help="GGUF file to write")
    parser.add_argument("--tied", action="store_true", help="no output.weight (tied embeddings)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    write_tiny_gguf(args.out, tied=args.tied, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
