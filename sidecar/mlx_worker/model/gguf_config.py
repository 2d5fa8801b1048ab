"""GGUF llama metadata and tensors → mlx-lm's llama config.json and weight names.

GGUF (llama.cpp's converter) stores the rows of the Q and K projections permuted for the
"traditional" (interleaved) rotary embedding, so the config says ``rope_traditional: true``
and the weights are used as they are.
"""

from __future__ import annotations

import re
from typing import Any

import mlx.core as mx

from .errors import UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF general.file_type (llama_ftype) → name, for the description's source_format.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias|scales|biases)")
_GLOBAL_RE = re.compile(r"([a-z_]+)\.(weight|bias|scales|biases)")


def mlx_name(gguf_name: str) -> str:
    """mlx-lm's name for a GGUF tensor; UnsupportedModelError for tensors it has no place for."""
    if m := _BLOCK_RE.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    elif (m := _GLOBAL_RE.fullmatch(gguf_name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} is not supported for llama")


def _scalar(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        value = value.item()
    return value


def architecture(meta: dict[str, Any]) -> str:
    return str(meta.get("general.architecture", ""))


def source_format(meta: dict[str, Any]) -> str:
    """Such as "gguf:Q4_1"."""
    file_type = _scalar(meta, "general.file_type")
    return (
        f"gguf:{FILE_TYPES.get(file_type, f'type{file_type}')}" if file_type is not None else "gguf"
    )


def quantization(weights: dict[str, mx.array]) -> dict[str, int] | None:
    """MLX's quantization of the tensors mx.load left packed (the most common bits), or None."""
    bits_seen: dict[int, int] = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        weight = weights[name.removesuffix(".scales") + ".weight"]
        in_dims = scales.shape[-1] * 32
        bits = weight.shape[-1] * 32 // in_dims
        bits_seen[bits] = bits_seen.get(bits, 0) + 1
    if not bits_seen:
        return None
    return {"group_size": 32, "bits": max(bits_seen, key=bits_seen.__getitem__)}


def llama_config(meta: dict[str, Any], weights: dict[str, mx.array]) -> dict[str, Any]:
    """config.json for mlx-lm's llama from GGUF metadata and (GGUF-named) tensors."""
    arch = architecture(meta)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported (only llama)")

    def key(name: str, default: Any = None) -> Any:
        return _scalar(meta, f"{arch}.{name}", default)

    required = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
    missing = [f"{arch}.{k}" for k in required if key(k) is None]
    if missing:
        raise UnsupportedModelError(f"GGUF metadata lacks {', '.join(missing)}")
    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size") or (len(tokens) if tokens else weights["token_embd.weight"].shape[0])
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(key("block_count")),
        "intermediate_size": int(key("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(
            key("attention.key_length") or key("rope.dimension_count") or hidden // heads
        ),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "max_position_embeddings": int(key("context_length", 2048)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in weights,
        "attention_bias": "blk.0.attn_q.bias" in weights,
        "mlp_bias": "blk.0.ffn_up.bias" in weights,
    }
    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise UnsupportedModelError(f"GGUF rope scaling {scaling!r} is not supported")
        config["rope_scaling"] = {"type": "linear", "factor": float(key("rope.scaling.factor"))}
    for name, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = _scalar(meta, f"tokenizer.ggml.{gguf_key}")
        if value is not None:
            config[name] = int(value)
    if (quant := quantization(weights)) is not None:
        config["quantization"] = quant
        config["quantization_config"] = dict(quant)
    return config
