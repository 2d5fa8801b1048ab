"""The ModelInfo answer: the loaded model's description plus the device, versions and process.

Built once when the model is ready; the servicer adds MLX's memory figures at each call.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from typing import Any

from mlx_sidecar.v1 import inference_pb2 as pb

from . import __version__
from .shard.options import ShardOptions


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _device() -> tuple[int, int, str]:
    import mlx.core as mx

    dev = mx.default_device()
    if dev.type == mx.DeviceType.gpu:
        kind = pb.DEVICE_KIND_GPU
        if mx.metal.is_available():
            backend = pb.BACKEND_METAL
        elif hasattr(mx, "cuda") and mx.cuda.is_available():
            backend = pb.BACKEND_CUDA
        else:
            backend = pb.BACKEND_UNSPECIFIED
    else:
        kind, backend = pb.DEVICE_KIND_CPU, pb.BACKEND_CPU
    name = ""
    # Older MLX or an exotic device: the name is only descriptive.
    with contextlib.suppress(Exception):
        name = str(mx.device_info().get("device_name", ""))
    return kind, backend, name or ("cpu" if kind == pb.DEVICE_KIND_CPU else "gpu")


def shard_info(options: ShardOptions) -> pb.ShardInfo:
    """The sharded group this worker is rank 0 of: its size, backend and each rank's pid."""
    from .shard.ranks import rank_pids

    return pb.ShardInfo(ranks=options.ranks, backend=options.backend, pids=rank_pids())


def static_model_info(
    loaded: Any, max_batch: int, load_seconds: float, shard: ShardOptions | None = None
) -> pb.ModelInfoResponse:
    """Everything ModelInfo tells but the memory figures (which are read at each call);
    ``shard``: the worker's sharding options, when it is rank 0 of a group."""
    d = loaded.description
    tok = loaded.tokenizer
    kind, backend, device_name = _device()
    info = pb.ModelInfoResponse(
        model_id=d.model_id,
        model_path=str(d.model_path),
        architecture=d.architecture,
        quantization=pb.Quantization(
            mode=d.quant_mode,
            bits=d.quant_bits,
            group_size=d.quant_group_size,
            dtype=d.dtype,
            source_format=d.source_format,
            dequantized=d.dequantized,
        ),
        context_length=d.context_length,
        vocab_size=d.vocab_size,
        device=kind,
        backend=backend,
        device_name=device_name,
        mlx_version=_version("mlx"),
        mlx_lm_version=_version("mlx-lm"),
        worker_pid=os.getpid(),
        worker_version=__version__,
        python_version=platform.python_version(),
        eos_token_ids=sorted(tok.eos_token_ids),
        has_chat_template=tok.has_chat_template,
        max_batch_size=max_batch,
        load_seconds=load_seconds,
        parameter_count=d.parameter_count,
        cpu_blas=d.cpu_blas if kind == pb.DEVICE_KIND_CPU else "",
    )
    if shard is not None:
        info.shard.CopyFrom(shard_info(shard))
    return info
